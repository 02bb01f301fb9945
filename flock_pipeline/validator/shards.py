"""Epoch step: deduplicate every miner of the epoch against every other and against the eval set.

Dedup is a function of all miners at once (the earliest commitment keeps a row), so it runs once per epoch and
writes every miner's shard; the per-miner evaluation then reads its own shard.
"""

from __future__ import annotations

import hashlib
import pandas as pd

from flock_pipeline.core.dedup import MinerRows, deduplicate
from flock_pipeline.core.schema import ChatRow, DatasetLimits, validate_bytes
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource

SHARD_COLUMNS = ["epoch", "hotkey", "uid", "repo", "revision", "commit_block", "status", "reason", "rows_in",
                 "rows_kept", "duplicates_within", "duplicates_earlier", "eval_leaks", "shard_hash"]


class EvalSetError(RuntimeError):
    """The validator's own eval set is unusable: a configuration problem, so the epoch stops."""


_EVAL_SETS: dict[tuple[str, str], tuple[ChatRow, ...]] = {}  # revisions are immutable: safe to keep per process


def load_eval_rows(hub: HubResource, repo: str, revision: str) -> list[ChatRow]:
    """The validated eval set at a full revision (cached in-process)."""
    if (repo, revision) not in _EVAL_SETS:
        _EVAL_SETS[(repo, revision)] = _load_eval_rows(hub, repo, revision)
    return list(_EVAL_SETS[(repo, revision)])


def _load_eval_rows(hub: HubResource, repo: str, revision: str) -> tuple[ChatRow, ...]:
    data = hub.download(repo, revision)
    report = validate_bytes(data, DatasetLimits(max_rows_used=10**9, max_file_bytes=2**31))
    if report.rejected_rows or not report.valid_rows:
        bad = report.rejected_rows[0] if report.rejected_rows else None
        raise EvalSetError(f"eval set {repo}@{revision} is invalid"
                           + (f" (line {bad.line}: {bad.reason})" if bad else " (empty)"))
    return tuple(r.row for r in report.valid_rows)


def shard_hash(row_hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()


def build_shards(epoch: int, hub: HubResource, settings: ValidatorSettingsResource,
                 warehouse: WarehouseResource) -> pd.DataFrame:
    """Plan and record every miner's shard for `epoch`; returns one row per committing hotkey."""
    info = warehouse.epoch_info(epoch)
    if info is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    eval_hashes = {r.row_hash for r in load_eval_rows(hub, info["eval_repo"], info["eval_revision"])}
    commitments = warehouse.epoch_commitments(epoch)
    base_rows, candidates, rows_by_hotkey = {}, [], {}
    for c in commitments.itertuples():
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "repo": c.repo, "revision": c.revision,
               "commit_block": int(c.commit_block), "status": "ineligible", "reason": None, "rows_in": 0,
               "rows_kept": 0, "duplicates_within": 0, "duplicates_earlier": 0, "eval_leaks": 0, "shard_hash": None}
        base_rows[c.hotkey] = row
        if c.status != "ok":
            row["reason"] = c.reason
            continue
        dataset = warehouse.dataset(c.repo, c.revision)
        if dataset is None:
            row["reason"] = "dataset was not downloaded (miner_datasets has not run for this revision)"
            continue
        if dataset["status"] != "ok":
            row["reason"] = f"dataset {dataset['status']}: {dataset['reason']}"
            continue
        rows = warehouse.dataset_rows(c.repo, c.revision)
        rows_by_hotkey[c.hotkey] = rows
        candidates.append(MinerRows(c.hotkey, int(c.uid), int(c.commit_block), tuple(rows["row_hash"])))
    plans = deduplicate(candidates, eval_hashes, settings.dedup_config())
    shard_rows = []
    for hotkey, plan in plans.items():
        row = base_rows[hotkey]
        row.update(rows_in=plan.rows_in, rows_kept=plan.rows_kept, duplicates_within=plan.duplicates_within,
                   duplicates_earlier=plan.duplicates_earlier, eval_leaks=plan.eval_leaks, reason=plan.reason,
                   status="eligible" if plan.eligible else "ineligible")
        if plan.eligible:
            kept = rows_by_hotkey[hotkey].iloc[plan.kept_indices]
            row["shard_hash"] = shard_hash(list(kept["row_hash"]))
            shard_rows.append(pd.DataFrame({"shard_hash": row["shard_hash"], "pos": range(len(kept)),
                                            "row_hash": list(kept["row_hash"]), "row_json": list(kept["row_json"])}))
    for frame in shard_rows:
        warehouse.replace_rows("shard_rows", frame, "shard_hash = ?", [frame["shard_hash"].iloc[0]])
    result = pd.DataFrame(list(base_rows.values()), columns=SHARD_COLUMNS)
    warehouse.replace_rows("shards", result, "epoch = ?", [epoch])
    return result
