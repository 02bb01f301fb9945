"""Epoch step: the weight vector to the chain, once, and what the chain did with it (applied, or not, and why).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.core.status import holder_changed
from flock_pipeline.core.weights import runtime_error
from flock_pipeline.resources.chain import ChainResource, WeightsReceipt
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord, WeightSubmissionRecord, utcnow
from flock_pipeline.validator.scoring import WEIGHTED


def weighted_uids(scores: list[ScoreRecord]) -> set[int]:
    """The uids that may carry weight: scored miners, a daily round's rewarded winner, the burn uid."""
    return {int(r.uid) for r in scores if r.status in WEIGHTED}


def weights_of(scores: list[ScoreRecord]) -> dict[int, float]:
    """uid -> weight for every non-zero weight (negative and NaN ones included, so validation sees them)."""
    return {int(r.uid): float(r.weight) for r in scores if r.weight != 0}


@dataclass(frozen=True)
class WeightsOutcome:
    submission: WeightSubmissionRecord  # what was sent (or refused) and what the chain answered, as recorded
    sent_now: bool  # False: the recorded answer of an earlier run, nothing was sent


IN_FLIGHT = "in flight"  # the state of a submission that was sent but whose answer is not recorded yet
WAITING = ("included", "committed")  # sent and taken by the chain; not yet seen applied
FINAL = ("applied", "not applied")
MAX_SENDS = 3  # sends of one epoch's weights (a retry after "not applied" included)


def submit_epoch_weights(epoch: int, chain: ChainResource, settings: ValidatorSettingsResource,
                         store: StoreResource) -> WeightsOutcome:
    """Send the epoch's weights once, and find out whether the chain applied them.

    States of the record (one per epoch):
    - refused: not sent, the chain's rules would drop it (stake, version key, permit, limits); the reason says what
      the operator must change. rate limited: not sent yet, `retry_after_block` says when it may be.
    - in flight: sent, no answer recorded (the run died): the next run asks the chain first.
    - included (plaintext) / committed (commit-reveal): the chain took it; committed weights apply only when the
      chain reveals them, at the start of chain epoch `reveal_epoch`.
    - applied: the chain's stored weights for this validator equal the recorded vector. not applied: they do not
      (the reveal was dropped, or the commit expired unrevealed), with the reason when the rules show it; sent
      again while this is still the chain's current epoch and the rules now allow it.

    A repeated call confirms a waiting submission instead of sending again. Before any send the chain is asked
    whether this hotkey already set weights (or committed) during the epoch; if it did, that submission is
    recorded instead of sending a second one.
    """
    done, outcome = _recorded_outcome(epoch, chain, store)
    if outcome is not None:
        return outcome
    later = store.latest_sent_epoch()
    if later is not None and later > epoch:  # never overwrite newer weights on the chain with older ones
        return WeightsOutcome(_record(store, epoch, settings.validator_hotkey, None, WeightsReceipt(
            False, chain.current_block(), f"not sent: epoch {later}'s weights are already on the chain"),
            state="refused", attempts=_attempts(done)), sent_now=False)
    scores = store.scores(epoch)
    weights = weights_of(scores)
    validate_weights(weights, weighted_uids(scores))  # never send NaN, negative, unnormalised or ineligible weights
    weights, moved = still_held(scores, weights, chain.metagraph(), settings)
    hotkey = settings.validator_hotkey
    if not weights:
        why = "no miner was scored: nothing to submit" if not moved else "; ".join(moved)
        return WeightsOutcome(_record(store, epoch, hotkey, None, WeightsReceipt(
            False, chain.current_block(), why), state="refused"), sent_now=False)
    plan = chain.plan_weights(hotkey, weights, settings.weights_version_key)
    if moved:
        plan = replace(plan, notes=(*moved, *plan.notes))
    already = _already_set(epoch, chain, hotkey, store, done, plan)
    if already is not None:
        return _found_on_chain(epoch, chain, store, hotkey, done, plan, already)
    if not plan.sendable:
        return _not_sent(epoch, store, hotkey, done, plan)
    return _send(epoch, chain, store, hotkey, done, plan)


