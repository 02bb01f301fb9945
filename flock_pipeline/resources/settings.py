"""Validator settings: the eval set, the limits and the scoring knobs, in one place (all configurable)."""

from __future__ import annotations

import dagster as dg

from flock_pipeline.core.dedup import DedupConfig
from flock_pipeline.core.schema import DatasetLimits
from flock_pipeline.core.scoring import ScoringConfig


class ValidatorSettingsResource(dg.ConfigurableResource):
    validator_hotkey: str = "validator"  # the hotkey that sets weights
    competition_id: str = "1"  # commitments for other competitions are ignored
    eval_repo: str = "flock/eval-atlas"  # the held-out eval set's dataset repo
    eval_revision: str = ""  # a full commit id; empty = the repo's head when the epoch opens (then recorded)
    max_rows_used: int = 100  # the size cap: only the first N valid rows are used
    max_file_bytes: int = 64 * 2**20
    max_line_bytes: int = 1 * 2**20
    max_turns_per_row: int = 64
    max_chars_per_turn: int = 16_000
    max_system_chars: int = 4_000
    max_duplicate_fraction: float = 0.5
    max_leak_fraction: float = 0.5
    epsilon: float = 0.04
    temperature: float = 0.08
    alpha: float = 0.8
    weights_version_key: int = 0
    corpus_dir: str = ".flock/corpus"

    def limits(self) -> DatasetLimits:
        return DatasetLimits(max_rows_used=self.max_rows_used, max_file_bytes=self.max_file_bytes,
                             max_line_bytes=self.max_line_bytes, max_turns_per_row=self.max_turns_per_row,
                             max_chars_per_turn=self.max_chars_per_turn, max_system_chars=self.max_system_chars)

    def dedup_config(self) -> DedupConfig:
        return DedupConfig(max_duplicate_fraction=self.max_duplicate_fraction,
                           max_leak_fraction=self.max_leak_fraction)

    def scoring_config(self) -> ScoringConfig:
        return ScoringConfig(epsilon=self.epsilon, temperature=self.temperature, alpha=self.alpha)
