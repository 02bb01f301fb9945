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
    max_rows_used: int = 100  # the size cap: only the first N valid rows are used
    max_file_bytes: int = 64 * 2**20
    max_line_bytes: int = 1 * 2**20
    max_turns_per_row: int = 64
    max_chars_per_turn: int = 16_000
    max_system_chars: int = 4_000
    min_commitment_age: int = 0  # blocks a commitment must have aged at the epoch's block to be evaluated
    max_duplicate_fraction: float = 0.2  # a miner with a larger share of earlier miners' rows is ineligible
    max_leak_fraction: float = 0.5  # ... or with a larger share of eval-set rows
    near_duplicates: bool = True  # MinHash + LSH near-duplicate matching on top of exact matching
    near_duplicate_threshold: float = 0.65  # estimated Jaccard similarity of two rows' word shingles
    scoring_mode: str = "win_rate"  # win_rate | curve | top_k
    epsilon: float = 0.04
    epsilon_decay_blocks: int = 0  # 0: constant epsilon (the reference)
    significance: str = "none"  # none | bootstrap (paired, over eval rows)
    bootstrap_samples: int = 1000
    bootstrap_confidence: float = 0.95
    require_improvement: bool = True  # a miner must beat the base model's eval loss to earn anything
    temperature: float = 0.08
    alpha: float = 0.8
    curve_full: float = 2.40
    curve_mid: float = 2.60
    curve_mid_score: float = 0.05
    curve_zero: float = 2.80
    curve_power: float = 2.0
    top_fraction: float = 0.05
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
        """The validator's competitions, built and checked (CompetitionConfigError names the bad field)."""
        curation = {"commitment_id": self.competition_id, "eval_repo": self.eval_repo,
                    "eval_revision": self.eval_revision, "dedup": self.dedup_config(),
                    "scoring": self.scoring_config()}
        return _competition_set(self.competitions or "curation", _Frozen(curation))

    def limits(self) -> DatasetLimits:
        return DatasetLimits(max_rows_used=self.max_rows_used, max_file_bytes=self.max_file_bytes,
                             max_line_bytes=self.max_line_bytes, max_turns_per_row=self.max_turns_per_row,
                             max_chars_per_turn=self.max_chars_per_turn, max_system_chars=self.max_system_chars)

    def dedup_config(self) -> DedupConfig:
        near = NearDupConfig(threshold=self.near_duplicate_threshold) if self.near_duplicates else None
        return DedupConfig(max_duplicate_fraction=self.max_duplicate_fraction,
                           max_leak_fraction=self.max_leak_fraction, near=near)

    def scoring_config(self) -> ScoringConfig:
        return ScoringConfig(
            epsilon=self.epsilon, temperature=self.temperature, alpha=self.alpha, mode=self.scoring_mode,
            epsilon_decay_blocks=self.epsilon_decay_blocks, significance=self.significance,
            bootstrap_samples=self.bootstrap_samples, bootstrap_confidence=self.bootstrap_confidence,
            require_improvement=self.require_improvement, curve_full=self.curve_full, curve_mid=self.curve_mid,
            curve_mid_score=self.curve_mid_score, curve_zero=self.curve_zero, curve_power=self.curve_power,
            top_fraction=self.top_fraction)


class _Frozen(dict):
    """A hashable view of the curation defaults (for the per-process cache of built competition sets)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps({k: repr(v) for k, v in self.items()}, sort_keys=True))


@lru_cache(maxsize=8)
def _competition_set(document: str, curation_defaults: _Frozen) -> CompetitionSet:
    return build_competitions(load_document(document), {"curation": dict(curation_defaults)})