def still_held(scores: list[ScoreRecord], weights: dict[int, float], metagraph,
               settings: ValidatorSettingsResource) -> tuple[dict[int, float], list[str]]:
    """The weights without the uids whose hotkey changed since the epoch's scores were recorded (checked at send
    time against the metagraph: a weight must reach the hotkey that earned it), renormalised; and why each was
    dropped. A game that decides hand-overs itself (the selection game) keeps its rows as scored."""
    holders = {n.uid: n.hotkey for n in metagraph}
    games = {c.name: c for c in settings.competition_set()}
    moved = []
    for r in scores:
        game = games.get(r.competition) if r.competition is not None else None
        if r.status != "scored" or int(r.uid) not in weights or (game is not None and game.follows_moved_hotkeys):
            continue
        verdict = holder_changed(int(r.uid), r.hotkey, holders.get(int(r.uid)))
        if verdict is not None:
            moved.append(f"not sent to {verdict.reason}")
            del weights[int(r.uid)]
    total = sum(weights.values())
    return ({u: w / total for u, w in weights.items()} if moved and total > 0 else weights), moved


def _recorded_outcome(epoch: int, chain: ChainResource, store: StoreResource,
                      ) -> tuple[WeightSubmissionRecord | None, WeightsOutcome | None]:
    """(the epoch's submission record, confirmed where it waited; the outcome when that record settles the epoch
    and nothing is to be sent, else None)."""
    done = store.weight_submission(epoch)
    if done is not None and done.state is None and done.success:
        return done, WeightsOutcome(done, sent_now=False)  # recorded by an earlier release, before confirmations
    if done is not None and (done.state in WAITING or done.state == "applied"):
        done = confirm_epoch_weights(epoch, chain, store) or done
        if done.state != "not applied":
            return done, WeightsOutcome(done, sent_now=False)
    if done is not None and done.state == "not applied" and not _may_resend(done, chain):
        return done, WeightsOutcome(done, sent_now=False)
    return done, None


def _found_on_chain(epoch: int, chain: ChainResource, store: StoreResource, hotkey: str,
                    done: WeightSubmissionRecord | None, plan, already: int) -> WeightsOutcome:
    """The outcome of weights this hotkey already set (or committed) during the epoch: recorded, not sent again."""
    state = "committed" if plan.rules.commit_reveal else "included"
    receipt = WeightsReceipt(True, already, f"already set at block {already} during this epoch (found on the "
                                            f"chain; not sent again)", committed=plan.rules.commit_reveal)
    reveal_epoch = chain.epoch_of(already) + int(plan.rules.reveal_period) if plan.rules.commit_reveal else None
    record = _record(store, epoch, hotkey, plan, receipt, state=state, attempts=_attempts(done),
                     reveal_epoch=reveal_epoch)
    return WeightsOutcome(confirm_epoch_weights(epoch, chain, store) or record, sent_now=False)


def _not_sent(epoch: int, store: StoreResource, hotkey: str, done: WeightSubmissionRecord | None,
              plan) -> WeightsOutcome:
    """The outcome of a plan the chain's rules would drop: recorded as rate limited or refused, not sent."""
    state = "rate limited" if plan.retry_after_block is not None else "refused"
    receipt = WeightsReceipt(False, plan.rules.block, f"not sent: {plan.refusal}",
                             retry_after_block=plan.retry_after_block)
    return WeightsOutcome(_record(store, epoch, hotkey, plan, receipt, state=state,
                                  attempts=_attempts(done)), sent_now=False)


def _send(epoch: int, chain: ChainResource, store: StoreResource, hotkey: str, done: WeightSubmissionRecord | None,
          plan) -> WeightsOutcome:
    """The outcome of sending the plan now: recorded in flight first, then with the chain's answer."""
    attempts = _attempts(done) + 1
    _record(store, epoch, hotkey, plan, WeightsReceipt(False, plan.rules.block, f"{IN_FLIGHT}: sent, no answer "
                                                           "recorded yet"), state=IN_FLIGHT, attempts=attempts)
    receipt = chain.submit_weights(hotkey, plan)
    if not receipt.success:
        state = "rate limited" if receipt.retry_after_block is not None else "refused"
    else:
        state = "committed" if receipt.committed else "included"
    reveal_epoch = chain.epoch_of(receipt.block) + int(plan.rules.reveal_period) if state == "committed" else None
    record = _record(store, epoch, hotkey, plan, receipt, state=state, attempts=attempts,
                     reveal_epoch=reveal_epoch)
    if state == "included":
        record = confirm_epoch_weights(epoch, chain, store) or record
    return WeightsOutcome(record, sent_now=True)


