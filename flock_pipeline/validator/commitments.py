"""Epoch step 1: every miner's commitment at the epoch's opening block, decoded, checked and assigned to the
competition it names; and each competition's round and eval set for the epoch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.core.competitions import Competition, CompetitionSet, Round
from flock_pipeline.core.status import acceptance, is_late, late_reason, round_gate
from flock_pipeline.errors import FlockError
from flock_pipeline.resources.chain import ChainResource, Neuron, RawCommitment
from flock_pipeline.resources.hub import HubError, HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import (CommitmentRecord, CompetitionRoundRecord, EpochCompetitionRecord, EpochRecord,
                                  EvalObservationRecord, utcnow)


class EpochNotReached(FlockError, RuntimeError):
    """The chain has not reached the epoch's first block yet: nothing is read or recorded."""


class EvalNotPublished(EpochNotReached):
    """A competition with the eval policy `after_commitments` has no eval revision published after the epoch's
    commitment cut-off yet: the epoch waits (nothing is recorded), and opens once one is seen."""


def observe_eval_head(c: Competition, hub: HubResource, store: StoreResource, block: int) -> str:
    """The eval repo's head now, recorded as seen at `block` (the pinned revision, when the game pins one)."""
    head = c.eval_revision or hub.head(c.eval_repo)
    store.record_eval_observation(EvalObservationRecord(repo=c.eval_repo, block=block, revision=head,
                                                        seen_at=utcnow()))
    return head


def fresh_eval_revision(c: Competition, cutoff: int, now: int, hub: HubResource, store: StoreResource) -> str:
    """The eval revision of a per-epoch game under `after_commitments`: the first head seen after one the validator
    saw at or after the commitment cut-off, so it was published after the cut-off (and no miner committed at the
    cut-off can have seen it). A pinned revision is taken as it is (commitments made after it was first seen are
    refused, see `_Judge`). EvalNotPublished while there is none."""
    head = observe_eval_head(c, hub, store, now)
    if c.eval_revision:
        return head
    seen = [o for o in store.eval_observations(c.eval_repo) if o.block >= cutoff]
    fresh = next((o for o in seen if o.revision != seen[0].revision), None) if seen else None
    if fresh is None:
        raise EvalNotPublished(
            f"competition {c.name!r} (eval policy after_commitments): no revision of {c.eval_repo} published after "
            f"the commitment cut-off at block {cutoff} yet (head {head[:12]} was there at block "
            f"{seen[0].block if seen else now}); the epoch opens once a new revision is published")
    return fresh.revision


def eval_waiting(epoch: int, now: int, chain: ChainResource, hub: HubResource, settings: ValidatorSettingsResource,
                 store: StoreResource) -> str | None:
    """Why `epoch` cannot open yet (a game under `after_commitments` has no eval revision published after the
    epoch's cut-off); None: it can. Each call records what the eval repos' heads are now: the block sensor's ticks
    are how a new revision is seen soon after it is published."""
    for c in settings.competition_set():
        if c.eval_policy == "after_commitments":
            try:
                fresh_eval_revision(c, chain.epoch_start(epoch), now, hub, store)
            except EvalNotPublished as exc:
                return str(exc)
    return None


def first_seen_block(c: Competition, revision: str, store: StoreResource) -> int | None:
    """The first block at which the validator saw `revision` of the competition's eval repo."""
    return next((o.block for o in store.eval_observations(c.eval_repo) if o.revision == revision), None)


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
        if rnd.round_id == "epoch" and c.eval_policy == "after_commitments":
            revision = fresh_eval_revision(c, block, chain.current_block(), hub, store)
        else:
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
    running = ", ".join(f"{c.commitment_id!r} ({c.name})" for c in competitions)
    judge = _Judge(epoch, block, competitions, rounds, reused, at_close, neurons, running,
                   settings.min_commitment_age, store, hub)
    rows = [judge.row(raw) for raw in chain.commitments(at_block=block)]
    records = [CommitmentRecord(**row) for row in rows]
    first = competitions.competitions[0]
    store.record_epoch(EpochRecord(epoch=epoch, block=block, eval_repo=first.eval_repo,
                                       eval_revision=rounds[first.name][1], created_at=utcnow()), records)
    return records


