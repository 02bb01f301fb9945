"""The validator's eval sets: a competition's held-out rows (or the selection game's pool) at a full revision,
validated as the game's row format and cached in-process (revisions are immutable)."""

from __future__ import annotations

from flock_pipeline.core.competitions import EvalSet
from flock_pipeline.core.rowformats import CHAT, RowFormat
from flock_pipeline.core.schema import DatasetLimits, raw_row_keys, validate_bytes
from flock_pipeline.errors import ValidatorFault
from flock_pipeline.resources.hub import HubResource


class EvalSetError(ValidatorFault):
    """The validator's own eval set is unusable: the epoch stops, nothing is recorded against a miner."""


_EVAL_SETS: dict[tuple[str, str, RowFormat], tuple[tuple, frozenset[str]]] = {}


def load_eval_rows(hub: HubResource, repo: str, revision: str, row_format: RowFormat = CHAT) -> list:
    """The validated eval set at a full revision, rows of `row_format` (cached in-process)."""
    return list(_eval_set(hub, repo, revision, row_format)[0])


def load_eval_set(hub: HubResource, repo: str, revision: str, row_format: RowFormat = CHAT) -> EvalSet:
    """The eval set as the eligibility rules see it: row hashes, the rows' live keys (JSON as written, keys sorted)
    and their texts."""
    rows, raw_keys = _eval_set(hub, repo, revision, row_format)
    return EvalSet(row_hashes=frozenset(r.row_hash for r in rows), raw_keys=raw_keys,
                   texts=tuple(row_format.text(r) for r in rows))


def _eval_set(hub: HubResource, repo: str, revision: str, row_format: RowFormat) -> tuple[tuple, frozenset[str]]:
    if (repo, revision, row_format) not in _EVAL_SETS:
        _EVAL_SETS[(repo, revision, row_format)] = _load_eval_rows(hub, repo, revision, row_format)
    return _EVAL_SETS[(repo, revision, row_format)]


def _load_eval_rows(hub: HubResource, repo: str, revision: str,
                    row_format: RowFormat) -> tuple[tuple, frozenset[str]]:
    data = hub.download(repo, revision)
    limits = DatasetLimits(max_rows_used=10**9, max_file_bytes=2**31)
    report = validate_bytes(data, limits, row_format)
    if report.rejected_rows or not report.valid_rows:
        bad = report.rejected_rows[0] if report.rejected_rows else None
        raise EvalSetError(f"eval set {repo}@{revision} is invalid"
                           + (f" (line {bad.line}: {bad.reason})" if bad else " (empty)"))
    unusable = next(((r.line, row_format.eval_problem(r.row)) for r in report.valid_rows
                     if row_format.eval_problem(r.row) is not None), None)
    if unusable is not None:
        raise EvalSetError(f"eval set {repo}@{revision} is invalid (line {unusable[0]}: {unusable[1]})")
    keys = raw_row_keys(data, [r.line for r in report.valid_rows], limits, row_format)
    return tuple(r.row for r in report.valid_rows), frozenset(keys.values())
