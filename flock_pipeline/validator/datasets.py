"""Miner step: download a committed dataset once, validate it row by row, record rows and reasons."""

from __future__ import annotations


import json
from dataclasses import dataclass
from functools import lru_cache

from flock_pipeline.core.rowformats import CHAT, RowFormat
from flock_pipeline.core.schema import DatasetLimits, raw_row_keys, validate_bytes, verdict_key
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubError, HubNotFound, HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import DatasetRecord, DatasetRowRecord, utcnow
from flock_pipeline.validator.games import competition_of

MAX_RECORDED_REJECTIONS = 1000  # rejected-row reasons kept per dataset (the counts are always complete)


@dataclass(frozen=True)
class DatasetOutcome:
    hotkey: str
    repo: str | None
    revision: str | None
    status: str  # ok | invalid | unavailable | no_commitment
    reason: str | None
    rows_total: int = 0
    rows_valid: int = 0
    rows_used: int = 0
    size_bytes: int = 0
    sha256: str = ""
    cached: bool = False
    rejected: tuple = ()
    row_format: RowFormat = CHAT


def fetch_miner_dataset(hotkey: str, hub: HubResource, evaluator: EvaluatorResource,
                        settings: ValidatorSettingsResource, store: StoreResource, *,
                        repo: str | None = None, revision: str | None = None, epoch: int | None = None,
                        give_up_on_transient: bool = False, row_format: RowFormat | None = None) -> DatasetOutcome:
    """Download + validate one dataset revision (default: the one of `hotkey`'s commitment recorded for `epoch`,
    or for the latest epoch it appears in) as rows of `row_format` (default: the format of the competition the
    commitment names; chat rows for a revision given without one).

    Never raises for bad data. A missing repo or file is recorded as "unavailable" and the epoch goes on;
    transient hub errors are raised for a retry, unless `give_up_on_transient` (the last try) records them too.
    """
    if repo is None or revision is None:
        commitment = store.miner_commitment(hotkey, epoch)
        if commitment is None or commitment.status != "ok":
            reason = commitment.reason if commitment is not None else "no commitment recorded for this hotkey"
            return DatasetOutcome(hotkey, None, None, "no_commitment", reason)
        repo, revision = commitment.repo, commitment.revision
        if row_format is None:
            row_format = commitment_row_format(commitment, settings)
    row_format = row_format or CHAT
    limits = settings.dataset_limits()
    key = verdict_key(limits, row_format)
    known = store.dataset(repo, revision)
    if known is not None and known.status in ("ok", "invalid") and known.verdict_key == key:
        return _outcome(hotkey, known, cached=True, row_format=row_format)  # decided by the content, same rules
    try:
        size, data = _download(hub, store, repo, revision, limits)
        if data is None:
            return _record(store, hotkey, repo, revision, "invalid",
                           f"data.jsonl is {size} bytes, limit {limits.max_file_bytes}", size=size,
                           key=key, row_format=row_format)
    except HubNotFound as exc:
        return _record(store, hotkey, repo, revision, "unavailable", str(exc), row_format=row_format)
    except HubError as exc:
        if exc.transient and not give_up_on_transient:
            raise
        return _record(store, hotkey, repo, revision, "unavailable", str(exc), row_format=row_format)
    return _record_validated(store, evaluator, hotkey, repo, revision, data, limits, key, row_format)


def _download(hub: HubResource, store: StoreResource, repo: str, revision: str,
              limits: DatasetLimits) -> tuple[int, bytes | None]:
    """The size of a revision's data file and its bytes (None: it is over the size limit, so it is not fetched)."""
    with store.released():  # the hub may be slow: other processes may use the store meanwhile
        info = hub.file_info(repo, revision)
        data = hub.download(repo, revision, max_bytes=limits.max_file_bytes) \
            if info.size <= limits.max_file_bytes else None
    return info.size, data


