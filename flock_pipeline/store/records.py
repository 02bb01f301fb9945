"""The records the pipeline reads and writes, one frozen dataclass per table of the store.

A record's fields are its table's columns, in order; `KEY` is the table's primary key. Steps build records and hand
them to the store; the store hands records back. `frame(records)` turns a list of them into a DataFrame for the few
steps that compute with pandas.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import pandas as pd



def utcnow() -> datetime:
    """A naive UTC timestamp (the store's TIMESTAMP columns carry no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Record:
    TABLE: ClassVar[str]
    KEY: ClassVar[tuple[str, ...]]
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()  # stored as JSON text, held as Python values
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ()  # stored as arrays, held as tuples

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def values(self) -> list:
        out = []
        for name in self.columns():
            value = getattr(self, name)
            if name in self.JSON_FIELDS:
                value = json.dumps(list(value) if isinstance(value, tuple) else value)
            elif name in self.LIST_FIELDS:
                value = [float(x) for x in value]
            elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
                value = value.item()  # a numpy scalar: the drivers take Python's own types
            out.append(value)
        return out

    @classmethod
    def from_row(cls, row: dict):
        kwargs = {}
        for name in cls.columns():
            value = row.get(name)
            if name in cls.JSON_FIELDS and isinstance(value, str):
                value = decode_json(value)
            elif name in cls.LIST_FIELDS:
                value = tuple(float(x) for x in (value if value is not None else ()))
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def decode_json(text: str):
    """A JSON column's value as a record holds it (lists as tuples, so records stay hashable and comparable)."""
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


def frame(records: list[Record], cls: type[Record] | None = None) -> pd.DataFrame:
    """Records as a DataFrame with the table's columns (also when there are none). (pandas is imported here, not
    with the store: the commands that only read records start faster.)"""
    import pandas as pd

    columns = (cls or type(records[0])).columns() if (cls or records) else []
    return pd.DataFrame([dataclasses.asdict(r) for r in records], columns=columns)


@dataclass(frozen=True)
class EpochRecord(Record):
    TABLE: ClassVar[str] = "epochs"
    KEY: ClassVar[tuple[str, ...]] = ("epoch",)
    epoch: int
    block: int
    eval_repo: str | None
    eval_revision: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class CommitmentRecord(Record):
    TABLE: ClassVar[str] = "commitments"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "hotkey")
    epoch: int
    hotkey: str
    uid: int
    repo: str | None
    competition_id: str | None
    revision: str | None
    commit_block: int
    registration_block: int | None
    status: str  # ok | rejected | pending
    reason: str | None
    competition: str | None = None
    coldkey: str | None = None


@dataclass(frozen=True)
class DatasetRecord(Record):
    TABLE: ClassVar[str] = "datasets"
    KEY: ClassVar[tuple[str, ...]] = ("repo", "revision")
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("rejected", "facts")
    repo: str
    revision: str
    status: str  # ok | invalid | unavailable
    reason: str | None
    size_bytes: int = 0
    sha256: str = ""
    rows_total: int = 0
    rows_valid: int = 0
    rows_used: int = 0
    rejected: tuple = ()  # ({"line", "reason"}, ...), the first MAX_RECORDED_REJECTIONS
    created_at: datetime | None = None
    verdict_key: str | None = None
    facts: dict | None = None  # the row format's `file_facts` (None: recorded before there were any)


@dataclass(frozen=True)
class DatasetRowRecord(Record):
    TABLE: ClassVar[str] = "dataset_rows"
    KEY: ClassVar[tuple[str, ...]] = ("repo", "revision", "idx")
    repo: str
    revision: str
    idx: int
    line: int
    row_hash: str
    row_json: str
    n_tokens: int
    raw_hash: str | None = None


@dataclass(frozen=True)
class ShardRecord(Record):
    TABLE: ClassVar[str] = "shards"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "hotkey")
    epoch: int
    hotkey: str
    uid: int
    repo: str | None
    revision: str | None
    commit_block: int
    status: str  # eligible | ineligible
    reason: str | None
    rows_in: int = 0
    rows_kept: int = 0
    duplicates_within: int = 0
    duplicates_earlier: int = 0
    eval_leaks: int = 0
    shard_hash: str | None = None
    competition: str | None = None


@dataclass(frozen=True)
class DedupPlanRecord(Record):
    TABLE: ClassVar[str] = "dedup_plans"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "hotkey")
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("plan",)
    epoch: int
    fingerprint: str
    hotkey: str
    plan: dict


@dataclass(frozen=True)
class ShardRowRecord(Record):
    TABLE: ClassVar[str] = "shard_rows"
    KEY: ClassVar[tuple[str, ...]] = ("shard_hash", "pos")
    shard_hash: str
    pos: int
    row_hash: str
    row_json: str


@dataclass(frozen=True)
class EvalResultRecord(Record):
    TABLE: ClassVar[str] = "eval_results"
    KEY: ClassVar[tuple[str, ...]] = ("cache_key",)
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("provenance", "metrics")
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("per_row_losses", "train_losses")
    cache_key: str
    shard_hash: str
    status: str  # ok | failed
    final: bool
    error: str | None
    eval_loss: float | None
    per_row_losses: tuple = ()
    train_losses: tuple = ()
    train_tokens: int = 0
    eval_tokens: int = 0
    seconds: float = 0.0
    provenance: dict | None = None
    attempts: int = 1
    created_at: datetime | None = None
    metrics: dict | None = None  # objective-specific numbers (DPO: reward_accuracy, mean_margin, pairs)


