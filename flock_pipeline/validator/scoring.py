"""Epoch steps: win rates and weights, their submission to the chain, and the final corpus."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from flock_pipeline.core.competitions import Competition, Contender, RewardState, Round, ScoringContext
from flock_pipeline.core.corpus import CorpusShard, build_corpus_records, corpus_sha256, write_corpus
from flock_pipeline.core.schema import ChatRow
from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.core.weights import runtime_error
from flock_pipeline.resources.chain import ChainResource, WeightsReceipt
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.store import (CorpusRecord, EpochCompetitionRecord, EpochRecord, ScoreRecord,
                                  WeightSubmissionRecord, utcnow)
from flock_pipeline.validator.evaluation import base_eval_loss, competition_recipe, shard_cache_key
from flock_pipeline.validator.faults import ValidatorFault
from flock_pipeline.validator.shards import competition_of, epoch_setups

WEIGHTED = ("scored", "reward", "burn")  # the statuses a row may carry weight with


def compute_epoch_scores(epoch: int, evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                         warehouse: WarehouseResource, hub: HubResource,
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
    info = warehouse.epoch_info(epoch)
    if info is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    competitions = settings.competition_set()
    setups = epoch_setups(warehouse, epoch, competitions)
    shards = {r.hotkey: r for r in warehouse.epoch_shards(epoch)}
    rows, contenders, failures, provenances = [], {c.name: [] for c in competitions}, {}, {}
    metagraph = chain.metagraph() if chain is not None else []
    coldkeys = {n.hotkey: n.coldkey for n in metagraph}
    for c in warehouse.epoch_commitments(epoch):
        competition = competition_of(c, competitions)
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "status": "rejected", "reason": c.reason,
               "eval_loss": math.nan, "win_rate": 0.0, "weight": 0.0, "competition": competition,
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
            result = warehouse.eval_result(key)
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
    _refuse_common_failure(rows, failures, warehouse)
    outcomes, decisions = {}, []
    for competition in competitions:
        setup = setups.get(competition.name)
        if setup is None:  # an epoch opened before this competition was configured
            continue
        if setup.round_id != "epoch" and setup.phase != "submission":
            record_round_contenders(warehouse, competition.name, setup.round_id, contenders[competition.name])
        context = _context(epoch, competition, setup, info, contenders[competition.name], metagraph, chain, evaluator,
                           hub, warehouse)
        outcome = competition.score(contenders[competition.name], context)
        if outcome.decided is not None:
            decisions.append((competition.name, outcome.decided, context.hotkeys))
        outcomes[competition.name] = outcome
        for row in rows:
            if row["competition"] != competition.name or row["status"] != "scored":
                continue
            uid = row["uid"]
            row.update(win_rate=outcome.scores.get(uid, 0.0), competition_weight=outcome.weights.get(uid, 0.0),
                       status=outcome.statuses.get(uid, "scored"))
            if uid in outcome.reasons:
                row["reason"] = outcome.reasons[uid]
    _combine(rows, competitions, outcomes, epoch)
    scores = [ScoreRecord(**row) for row in rows]
    _keep_what_was_recorded(epoch, warehouse.win_rates(epoch), scores, settings.replace_results)
    for name, decided, hotkeys in decisions:  # a round is decided only by a run whose scores are kept
        _record_decision(warehouse, name, decided, hotkeys, epoch)
    warehouse.record_scores(epoch, scores)
    return scores


class ResultsKept(RuntimeError):
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


def _refuse_common_failure(rows: list[dict], failures: dict[str, str], warehouse: WarehouseResource) -> None:
    """Every evaluated miner failed, and all with the same error: that is the validator's environment (a library, a
    driver), not the miners' data. The failures are dropped (so the next run evaluates them again) and the epoch
    stops with an operator error instead of scoring everyone 0."""
    unexplained = {k: e for k, e in failures.items() if not e.startswith(DATA_ERRORS)}
    if len(unexplained) < 2 or len(unexplained) < len(failures) or any(r["status"] == "scored" for r in rows) \
            or len(set(unexplained.values())) != 1:
        return
    keys = sorted(failures)
    warehouse.drop_eval_results(keys)
    raise ValidatorFault(f"all {len(keys)} evaluated miners failed with the same error, so it is the validator's, "
                         f"not theirs: {next(iter(failures.values()))}; their results were dropped: fix it and run "
                         "the epoch's scoring again")


def _context(epoch: int, competition: Competition, setup: EpochCompetitionRecord, info: EpochRecord,
             contenders: list[Contender], metagraph,
             chain: ChainResource | None, evaluator: EvaluatorResource, hub: HubResource,
             warehouse: WarehouseResource) -> ScoringContext:
    base = None
    if competition.needs_base_loss and contenders:
        base = base_eval_loss(evaluator, hub, warehouse, setup.eval_repo, setup.eval_revision,
                              recipe=dict(competition.recipe))
    hotkeys = {n.uid: n.hotkey for n in metagraph}
    burn = getattr(competition, "burn_uid", None)
    if burn is None and chain is not None and competition.kind == "selection":
        owner = chain.owner_hotkey()
        burn = next((uid for uid, hk in hotkeys.items() if hk == owner), None)
    rnd = Round(setup.round_id, setup.phase, int(setup.snapshot_block), note=setup.note or "")
    return ScoringContext(now_block=int(info.block), previous=warehouse.previous_weights(epoch, competition.name),
                          base_loss=base, hotkeys=hotkeys, coldkeys={n.uid: n.coldkey for n in metagraph},
                          burn_uid=burn, round=rnd,
                          reward=reward_state(competition.name, rnd, warehouse) if rnd.round_id != "epoch" else None)


def reward_state(competition: str, rnd: Round, warehouse: WarehouseResource) -> RewardState:
    """What a daily game rewards at this epoch: the winner of the latest round whose reward time has passed (the
    current round in its rewarding phase, else the previous day's), decided at the first epoch at or after that time
    (epochs need not open inside the 30-minute window) from the contenders recorded for it; a reused round rewards
    the winner of the round it reuses; a round never seen here (the validator was not running) falls back to the
    latest decided one; none at all: nothing (burn)."""
    current = warehouse.competition_round(competition, rnd.round_id)
    reused_now = current.reused_from if current is not None else None
    target_id = rnd.round_id if rnd.phase == "rewarding" else _day_before(rnd.round_id)
    target = current if target_id == rnd.round_id else warehouse.competition_round(competition, target_id)
    if target is not None and target.reused_from is not None:
        source = warehouse.competition_round(competition, target.reused_from)
        if source is not None and source.decided:
            return RewardState(source.round_id, source.winner_uid, reused_from=reused_now)
    elif target is not None and target.decided:
        return RewardState(target_id, target.winner_uid, reused_from=reused_now)
    elif target is not None:
        stored = None if target_id == rnd.round_id else tuple(_contenders(target.contenders))
        return RewardState(target_id, None, decide_now=True, reused_from=reused_now, contenders=stored)
    for r in warehouse.rounds_before(competition, target_id):
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


def record_round_contenders(warehouse: WarehouseResource, competition: str, round_id: str,
                            contenders: list[Contender]) -> None:
    """Keep a daily round's evaluated submissions with its record, so that it can be decided at a later epoch."""
    record = warehouse.competition_round(competition, round_id)
    if record is None or record.decided or record.reused_from is not None:
        return
    warehouse.record_round(record.replace(contenders=json.dumps(
        [{"uid": c.uid, "hotkey": c.hotkey, "coldkey": c.coldkey, "loss": c.loss, "block": c.block}
         for c in contenders], sort_keys=True)))


def _record_decision(warehouse: WarehouseResource, competition: str, decided: tuple, hotkeys: dict, epoch: int) -> None:
    round_id, uid, loss = decided
    record = warehouse.competition_round(competition, round_id)
    if record is None or record.decided:
        return
    warehouse.record_round(record.replace(decided=True, winner_uid=uid, winner_loss=loss, decided_epoch=epoch,
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
                       "reason": reason, "eval_loss": math.nan, "win_rate": 0.0, "weight": 0.0,
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
                         warehouse: WarehouseResource) -> WeightsOutcome:
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
    done = warehouse.weight_submission(epoch)
    if done is not None and done.state is None and done.success:
        return WeightsOutcome(done, sent_now=False)  # recorded by an earlier release, before confirmations
    if done is not None and (done.state in WAITING or done.state == "applied"):
        done = confirm_epoch_weights(epoch, chain, warehouse) or done
        if done.state != "not applied":
            return WeightsOutcome(done, sent_now=False)
    if done is not None and done.state == "not applied" and not _may_resend(done, chain):
        return WeightsOutcome(done, sent_now=False)
    later = warehouse.latest_sent_epoch()
    if later is not None and later > epoch:  # never overwrite newer weights on the chain with older ones
        return WeightsOutcome(_record(warehouse, epoch, settings.validator_hotkey, None, WeightsReceipt(
            False, chain.current_block(), f"not sent: epoch {later}'s weights are already on the chain"),
            state="refused", attempts=_attempts(done)), sent_now=False)
    scores = warehouse.win_rates(epoch)
    weights = weights_of(scores)
    validate_weights(weights, weighted_uids(scores))  # never send NaN, negative, unnormalised or ineligible weights
    hotkey = settings.validator_hotkey
    if not weights:
        return WeightsOutcome(_record(warehouse, epoch, hotkey, None, WeightsReceipt(
            False, chain.current_block(), "no miner was scored: nothing to submit"), state="refused"), sent_now=False)
    plan = chain.plan_weights(hotkey, weights, settings.weights_version_key)
    already = _already_set(epoch, chain, hotkey, warehouse, done, plan)
    if already is not None:
        state = "committed" if plan.rules.commit_reveal else "included"
        receipt = WeightsReceipt(True, already, f"already set at block {already} during this epoch (found on the "
                                                f"chain; not sent again)", committed=plan.rules.commit_reveal)
        reveal_epoch = chain.epoch_of(already) + int(plan.rules.reveal_period) if plan.rules.commit_reveal else None
        record = _record(warehouse, epoch, hotkey, plan, receipt, state=state, attempts=_attempts(done),
                         reveal_epoch=reveal_epoch)
        return WeightsOutcome(confirm_epoch_weights(epoch, chain, warehouse) or record, sent_now=False)
    if not plan.sendable:
        state = "rate limited" if plan.retry_after_block is not None else "refused"
        receipt = WeightsReceipt(False, plan.rules.block, f"not sent: {plan.refusal}",
                                 retry_after_block=plan.retry_after_block)
        return WeightsOutcome(_record(warehouse, epoch, hotkey, plan, receipt, state=state,
                                      attempts=_attempts(done)), sent_now=False)
    attempts = _attempts(done) + 1
    _record(warehouse, epoch, hotkey, plan, WeightsReceipt(False, plan.rules.block, f"{IN_FLIGHT}: sent, no answer "
                                                           "recorded yet"), state=IN_FLIGHT, attempts=attempts)
    receipt = chain.submit_weights(hotkey, plan)
    if not receipt.success:
        state = "rate limited" if receipt.retry_after_block is not None else "refused"
    else:
        state = "committed" if receipt.committed else "included"
    reveal_epoch = chain.epoch_of(receipt.block) + int(plan.rules.reveal_period) if state == "committed" else None
    record = _record(warehouse, epoch, hotkey, plan, receipt, state=state, attempts=attempts,
                     reveal_epoch=reveal_epoch)
    if state == "included":
        record = confirm_epoch_weights(epoch, chain, warehouse) or record
    return WeightsOutcome(record, sent_now=True)


def confirm_epoch_weights(epoch: int, chain: ChainResource, warehouse: WarehouseResource,
                          ) -> WeightSubmissionRecord | None:
    """Read back a waiting submission: "applied" when the chain's stored weights for the validator equal the
    recorded vector, "not applied" (with the reason) when they do not once the chain has had its chance; None when
    there is nothing to confirm yet (no submission, or a commit whose reveal epoch has not started)."""
    done = warehouse.weight_submission(epoch)
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
    warehouse.record_weight_submission(record)
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


def _already_set(epoch: int, chain: ChainResource, hotkey: str, warehouse: WarehouseResource,
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
    other = warehouse.weight_submission_at(last)
    if other is not None and other.epoch != epoch:
        return None
    if done is not None and done.state == "not applied" and int(done.block) == last:
        return None
    return last


def _record(warehouse: WarehouseResource, epoch: int, hotkey: str, plan, receipt: WeightsReceipt, *, state: str,
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
    warehouse.record_weight_submission(record)
    return record


def build_epoch_corpus(epoch: int, settings: ValidatorSettingsResource,
                       warehouse: WarehouseResource) -> CorpusRecord:
    """Merge the scored miners' shards, best first, with provenance; writes JSONL, Parquet and a `datasets` dir.
    Only competitions whose rows are new data contribute (not the selection game: its rows are the pool's own)."""
    scores = warehouse.win_rates(epoch)
    shards = {s.hotkey: s for s in warehouse.epoch_shards(epoch)}
    competitions = settings.competition_set()
    corpus_games = {c.name for c in competitions if c.in_corpus}
    parts = []
    for r in scores:
        if r.status != "scored" or (r.competition is not None and r.competition not in corpus_games):
            continue
        s = shards[r.hotkey]
        rows = warehouse.shard_rows(s.shard_hash)
        parts.append(CorpusShard(hotkey=r.hotkey, uid=int(r.uid), repo=s.repo, revision=s.revision,
                                 commit_block=int(s.commit_block), miner_score=float(r.weight),
                                 eval_loss=float(r.eval_loss),
                                 rows=tuple((x.row_hash, ChatRow.from_json_obj(json.loads(x.row_json)))
                                            for x in rows)))
    records = build_corpus_records(parts)
    previous = warehouse.corpus(epoch)
    if previous is not None and len(records) < int(previous.rows) and not settings.replace_results:
        raise ResultsKept(f"epoch {epoch}'s published corpus has {int(previous.rows)} rows; this run built "
                          f"{len(records)}: the published release is kept. To publish the smaller one beside it set "
                          "FLOCK_SETTINGS='{\"replace_results\": true}'")
    release = corpus_sha256(records)
    if previous is not None and previous.sha256 == release and Path(previous.jsonl_path).is_file():
        return previous  # the same release: nothing is rewritten
    # Releases are immutable: the first one of an epoch is `epoch-N/`, a different later one goes beside it.
    base = Path(settings.corpus_dir) / f"epoch-{epoch}"
    target = base if previous is None and not base.exists() else base.with_name(f"epoch-{epoch}-{release[:12]}")
    out = write_corpus(records, target)
    corpus = CorpusRecord(epoch=epoch, rows=len(records), miners=len(parts), sha256=out["sha256"],
                          jsonl_path=out["jsonl"], parquet_path=out["parquet"], created_at=utcnow())
    warehouse.record_corpus(corpus)
    return corpus