def _record_validated(store: StoreResource, evaluator: EvaluatorResource, hotkey: str, repo: str, revision: str,
                      data: bytes, limits: DatasetLimits, key: str, row_format: RowFormat) -> DatasetOutcome:
    """The outcome of a downloaded file validated row by row, recorded with its used rows (ok or invalid)."""
    report = validate_bytes(data, limits, row_format)
    used = report.used_rows(limits)
    tokenizer = load_tokenizer(str(evaluator.model_path()))
    raw_keys = raw_row_keys(data, [r.line for r in used], limits, row_format)
    rows = [DatasetRowRecord(repo=repo, revision=revision, idx=i, line=r.line, row_hash=r.row.row_hash,
                             row_json=r.row.canonical_json(), n_tokens=row_format.count_tokens(r.row, tokenizer),
                             raw_hash=raw_keys[r.line]) for i, r in enumerate(used)]
    reason = report.reason()
    rejected = [{"line": r.line, "reason": r.reason} for r in report.rejected_rows[:MAX_RECORDED_REJECTIONS]]
    return _record(store, hotkey, repo, revision, "ok" if reason is None else "invalid", reason,
                   size=report.size_bytes, sha256=report.sha256, rows_total=len(report.rows),
                   rows_valid=len(report.valid_rows), rows_used=len(used), rejected=rejected, key=key,
                   rows=rows, row_format=row_format, facts=report.facts or None)


def verdict_keys(settings: ValidatorSettingsResource) -> dict[str | None, str]:
    """competition name -> the verdict key its datasets are decided under (its row format, today's limits); None:
    commitments recorded before competitions existed (the first competition's)."""
    limits, competitions = settings.dataset_limits(), settings.competition_set()
    keys: dict[str | None, str] = {c.name: verdict_key(limits, c.row_format) for c in competitions}
    keys[None] = keys[competitions.competitions[0].name]
    return keys


def commitment_row_format(commitment, settings: ValidatorSettingsResource) -> RowFormat:
    """The row format of the competition a recorded commitment belongs to."""
    competitions = settings.competition_set()
    return competitions.by_name(competition_of(commitment, competitions)).row_format


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """The base model's tokenizer, loaded once per process (a Qwen tokenizer takes about a second to load)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _record(store: StoreResource, hotkey: str, repo: str, revision: str, status: str, reason: str | None,
            size: int = 0, sha256: str = "", rows_total: int = 0, rows_valid: int = 0, rows_used: int = 0,
            rejected: list | None = None, key: str | None = None,
            rows: list[DatasetRowRecord] | None = None, row_format: RowFormat = CHAT,
            facts: dict | None = None) -> DatasetOutcome:
    """Record a revision's verdict (and its used rows, in the same transaction)."""
    record = DatasetRecord(repo=repo, revision=revision, status=status, reason=reason, size_bytes=size,
                           sha256=sha256, rows_total=rows_total, rows_valid=rows_valid, rows_used=rows_used,
                           rejected=tuple(rejected or ()), created_at=utcnow(), verdict_key=key, facts=facts)
    store.record_dataset(record, rows)
    return _outcome(hotkey, record, cached=False, row_format=row_format)


def _outcome(hotkey: str, record: DatasetRecord, cached: bool, row_format: RowFormat = CHAT) -> DatasetOutcome:
    return DatasetOutcome(hotkey=hotkey, repo=record.repo, revision=record.revision, status=record.status,
                          reason=record.reason, rows_total=int(record.rows_total or 0),
                          rows_valid=int(record.rows_valid or 0), rows_used=int(record.rows_used or 0),
                          size_bytes=int(record.size_bytes or 0), sha256=record.sha256 or "", cached=cached,
                          rejected=tuple(record.rejected or ()), row_format=row_format)


def rows_from_json(texts, row_format: RowFormat = CHAT) -> list:
    """Rows of `row_format` from their canonical JSON (strings, or records with a `row_json` field)."""
    return [row_format.from_json_obj(json.loads(t if isinstance(t, str) else t.row_json)) for t in texts]