@dataclass(frozen=True)
class ScoreRecord(Record):
    TABLE: ClassVar[str] = "scores"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "hotkey")
    epoch: int
    hotkey: str
    uid: int
    status: str
    reason: str | None
    eval_loss: float | None
    score: float  # the game's score (win rate, curve score, 1 for a daily winner)
    weight: float
    competition: str | None = None
    competition_weight: float | None = None
    explanation: str | None = None  # in words, how the weight came about (comparisons, blend, dropped rows, share)


@dataclass(frozen=True)
class ScoreDetailRecord(Record):
    """What a score's explanation summarises, in full: every pairwise comparison of a win-rate miner with more of
    them than its explanation lists (`flock epoch report N --miner HOTKEY` prints it)."""
    TABLE: ClassVar[str] = "score_details"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "hotkey")
    epoch: int
    hotkey: str
    detail: str


@dataclass(frozen=True)
class WeightSubmissionRecord(Record):
    TABLE: ClassVar[str] = "weight_submissions"
    KEY: ClassVar[tuple[str, ...]] = ("epoch",)
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("uids", "weights")
    epoch: int
    success: bool
    block: int
    message: str
    uids: tuple = ()  # exactly the vector the chain receives (after the SDK's conform step)
    weights: tuple = ()
    retry_after_block: int | None = None
    created_at: datetime | None = None
    # refused | rate limited | in flight | included | committed | applied | not applied (see validator/scoring.py)
    state: str | None = None
    hotkey: str | None = None
    version_key: int | None = None
    commit_reveal: bool | None = None
    chain_epoch: int | None = None  # the chain's epoch index when sent
    reveal_epoch: int | None = None  # commit-reveal: the chain epoch whose start reveals it
    reveal_round: int | None = None  # commit-reveal: the drand round it is sealed to
    confirmed_block: int | None = None  # the block at which "applied" / "not applied" was read from the chain
    detail: str | None = None  # what the chain's limits did to the vector; why it was not applied
    attempts: int | None = None  # sends for this epoch


@dataclass(frozen=True)
class CorpusRecord(Record):
    TABLE: ClassVar[str] = "corpora"
    KEY: ClassVar[tuple[str, ...]] = ("epoch",)
    epoch: int
    rows: int
    miners: int
    sha256: str  # the release's identity: over both configs' rows (core/corpus.py `release_sha256`)
    jsonl_path: str  # the SFT rows' JSONL
    parquet_path: str  # the SFT rows' Parquet
    created_at: datetime | None = None
    sft_rows: int | None = None  # None on releases written before the release folder layout
    dpo_rows: int | None = None
    release_dir: str | None = None  # the epoch's release folder (sft.parquet, dpo.parquet, jsonl/, README.md)
    latest_dir: str | None = None  # the cumulative release as of this epoch (`corpus_dir/latest`)
    published_repo: str | None = None  # the dataset repo the cumulative release went to (None: not published)
    published_revision: str | None = None


@dataclass(frozen=True)
class EpochCompetitionRecord(Record):
    TABLE: ClassVar[str] = "epoch_competitions"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "competition")
    epoch: int
    competition: str
    kind: str
    share: float
    eval_repo: str
    eval_revision: str
    round_id: str
    phase: str
    snapshot_block: int
    note: str = ""
    definition: str = "{}"


@dataclass(frozen=True)
class CompetitionRoundRecord(Record):
    TABLE: ClassVar[str] = "competition_rounds"
    KEY: ClassVar[tuple[str, ...]] = ("competition", "round_id")
    competition: str
    round_id: str
    eval_repo: str
    eval_revision: str
    first_epoch: int
    reused_from: str | None = None
    decided: bool = False
    winner_uid: int | None = None
    winner_hotkey: str | None = None
    winner_loss: float | None = None
    decided_epoch: int | None = None
    contenders: str | None = None  # JSON list of the round's evaluated submissions (uid, hotkey, coldkey, loss, block)


@dataclass(frozen=True)
class EvalObservationRecord(Record):
    """The head of an eval set's repo as the validator saw it at a block: the evidence that a revision was published
    after a block (the eval policy `after_commitments`)."""

    TABLE: ClassVar[str] = "eval_observations"
    KEY: ClassVar[tuple[str, ...]] = ("repo", "block")
    repo: str
    block: int
    revision: str
    seen_at: datetime | None = None


@dataclass(frozen=True)
class CorpusValueRecord(Record):
    """What training on one config of an epoch's release is worth: the held-out loss after fine-tuning the base
    model on its rows, against the base model, rows drawn at random from everything submitted that epoch (one loss
    per draw) and the previous release (the same number of rows each)."""

    TABLE: ClassVar[str] = "corpus_values"
    KEY: ClassVar[tuple[str, ...]] = ("epoch", "config")
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("random_losses",)
    epoch: int
    config: str  # sft | dpo
    competition: str
    objective: str
    heldout_repo: str
    heldout_revision: str
    heldout_rows: int
    rows: int  # rows trained on, in every arm
    release_loss: float
    random_losses: tuple = ()
    base_loss: float | None = None
    previous_epoch: int | None = None
    previous_loss: float | None = None
    recipe_hash: str = ""
    seconds: float = 0.0
    created_at: datetime | None = None


RECORDS: tuple[type[Record], ...] = (
    EpochRecord, CommitmentRecord, DatasetRecord, DatasetRowRecord, ShardRecord, DedupPlanRecord, ShardRowRecord,
    EvalResultRecord, ScoreRecord, ScoreDetailRecord, WeightSubmissionRecord, CorpusRecord, EpochCompetitionRecord,
    CompetitionRoundRecord, CorpusValueRecord, EvalObservationRecord)
RECORD_OF_TABLE = {r.TABLE: r for r in RECORDS}