@dataclass
class _Judge:
    """The acceptance rules (core/status.py) applied to each commitment of an epoch, with what the epoch read."""

    epoch: int
    block: int
    competitions: CompetitionSet
    rounds: dict
    reused: dict[str, str]
    at_close: dict[int, dict[str, RawCommitment]]
    neurons: dict
    running: str
    min_age: int
    store: StoreResource
    hub: HubResource | None = None
    first_seen: dict[str, int | None] = field(default_factory=dict)  # competition -> its eval revision's first block

    def row(self, raw: RawCommitment) -> dict:
        neuron = self.neurons.get(raw.hotkey)
        row = {"epoch": self.epoch, "hotkey": raw.hotkey, "uid": neuron.uid if neuron else -1, "repo": None,
               "competition_id": None, "revision": None, "commit_block": raw.block,
               "registration_block": neuron.registration_block if neuron else None, "status": "ok", "reason": None,
               "competition": None, "coldkey": neuron.coldkey if neuron else None}
        c = _decode(raw, row)
        if c is None:
            return row
        competition = self.competitions.for_commitment(c.competition_id)
        if competition is None:
            row.update(status="rejected", reason=f"commitment is for competition {c.competition_id!r}; this "
                       f"validator runs {self.running}")
            return row
        row["competition"] = competition.name
        if not c.full_revision and not self._resolved(c, competition, row):
            return row
        rnd, _ = self.rounds[competition.name]
        gate = round_gate(rnd, self.reused.get(competition.name))
        if gate is not None:
            row.update(status=gate.status, reason=gate.reason)
            return row
        if is_late(raw.block, rnd):
            raw = self._in_window(raw, rnd, competition, row)
            if raw is None:
                return row
        if neuron is None and rnd.round_id != "epoch":
            neuron = self._kept(raw, competition.name, rnd, row)
        verdict = acceptance(raw.block, neuron.registration_block if neuron else None, self.block, self.min_age)
        row.update(status=verdict.status, reason=verdict.reason)
        if verdict.status == "ok" and competition.eval_policy == "after_commitments":
            self._after_eval(raw, competition, row)
        return row

    def _after_eval(self, raw: RawCommitment, competition, row: dict) -> None:
        """Under `after_commitments`, a commitment made when the eval revision it would be scored on was already
        published (seen by this validator) is refused: its rows could come from the eval set."""
        revision = self.rounds[competition.name][1]
        if competition.name not in self.first_seen:  # once per competition, not once per commitment
            self.first_seen[competition.name] = first_seen_block(competition, revision, self.store)
        seen = self.first_seen[competition.name]
        if seen is not None and raw.block >= seen:
            row.update(status="rejected", reason=f"committed at block {raw.block}, after eval revision "
                       f"{revision[:12]} was published (seen at block {seen}): scored on an eval set it could have "
                       "seen (eval policy after_commitments)")

    def _resolved(self, c: Commitment, competition, row: dict) -> bool:
        """A short revision (a 7-39 hex prefix), for a game that accepts one, resolved to the full commit id it names
        (written into `row`); False: the row is rejected, with why."""
        if not competition.accepts_short_revisions():
            row.update(status="rejected", reason=f"invalid commitment: revision {c.revision!r} is not a full 40-hex "
                                                 "commit id")
            return False
        try:
            row["revision"] = self.hub.resolve(c.repo_id, c.revision)
        except HubError as exc:
            if exc.transient:
                raise
            row.update(status="rejected", reason=f"revision {c.revision!r} names no commit of {c.repo_id}: {exc}")
            return False
        return True

    def _in_window(self, raw: RawCommitment, rnd, competition, row: dict) -> RawCommitment | None:
        """The commitment a round counts for a late one: the hotkey's at the window's last block, when it names the
        same competition (its fields written into `row`); None: the row is rejected as late."""
        earlier = self.at_close.get(rnd.snapshot_block, {}).get(raw.hotkey)
        in_window = dict(row)
        c = _decode(earlier, in_window) if earlier is not None else None
        if c is None or self.competitions.for_commitment(c.competition_id) is not competition \
                or (not c.full_revision and not self._resolved(c, competition, in_window)):
            row.update(status="rejected", reason=late_reason(raw.block, rnd))
            return None
        row.update(in_window, commit_block=earlier.block)
        return earlier

    def _kept(self, raw: RawCommitment, competition: str, rnd, row: dict) -> Neuron | None:
        """A daily round keeps a submission recorded during it even when its hotkey has left the subnet since (the
        live validator records uid, hotkey and coldkey in the window; the winner's reward then follows its hotkey,
        then its coldkey): its uid, registration and coldkey as recorded then."""
        kept = self.store.round_submission(competition, rnd.round_id, raw.hotkey, self.epoch)
        if kept is None:
            return None
        row.update(uid=kept.uid, registration_block=int(kept.registration_block), coldkey=kept.coldkey)
        return Neuron(kept.uid, raw.hotkey, kept.coldkey or "", 0.0, False, int(kept.registration_block))


def _decode(raw: RawCommitment, row: dict) -> Commitment | None:
    """The decoded commitment, written into `row`; None (row rejected with the reason) when it does not decode."""
    try:
        c = Commitment.from_compressed_str(raw.data, short=True)  # a short revision: the game decides
    except CommitmentError as exc:
        row.update(status="rejected", reason=f"invalid commitment: {exc}")
        return None
    row.update(repo=c.repo_id, competition_id=c.competition_id, revision=c.revision)
    return c
