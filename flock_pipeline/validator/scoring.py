"""Epoch step: every committing miner's score and weight in its competition, and the epoch's weight vector
(the competitions' vectors times their shares)."""

from __future__ import annotations

import json
import math

from flock_pipeline.core.competitions import Competition, Contender, RewardState, Round, ScoringContext, Submission
from flock_pipeline.core.status import Outcome, holder_changed, miner_status
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.store import EpochCompetitionRecord, EpochRecord, ScoreDetailRecord, ScoreRecord
from flock_pipeline.errors import ResultsKept, ValidatorFault
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
    not_deduplicated | not_evaluated (a step has not run for this miner yet) | uid_changed (its uid holds another
    hotkey now: a weight would reach a hotkey that never committed) | reward | burn.
    weight: the uid's share of the epoch's weight vector (the competitions' weights times their shares, summed);
    competition_weight: its weight within its own competition.
    """
    info = store.epoch_info(epoch)
    if info is None:
        raise RuntimeError(f"epoch {epoch} has no recorded commitments: materialize chain_commitments first")
    competitions = settings.competition_set()
    setups = epoch_setups(store, epoch, competitions)
    shards = {r.hotkey: r for r in store.epoch_shards(epoch)}
    metagraph = chain.metagraph() if chain is not None else []
    commitments = store.epoch_commitments(epoch)
    rows, contenders, failures = _judge_miners(epoch, info, competitions, setups, shards, metagraph, evaluator,
                                               settings, store, commitments)
    _refuse_common_failure(rows, failures, store)
    plans = None
    outcomes, decisions = {}, []
    for competition in competitions:
        setup = setups.get(competition.name)
        if setup is None:  # an epoch opened before this competition was configured
            continue
        submissions: tuple[Submission, ...] = ()
        if setup.round_id != "epoch" and setup.phase != "submission":
            plans = store.epoch_plans(epoch) if plans is None else plans
            submissions = round_submissions(rows, competition.name, commitments, plans)
            record_round_contenders(store, competition.name, setup.round_id, contenders[competition.name],
                                    submissions)
        context = _context(epoch, competition, setup, info, contenders[competition.name], metagraph, chain, evaluator,
                           hub, store, submissions)
        outcome = competition.score(contenders[competition.name], context)
        if outcome.decided is not None:
            decisions.append((competition.name, outcome.decided, context.hotkeys, outcome.decided_note))
        outcomes[competition.name] = outcome
        _apply_outcome(rows, competition.name, outcome)
    _combine(rows, competitions, outcomes, epoch)
    advisories = {hk: p["advisory"] for hk, p in (store.epoch_plans(epoch) if plans is None else plans).items()
                  if p.get("advisory")}
    details = []
    for row in rows:
        row["explanation"] = explanation(row, shards.get(row["hotkey"]), competitions, outcomes)
        detail = row.pop("detail", None)
        if detail:  # the explanation summarises: the whole account is kept beside it, and it says where
            details.append(ScoreDetailRecord(epoch=epoch, hotkey=row["hotkey"], detail=detail))
            row["explanation"] += f"; every comparison: `flock epoch report {epoch} --miner {row['hotkey']}`"
        if row["hotkey"] in advisories:  # seen by the operator, weighed by nobody
            row["explanation"] += f"; advisory, the weights unchanged: {advisories[row['hotkey']]}"
    scores = [ScoreRecord(**row) for row in rows]
    _keep_what_was_recorded(epoch, store.scores(epoch), scores, settings.replace_results)
    for name, decided, hotkeys, note in decisions:  # a round is decided only by a run whose scores are kept
        _record_decision(store, name, decided, hotkeys, epoch, note)
    store.record_scores(epoch, scores, details)
    return scores


def _judge_miners(epoch: int, info: EpochRecord, competitions, setups: dict, shards: dict, metagraph,
                  evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                  store: StoreResource, commitments: list
                  ) -> tuple[list[dict], dict[str, list[Contender]], dict[str, str]]:
    """(a row per committing miner with its status before scoring, the contenders of each competition, the failed
    evaluations' errors by cache key)."""
    rows, contenders, failures, provenances = [], {c.name: [] for c in competitions}, {}, {}
    coldkeys = {n.hotkey: n.coldkey for n in metagraph}
    holders = {n.uid: n.hotkey for n in metagraph}  # who holds each uid now (the commitments were read earlier)
    for c in commitments:
        competition = competition_of(c, competitions)
        shard = shards.get(c.hotkey)
        result = key = None
        if c.status == "ok" and shard is not None and shard.status == "eligible":
            if competition not in provenances:  # once per competition, not per miner
                provenances[competition] = evaluator.provenance(recipe=competition_recipe(settings, competition))
            key = shard_cache_key(shard, setups.get(competition, info).eval_revision, evaluator, settings,
                                  provenances[competition])
            result = store.eval_result(key)
        verdict = miner_status(Outcome(c.status, c.reason),
                               None if shard is None else Outcome(shard.status, shard.reason),
                               None if result is None else Outcome(result.status, result.error))
        if verdict.status == "scored" and metagraph and not competitions.by_name(competition).follows_moved_hotkeys:
            verdict = holder_changed(int(c.uid), c.hotkey, holders.get(int(c.uid))) or verdict
        row = {"epoch": epoch, "hotkey": c.hotkey, "uid": int(c.uid), "status": verdict.status,
               "reason": verdict.reason, "eval_loss": math.nan, "score": 0.0, "weight": 0.0,
               "competition": competition, "competition_weight": 0.0}
        rows.append(row)
        if verdict.status == "failed":
            failures[key] = str(result.error)
        elif verdict.status == "scored":
            row["eval_loss"] = float(result.eval_loss)
            coldkey = c.coldkey if c.coldkey is not None else coldkeys.get(c.hotkey, "")
            contenders.setdefault(competition, []).append(Contender(
                int(c.uid), c.hotkey, float(result.eval_loss), int(c.commit_block), coldkey,
                tuple(float(x) for x in result.per_row_losses)))
    return rows, contenders, failures


def round_submissions(rows: list[dict], competition: str, commitments, plans: dict[str, dict]
                      ) -> tuple[Submission, ...]:
    """Every accepted submission of a daily game's round, with its evaluated loss, its status before scoring and
    each rule set's verdict on it (its recorded plan's `rule_views`)."""
    by_hotkey = {r["hotkey"]: r for r in rows}
    out = []
    for c in commitments:
        row = by_hotkey.get(c.hotkey)
        if row is None or row["competition"] != competition or c.status != "ok":
            continue
        loss = row["eval_loss"] if row["status"] == "scored" and math.isfinite(row["eval_loss"]) else None
        views = (plans.get(c.hotkey) or {}).get("rule_views") or {}
        out.append(Submission(int(c.uid), c.hotkey, int(c.commit_block), c.coldkey or "", loss, row["status"],
                              views))
    return tuple(out)


def _apply_outcome(rows: list[dict], competition: str, outcome) -> None:
    """A competition's scores, weights, statuses, reasons and explanations on its scored rows (and on the rows it
    scored at a loss it fixed, without an evaluation)."""
    for row in rows:
        if row["competition"] != competition:
            continue
        uid = row["uid"]
        if uid in outcome.losses and row["status"] in ("ineligible", "failed"):
            row.update(status="scored", eval_loss=float(outcome.losses[uid]))
        if row["status"] != "scored":
            continue
        row.update(score=outcome.scores.get(uid, 0.0), competition_weight=outcome.weights.get(uid, 0.0),
                   status=outcome.statuses.get(uid, "scored"))
        if uid in outcome.reasons:
            row["reason"] = outcome.reasons[uid]
        if uid in outcome.explanations:
            row["explanation"] = outcome.explanations[uid]
        if uid in outcome.details:
            row["detail"] = outcome.details[uid]


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
             store: StoreResource, submissions: tuple[Submission, ...] = ()) -> ScoringContext:
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
                          burn_uid=burn, round=rnd, submissions=submissions,
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
            return RewardState(source.round_id, source.winner_uid, reused_from=reused_now,
                               note=_round_doc(source.contenders).get("note"))
    elif target is not None and target.decided:
        return RewardState(target_id, target.winner_uid, reused_from=reused_now,
                           note=_round_doc(target.contenders).get("note"))
    elif target is not None:
        stored = None if target_id == rnd.round_id else _round_doc(target.contenders)
        previous = next((r for r in store.rounds_before(competition, target_id) if r.decided), None)
        return RewardState(target_id, None, decide_now=True, reused_from=reused_now,
                           contenders=None if stored is None else tuple(_contenders(stored)),
                           submissions=None if stored is None else _submissions(stored),
                           previous_uid=previous.winner_uid if previous is not None else None)
    for r in store.rounds_before(competition, target_id):
        if r.decided:
            return RewardState(r.round_id, r.winner_uid, reused_from=reused_now,
                               note=_round_doc(r.contenders).get("note"))
    return RewardState(None, None, reused_from=reused_now)


def _day_before(round_id: str) -> str:
    from datetime import datetime, timedelta

    return (datetime.strptime(round_id, "%Y%m%d") - timedelta(days=1)).strftime("%Y%m%d")


def _round_doc(text: str | None) -> dict:
    """A round record's JSON: {"contenders": [...], "submissions": [...], "note": ...} (a bare list of contenders
    before submissions were recorded)."""
    if not text:
        return {}
    doc = json.loads(text)
    return {"contenders": doc} if isinstance(doc, list) else doc


def _contenders(doc: dict) -> list[Contender]:
    return [Contender(int(c["uid"]), c["hotkey"], float(c["loss"]), int(c["block"]), c.get("coldkey", ""))
            for c in doc.get("contenders") or []]


def _submissions(doc: dict) -> tuple[Submission, ...] | None:
    subs = doc.get("submissions")
    return None if subs is None else tuple(Submission.from_json(s) for s in subs)


def record_round_contenders(store: StoreResource, competition: str, round_id: str,
                            contenders: list[Contender], submissions: tuple[Submission, ...] = ()) -> None:
    """Keep a daily round's evaluated submissions (and every submission, with each rule set's verdict) with its
    record, so that it can be decided at a later epoch."""
    record = store.competition_round(competition, round_id)
    if record is None or record.decided or record.reused_from is not None:
        return
    store.record_round(record.replace(contenders=json.dumps({
        "contenders": [{"uid": c.uid, "hotkey": c.hotkey, "coldkey": c.coldkey, "loss": c.loss, "block": c.block}
                       for c in contenders],
        "submissions": [s.to_json() for s in submissions]}, sort_keys=True)))


def _record_decision(store: StoreResource, competition: str, decided: tuple, hotkeys: dict, epoch: int,
                     note: str | None = None) -> None:
    round_id, uid, loss = decided
    record = store.competition_round(competition, round_id)
    if record is None or record.decided:
        return
    doc = _round_doc(record.contenders)
    if note:
        doc["note"] = note
    store.record_round(record.replace(decided=True, winner_uid=uid, winner_loss=loss, decided_epoch=epoch,
                                      winner_hotkey=hotkeys.get(uid) if uid is not None else None,
                                      contenders=json.dumps(doc, sort_keys=True) if doc else record.contenders))


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
        parts.append(_rows_account(shard))
    parts.append(_score_account(row))
    share = _share_account(row, competitions, outcomes)
    if share is not None:
        parts.append(share)
    return "; ".join(parts)


def _rows_account(shard) -> str:
    """How many of a shard's rows were kept, and how many it dropped for each reason."""
    dropped = [(int(shard.duplicates_within or 0), "repeated within its own file"),
               (int(shard.duplicates_earlier or 0), "copied from an earlier commitment"),
               (int(shard.eval_leaks or 0), "in the eval set")]
    gone = ", ".join(f"{n} {'row' if n == 1 else 'rows'} {why}" for n, why in dropped if n)
    return (f"{int(shard.rows_kept or 0)} of {int(shard.rows_in)} rows kept"
            + (f" (dropped: {gone})" if gone else ""))


def _score_account(row: dict) -> str:
    """The competition's own account of a row's score, else its status and the reason for it."""
    told = row.get("explanation")
    if told:
        return told
    if row.get("reason"):
        return f"{row['status']}: {row['reason']}"
    return row["status"]


def _share_account(row: dict, competitions, outcomes: dict) -> str | None:
    """How its competition's share makes a row's epoch weight (None: a single competition, or no weight in it)."""
    awarding = [c for c in competitions if outcomes.get(c.name) is not None and outcomes[c.name].weights]
    total = sum(float(c.share) for c in awarding)
    game = next((c for c in awarding if c.name == row.get("competition")), None)
    if game is not None and len(competitions) > 1 and float(row.get("competition_weight") or 0.0) > 0:
        return (f"competition {game.name!r} holds {float(game.share) / total:.4g} of the epoch's weights "
                f"(its share {float(game.share):g}" + (", the others awarding nothing" if total < 1 else "")
                + f"): {float(row.get('competition_weight') or 0.0):.6f} x {float(game.share) / total:.4g} = "
                f"{float(row['weight']):.6f}")
    return None
