"""The subnet's games: what a competition is (`base`), one module per game (curation, selection, dpo), and the
validated configuration."""

from flock_pipeline.core.competitions.base import (Clock, Competition, CompetitionConfigError, CompetitionScores,
                                                   Contender, Entry, EvalSet, RewardState, Round, ScoringContext,
                                                   Submission)
from flock_pipeline.core.competitions.config import (KINDS, PRESETS, CompetitionSet, build_competitions,
                                                     load_document)
from flock_pipeline.core.competitions.curation import CurationCompetition
from flock_pipeline.core.competitions.dpo import DpoCompetition
from flock_pipeline.core.competitions.selection import RULE_SETS, SelectionCompetition, select_winner

__all__ = ["Clock", "Competition", "CompetitionConfigError", "CompetitionScores", "CompetitionSet", "Contender",
           "CurationCompetition", "DpoCompetition", "Entry", "EvalSet", "KINDS", "PRESETS", "RewardState", "Round",
           "RULE_SETS", "ScoringContext", "SelectionCompetition", "Submission", "build_competitions", "load_document",
           "select_winner"]
