"""Epoch step 1: every miner's latest commitment at the epoch's opening block, decoded and checked."""

from __future__ import annotations

import pandas as pd

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource

COMMITMENT_COLUMNS = ["epoch", "hotkey", "uid", "repo", "competition_id", "revision", "commit_block",
                      "registration_block", "status", "reason"]


class EpochNotReached(RuntimeError):
    pass


def snapshot_commitments(epoch: int, chain: ChainResource, hub: HubResource, settings: ValidatorSettingsResource,
                         warehouse: WarehouseResource) -> pd.DataFrame:
    """Read, decode and record the commitments of `epoch`; returns one row per committing hotkey.

    status is "ok" or "rejected" (with the reason): undecodable data, another competition, an unregistered hotkey,
    a commitment written before the hotkey's (re-)registration, or one younger than `min_commitment_age` blocks.
    """
    block = chain.epoch_start(epoch)
    now = chain.current_block()
    if now < block:
        raise EpochNotReached(f"epoch {epoch} opens at block {block}; the chain is at block {now}")
    neurons = {n.hotkey: n for n in chain.metagraph()}
    eval_revision = settings.eval_revision or hub.head(settings.eval_repo)
    rows = []
    for raw in chain.commitments(at_block=block):
        neuron = neurons.get(raw.hotkey)
        row = {"epoch": epoch, "hotkey": raw.hotkey, "uid": neuron.uid if neuron else -1, "repo": None,
               "competition_id": None, "revision": None, "commit_block": raw.block,
               "registration_block": neuron.registration_block if neuron else None, "status": "ok", "reason": None}
        try:
            c = Commitment.from_compressed_str(raw.data)
            row.update(repo=c.repo_id, competition_id=c.competition_id, revision=c.revision)
        except CommitmentError as exc:
            row.update(status="rejected", reason=f"invalid commitment: {exc}")
        if row["status"] == "ok":
            if neuron is None:
                row.update(status="rejected", reason="hotkey is not registered on the subnet")
            elif raw.block < neuron.registration_block:
                row.update(status="rejected", reason="commitment predates the hotkey's registration")
            elif c.competition_id != settings.competition_id:
                row.update(status="rejected", reason=f"commitment is for competition {c.competition_id!r}")
            elif block - raw.block < settings.min_commitment_age:
                row.update(status="rejected", reason=f"commitment is {block - raw.block} blocks old at the epoch's "
                           f"block, the minimum age is {settings.min_commitment_age}")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COMMITMENT_COLUMNS)
    frame["uid"] = frame["uid"].astype("int64")
    epoch_row = pd.DataFrame([{"epoch": epoch, "block": block, "eval_repo": settings.eval_repo,
                               "eval_revision": eval_revision, "created_at": pd.Timestamp.now("UTC").tz_localize(None)}])
    warehouse.replace_rows("epochs", epoch_row, "epoch = ?", [epoch])
    warehouse.replace_rows("commitments", frame, "epoch = ?", [epoch])
    return frame
