"""Miner step: a miner's shard = its used rows minus rows an earlier commitment contributed and eval-set rows.

Dedup is a function of all miners of the epoch at once (the earliest commitment keeps a row): each miner's step
plans the whole epoch from the recorded row hashes and writes its own shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pandas as pd

from flock_pipeline.core.competitions import Competition, CurationCompetition, Entry, EvalSet
from flock_pipeline.core.neardup import row_text
from flock_pipeline.core.schema import ChatRow, DatasetLimits, raw_row_keys, validate_bytes
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.validator.datasets import rows_from_json
from flock_pipeline.validator.faults import ValidatorFault

SHARD_COLUMNS = ["epoch", "hotkey", "uid", "repo", "revision", "commit_block", "status", "reason", "rows_in",
                 "rows_kept", "duplicates_within", "duplicates_earlier", "eval_leaks", "shard_hash", "competition"]


class EvalSetError(ValidatorFault):
    """The validator's own eval set is unusable: the epoch stops, nothing is recorded against a miner."""


_EVAL_SETS: dict[tuple[str, str], tuple[tuple[ChatRow, ...], frozenset[str]]] = {}  # revisions are immutable


def load_eval_rows(hub: HubResource, repo: str, revision: str) -> list[ChatRow]:
    """The validated eval set at a full revision (cached in-process)."""
    return list(_eval_set(hub, repo, revision)[0])


def load_eval_set(hub: HubResource, repo: str, revision: str) -> EvalSet:
    """The eval set as the eligibility rules see it: row hashes, the rows' live keys (JSON as written, keys sorted)
    and their texts."""
    rows, raw_keys = _eval_set(hub, repo, revision)
    return EvalSet(row_hashes=frozenset(r.row_hash for r in rows), raw_keys=raw_keys,
                   texts=tuple(row_text(r) for r in rows))


def _eval_set(hub: HubResource, repo: str, revision: str) -> tuple[tuple[ChatRow, ...], frozenset[str]]:
    if (repo, revision) not in _EVAL_SETS:
        _EVAL_SETS[(repo, revision)] = _load_eval_rows(hub, repo, revision)
    return _EVAL_SETS[(repo, revision)]


def _load_eval_rows(hub: HubResource, repo: str, revision: str) -> tuple[tuple[ChatRow, ...], frozenset[str]]:
    data = hub.download(repo, revision)
    limits = DatasetLimits(max_rows_used=10**9, max_file_bytes=2**31)
    report = validate_bytes(data, limits)
    if report.rejected_rows or not report.valid_rows:
        bad = report.rejected_rows[0] if report.rejected_rows else None
        raise EvalSetError(f"eval set {repo}@{revision} is invalid"
                           + (f" (line {bad.line}: {bad.reason})" if bad else " (empty)"))
    keys = raw_row_keys(data, [r.line for r in report.valid_rows], limits)
    return tuple(r.row for r in report.valid_rows), frozenset(keys.values())


