"""Miner step: a miner's shard = its used rows minus rows an earlier commitment contributed and eval-set rows.

Dedup is a function of all miners of the epoch at once (the earliest commitment keeps a row): each miner's step
plans the whole epoch from the recorded row hashes and writes its own shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from flock_pipeline.core.competitions import Competition, CompetitionSet, Entry
from flock_pipeline.core.dedup import MATCHING_VERSION
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import (CommitmentRecord, DatasetVerdict, DedupPlanRecord, EpochCompetitionRecord,
                                  ShardRecord, ShardRowRecord, UsedRow)
from flock_pipeline.validator.datasets import rows_from_json
from flock_pipeline.validator.eval_sets import load_eval_set
from flock_pipeline.validator.games import competition_of, epoch_setups


PLAN_ONLY = ("kept_indices", "rule_views", "advisory")  # what a recorded plan holds beyond its shard record's fields


def shard_hash(row_hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(row_hashes).encode()).hexdigest()


def plan_epoch_shards(epoch: int, hub: HubResource, settings: ValidatorSettingsResource,
                      store: StoreResource, hotkeys: list[str] | None = None
                      ) -> tuple[dict[str, ShardRecord], dict[str, list[tuple[str, str]]]]:
    """Apply each competition's eligibility and duplicate rules to its miners of `epoch` (curation: exact and near
    copies across all its miners, the earliest commitment keeps a row, minus eval-set leaks; selection: pool rows
    only, no submission sharing too many rows with an earlier one).

    Returns (shard record by hotkey, kept rows (row_hash, row_json) by hotkey for the eligible miners among `hotkeys`,
    default all). The only write is each competition's plan itself (`dedup_plans`, keyed by a fingerprint of its
    inputs), so the other miners' runs of the epoch reuse it; rows' JSON is read only for a new plan that matches
    near-duplicates and for the kept rows asked for.
    """
    if store.epoch_info(epoch) is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    competitions = settings.competition_set()
    setup = epoch_setups(store, epoch, competitions)
    base_rows, rows_by_hotkey, entries = _epoch_entries(epoch, competitions, store)
    plans: dict[str, dict] = {}
    row_json: dict[str, list[str]] = {}
    for competition in competitions:
        if competition.name not in setup:
            continue
        decided, texts = _competition_plans(epoch, competition, entries[competition.name],
                                            setup[competition.name], hub, store)
        plans.update(decided)
        row_json.update(texts)
    wanted = set(plans) if hotkeys is None else set(hotkeys) & set(plans)
    missing = sorted(h for h in wanted if h not in row_json and plans[h]["reason"] is None)
    row_json.update(store.epoch_row_json(epoch, missing))
    kept_rows = {}
    for hotkey, plan in plans.items():
        row = base_rows[hotkey]
        eligible = plan["reason"] is None
        row.update({k: v for k, v in plan.items() if k not in PLAN_ONLY},
                   status="eligible" if eligible else "ineligible")
        if eligible:
            kept = _set_shard_hash(row, plan, rows_by_hotkey[hotkey], competitions)
            if hotkey in wanted:
                jsons = row_json[hotkey]
                kept_rows[hotkey] = [(h, jsons[i]) for h, i in zip(kept, plan["kept_indices"])]
    return {hotkey: ShardRecord(**row) for hotkey, row in base_rows.items()}, kept_rows


def _epoch_entries(epoch: int, competitions: CompetitionSet, store: StoreResource
                   ) -> tuple[dict[str, dict], dict[str, list[UsedRow]], dict[str, list[Entry]]]:
    """Shard rows by hotkey (with why, for those out before dedup), accepted used rows by hotkey, entries by game."""
    # Everything dedup needs, in three queries for the whole epoch (not three per miner): dataset verdicts, used
    # row hashes (not their JSON: that is read only when needed) and the block each row was first committed at.
    dataset_status = store.epoch_dataset_verdicts(epoch)
    epoch_rows = store.epoch_used_rows(epoch)
    first_blocks = store.first_commit_blocks(epoch)
    base_rows, rows_by_hotkey = {}, {}
    entries: dict[str, list[Entry]] = {c.name: [] for c in competitions}
    for c in store.epoch_commitments(epoch):
        row = _base_row(epoch, c, competitions)
        base_rows[c.hotkey] = row
        if c.status != "ok":
            row["reason"] = c.reason
            continue
        if c.hotkey not in dataset_status:
            row["reason"] = "dataset was not downloaded (miner_datasets has not run for this revision)"
            continue
        verdict = dataset_status[c.hotkey]
        if verdict.status != "ok":
            row["reason"] = f"dataset {verdict.status}: {verdict.reason}"
            continue
        rows = epoch_rows.get(c.hotkey, [])
        rows_by_hotkey[c.hotkey] = rows
        entries[row["competition"]].append(_entry(c, rows, verdict, first_blocks.get(c.hotkey, {})))
    return base_rows, rows_by_hotkey, entries


def _base_row(epoch: int, c: CommitmentRecord, competitions: CompetitionSet) -> dict:
    """A commitment's shard row before its competition's plan: ineligible, nothing kept, no reason yet."""
    return {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "repo": c.repo, "revision": c.revision,
            "commit_block": int(c.commit_block), "status": "ineligible", "reason": None, "rows_in": 0,
            "rows_kept": 0, "duplicates_within": 0, "duplicates_earlier": 0, "eval_leaks": 0, "shard_hash": None,
            "competition": competition_of(c, competitions)}


def _entry(c: CommitmentRecord, rows: list[UsedRow], verdict: DatasetVerdict, first: dict[str, int]) -> Entry:
    """The dedup entry of a commitment whose dataset was accepted (a row's block: `first`'s, else the commitment's)."""
    return Entry(
        c.hotkey, int(c.uid), int(c.commit_block), tuple(r.row_hash for r in rows),
        raw_keys=tuple(r.raw_hash or "" for r in rows), row_lines=tuple(r.line for r in rows),
        rejected_lines=tuple((int(r["line"]), str(r["reason"])) for r in verdict.rejected),
        row_blocks=tuple(first.get(r.row_hash, int(c.commit_block)) for r in rows), file_facts=verdict.facts)


def _set_shard_hash(row: dict, plan: dict, used: list[UsedRow], competitions: CompetitionSet) -> list[str]:
    """The row hashes an eligible miner's plan keeps, once its row carries the hash of the shard they make."""
    kept = [used[i].row_hash for i in plan["kept_indices"]]
    identity = competitions.by_name(row["competition"]).row_format.training_identity
    row["shard_hash"] = shard_hash([identity(h, used[i].raw_hash) for h, i in zip(kept, plan["kept_indices"])])
    return kept


def _competition_plans(epoch: int, competition: Competition, entries: list[Entry], setup: EpochCompetitionRecord,
                       hub: HubResource,
                       store: StoreResource) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """One competition's plan of `epoch` (recorded, or made now and recorded), and the rows' JSON it read."""
    fingerprint = _plan_fingerprint(competition, entries, setup.eval_revision)
    plans = _cached_plans(store, epoch, fingerprint, {e.hotkey for e in entries})
    row_json: dict[str, list[str]] = {}
    if plans is not None:
        return plans, row_json
    fmt = competition.row_format
    eval_set = load_eval_set(hub, setup.eval_repo, setup.eval_revision, fmt)
    if competition.needs_row_texts():  # the rows themselves: texts for near-duplicates, a pair's rejected answer
        row_json = store.epoch_row_json(epoch, [e.hotkey for e in entries])
        rows_of = {e.hotkey: rows_from_json(row_json.get(e.hotkey, []), fmt) for e in entries}
        entries = [replace(e, row_texts=tuple(fmt.text(r) for r in rows_of[e.hotkey]),
                           contrast_texts=tuple(fmt.contrast_text(r) for r in rows_of[e.hotkey]),
                           row_systems=tuple(fmt.system_text(r) for r in rows_of[e.hotkey]))
                   for e in entries]
    decided = competition.plan(entries, eval_set)
    plans = {hotkey: {"rows_in": p.rows_in, "rows_kept": p.rows_kept, "duplicates_within": p.duplicates_within,
                      "duplicates_earlier": p.duplicates_earlier, "eval_leaks": p.eval_leaks,
                      "reason": p.reason, "kept_indices": p.kept_indices, "rule_views": p.rule_views,
                      "advisory": p.advisory}
             for hotkey, p in decided.items()}
    store.record_dedup_plans(epoch, [DedupPlanRecord(epoch=epoch, fingerprint=fingerprint, hotkey=hk,
                                                         plan=plans[hk]) for hk in sorted(plans)])
    return plans, row_json


def _plan_fingerprint(competition: Competition, entries: list[Entry], eval_revision: str) -> str:
    """What a competition's plan depends on: its definition, every entry's rows and their blocks, the eval set, and
    the version of the matching rules."""
    doc = [eval_revision, MATCHING_VERSION, json.dumps(competition.describe(), sort_keys=True, default=str)] + [
        [e.hotkey, e.uid, e.commit_block, e.row_hashes, e.row_blocks, e.raw_keys, e.row_lines, e.rejected_lines,
         e.file_facts]
        for e in sorted(entries, key=lambda e: e.hotkey)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _cached_plans(store: StoreResource, epoch: int, fingerprint: str, hotkeys: set[str]) -> dict | None:
    """The epoch's recorded plan of one competition when it was made from the same inputs (every miner's run plans
    the whole epoch; near-duplicate matching over all rows runs once, not once per miner)."""
    recorded = store.dedup_plans(epoch, fingerprint)
    if {p.hotkey for p in recorded} != hotkeys:
        return None
    return {p.hotkey: dict(p.plan) for p in recorded}


def build_miner_shard(hotkey: str, hub: HubResource, settings: ValidatorSettingsResource,
                      store: StoreResource, epoch: int | None = None) -> ShardRecord | None:
    """Record `hotkey`'s shard for `epoch` (default: the latest epoch it committed in); returns its shard record
    (None: the hotkey has no commitment in that epoch)."""
    return build_miner_shards([hotkey], hub, settings, store, epoch)[hotkey]


def build_miner_shards(hotkeys: list[str], hub: HubResource, settings: ValidatorSettingsResource,
                       store: StoreResource, epoch: int | None = None) -> dict[str, ShardRecord | None]:
    """Record the shards of several miners for `epoch` (default: each one's latest epoch): hotkey -> its shard
    record, None for a hotkey without a commitment in that epoch.

    Who keeps a row depends on every miner of the epoch, so the whole epoch is planned (once per set of inputs,
    then reused) and each miner's shard is written from the plan: a batch of miners reads the epoch's rows once."""
    out: dict[str, ShardRecord | None] = {}
    by_epoch: dict[int, list[str]] = {}
    for hotkey in hotkeys:
        e = epoch if epoch is not None else store.latest_epoch_of(hotkey)
        if e is None or store.miner_commitment(hotkey, e) is None:
            out[hotkey] = None
        else:
            by_epoch.setdefault(e, []).append(hotkey)
    for e, members in by_epoch.items():
        plans, kept_rows = plan_epoch_shards(e, hub, settings, store, members)
        for hotkey in members:
            shard, kept = plans[hotkey], kept_rows.get(hotkey)
            rows = None if kept is None else [ShardRowRecord(shard.shard_hash, pos, h, j)
                                              for pos, (h, j) in enumerate(kept)]
            store.record_shard(shard, rows)
            out[hotkey] = shard
    return out
