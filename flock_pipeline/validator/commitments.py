"""Epoch step 1: every miner's commitment at the epoch's opening block, decoded, checked and assigned to the
competition it names; and each competition's round and eval set for the epoch."""

from __future__ import annotations

import json

from flock_pipeline.errors import FlockError
from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.core.competitions import Competition, Round
from flock_pipeline.resources.chain import ChainResource, Neuron, RawCommitment
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import CommitmentRecord, CompetitionRoundRecord, EpochCompetitionRecord, EpochRecord, utcnow


class EpochNotReached(FlockError, RuntimeError):
    """The chain has not reached the epoch's first block yet: nothing is read or recorded."""


def open_rounds(epoch: int, block: int, chain: ChainResource, hub: HubResource,
                settings: ValidatorSettingsResource, store: StoreResource) -> dict[str, tuple[Round, str]]:
    """competition name -> (its round at `block`, the eval set revision it is scored on), recorded.

    A per-epoch game takes its eval set's head (or pinned revision) at every epoch. A daily game resolves its pool
    once, when the round is first seen, and records whether the round is new or reuses the previous one (the pool's
    revision did not change)."""
    competitions = settings.competition_set()
    clock = chain.clock() if any(c.daily_rounds for c in competitions) else None
    out, rows = {}, []
    for c in competitions:
        rnd = c.round_at(block, clock)
        revision = _round_revision(epoch, c, rnd, hub, store)
        out[c.name] = (rnd, revision)
        rows.append(EpochCompetitionRecord(
            epoch=epoch, competition=c.name, kind=c.kind, share=float(c.share), eval_repo=c.eval_repo,
            eval_revision=revision, round_id=rnd.round_id, phase=rnd.phase, snapshot_block=rnd.snapshot_block,
            note=rnd.note, definition=json.dumps(c.describe(), sort_keys=True, default=str)))
    store.record_epoch_competitions(epoch, rows)
    return out


def _round_revision(epoch: int, c: Competition, rnd: Round, hub: HubResource, store: StoreResource) -> str:
    if rnd.round_id == "epoch":
        return c.eval_revision or hub.head(c.eval_repo)
    known = store.competition_round(c.name, rnd.round_id)
    if known is not None:
        return known.eval_revision
    revision = c.eval_revision or hub.head(c.eval_repo)
    before = store.rounds_before(c.name, rnd.round_id)
    reused = None
    if getattr(c, "reuse_when_pool_unchanged", False) and before:
        last = before[0]
        if last.eval_revision == revision:
            reused = last.reused_from or last.round_id
    store.record_round(CompetitionRoundRecord(competition=c.name, round_id=rnd.round_id, eval_repo=c.eval_repo,
                                                  eval_revision=revision, first_epoch=epoch, reused_from=reused))
    return revision