def shard_hash(row_hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()


def latest_epoch_of(warehouse: WarehouseResource, hotkey: str) -> int | None:
    df = warehouse.query("SELECT max(epoch) AS e FROM commitments WHERE hotkey = ?", [hotkey])
    value = df["e"].iloc[0]
    return None if pd.isna(value) else int(value)


def _epoch_rows(warehouse: WarehouseResource, epoch: int) -> tuple[dict, dict, dict]:
    """Everything dedup needs for `epoch`, in three queries (not three per miner: every miner's run plans the
    whole epoch): dataset status by hotkey, used row hashes by hotkey (not their JSON: see `_row_json`), and row
    hash -> the first block at which the hotkey committed it, over the epochs recorded up to `epoch` and since its
    current registration (a re-registered hotkey starts over)."""
    datasets = warehouse.query(
        "SELECT c.hotkey, d.status, d.reason, d.rejected FROM commitments c JOIN datasets d USING (repo, revision) "
        "WHERE c.epoch = ? AND c.status = 'ok'", [epoch])
    rows = warehouse.query(
        "SELECT c.hotkey, r.idx, r.row_hash, r.line, r.raw_hash FROM commitments c "
        "JOIN dataset_rows r USING (repo, revision) WHERE c.epoch = ? AND c.status = 'ok' ORDER BY c.hotkey, r.idx",
        [epoch])
    first = warehouse.query(
        "SELECT cur.hotkey, r.row_hash, min(c.commit_block) AS first_block FROM commitments cur "
        "JOIN commitments c ON c.hotkey = cur.hotkey JOIN dataset_rows r ON r.repo = c.repo AND r.revision = c.revision "
        "WHERE cur.epoch = ? AND cur.status = 'ok' AND c.status = 'ok' AND c.epoch <= ? "
        "AND c.commit_block >= coalesce(cur.registration_block, 0) GROUP BY cur.hotkey, r.row_hash", [epoch, epoch])
    status = {r.hotkey: (r.status, r.reason, r.rejected) for r in datasets.itertuples()}
    by_hotkey = {hotkey: frame.reset_index(drop=True) for hotkey, frame in rows.groupby("hotkey", sort=False)}
    first_blocks: dict[str, dict[str, int]] = {}
    for r in first.itertuples():
        first_blocks.setdefault(r.hotkey, {})[r.row_hash] = int(r.first_block)
    return status, by_hotkey, first_blocks


def _row_json(warehouse: WarehouseResource, epoch: int, hotkeys: list[str]) -> dict[str, list[str]]:
    """The used rows' canonical JSON of some miners of `epoch`, in row order."""
    if not hotkeys:
        return {}
    marks = ", ".join("?" * len(hotkeys))
    frame = warehouse.query(
        "SELECT c.hotkey, r.row_json FROM commitments c JOIN dataset_rows r USING (repo, revision) "
        f"WHERE c.epoch = ? AND c.status = 'ok' AND c.hotkey IN ({marks}) ORDER BY c.hotkey, r.idx",
        [epoch, *hotkeys])
    return {hotkey: list(f["row_json"]) for hotkey, f in frame.groupby("hotkey", sort=False)}


def plan_epoch_shards(epoch: int, hub: HubResource, settings: ValidatorSettingsResource,
                      warehouse: WarehouseResource, hotkeys: list[str] | None = None
                      ) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """Apply each competition's eligibility and duplicate rules to its miners of `epoch` (curation: exact and near
    copies across all its miners, the earliest commitment keeps a row, minus eval-set leaks; selection: pool rows
    only, no submission sharing too many rows with an earlier one).

    Returns (shard row by hotkey, kept rows (row_hash, row_json) by hotkey for the eligible miners among `hotkeys`,
    default all). The only write is each competition's plan itself (`dedup_plans`, keyed by a fingerprint of its
    inputs), so the other miners' runs of the epoch reuse it; rows' JSON is read only for a new plan that matches
    near-duplicates and for the kept rows asked for.
    """
    if warehouse.epoch_info(epoch) is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    competitions = settings.competition_set()
    setup = epoch_setups(warehouse, epoch, competitions)
    dataset_status, epoch_rows, first_blocks = _epoch_rows(warehouse, epoch)
    empty = pd.DataFrame(columns=["idx", "row_hash", "line", "raw_hash"])
    base_rows, rows_by_hotkey = {}, {}
    entries: dict[str, list[Entry]] = {c.name: [] for c in competitions}
    for c in warehouse.epoch_commitments(epoch).itertuples():
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "repo": c.repo, "revision": c.revision,
               "commit_block": int(c.commit_block), "status": "ineligible", "reason": None, "rows_in": 0,
               "rows_kept": 0, "duplicates_within": 0, "duplicates_earlier": 0, "eval_leaks": 0, "shard_hash": None,
               "competition": competition_of(c, competitions)}
        base_rows[c.hotkey] = row
        if c.status != "ok":
            row["reason"] = c.reason
            continue
        if c.hotkey not in dataset_status:
            row["reason"] = "dataset was not downloaded (miner_datasets has not run for this revision)"
            continue
        status, reason, rejected = dataset_status[c.hotkey]
        if status != "ok":
            row["reason"] = f"dataset {status}: {reason}"
            continue
        rows = epoch_rows.get(c.hotkey, empty)
        rows_by_hotkey[c.hotkey] = rows
        first = first_blocks.get(c.hotkey, {})
        blocks = tuple(first.get(h, int(c.commit_block)) for h in rows["row_hash"])
        entries[row["competition"]].append(Entry(
            c.hotkey, int(c.uid), int(c.commit_block), tuple(rows["row_hash"]),
            raw_keys=tuple(k if isinstance(k, str) else "" for k in rows["raw_hash"]), row_lines=tuple(int(x) for x in rows["line"]),
            rejected_lines=tuple((int(r["line"]), str(r["reason"])) for r in json.loads(rejected or "[]")),
            row_blocks=blocks))
    plans: dict[str, dict] = {}
    row_json: dict[str, list[str]] = {}
    for competition in competitions:
        if competition.name not in setup:
            continue
        decided, texts = _competition_plans(epoch, competition, entries[competition.name],
                                            setup[competition.name], hub, warehouse)
        plans.update(decided)
        row_json.update(texts)
    wanted = set(plans) if hotkeys is None else set(hotkeys) & set(plans)
    missing = sorted(h for h in wanted if h not in row_json and plans[h]["reason"] is None)
    row_json.update(_row_json(warehouse, epoch, missing))
    kept_rows = {}
    for hotkey, plan in plans.items():
        row = base_rows[hotkey]
        eligible = plan["reason"] is None
        row.update({k: v for k, v in plan.items() if k != "kept_indices"},
                   status="eligible" if eligible else "ineligible")
        if eligible:
            kept = rows_by_hotkey[hotkey].iloc[plan["kept_indices"]]
            row["shard_hash"] = shard_hash(list(kept["row_hash"]))
            if hotkey in wanted:
                jsons = row_json[hotkey]
                kept_rows[hotkey] = pd.DataFrame({"row_hash": list(kept["row_hash"]),
                                                  "row_json": [jsons[i] for i in plan["kept_indices"]]})
    return base_rows, kept_rows


