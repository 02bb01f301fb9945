"""Validator settings: the competitions, the limits and the curation game's knobs, in one place (all configurable)."""

from __future__ import annotations

import json
from functools import lru_cache

import dagster as dg
import pydantic

from flock_pipeline.core.competitions import CompetitionSet, build_competitions, load_document

from flock_pipeline.core.corpus import CorpusPolicy
from flock_pipeline.core.dedup import DedupConfig
from flock_pipeline.core.neardup import NearDupConfig
from flock_pipeline.core.schema import DatasetLimits
from flock_pipeline.core.scoring import ScoringConfig


class ValidatorSettingsResource(dg.ConfigurableResource):
    validator_hotkey: str = "validator"  # the hotkey that sets weights
    competitions: str = ""  # the competitions document (JSON, a preset name or @file); empty: one curation game
    # from the fields below. The curation fields below are also the defaults of a curation entry of the document.
    competition_id: str = "1"  # the curation game's commitment id (commitments for no competition are rejected)
    eval_repo: str = "flock/eval-atlas"  # the held-out eval set's dataset repo
    eval_revision: str = ""  # a full commit id; empty = the repo's head when the epoch opens (then recorded)
    # Defaults come from the core configs themselves (DatasetLimits, DedupConfig / NearDupConfig, ScoringConfig):
    # one source of truth. Every knob of those configs is also settable per competition in the competitions
    # document (a curation entry's "dedup", "dedup.near" and "scoring" objects).
    max_rows_used: int = DatasetLimits.max_rows_used  # the size cap: only the first N valid rows are used
    max_file_bytes: int = DatasetLimits.max_file_bytes
    max_line_bytes: int = DatasetLimits.max_line_bytes
    max_turns_per_row: int = DatasetLimits.max_turns_per_row
    max_chars_per_turn: int = DatasetLimits.max_chars_per_turn
    max_system_chars: int = DatasetLimits.max_system_chars
    min_commitment_age: int = 0  # blocks a commitment must have aged at the epoch's block to be evaluated
    max_duplicate_fraction: float = DedupConfig.max_duplicate_fraction  # more earlier miners' rows: ineligible
    max_leak_fraction: float = DedupConfig.max_leak_fraction  # ... or a larger share of eval-set rows
    near_duplicates: bool = True  # MinHash + LSH near-duplicate matching on top of exact matching
    near_duplicate_threshold: float = NearDupConfig.threshold  # estimated Jaccard similarity of word shingles
    scoring_mode: str = ScoringConfig.mode  # win_rate | curve | top_k
    epsilon: float = ScoringConfig.epsilon
    epsilon_decay_blocks: int = ScoringConfig.epsilon_decay_blocks  # 0: constant epsilon (the reference)
    significance: str = ScoringConfig.significance  # none | bootstrap (paired, over eval rows)
    bootstrap_samples: int = ScoringConfig.bootstrap_samples
    bootstrap_confidence: float = ScoringConfig.bootstrap_confidence
    bootstrap_seed: int = ScoringConfig.bootstrap_seed
    require_improvement: bool = ScoringConfig.require_improvement  # a miner must beat the base model's eval loss
    temperature: float = ScoringConfig.temperature
    alpha: float = ScoringConfig.alpha
    curve_full: float = ScoringConfig.curve_full
    curve_mid: float = ScoringConfig.curve_mid
    curve_mid_score: float = ScoringConfig.curve_mid_score
    curve_zero: float = ScoringConfig.curve_zero
    curve_power: float = ScoringConfig.curve_power
    top_fraction: float = ScoringConfig.top_fraction
    weights_version_key: int = 0  # 0: the subnet's WeightsVersionKey, read from the chain before each submission
    report_repo: str = ""  # a public dataset repo for the per-epoch score tables miners read (empty: not published)
    replace_results: bool = False  # let a run that did less (fewer scored miners, a smaller corpus) replace an epoch's
    # recorded scores and corpus release; without it such a run stops with an error and nothing recorded changes
    corpus_dir: str = ".flock/corpus"
    corpus_policy: str = "{}"  # JSON object of CorpusPolicy fields (core/corpus.py): which miners' rows enter the
    # corpus, the card's license, derived DPO pairs; checked when the settings are read
    corpus_repo: str = ""  # a dataset repo the cumulative corpus release is uploaded to (empty: not published)

    @pydantic.field_validator("corpus_policy")
    @classmethod
    def _check_corpus_policy(cls, value: str) -> str:
        CorpusPolicy.from_json(value)  # ValueError naming the field: a bad policy stops before any work
        return value

    @pydantic.field_validator("corpus_repo")
    @classmethod
    def _check_corpus_repo(cls, value: str) -> str:
        if value:
            from flock_pipeline.core.commitment import CommitmentError, validate_repo_id

            try:
                validate_repo_id(value)
            except CommitmentError as exc:
                raise ValueError(f"corpus_repo: {exc}") from None
        return value

    def corpus_policy_config(self) -> CorpusPolicy:
        """The corpus selection policy (`corpus_policy` parsed and checked)."""
        return CorpusPolicy.from_json(self.corpus_policy)

    def competition_set(self) -> CompetitionSet:
        """The validator's competitions, built and checked (CompetitionConfigError names the bad field). The dedup
        and scoring settings are the defaults of every game that has those fields (curation, dpo, ...); the
        commitment id and eval set settings are the curation game's."""
        curation = {"commitment_id": self.competition_id, "eval_repo": self.eval_repo,
                    "eval_revision": self.eval_revision}
        shared = {"dedup": self.dedup_config(), "scoring": self.scoring_config()}
        return _competition_set(self.competitions or "curation", _Frozen(curation), _Frozen(shared))

    @pydantic.model_validator(mode="after")
    def _check_configs(self) -> ValidatorSettingsResource:
        """Build the limits, dedup and scoring configs now: a wrong value fails when the settings are read, naming
        the setting, before any download or training."""
        for build, names in ((self.limits, _LIMITS), (self.dedup_config, _DEDUP), (self.scoring_config, _SCORING)):
            try:
                build()
            except (TypeError, ValueError) as exc:
                text = str(exc)
                field = next((setting for setting, name in names.items() if text.startswith(f"{name} ")), None)
                raise ValueError(f"{field}: {text}" if field else text) from None
        return self

    def limits(self) -> DatasetLimits:
        return DatasetLimits(**{name: getattr(self, setting) for setting, name in _LIMITS.items()})

    def dedup_config(self) -> DedupConfig:
        near = NearDupConfig(threshold=self.near_duplicate_threshold) if self.near_duplicates else None
        return DedupConfig(max_duplicate_fraction=self.max_duplicate_fraction,
                           max_leak_fraction=self.max_leak_fraction, near=near)

    def scoring_config(self) -> ScoringConfig:
        return ScoringConfig(**{name: getattr(self, setting) for setting, name in _SCORING.items()})


# setting -> the field of the core config it sets
_LIMITS = {name: name for name in ("max_rows_used", "max_file_bytes", "max_line_bytes", "max_turns_per_row",
                                   "max_chars_per_turn", "max_system_chars")}
_DEDUP = {"max_duplicate_fraction": "max_duplicate_fraction", "max_leak_fraction": "max_leak_fraction",
          "near_duplicate_threshold": "threshold"}
_SCORING = {"scoring_mode": "mode", **{name: name for name in (
    "epsilon", "temperature", "alpha", "epsilon_decay_blocks", "significance", "bootstrap_samples",
    "bootstrap_confidence", "bootstrap_seed", "require_improvement", "curve_full", "curve_mid", "curve_mid_score",
    "curve_zero", "curve_power", "top_fraction")}}


class _Frozen(dict):
    """A hashable view of the curation defaults (for the per-process cache of built competition sets)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps({k: repr(v) for k, v in self.items()}, sort_keys=True))


@lru_cache(maxsize=8)
def _competition_set(document: str, curation_defaults: _Frozen, shared: _Frozen) -> CompetitionSet:
    return build_competitions(load_document(document), {"curation": dict(curation_defaults)}, dict(shared))
