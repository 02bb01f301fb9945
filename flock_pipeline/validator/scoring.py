"""Epoch steps: win rates and weights, their submission to the chain, and the final corpus."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from flock_pipeline.core.competitions import Competition, Contender, RewardState, Round, ScoringContext
from flock_pipeline.core.corpus import (DPO, FILES, JSONL_FILES, SFT, BaseAnswerCache, Candidate, CorpusPolicy,
                                        CorpusShard, build_release_records, dataset_card, greedy_answers,
                                        make_dir, merge_releases, read_release, release_files, release_sha256,
                                        replace_latest, select_miners, single_turn, write_release)
from flock_pipeline.core.schema import ChatRow, RowError, parse_preference_row
from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.core.tiny_model import model_revision
from flock_pipeline.core.weights import runtime_error
from flock_pipeline.resources.chain import ChainResource, WeightsReceipt
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.store import (CorpusRecord, EpochCompetitionRecord, EpochRecord, EvalResultRecord, ScoreRecord,
                                  WeightSubmissionRecord, utcnow)
from flock_pipeline.errors import FlockError, ValidatorFault
from flock_pipeline.validator.evaluation import base_eval_loss, shard_cache_key
from flock_pipeline.validator.games import competition_of, competition_recipe, epoch_setups

WEIGHTED = ("scored", "reward", "burn")  # the statuses a row may carry weight with


def compute_epoch_scores(epoch: int, evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                         store: StoreResource, hub: HubResource,
                         chain: ChainResource | None = None) -> list[ScoreRecord]:
    """Scores and weights of every committing miner of `epoch`, each in its competition (0 with a reason for all but
    the rewarded), plus a row for a uid that is rewarded without a submission this epoch (a daily round's winner
    kept, or the burn uid).

    status: scored | no_improvement (its loss is not below the base model's) | rejected (commitment) | pending (a
    daily round not open for evaluation) | ineligible (validation / dedup) | failed (evaluation crashed) |
    not_deduplicated | not_evaluated (a step has not run for this miner yet) | reward | burn.
    weight: the uid's share of the epoch's weight vector (the competitions' weights times their shares, summed);
    competition_weight: its weight within its own competition.
    """
    info = store.epoch_info(epoch)
    if info is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    competitions = settings.competition_set()
    setups = epoch_setups(store, epoch, competitions)
    shards = {r.hotkey: r for r in store.epoch_shards(epoch)}
    rows, contenders, failures, provenances = [], {c.name: [] for c in competitions}, {}, {}
    metagraph = chain.metagraph() if chain is not None else []
    coldkeys = {n.hotkey: n.coldkey for n in metagraph}
    for c in store.epoch_commitments(epoch):
        competition = competition_of(c, competitions)
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "status": "rejected", "reason": c.reason,
               "eval_loss": math.nan, "score": 0.0, "weight": 0.0, "competition": competition,
               "competition_weight": 0.0}
        rows.append(row)
        shard = shards.get(c.hotkey)
        if c.status == "pending":
            row["status"] = "pending"
            continue
        if c.status != "ok":
            continue
        if shard is None:
            row.update(status="not_deduplicated", reason="deduplicated_shards has not run for this miner")
        elif shard.status != "eligible":
            row.update(status="ineligible", reason=shard.reason)
        else:
            setup = setups.get(competition, info)
            if competition not in provenances:  # once per competition, not per miner
                provenances[competition] = evaluator.provenance(recipe=competition_recipe(settings, competition))
            key = shard_cache_key(shard, setup.eval_revision, evaluator, settings, provenances[competition])
            result = store.eval_result(key)
            if result is None:
                row.update(status="not_evaluated", reason="no evaluation result for this shard and recipe")
            elif result.status != "ok":
                row.update(status="failed", reason=f"evaluation failed: {result.error}")
                failures[key] = str(result.error)
            else:
                row.update(status="scored", reason=None, eval_loss=float(result.eval_loss))
                coldkey = c.coldkey if c.coldkey is not None else coldkeys.get(c.hotkey, "")
                contenders.setdefault(competition, []).append(Contender(
                    int(c.uid), c.hotkey, float(result.eval_loss), int(c.commit_block), coldkey,
                    tuple(float(x) for x in result.per_row_losses)))
    _refuse_common_failure(rows, failures, store)
    outcomes, decisions = {}, []
    for competition in competitions:
        setup = setups.get(competition.name)
        if setup is None:  # an epoch opened before this competition was configured
            continue
        if setup.round_id != "epoch" and setup.phase != "submission":
            record_round_contenders(store, competition.name, setup.round_id, contenders[competition.name])
        context = _context(epoch, competition, setup, info, contenders[competition.name], metagraph, chain, evaluator,
                           hub, store)
        outcome = competition.score(contenders[competition.name], context)
        if outcome.decided is not None:
            decisions.append((competition.name, outcome.decided, context.hotkeys))
        outcomes[competition.name] = outcome
        for row in rows:
            if row["competition"] != competition.name or row["status"] != "scored":
                continue
            uid = row["uid"]
            row.update(score=outcome.scores.get(uid, 0.0), competition_weight=outcome.weights.get(uid, 0.0),
                       status=outcome.statuses.get(uid, "scored"))
            if uid in outcome.reasons:
                row["reason"] = outcome.reasons[uid]
            if uid in outcome.explanations:
                row["explanation"] = outcome.explanations[uid]
    _combine(rows, competitions, outcomes, epoch)
    for row in rows:
        row["explanation"] = explanation(row, shards.get(row["hotkey"]), competitions, outcomes)
    scores = [ScoreRecord(**row) for row in rows]
    _keep_what_was_recorded(epoch, store.scores(epoch), scores, settings.replace_results)
    for name, decided, hotkeys in decisions:  # a round is decided only by a run whose scores are kept
        _record_decision(store, name, decided, hotkeys, epoch)
    store.record_scores(epoch, scores)
    return scores


class ResultsKept(FlockError, RuntimeError):
    """A run would replace an epoch's recorded results with less; the recorded ones are kept."""


def _keep_what_was_recorded(epoch: int, recorded: list[ScoreRecord], new: list[ScoreRecord], replace: bool) -> None:
    """Scores already recorded for an epoch are never replaced by a run that scored fewer miners (a validator whose
    device or model broke would otherwise zero everyone), unless `replace_results` is set."""
    if replace or not recorded:
        return
    # Only what the validator's own machinery lost counts: a miner that deregistered, took its repo down or turned
    # out a copy since the recorded run legitimately drops out.
    now = {r.hotkey: r.status for r in new}
    lost = sorted(r.hotkey for r in recorded
                  if r.status == "scored" and now.get(r.hotkey) in ("failed", "not_evaluated", "not_deduplicated"))
    before = sum(r.status == "scored" for r in recorded)
    after = sum(r.status == "scored" for r in new)
    if lost:
        raise ResultsKept(f"epoch {epoch} already has {before} scored miner(s); this run scored {after} (no longer: "
                          f"{', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}): the recorded scores are kept. "
                          "Find out why (the validator's device, model or eval set?); to replace them anyway set "
                          "FLOCK_SETTINGS='{\"replace_results\": true}'")


DATA_ERRORS = ("ValueError", "FloatingPointError")  # failures the evaluator puts down to the rows themselves


def _refuse_common_failure(rows: list[dict], failures: dict[str, str], store: StoreResource) -> None:
    """Every evaluated miner failed, and all with the same error: that is the validator's environment (a library, a
    driver), not the miners' data. The failures are dropped (so the next run evaluates them again) and the epoch
    stops with an operator error instead of scoring everyone 0."""
    unexplained = {k: e for k, e in failures.items() if not e.startswith(DATA_ERRORS)}
    if len(unexplained) < 2 or len(unexplained) < len(failures) or any(r["status"] == "scored" for r in rows) \
            or len(set(unexplained.values())) != 1:
        return
    keys = sorted(failures)
    store.drop_eval_results(keys)
    raise ValidatorFault(f"all {len(keys)} evaluated miners failed with the same error, so it is the validator's, "
                         f"not theirs: {next(iter(failures.values()))}; their results were dropped: fix it and run "
                         "the epoch's scoring again")


def _context(epoch: int, competition: Competition, setup: EpochCompetitionRecord, info: EpochRecord,
             contenders: list[Contender], metagraph,
             chain: ChainResource | None, evaluator: EvaluatorResource, hub: HubResource,
             store: StoreResource) -> ScoringContext:
    base = None
    if competition.needs_base_loss and contenders:
        base = base_eval_loss(evaluator, hub, store, setup.eval_repo, setup.eval_revision, competition)
    hotkeys = {n.uid: n.hotkey for n in metagraph}
    burn = competition.configured_burn_uid()
    if burn is None and chain is not None and competition.burns_unearned:
        owner = chain.owner_hotkey()
        burn = next((uid for uid, hk in hotkeys.items() if hk == owner), None)
    rnd = Round(setup.round_id, setup.phase, int(setup.snapshot_block), note=setup.note or "")
    return ScoringContext(now_block=int(info.block), previous=store.previous_weights(epoch, competition.name),
                          base_loss=base, hotkeys=hotkeys, coldkeys={n.uid: n.coldkey for n in metagraph},
                          burn_uid=burn, round=rnd,
                          reward=reward_state(competition.name, rnd, store) if rnd.round_id != "epoch" else None)


def reward_state(competition: str, rnd: Round, store: StoreResource) -> RewardState:
    """What a daily game rewards at this epoch: the winner of the latest round whose reward time has passed (the
    current round in its rewarding phase, else the previous day's), decided at the first epoch at or after that time
    (epochs need not open inside the 30-minute window) from the contenders recorded for it; a reused round rewards
    the winner of the round it reuses; a round never seen here (the validator was not running) falls back to the
    latest decided one; none at all: nothing (burn)."""
    current = store.competition_round(competition, rnd.round_id)
    reused_now = current.reused_from if current is not None else None
    target_id = rnd.round_id if rnd.phase == "rewarding" else _day_before(rnd.round_id)
    target = current if target_id == rnd.round_id else store.competition_round(competition, target_id)
    if target is not None and target.reused_from is not None:
        source = store.competition_round(competition, target.reused_from)
        if source is not None and source.decided:
            return RewardState(source.round_id, source.winner_uid, reused_from=reused_now)
    elif target is not None and target.decided:
        return RewardState(target_id, target.winner_uid, reused_from=reused_now)
    elif target is not None:
        stored = None if target_id == rnd.round_id else tuple(_contenders(target.contenders))
        return RewardState(target_id, None, decide_now=True, reused_from=reused_now, contenders=stored)
    for r in store.rounds_before(competition, target_id):
        if r.decided:
            return RewardState(r.round_id, r.winner_uid, reused_from=reused_now)
    return RewardState(None, None, reused_from=reused_now)


def _day_before(round_id: str) -> str:
    from datetime import datetime, timedelta

    return (datetime.strptime(round_id, "%Y%m%d") - timedelta(days=1)).strftime("%Y%m%d")


def _contenders(text: str | None) -> list[Contender]:
    if text is None:
        return []
    return [Contender(int(c["uid"]), c["hotkey"], float(c["loss"]), int(c["block"]), c.get("coldkey", ""))
            for c in json.loads(text)]


def record_round_contenders(store: StoreResource, competition: str, round_id: str,
                            contenders: list[Contender]) -> None:
    """Keep a daily round's evaluated submissions with its record, so that it can be decided at a later epoch."""
    record = store.competition_round(competition, round_id)
    if record is None or record.decided or record.reused_from is not None:
        return
    store.record_round(record.replace(contenders=json.dumps(
        [{"uid": c.uid, "hotkey": c.hotkey, "coldkey": c.coldkey, "loss": c.loss, "block": c.block}
         for c in contenders], sort_keys=True)))


def _record_decision(store: StoreResource, competition: str, decided: tuple, hotkeys: dict, epoch: int) -> None:
    round_id, uid, loss = decided
    record = store.competition_round(competition, round_id)
    if record is None or record.decided:
        return
    store.record_round(record.replace(decided=True, winner_uid=uid, winner_loss=loss, decided_epoch=epoch,
                                          winner_hotkey=hotkeys.get(uid) if uid is not None else None))


def _combine(rows: list[dict], competitions, outcomes: dict, epoch: int) -> None:
    """Each uid's weight = the sum over competitions of share x its weight there; a competition that awards nothing
    passes its share on to the others (renormalised). Rewarded uids without a row get one."""
    awarding = [c for c in competitions if outcomes.get(c.name) is not None and outcomes[c.name].weights]
    total_share = sum(float(c.share) for c in awarding)
    by_uid = {row["uid"]: row for row in rows}
    for c in awarding:
        outcome = outcomes[c.name]
        for uid, w in outcome.weights.items():
            row = by_uid.get(uid)
            if row is None:
                hotkey, status, reason = outcome.extra.get(uid, ("", "reward", ""))
                if not hotkey or any(r["hotkey"] == hotkey for r in rows):  # a winner that moved to another uid
                    hotkey = f"{hotkey or 'uid'}@{uid}"
                row = {"epoch": epoch, "hotkey": hotkey, "uid": uid, "status": status,
                       "reason": reason, "eval_loss": math.nan, "score": 0.0, "weight": 0.0,
                       "competition": c.name, "competition_weight": w}
                rows.append(row)
                by_uid[uid] = row
            elif uid in outcome.extra:
                _, status, reason = outcome.extra[uid]
                if row["status"] not in WEIGHTED:
                    row["reason"] = f"{reason}; its own entry this epoch is {row['status']}"
                    row["status"] = status
                if row["competition"] == c.name:
                    row["competition_weight"] = w
            row["weight"] += float(c.share) / total_share * w


def explanation(row: dict, shard, competitions, outcomes: dict) -> str:
    """How a uid's weight in the epoch came about, in words: what its data kept and dropped (and why), the
    competition's own account of its score (the comparisons, the blend) or why it has none, and its competition's
    share of the epoch's weight vector."""
    parts = []
    if shard is not None and int(shard.rows_in or 0):
        dropped = [(int(shard.duplicates_within or 0), "repeated within its own file"),
                   (int(shard.duplicates_earlier or 0), "copied from an earlier commitment"),
                   (int(shard.eval_leaks or 0), "in the eval set")]
        gone = ", ".join(f"{n} {'row' if n == 1 else 'rows'} {why}" for n, why in dropped if n)
        parts.append(f"{int(shard.rows_kept or 0)} of {int(shard.rows_in)} rows kept"
                     + (f" (dropped: {gone})" if gone else ""))
    told = row.get("explanation")
    if told:
        parts.append(told)
    elif row.get("reason"):
        parts.append(f"{row['status']}: {row['reason']}")
    else:
        parts.append(row["status"])
    awarding = [c for c in competitions if outcomes.get(c.name) is not None and outcomes[c.name].weights]
    total = sum(float(c.share) for c in awarding)
    game = next((c for c in awarding if c.name == row.get("competition")), None)
    if game is not None and len(competitions) > 1 and float(row.get("competition_weight") or 0.0) > 0:
        parts.append(f"competition {game.name!r} holds {float(game.share) / total:.4g} of the epoch's weights "
                     f"(its share {float(game.share):g}" + (", the others awarding nothing" if total < 1 else "")
                     + f"): {float(row.get('competition_weight') or 0.0):.6f} x {float(game.share) / total:.4g} = "
                     f"{float(row['weight']):.6f}")
    return "; ".join(parts)


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
    done = store.weight_submission(epoch)
    if done is not None and done.state is None and done.success:
        return WeightsOutcome(done, sent_now=False)  # recorded by an earlier release, before confirmations
    if done is not None and (done.state in WAITING or done.state == "applied"):
        done = confirm_epoch_weights(epoch, chain, store) or done
        if done.state != "not applied":
            return WeightsOutcome(done, sent_now=False)
    if done is not None and done.state == "not applied" and not _may_resend(done, chain):
        return WeightsOutcome(done, sent_now=False)
    later = store.latest_sent_epoch()
    if later is not None and later > epoch:  # never overwrite newer weights on the chain with older ones
        return WeightsOutcome(_record(store, epoch, settings.validator_hotkey, None, WeightsReceipt(
            False, chain.current_block(), f"not sent: epoch {later}'s weights are already on the chain"),
            state="refused", attempts=_attempts(done)), sent_now=False)
    scores = store.scores(epoch)
    weights = weights_of(scores)
    validate_weights(weights, weighted_uids(scores))  # never send NaN, negative, unnormalised or ineligible weights
    hotkey = settings.validator_hotkey
    if not weights:
        return WeightsOutcome(_record(store, epoch, hotkey, None, WeightsReceipt(
            False, chain.current_block(), "no miner was scored: nothing to submit"), state="refused"), sent_now=False)
    plan = chain.plan_weights(hotkey, weights, settings.weights_version_key)
    already = _already_set(epoch, chain, hotkey, store, done, plan)
    if already is not None:
        state = "committed" if plan.rules.commit_reveal else "included"
        receipt = WeightsReceipt(True, already, f"already set at block {already} during this epoch (found on the "
                                                f"chain; not sent again)", committed=plan.rules.commit_reveal)
        reveal_epoch = chain.epoch_of(already) + int(plan.rules.reveal_period) if plan.rules.commit_reveal else None
        record = _record(store, epoch, hotkey, plan, receipt, state=state, attempts=_attempts(done),
                         reveal_epoch=reveal_epoch)
        return WeightsOutcome(confirm_epoch_weights(epoch, chain, store) or record, sent_now=False)
    if not plan.sendable:
        state = "rate limited" if plan.retry_after_block is not None else "refused"
        receipt = WeightsReceipt(False, plan.rules.block, f"not sent: {plan.refusal}",
                                 retry_after_block=plan.retry_after_block)
        return WeightsOutcome(_record(store, epoch, hotkey, plan, receipt, state=state,
                                      attempts=_attempts(done)), sent_now=False)
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


def build_epoch_corpus(epoch: int, settings: ValidatorSettingsResource, store: StoreResource,
                       evaluator: EvaluatorResource | None = None, hub: HubResource | None = None) -> CorpusRecord:
    """The epoch's corpus release, the cumulative `latest` release, and (with `corpus_repo`) its publication.

    Rows: per competition that puts rows in the corpus (not the selection game: its rows are the pool's own), the
    miners the corpus policy selects (by weight), their deduplicated shards with provenance; chat rows go to the
    `sft` config, a preference competition's pairs to `dpo`, plus (policy `derive_dpo`) pairs derived from the SFT
    rows and the base model's own answers, which needs `evaluator`. Releases are immutable: the first one of an
    epoch is `epoch-N/`, a different later one goes beside it as `epoch-N-<sha12>/`, a smaller one only with
    `replace_results`, and rebuilding the same one writes nothing. `latest/` holds every row once across the
    recorded epochs. With `corpus_repo` set, `latest/` is uploaded there (one commit) through `hub`; the release
    is recorded before the upload, so a failed upload loses nothing (its HubError is raised; the next run
    publishes)."""
    policy = settings.corpus_policy_config()
    if settings.corpus_repo and hub is None:
        raise ValueError("corpus_repo is set: building the corpus needs the hub resource to publish it")
    shards = _selected_shards(epoch, settings.competition_set(), policy, store)
    if policy.derive_dpo:
        shards += _derived_shards(shards, evaluator, settings, policy)
    records = build_release_records(shards)
    rows = {c: len(records[c]) for c in records}
    total = sum(rows.values())
    previous = store.corpus(epoch)
    if previous is not None and total < int(previous.rows) and not settings.replace_results:
        raise ResultsKept(f"epoch {epoch}'s published corpus has {int(previous.rows)} rows; this run built "
                          f"{total}: the published release is kept. To publish the smaller one beside it set "
                          "FLOCK_SETTINGS='{\"replace_results\": true}'")
    sha = release_sha256(records)
    corpus_dir = Path(settings.corpus_dir)
    if previous is not None and previous.sha256 == sha and Path(previous.jsonl_path).is_file():
        corpus = previous  # the same release: nothing is rewritten
    else:
        folder = _write_epoch_release(epoch, records, sha, corpus_dir, previous is None, policy)
        corpus = CorpusRecord(epoch=epoch, rows=total, miners=len({s.hotkey for s in shards if not s.derived}),
                              sha256=sha, jsonl_path=str(folder / JSONL_FILES[SFT]),
                              parquet_path=str(folder / FILES[SFT]), created_at=utcnow(), sft_rows=rows[SFT],
                              dpo_rows=rows[DPO], release_dir=str(folder))
        store.record_corpus(corpus)
    latest, changed = _update_latest(corpus_dir, store, policy, settings)
    if corpus.latest_dir != str(latest):
        corpus = corpus.replace(latest_dir=str(latest))
        store.record_corpus(corpus)
    if settings.corpus_repo and (changed or corpus.published_repo != settings.corpus_repo
                                 or not corpus.published_revision):
        revision = hub.upload_files(settings.corpus_repo, release_files(latest), private=False,
                                    message=f"FLock OFF corpus as of epoch {epoch}")
        corpus = corpus.replace(published_repo=settings.corpus_repo, published_revision=revision)
        store.record_corpus(corpus)
    return corpus


BASE_ANSWERS_FILE = "base-answers.jsonl"  # under corpus_dir: the base model's answers of derived pairs


def _selected_shards(epoch: int, competitions, policy: CorpusPolicy, store: StoreResource,
                     ) -> list[CorpusShard]:
    """The policy's miners of every corpus competition, with their rows and provenance."""
    scores = {r.hotkey: r for r in store.scores(epoch)}
    shards = {s.hotkey: s for s in store.epoch_shards(epoch)}
    games = {c.name: c for c in competitions if c.in_corpus}
    setups, info = epoch_setups(store, epoch, competitions), store.epoch_info(epoch)
    candidates = []
    for r in scores.values():
        game = r.competition or competitions.competitions[0].name  # rows from before competitions: the first
        s = shards.get(r.hotkey)
        if game not in games or s is None or s.status != "eligible" or not s.shard_hash:
            continue
        weight = r.competition_weight if r.competition_weight is not None else r.weight
        candidates.append(Candidate(game, r.hotkey, int(r.uid), r.status, float(weight), int(s.commit_block)))
    out = []
    for c in select_miners(candidates, policy):
        r, s = scores[c.hotkey], shards[c.hotkey]
        game = games[c.competition]
        parse = game.row_format.from_json_obj
        setup = setups.get(c.competition)
        eval_repo = setup.eval_repo if setup is not None else (info.eval_repo if info is not None else None)
        eval_revision = setup.eval_revision if setup is not None else (info.eval_revision if info else None)
        base_model, base_revision = _base_model_of(store, s.shard_hash, r.eval_loss)
        out.append(CorpusShard(
            hotkey=r.hotkey, uid=int(r.uid), repo=s.repo or "", revision=s.revision or "",
            commit_block=int(s.commit_block), miner_weight=float(r.weight), eval_loss=r.eval_loss,
            rows=tuple((x.row_hash, parse(json.loads(x.row_json))) for x in store.shard_rows(s.shard_hash)),
            competition=c.competition, epoch=epoch, base_model=base_model, base_revision=base_revision,
            eval_repo=eval_repo or "", eval_revision=eval_revision or ""))
    return out


def _base_model_of(store: StoreResource, shard_hash: str, eval_loss: float | None) -> tuple[str, str]:
    """(name, revision) of the base model the shard's recorded evaluation used (the one that gave its score)."""
    results = [e for e in store.rows(EvalResultRecord, shard_hash=shard_hash)
               if e.status == "ok" and isinstance(e.provenance, dict)]
    scored = [e for e in results if eval_loss is not None and e.eval_loss == eval_loss] or results
    if not scored:
        return "", ""
    found = max(scored, key=lambda e: (e.created_at is not None, e.created_at or 0, e.cache_key))
    return str(found.provenance.get("base_model", "")), str(found.provenance.get("base_revision", ""))


def _derived_shards(shards: list[CorpusShard], evaluator: EvaluatorResource | None,
                    settings: ValidatorSettingsResource, policy: CorpusPolicy) -> list[CorpusShard]:
    """DPO pairs from the selected miners' single-turn SFT rows: chosen = the miner's answer, rejected = the base
    model's greedy answer, read from the answer cache or generated now (the model is loaded only for answers the
    cache lacks). A pair is left out when the two answers are the same, the base answer is empty or breaks a row
    limit, or the prompt does not fit the model. Provenance: the miner's, with `derived` true and the base model
    that wrote `rejected`."""
    sources = [s for s in shards if any(isinstance(row, ChatRow) and single_turn(row) for _, row in s.rows)]
    if not sources:
        return []
    if evaluator is None:
        raise ValueError("corpus_policy.derive_dpo is on: building the corpus needs the evaluator resource (the "
                         "base model writes the rejected answers)")
    name, revision = evaluator.model_name(), model_revision(evaluator.verified_model_path())
    budget = policy.derive_max_new_tokens
    cache = BaseAnswerCache(Path(settings.corpus_dir) / BASE_ANSWERS_FILE)
    known = cache.load()
    todo: dict[tuple, ChatRow] = {}
    for s in sources:
        for row_hash, row in s.rows:
            key = cache.key(row_hash, name, revision, budget)
            if isinstance(row, ChatRow) and single_turn(row) and key not in known:
                todo[key] = ChatRow(system=row.system, turns=row.turns[:1])
    if todo:
        keys = list(todo)
        fresh = dict(zip(keys, greedy_answers(evaluator.load(), [todo[k] for k in keys], budget)))
        cache.add(fresh)
        known.update(fresh)
    limits = settings.dataset_limits()
    out = []
    for s in sources:
        pairs = []
        for row_hash, row in s.rows:
            answer = known.get(cache.key(row_hash, name, revision, budget))
            if not isinstance(row, ChatRow) or not single_turn(row) or answer is None:
                continue
            obj = {"system": row.system, "prompt": [{"role": "user", "content": row.turns[0].content}],
                   "chosen": [{"role": "assistant", "content": row.turns[1].content}],
                   "rejected": [{"role": "assistant", "content": answer}]}
            try:
                pair = parse_preference_row(obj, limits)
            except RowError:  # the same answer as the miner's (nothing to prefer), an empty one, over a limit
                continue
            pairs.append((pair.row_hash, pair))
        if pairs:
            out.append(replace(s, rows=tuple(pairs), derived=True, base_model=name, base_revision=revision))
    return out


def _write_epoch_release(epoch: int, records: dict, sha: str, corpus_dir: Path, first: bool,
                         policy: CorpusPolicy) -> Path:
    """The epoch's release folder: `epoch-N/` for the epoch's first release, else `epoch-N-<sha12>/`; a folder
    already holding exactly these rows (a run that stopped before recording it) is taken as it is."""
    base = corpus_dir / f"epoch-{epoch}"
    named = corpus_dir / f"epoch-{epoch}-{sha[:12]}"
    for folder in (base, named):
        held = read_release(folder) if folder.is_dir() else None
        if held is not None and release_sha256(held) == sha:
            return folder
    target = base if first and not base.exists() else named
    card = dataset_card(records, title=f"FLock OFF corpus, epoch {epoch}", policy=policy,
                        note=f"The release of epoch {epoch} (`sha256` {sha}).")
    write_release(records, target, card)
    return target


def _update_latest(corpus_dir: Path, store: StoreResource, policy: CorpusPolicy,
                   settings: ValidatorSettingsResource) -> tuple[Path, bool]:
    """`corpus_dir/latest` from every recorded epoch release (each row once, its best-weighted copy), under a lock
    (two epochs' runs may finish together): (its path, whether it changed)."""
    import contextlib
    import fcntl
    import os

    make_dir(corpus_dir)
    with open(corpus_dir / ".latest.lock", "a") as lock:
        with contextlib.suppress(OSError):  # another user's lock file stays as it is
            os.fchmod(lock.fileno(), 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)
        releases = []
        for record in store.rows(CorpusRecord):
            if not record.release_dir:
                continue  # written before release folders: not in `latest`
            folder = Path(record.release_dir)
            if not folder.is_dir():  # a moved or copied home: the same release under this corpus_dir
                folder = corpus_dir / folder.name
            held = read_release(folder)
            if held is not None:
                releases.append(held)
        merged = merge_releases(releases)
        card = dataset_card(merged, title="FLock OFF corpus", policy=policy, where=settings.corpus_repo,
                            note="The cumulative release: every row once across the epochs below, with the "
                                 "provenance of its best-weighted copy (the highest miner weight; tie: the latest "
                                 f"epoch). `sha256` {release_sha256(merged)}.")
        return replace_latest(merged, corpus_dir, card)