def epoch_setups(warehouse: WarehouseResource, epoch: int, competitions) -> dict[str, dict]:
    """competition name -> its recorded eval set and round for `epoch`. An epoch opened before competitions existed
    has none recorded: it ran one game on the epoch's eval set, which the first configured competition takes."""
    setups = {r["competition"]: r for r in warehouse.epoch_competitions(epoch).to_dict("records")}
    if not setups:
        info = warehouse.epoch_info(epoch)
        if info is not None:
            first = competitions.competitions[0]
            setups[first.name] = {"epoch": epoch, "competition": first.name, "kind": first.kind,
                                  "share": float(first.share), "eval_repo": info["eval_repo"],
                                  "eval_revision": info["eval_revision"], "round_id": "epoch", "phase": "scoring",
                                  "snapshot_block": int(info["block"]), "note": "", "definition": "{}"}
    return setups


def competition_of(c, competitions) -> str | None:
    """The competition a recorded commitment belongs to (rows from before competitions existed: the first one)."""
    if isinstance(c.competition, str) and c.competition in {x.name for x in competitions}:
        return c.competition
    match = competitions.for_commitment(c.competition_id) if isinstance(c.competition_id, str) else None
    return match.name if match is not None else competitions.competitions[0].name


def _competition_plans(epoch: int, competition: Competition, entries: list[Entry], setup: dict, hub: HubResource,
                       warehouse: WarehouseResource) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """One competition's plan of `epoch` (recorded, or made now and recorded), and the rows' JSON it read."""
    fingerprint = _plan_fingerprint(competition, entries, setup["eval_revision"])
    plans = _cached_plans(warehouse, epoch, fingerprint, {e.hotkey for e in entries})
    row_json: dict[str, list[str]] = {}
    if plans is not None:
        return plans, row_json
    eval_set = load_eval_set(hub, setup["eval_repo"], setup["eval_revision"])
    if isinstance(competition, CurationCompetition) and competition.dedup.near is not None:
        row_json = _row_json(warehouse, epoch, [e.hotkey for e in entries])
        entries = [replace(e, row_texts=tuple(row_text(r) for r in rows_from_json(
            pd.DataFrame({"row_json": row_json.get(e.hotkey, [])})))) for e in entries]
    decided = competition.plan(entries, eval_set)
    plans = {hotkey: {"rows_in": p.rows_in, "rows_kept": p.rows_kept, "duplicates_within": p.duplicates_within,
                      "duplicates_earlier": p.duplicates_earlier, "eval_leaks": p.eval_leaks,
                      "reason": p.reason, "kept_indices": p.kept_indices} for hotkey, p in decided.items()}
    hotkeys = sorted(plans)
    marks = ", ".join("?" * len(hotkeys))
    warehouse.replace_rows("dedup_plans", pd.DataFrame(
        [{"epoch": epoch, "fingerprint": fingerprint, "hotkey": hk, "plan": json.dumps(plans[hk])} for hk in hotkeys],
        columns=["epoch", "fingerprint", "hotkey", "plan"]),
        f"epoch = ? AND hotkey IN ({marks})" if hotkeys else "FALSE", [epoch, *hotkeys] if hotkeys else [])
    return plans, row_json


