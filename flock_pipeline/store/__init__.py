"""The store: the pipeline's records (frozen dataclasses), one typed interface over them, and two databases behind
it (DuckDB embedded, PostgreSQL for several processes and hosts). Nothing outside this package writes SQL."""

from flock_pipeline.store.backends import StoreURLError, parse_url
from flock_pipeline.store.migrations import LATEST as SCHEMA_VERSION
from flock_pipeline.store.records import (
    CommitmentRecord, CompetitionRoundRecord, CorpusRecord, CorpusValueRecord, DatasetRecord, DatasetRowRecord,
    DedupPlanRecord, EpochCompetitionRecord, EpochRecord, EvalObservationRecord, EvalResultRecord, Record,
    ScoreDetailRecord, ScoreRecord, ShardRecord,
    ShardRowRecord,
    WeightSubmissionRecord, frame, utcnow)
from flock_pipeline.store.store import DatasetVerdict, ReportRow, ShardToEvaluate, Store, StoreOps, UsedRow

__all__ = ["CommitmentRecord", "CompetitionRoundRecord", "CorpusRecord", "CorpusValueRecord", "DatasetRecord",
           "DatasetRowRecord", "DatasetVerdict", "DedupPlanRecord", "EpochCompetitionRecord", "EpochRecord",
           "EvalObservationRecord",
           "EvalResultRecord", "Record", "ReportRow", "SCHEMA_VERSION", "ScoreDetailRecord", "ScoreRecord",
           "ShardRecord",
           "ShardRowRecord", "ShardToEvaluate", "Store", "StoreOps", "StoreURLError", "UsedRow",
           "WeightSubmissionRecord", "frame", "parse_url", "utcnow"]