def confirm_epoch_weights(epoch: int, chain: ChainResource, store: StoreResource,
                          ) -> WeightSubmissionRecord | None:
    """Read back a waiting submission: "applied" when the chain's stored weights for the validator equal the
    recorded vector, "not applied" (with the reason) when they do not once the chain has had its chance; None when
    there is nothing to confirm yet (no submission, or a commit whose reveal epoch has not started)."""
    done = store.weight_submission(epoch)
    if done is None or not done.success or done.state in FINAL and done.state != "applied":
        return None
    if done.state == "applied":
        return done
    hotkey = done.hotkey or ""
    expected = dict(zip(map(int, done.uids), map(int, done.weights)))
    now = chain.current_block()
    if done.state == "committed":
        chain_epoch = chain.epoch_of(now)
        if done.reveal_epoch is not None and chain_epoch < int(done.reveal_epoch):
            return None
        if any(c.block == int(done.block) for c in chain.pending_commits(hotkey)):
            return None  # revealed later in the reveal epoch, when the drand pulse reaches the chain
    stored = chain.stored_weights(hotkey)
    if stored is not None and {u: v for u, v in stored.items() if v} == expected:
        record = done.replace(state="applied", confirmed_block=now,
                              message=f"{done.message}; applied: the chain holds this vector (read at block {now})")
    else:
        record = done.replace(state="not applied", confirmed_block=now,
                              detail=_why_not_applied(done, chain, hotkey, stored))
    store.record_weight_submission(record)
    return record


def _why_not_applied(done: WeightSubmissionRecord, chain: ChainResource, hotkey: str,
                     stored: dict[int, int] | None) -> str:
    holds = "no weights" if not stored else f"another vector ({len(stored)} uids)"
    rules = replace(chain.weight_rules(hotkey), commit_reveal=True)  # the rules as a reveal applies them
    error = runtime_error(rules, done.uids, done.weights, int(done.version_key or 0))
    if error is not None:
        cause = f"the chain's rules refuse it now ({error})"
    elif done.commit_reveal:
        cause = "the reveal was dropped or the commit expired unrevealed (the node logs why only at trace level)"
    else:
        cause = "another submission replaced it"
    return f"the chain holds {holds} for this validator: {cause}"


def _may_resend(record: WeightSubmissionRecord, chain: ChainResource) -> bool:
    """Send again after "not applied" only within the chain epoch it was sent in, and a few times at most."""
    return (_attempts(record) < MAX_SENDS and record.chain_epoch is not None
            and chain.epoch_of(chain.current_block()) == int(record.chain_epoch))


def _attempts(record: WeightSubmissionRecord | None) -> int:
    return int(record.attempts or 0) if record is not None else 0


def _already_set(epoch: int, chain: ChainResource, hotkey: str, store: StoreResource,
                 done: WeightSubmissionRecord | None, plan) -> int | None:
    """The block at which this hotkey set these weights (plaintext: the chain holds exactly this vector) or
    committed weights (commit-reveal: a commit's content cannot be read, so any) since the epoch started, unless
    that was a recorded submission of another epoch (a late re-send of the previous one) or one this epoch already
    knows was not applied. (One hotkey, one validator: weights set by other software under this hotkey during the
    epoch count as this epoch's under commit-reveal.)"""
    last = chain.weights_set_since(hotkey, chain.epoch_start(epoch))
    if last is None:
        return None
    if not plan.rules.commit_reveal:
        stored = chain.stored_weights(hotkey) or {}
        if {u: v for u, v in stored.items() if v} != dict(zip(plan.uids, plan.values)):
            return None
    other = store.weight_submission_at(last)
    if other is not None and other.epoch != epoch:
        return None
    if done is not None and done.state == "not applied" and int(done.block) == last:
        return None
    return last


def _record(store: StoreResource, epoch: int, hotkey: str, plan, receipt: WeightsReceipt, *, state: str,
            attempts: int = 0, reveal_epoch: int | None = None) -> WeightSubmissionRecord:
    rules = plan.rules if plan is not None else None
    notes = "; ".join(plan.notes) if plan is not None and plan.notes else None
    record = WeightSubmissionRecord(
        epoch=epoch, success=receipt.success, block=receipt.block, message=receipt.message,
        uids=tuple(plan.uids) if plan is not None else (), weights=tuple(plan.values) if plan is not None else (),
        retry_after_block=receipt.retry_after_block, created_at=utcnow(), state=state, hotkey=hotkey,
        version_key=plan.version_key if plan is not None else None,
        commit_reveal=rules.commit_reveal if rules is not None else None,
        chain_epoch=rules.epoch if rules is not None else None, reveal_epoch=reveal_epoch,
        reveal_round=receipt.reveal_round, detail=notes, attempts=attempts)
    store.record_weight_submission(record)
    return record