def _plan_fingerprint(competition: Competition, entries: list[Entry], eval_revision: str) -> str:
    """What a competition's plan depends on: its definition, every entry's rows and their blocks, the eval set."""
    doc = [eval_revision, json.dumps(competition.describe(), sort_keys=True, default=str)] + [
        [e.hotkey, e.uid, e.commit_block, e.row_hashes, e.row_blocks, e.raw_keys, e.row_lines, e.rejected_lines]
        for e in sorted(entries, key=lambda e: e.hotkey)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _cached_plans(warehouse: WarehouseResource, epoch: int, fingerprint: str, hotkeys: set[str]) -> dict | None:
    """The epoch's recorded plan of one competition when it was made from the same inputs (every miner's run plans
    the whole epoch; near-duplicate matching over all rows runs once, not once per miner)."""
    frame = warehouse.query("SELECT hotkey, plan FROM dedup_plans WHERE epoch = ? AND fingerprint = ?",
                            [epoch, fingerprint])
    if set(frame["hotkey"]) != hotkeys:
        return None
    return {r.hotkey: json.loads(r.plan) for r in frame.itertuples()}


def build_miner_shard(hotkey: str, hub: HubResource, settings: ValidatorSettingsResource,
                      warehouse: WarehouseResource, epoch: int | None = None) -> dict | None:
    """Record `hotkey`'s shard for `epoch` (default: the latest epoch it committed in); returns its shard row
    (None: the hotkey has no commitment in that epoch).

    Who keeps a row depends on every miner of the epoch, so the whole epoch is planned (once per set of inputs,
    then reused) and only this miner's shard is written.
    """
    if epoch is None:
        epoch = latest_epoch_of(warehouse, hotkey)
    if epoch is None or warehouse.miner_commitment(hotkey, epoch) is None:
        return None
    plans, kept_rows = plan_epoch_shards(epoch, hub, settings, warehouse, [hotkey])
    row = plans[hotkey]
    kept = kept_rows.get(hotkey)
    if kept is not None:
        frame = pd.DataFrame({"shard_hash": row["shard_hash"], "pos": range(len(kept)),
                              "row_hash": list(kept["row_hash"]), "row_json": list(kept["row_json"])})
        warehouse.replace_rows("shard_rows", frame, "shard_hash = ?", [row["shard_hash"]])
    warehouse.replace_rows("shards", pd.DataFrame([row], columns=SHARD_COLUMNS), "epoch = ? AND hotkey = ?",
                           [epoch, hotkey])
    return row