def snapshot_commitments(epoch: int, chain: ChainResource, hub: HubResource, settings: ValidatorSettingsResource,
                         store: StoreResource) -> list[CommitmentRecord]:
    """Read, decode and record the commitments of `epoch`; returns one record per committing hotkey.

    status is "ok" or "rejected" (with the reason): undecodable data, a competition this validator does not run,
    an unregistered hotkey, a commitment written before the hotkey's (re-)registration, one younger than
    `min_commitment_age` blocks; for a daily round, one written after the round's submission window (the hotkey's
    commitment at the window's last block counts instead, when it names the same competition), or "pending" while
    the window is still open.
    """
    block = chain.epoch_start(epoch)
    now = chain.current_block()
    if now < block:
        raise EpochNotReached(f"epoch {epoch} opens at block {block}; the chain is at block {now}")
    competitions = settings.competition_set()
    rounds = open_rounds(epoch, block, chain, hub, settings, store)
    neurons = {n.hotkey: n for n in chain.metagraph()}
    at_close: dict[int, dict[str, RawCommitment]] = {}
    for rnd, _ in rounds.values():
        if rnd.snapshot_block < block and rnd.snapshot_block not in at_close:
            at_close[rnd.snapshot_block] = {r.hotkey: r for r in chain.commitments(at_block=rnd.snapshot_block)}
    reused = {}
    for name, (rnd, _) in rounds.items():
        record = store.competition_round(name, rnd.round_id) if rnd.round_id != "epoch" else None
        if record is not None and record.reused_from is not None:
            reused[name] = record.reused_from
    rows = []
    running = ", ".join(f"{c.commitment_id!r} ({c.name})" for c in competitions)
    for raw in chain.commitments(at_block=block):
        neuron = neurons.get(raw.hotkey)
        row = {"epoch": epoch, "hotkey": raw.hotkey, "uid": neuron.uid if neuron else -1, "repo": None,
               "competition_id": None, "revision": None, "commit_block": raw.block,
               "registration_block": neuron.registration_block if neuron else None, "status": "ok", "reason": None,
               "competition": None, "coldkey": neuron.coldkey if neuron else None}
        rows.append(row)
        c = _decode(raw, row)
        if c is None:
            continue
        competition = competitions.for_commitment(c.competition_id)
        if competition is None:
            row.update(status="rejected", reason=f"commitment is for competition {c.competition_id!r}; this "
                       f"validator runs {running}")
            continue
        row["competition"] = competition.name
        rnd, _ = rounds[competition.name]
        if rnd.phase == "submission":
            row.update(status="pending", reason=f"round {rnd.round_id}'s submission window is open (it closes after "
                       f"block {rnd.snapshot_block}); submissions are evaluated after that")
            continue
        if competition.name in reused:
            row.update(status="pending", reason=f"round {rnd.round_id} reuses round {reused[competition.name]} (the "
                       "pool did not change): nothing is evaluated, the earlier winner keeps the reward")
            continue
        if raw.block > rnd.snapshot_block:
            earlier = at_close.get(rnd.snapshot_block, {}).get(raw.hotkey)
            in_window = dict(row)
            c = _decode(earlier, in_window) if earlier is not None else None
            if c is None or competitions.for_commitment(c.competition_id) is not competition:
                row.update(status="rejected", reason=(
                    f"late: committed at block {raw.block}, after round {rnd.round_id}'s submission window closed "
                    f"(block {rnd.snapshot_block})"))
                continue
            raw = earlier  # the commitment the round counts: the latest one at the window's last block
            row.update(in_window, commit_block=raw.block)
        if neuron is None and rnd.round_id != "epoch":
            # A daily round keeps a submission recorded during it even when its hotkey has left the subnet since
            # (the live validator records uid, hotkey and coldkey in the window; the winner's reward then follows
            # its hotkey, then its coldkey): its uid, registration and coldkey as recorded then.
            kept = store.round_submission(competition.name, rnd.round_id, raw.hotkey, epoch)
            if kept is not None:
                neuron = Neuron(kept.uid, raw.hotkey, kept.coldkey or "", 0.0, False, int(kept.registration_block))
                row.update(uid=neuron.uid, registration_block=neuron.registration_block, coldkey=kept.coldkey)
        if neuron is None:
            row.update(status="rejected", reason="hotkey is not registered on the subnet")
        elif raw.block < neuron.registration_block:
            row.update(status="rejected", reason="commitment predates the hotkey's registration")
        elif block - raw.block < settings.min_commitment_age:
            row.update(status="rejected", reason=f"commitment is {block - raw.block} blocks old at the epoch's "
                       f"block, the minimum age is {settings.min_commitment_age}")
    records = [CommitmentRecord(**row) for row in rows]
    first = competitions.competitions[0]
    store.record_epoch(EpochRecord(epoch=epoch, block=block, eval_repo=first.eval_repo,
                                       eval_revision=rounds[first.name][1], created_at=utcnow()), records)
    return records


def _decode(raw: RawCommitment, row: dict) -> Commitment | None:
    """The decoded commitment, written into `row`; None (row rejected with the reason) when it does not decode."""
    try:
        c = Commitment.from_compressed_str(raw.data)
    except CommitmentError as exc:
        row.update(status="rejected", reason=f"invalid commitment: {exc}")
        return None
    row.update(repo=c.repo_id, competition_id=c.competition_id, revision=c.revision)
    return c
