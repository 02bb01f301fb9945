"""Epoch steps: win rates and weights, their submission to the chain, and the final corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from flock_pipeline.core.corpus import CorpusShard, build_corpus_records, write_corpus
from flock_pipeline.core.schema import ChatRow
from flock_pipeline.core.scoring import Contender, score_epoch, to_u16, validate_weights
from flock_pipeline.resources.chain import ChainResource, WeightsReceipt
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.validator.evaluation import base_eval_loss, cache_key

WIN_RATE_COLUMNS = ["epoch", "hotkey", "uid", "status", "reason", "eval_loss", "win_rate", "weight"]


def compute_epoch_scores(epoch: int, evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                         warehouse: WarehouseResource, hub: HubResource) -> pd.DataFrame:
    """Win rates and weights of every committing miner of `epoch` (0 with a reason for all but the scored).

    status: scored | no_improvement (its loss is not below the base model's) | rejected (commitment) |
    ineligible (validation / dedup) | failed (evaluation crashed) | not_deduplicated | not_evaluated (a step has
    not run for this miner yet).
    """
    info = warehouse.epoch_info(epoch)
    if info is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    shards = {r["hotkey"]: r for r in warehouse.epoch_shards(epoch).to_dict("records")}
    provenance = evaluator.provenance()
    rows, contenders = [], []
    for c in warehouse.epoch_commitments(epoch).itertuples():
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "status": "rejected", "reason": c.reason,
               "eval_loss": math.nan, "win_rate": 0.0, "weight": 0.0}
        rows.append(row)
        shard = shards.get(c.hotkey)
        if c.status != "ok":
            continue
        if shard is None:
            row.update(status="not_deduplicated", reason="deduplicated_shards has not run for this miner")
        elif shard["status"] != "eligible":
            row.update(status="ineligible", reason=shard["reason"])
        else:
            result = warehouse.eval_result(cache_key(shard["shard_hash"], provenance, info["eval_revision"]))
            if result is None:
                row.update(status="not_evaluated", reason="no evaluation result for this shard and recipe")
            elif result["status"] != "ok":
                row.update(status="failed", reason=f"evaluation failed: {result['error']}")
            else:
                row.update(status="scored", reason=None, eval_loss=float(result["eval_loss"]))
                contenders.append(Contender(int(c.uid), float(result["eval_loss"]), int(c.commit_block),
                                            tuple(float(x) for x in result["per_row_losses"])))
    config = settings.scoring_config()
    base = None
    if config.require_improvement and contenders:
        base = base_eval_loss(evaluator, hub, warehouse, info["eval_repo"], info["eval_revision"])
    rates, weights = score_epoch(contenders, warehouse.previous_weights(epoch), config, base_loss=base,
                                 now_block=int(info["block"]))
    for row in rows:
        if row["status"] == "scored":
            row.update(win_rate=rates[row["uid"]], weight=weights[row["uid"]])
            if base is not None and row["eval_loss"] >= base:
                row.update(status="no_improvement",
                           reason=f"eval loss {row['eval_loss']:.4f} is not below the base model's {base:.4f}")
    frame = pd.DataFrame(rows, columns=WIN_RATE_COLUMNS)
    warehouse.replace_rows("win_rates", frame, "epoch = ?", [epoch])
    return frame


def weights_of(frame: pd.DataFrame) -> dict[int, float]:
    """uid -> weight for every non-zero weight (negative and NaN ones included, so validation sees them)."""
    return {int(r.uid): float(r.weight) for r in frame.itertuples() if r.weight != 0}


def submit_epoch_weights(epoch: int, chain: ChainResource, settings: ValidatorSettingsResource,
                         warehouse: WarehouseResource) -> dict:
    """Send the epoch's weights once; a repeated call returns the recorded answer instead of sending again."""
    done = warehouse.weight_submission(epoch)
    if done is not None and done["success"]:
        return {**done, "resubmitted": False}
    frame = warehouse.win_rates(epoch)
    weights = weights_of(frame)
    eligible = {int(r.uid) for r in frame.itertuples() if r.status == "scored"}
    validate_weights(weights, eligible)  # never send NaN, negative, unnormalised or ineligible weights
    uids, u16 = to_u16(weights)
    if not uids:
        receipt = WeightsReceipt(False, chain.current_block(), "no miner was scored: nothing to submit")
    else:
        receipt = chain.set_weights(settings.validator_hotkey, uids, u16, settings.weights_version_key)
    row = {"epoch": epoch, "success": receipt.success, "block": receipt.block, "message": receipt.message,
           "uids": json.dumps(uids), "weights": json.dumps(u16), "retry_after_block": receipt.retry_after_block,
           "created_at": pd.Timestamp.now("UTC").tz_localize(None)}
    warehouse.replace_rows("weight_submissions", pd.DataFrame([row]), "epoch = ?", [epoch])
    return {**row, "uids": uids, "weights": u16, "resubmitted": True}


def build_epoch_corpus(epoch: int, settings: ValidatorSettingsResource, warehouse: WarehouseResource) -> dict:
    """Merge the scored miners' shards, best first, with provenance; writes JSONL, Parquet and a `datasets` dir."""
    scores = warehouse.win_rates(epoch)
    shards = warehouse.epoch_shards(epoch).set_index("hotkey")
    parts = []
    for r in scores.itertuples():
        if r.status != "scored":
            continue
        s = shards.loc[r.hotkey]
        rows = warehouse.shard_rows(s["shard_hash"])
        parts.append(CorpusShard(hotkey=r.hotkey, uid=int(r.uid), repo=s["repo"], revision=s["revision"],
                                 commit_block=int(s["commit_block"]), miner_score=float(r.weight),
                                 eval_loss=float(r.eval_loss),
                                 rows=tuple((h, ChatRow.from_json_obj(json.loads(j)))
                                            for h, j in zip(rows["row_hash"], rows["row_json"]))))
    records = build_corpus_records(parts)
    out = write_corpus(records, Path(settings.corpus_dir) / f"epoch-{epoch}")
    row = {"epoch": epoch, "rows": len(records), "miners": len(parts), "sha256": out["sha256"],
           "jsonl_path": out["jsonl"], "parquet_path": out["parquet"],
           "created_at": pd.Timestamp.now("UTC").tz_localize(None)}
    warehouse.replace_rows("corpora", pd.DataFrame([row]), "epoch = ?", [epoch])
    return row
