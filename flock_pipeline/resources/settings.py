"""Validator settings: the competitions, the dataset limits, the duplicate and scoring rules, the corpus and the
reports, in one place (all configurable). The nested settings (`limits`, `dedup`, `scoring`, `corpus_policy`) are
JSON objects of the core configs' own fields (`DatasetLimits`, `DedupConfig` with `near`: `NearDupConfig` or null,
`ScoringConfig`, `CorpusPolicy`): the core configs are the one schema, built and checked when the settings are read,
and a wrong value names its dotted path (`scoring.mode: ...`)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import dagster as dg
import pydantic

from flock_pipeline.core.competitions import CompetitionSet, build_competitions, load_document
from flock_pipeline.core.configs import build_config
from flock_pipeline.core.corpus import CorpusPolicy
from flock_pipeline.core.dedup import DedupConfig
from flock_pipeline.core.schema import DatasetLimits
from flock_pipeline.core.corpus.value import ValueConfig
from flock_pipeline.core.scoring import ScoringConfig

NESTED = {"limits": DatasetLimits, "dedup": DedupConfig, "scoring": ScoringConfig, "value": ValueConfig}


class ValidatorSettingsResource(dg.ConfigurableResource):
    validator_hotkey: str = "validator"  # the hotkey that sets weights
    competitions: str = ""  # the competitions document (JSON, a preset name or @file); empty: one curation game
    # from the fields below. The curation fields below are also the defaults of a curation entry of the document.
    competition_id: str = "1"  # the curation game's commitment id (commitments for no competition are rejected)
    eval_repo: str = "flock/eval-atlas"  # the held-out eval set's dataset repo
    eval_revision: str = ""  # a full commit id; empty = the repo's head when the epoch opens (then recorded)
    heldout_repo: str = "flock/heldout-atlas"  # the curation game's held-out set, never scored against: what
    # training on the corpus is worth (`corpus_value`); empty: not measured
    limits: str = "{}"  # JSON object of DatasetLimits fields: the size cap (max_rows_used), file, line, turn limits
    dedup: str = "{}"  # JSON object of DedupConfig fields; "near": NearDupConfig fields, or null for exact matching
    # only. The default of every game that has a `dedup` (curation, dpo); a competition entry may set its own.
    scoring: str = "{}"  # JSON object of ScoringConfig fields (mode, epsilon, temperature, alpha, significance, the
    # curve, top_fraction, require_improvement, ...): the default of every game that has a `scoring`
    min_commitment_age: int = 0  # blocks a commitment must have aged at the epoch's block to be evaluated
    weights_version_key: int = 0  # 0: the subnet's WeightsVersionKey, read from the chain before each submission
    report_repo: str = ""  # a public dataset repo for the per-epoch score tables miners read (empty: not published)
    replace_results: bool = False  # let a run that did less (fewer scored miners, a smaller corpus) replace an epoch's
    # recorded scores and corpus release; without it such a run stops with an error and nothing recorded changes
    corpus_dir: str = ".flock/corpus"
    corpus_policy: str = "{}"  # JSON object of CorpusPolicy fields (core/corpus.py): which miners' rows enter the
    # corpus, the card's license, derived DPO pairs; checked when the settings are read
    corpus_repo: str = ""  # a dataset repo the cumulative corpus release is uploaded to (empty: not published)
    value: str = "{}"  # JSON object of ValueConfig fields: the rows per arm (max_rows) and random draws (draws) of
    # `corpus_value`, what training on a release is worth

    @pydantic.field_validator(*NESTED, mode="before")
    @classmethod
    def _nested_as_json(cls, value: Any) -> Any:
        """A nested setting given as an object (FLOCK_SETTINGS='{"scoring": {"mode": "curve"}}') is kept as its
        JSON text (the Dagster config of the resource is text)."""
        return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value

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
                    "eval_revision": self.eval_revision, "heldout_repo": self.heldout_repo}
        shared = {"dedup": self.dedup_config(), "scoring": self.scoring_config()}
        return _competition_set(self.competitions or "curation", _Frozen(curation), _Frozen(shared))

    @pydantic.model_validator(mode="after")
    def _check_configs(self) -> ValidatorSettingsResource:
        """Build the limits, dedup and scoring configs now: a wrong value fails when the settings are read, naming
        the setting, before any download or training."""
        for name in NESTED:
            _nested(name, getattr(self, name))
        return self

    def dataset_limits(self) -> DatasetLimits:
        return _nested("limits", self.limits)

    def dedup_config(self) -> DedupConfig:
        return _nested("dedup", self.dedup)

    def scoring_config(self) -> ScoringConfig:
        return _nested("scoring", self.scoring)

    def value_config(self) -> ValueConfig:
        return _nested("value", self.value)


@lru_cache(maxsize=64)
def _nested(name: str, text: str):
    """The core config of a nested setting from its JSON text (cached: the settings are read many times a run)."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON: {exc}") from None
    return build_config(NESTED[name], value, name)


# Flat settings of earlier releases and where they live now (their values are refused with this pointer).
MOVED = {"scoring_mode": "scoring.mode", "near_duplicates": "dedup.near (null: exact matching only)",
         "near_duplicate_threshold": "dedup.near.threshold", "max_duplicate_fraction": "dedup.max_duplicate_fraction",
         "max_leak_fraction": "dedup.max_leak_fraction",
         **{f: f"limits.{f}" for f in DatasetLimits.__dataclass_fields__},
         **{f: f"scoring.{f}" for f in ScoringConfig.__dataclass_fields__ if f != "mode"}}


class _Frozen(dict):
    """A hashable view of the defaults (for the per-process cache of built competition sets)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps({k: repr(v) for k, v in self.items()}, sort_keys=True))


@lru_cache(maxsize=8)
def _competition_set(document: str, curation_defaults: _Frozen, shared: _Frozen) -> CompetitionSet:
    return build_competitions(load_document(document), {"curation": dict(curation_defaults)}, dict(shared))
