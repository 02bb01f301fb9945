"""Miner step: LoRA-train on the miner's shard and measure the eval loss, cached by content.

The cache key is (shard hash, base model + revision, recipe hash, eval set revision): the same data under the same
recipe is never trained twice, across epochs and across miners who end up with the same shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import EvalResultRecord, ShardRecord, ShardToEvaluate, utcnow
from flock_pipeline.core.competitions import Competition
from flock_pipeline.core.stop import Stopped, stopped
from flock_pipeline.errors import FlockError, ValidatorFault
from flock_pipeline.validator.datasets import rows_from_json
from flock_pipeline.validator.eval_sets import load_eval_rows
from flock_pipeline.validator.faults import is_validator_fault, preflight
from flock_pipeline.validator.games import competition_recipe, shard_competition

MAX_ATTEMPTS = 3  # evaluation attempts of one cache key before its failure is final


@dataclass(frozen=True)
class EvalRecord:
    hotkey: str
    status: str  # ok | failed | skipped
    reason: str | None
    cache_key: str | None = None
    eval_loss: float | None = None
    cached: bool = False
    attempts: int = 0
    seconds: float = 0.0
    train_tokens: int = 0
    metrics: dict | None = None  # objective-specific numbers (DPO: reward_accuracy, mean_margin)
    competition: str | None = None  # the competition the shard was evaluated in
    base_loss: float | None = None  # the base model's own eval loss on that eval set (the bar)


@dataclass(frozen=True)
class MinerDone:
    """One miner of an evaluation batch, told as soon as its outcome is known (progress: the store's record of it
    follows when its group is recorded). status: ok | failed | skipped; `cached`: answered from the store."""

    hotkey: str
    uid: int | None
    status: str
    rows: int  # the training rows of its shard
    seconds: float = 0.0  # training + scoring time spent now (0 when answered from the store)
    loss: float | None = None
    reason: str | None = None
    cached: bool = False
    train_losses: tuple[float, float, int] | None = None  # the first and last training step's loss, the steps

    def summary(self) -> str:
        """One line: "loss 1.7769 (100 rows, 3.2 s; train loss 2.41 -> 1.83 over 25 steps)", "loss 1.7769 (from
        the store)", "skipped: REASON" or "failed: ERROR"."""
        if self.status != "ok":
            return f"{self.status}: {' '.join((self.reason or '').split())[:200]}"
        if self.cached:
            return f"loss {self.loss:.4f} (from the store)"
        steps = ""
        if self.train_losses is not None:
            first, last, count = self.train_losses
            steps = f"; train loss {first:.3f} -> {last:.3f} over {count} steps"
        return f"loss {self.loss:.4f} ({self.rows} rows, {self.seconds:.1f} s{steps})"

    def line(self, done: int, total: int) -> str:
        """The progress line an evaluation step logs as this miner finishes: "miner K/N uid U HOTKEY: SUMMARY"
        (uid ? when not known). `MinerDone.of_line` reads it back."""
        uid = self.uid if self.uid is not None else "?"
        return f"miner {done}/{total} uid {uid} {self.hotkey}: {self.summary()}"

    @classmethod
    def of_line(cls, text: str) -> tuple[MinerDone, int, int] | None:
        """(the miner, K, N) of a progress line written by `line`; None for any other text. What the summary
        leaves out comes back empty: the training losses, and the reason cut to 200 characters."""
        found = _LINE.match(text)
        if found is None:
            return None
        done, total, uid, hotkey, summary = found.groups()
        uid_of = int(uid) if uid != "?" else None
        ok = _OK.match(summary)
        if ok is None:
            status, _, reason = summary.partition(": ")
            return cls(hotkey, uid_of, status, 0, reason=reason), int(done), int(total)
        loss, rows, seconds = ok.groups()
        cached = rows is None
        return (cls(hotkey, uid_of, "ok", int(rows or 0), float(seconds or 0.0), float(loss), cached=cached),
                int(done), int(total))


_LINE = re.compile(r"^miner (\d+)/(\d+) uid (\d+|\?) (\S+): (.*)$", re.DOTALL)
_OK = re.compile(r"^loss (\S+) \((?:from the store|(\d+) rows, (\S+) s\b.*)\)$", re.DOTALL)


def _done_of_record(record: EvalRecord, found: ShardToEvaluate | None) -> MinerDone:
    """A miner answered without training (ineligible, no shard, or its result already in the store)."""
    shard = found.shard if found is not None else None
    return MinerDone(record.hotkey, shard.uid if shard else None, record.status, shard.rows_kept if shard else 0,
                     loss=record.eval_loss, reason=record.reason, cached=record.cached)


def _done_of_outcome(p: _Pending, outcome, rows: int) -> MinerDone:
    """A miner whose training just ended: its EvalOutcome, or the exception it raised."""
    uid = p.found.shard.uid
    if isinstance(outcome, BaseException):
        return MinerDone(p.hotkey, uid, "failed", rows, reason=f"{type(outcome).__name__}: {outcome}")
    seconds = outcome.train_seconds + outcome.eval_seconds
    if not math.isfinite(outcome.eval_loss):
        return MinerDone(p.hotkey, uid, "failed", rows, seconds, reason=f"eval loss is {outcome.eval_loss}")
    steps = list(outcome.train_losses or [])
    return MinerDone(p.hotkey, uid, "ok", rows, seconds, float(outcome.eval_loss),
                     train_losses=(float(steps[0]), float(steps[-1]), len(steps)) if steps else None)


class TransientEvalError(FlockError, RuntimeError):
    """An evaluation failed and may succeed on a retry (recorded; the asset's retry policy runs it again)."""


def cache_key(shard: str, provenance: dict, eval_revision: str) -> str:
    """Everything that decides a loss: the rows, the model (name and content digest), the recipe with device and
    dtype, the eval set revision, and the versions of the libraries that compute it."""
    versions = json.dumps(provenance.get("versions", {}), sort_keys=True)
    parts = [shard, provenance["base_model"], provenance["base_revision"], provenance["recipe_hash"], eval_revision,
             versions]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def miner_shard(store: StoreResource, hotkey: str, epoch: int | None = None) -> ShardToEvaluate | None:
    """The hotkey's shard in `epoch` (default: the latest epoch that has one), with its competition's eval set for
    that epoch (shards from before competitions existed: the epoch's one eval set)."""
    return store.shard_to_evaluate(hotkey, epoch)


def shard_cache_key(shard: ShardRecord, eval_revision: str, evaluator: EvaluatorResource,
                    settings: ValidatorSettingsResource, provenance: dict | None = None) -> str:
    """The evaluation cache key of a recorded shard under its competition's recipe and an eval set revision."""
    provenance = provenance or evaluator.provenance(recipe=competition_recipe(settings, shard.competition))
    return cache_key(shard.shard_hash, provenance, eval_revision)


@dataclass(frozen=True)
class _Pending:
    """A miner whose evaluation must run: its shard, recipe, cache key and the attempts so far."""

    hotkey: str
    found: ShardToEvaluate
    competition: Competition
    recipe: dict
    provenance: dict
    key: str
    attempts: int


def evaluate_miner(hotkey: str, evaluator: EvaluatorResource, hub: HubResource, store: StoreResource,
                   settings: ValidatorSettingsResource, epoch: int | None = None) -> EvalRecord:
    """Evaluate `hotkey`'s shard of `epoch` (default: the latest epoch with one) on its competition's eval set with
    its recipe; skipped when ineligible."""
    result = evaluate_miners([hotkey], evaluator, hub, store, settings, epoch)[hotkey]
    if isinstance(result, Exception):
        raise result
    return result


def evaluate_miners(hotkeys: list[str], evaluator: EvaluatorResource, hub: HubResource, store: StoreResource,
                    settings: ValidatorSettingsResource, epoch: int | None = None,
                    on_done: Callable[[MinerDone], None] = lambda done: None) -> dict[str, EvalRecord | Exception]:
    """Evaluate several miners' shards of `epoch`: hotkey -> its record, or the TransientEvalError to retry it.

    Cached and ineligible miners are answered from the store; the others are trained together per competition
    (same recipe and eval set), through multi-LoRA when the evaluator has it on. Each miner's outcome is recorded
    on its own: a crash is that miner's failure (retried up to MAX_ATTEMPTS), never the others'. A ValidatorFault
    (the device, the model, the eval set) is raised at once, and nothing is recorded against any miner.

    `on_done(MinerDone)` is told each miner's outcome as soon as it is known, while the batch runs: the miners
    answered from the store first, then each trained one as its training ends (a multi-LoRA pass's miners
    together, when the pass ends)."""
    results: dict[str, EvalRecord | Exception] = {}
    groups: dict[tuple, list[_Pending]] = {}
    shards: dict[str, ShardToEvaluate] = {}
    for hotkey in hotkeys:
        found = miner_shard(store, hotkey, epoch)
        if found is not None:
            shards[hotkey] = found
        if found is None:
            results[hotkey] = EvalRecord(hotkey, "skipped", "no shard: deduplicated_shards has not run for this miner")
            continue
        if found.shard.status != "eligible":
            results[hotkey] = EvalRecord(hotkey, "skipped", found.shard.reason)
            continue
        game = shard_competition(settings, found.shard.competition)
        recipe = game.recipe_overrides()
        provenance = evaluator.provenance(recipe=recipe)
        key = cache_key(found.shard.shard_hash, provenance, found.eval_revision)
        previous = store.eval_result(key)
        if previous is not None and previous.final:
            results[hotkey] = _record_of(hotkey, previous, cached=True)
            continue
        attempts = int(previous.attempts) if previous is not None else 0
        group = (json.dumps(recipe, sort_keys=True), found.eval_repo, found.eval_revision, game.row_format,
                 game.objective)
        groups.setdefault(group, []).append(_Pending(hotkey, found, game, recipe, provenance, key, attempts))
    for hotkey, record in results.items():
        on_done(_done_of_record(record, shards.get(hotkey)))
    for (_, eval_repo, eval_revision, row_format, objective), pending in groups.items():
        halted = stopped()
        if halted is not None:  # a stop between groups: nothing more is trained
            raise halted
        preflight(evaluator, hub, eval_repo, eval_revision, pending[0].recipe, row_format)  # the validator's faults
        eval_rows = load_eval_rows(hub, eval_repo, eval_revision, row_format)
        train_sets = [rows_from_json(store.shard_rows(p.found.shard.shard_hash), row_format) for p in pending]
        finished: dict[int, object] = {}

        def finish(index: int, outcome, pending=pending, train_sets=train_sets, finished=finished) -> None:
            finished[index] = outcome
            on_done(_done_of_outcome(pending[index], outcome, len(train_sets[index])))

        try:
            with store.released():  # training takes a while: other processes may use the store meanwhile
                outcomes = evaluator.evaluate_many(train_sets, eval_rows, recipe=pending[0].recipe,
                                                   objective=objective, finished=finish)
        except BaseException:
            _keep_finished(pending, finished, store)
            raise
        results.update(_record_group(pending, outcomes, store))
    return _with_base_losses(results, shards, evaluator, hub, store, settings)


def _keep_finished(pending: list[_Pending], finished: dict[int, object], store: StoreResource) -> None:
    """Something interrupted a group's training (Dagster terminating the run, an operator's Ctrl-C in a library
    call): the miners whose loss was already computed keep it; nothing is recorded for the others (an error met
    while being interrupted is not theirs)."""
    for index, outcome in sorted(finished.items()):
        if not isinstance(outcome, BaseException) and math.isfinite(outcome.eval_loss):
            _record_outcome(pending[index], outcome, store)


def _record_group(pending: list[_Pending], outcomes: list, store: StoreResource) -> dict[str, EvalRecord | Exception]:
    """Record each outcome of a group trained together (hotkey -> its record, or the error to retry it). A fault of
    the validator's, or one error every miner hit alike, raises a ValidatorFault after the real outcomes are kept;
    a stop asked for by a signal raises Stopped after them (the miners not trained yet get nothing recorded)."""
    halted = next((o for o in outcomes if isinstance(o, Stopped)), None)
    if halted is None:
        _refuse_one_error_for_all(pending, outcomes)
    faults = [(p, o) for p, o in zip(pending, outcomes) if isinstance(o, Exception) and is_validator_fault(o)]
    results = {}
    for p, outcome in zip(pending, outcomes):  # every real outcome is kept before a fault stops the batch
        if not any(p is q for q, _ in faults) and not isinstance(outcome, Stopped):
            results[p.hotkey] = _record_outcome(p, outcome, store)
    if faults:
        _record_outcome(*faults[0], store)  # raises the ValidatorFault; nothing is recorded for it
    if halted is not None:
        raise halted  # the finished miners are recorded; the others were not trained
    return results


def _refuse_one_error_for_all(pending: list[_Pending], outcomes: list) -> None:
    """Several miners trained together and every one failed with the same error (type and message): that is the
    validator's recipe, optimizer or library, not their different data. The batch stops as a ValidatorFault and
    nothing is recorded against any of them (a lone miner's failure cannot be told apart: it is its own)."""
    errors = {f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, Exception)}
    if len(pending) >= 2 and len(errors) == 1 and all(isinstance(o, Exception) for o in outcomes):
        raise ValidatorFault(f"all {len(pending)} miners evaluated together failed with the same error, so it is the "
                             f"validator's (its recipe, optimizer or libraries), not their data: {errors.pop()}; "
                             "nothing was recorded against them: fix it and run the epoch again")


def _with_base_losses(results: dict, shards: dict[str, ShardToEvaluate], evaluator: EvaluatorResource,
                      hub: HubResource, store: StoreResource,
                      settings: ValidatorSettingsResource) -> dict[str, EvalRecord | Exception]:
    """Each evaluated miner's record with its competition and the base model's loss on the same eval set (computed
    once per eval set and recipe, and cached: the scoring step reads the same entry)."""
    bars: dict[tuple, float] = {}
    for hotkey, found in shards.items():
        record = results.get(hotkey)
        if not isinstance(record, EvalRecord) or record.status != "ok":
            continue
        competition = found.shard.competition
        key = (competition, found.eval_repo, found.eval_revision)
        if key not in bars:
            bars[key] = base_eval_loss(evaluator, hub, store, found.eval_repo, found.eval_revision,
                                       shard_competition(settings, competition))
        results[hotkey] = replace(record, competition=competition, base_loss=bars[key])
    return results


def _record_outcome(p: _Pending, outcome, store: StoreResource) -> EvalRecord | TransientEvalError:
    """Record one miner's evaluation outcome (an EvalOutcome or the exception it raised)."""
    shard, attempts = p.found.shard, p.attempts + 1
    if not isinstance(outcome, Exception) and not math.isfinite(outcome.eval_loss):
        outcome = FloatingPointError(f"eval loss is {outcome.eval_loss}")
    if isinstance(outcome, Exception):  # a crash is recorded as this miner's failure, never as a made-up loss ...
        exc = outcome
        if is_validator_fault(exc):  # ... unless it is the validator's own: then nothing is recorded
            raise ValidatorFault(f"evaluating {p.hotkey} failed in the validator's environment, not the miner's "
                                 f"data: {type(exc).__name__}: {exc}") from exc
        error = f"{type(exc).__name__}: {exc}"
        retry = attempts < MAX_ATTEMPTS and not isinstance(exc, ValueError)  # ValueError: the data, not luck
        store.record_eval_result(_row(p.key, shard.shard_hash, "failed", error, None, [], [], 0, 0, 0.0,
                                          p.provenance, attempts, final=not retry))
        if retry:
            trace = "".join(traceback.format_exception(exc, limit=3))
            failure = TransientEvalError(f"attempt {attempts}/{MAX_ATTEMPTS} failed: {error}\n{trace}")
            failure.__cause__ = exc
            return failure
        return EvalRecord(p.hotkey, "failed", error, p.key, attempts=attempts)
    provenance = {**p.provenance, "procedure": getattr(outcome, "procedure", "single")}  # what actually ran: a
    # multi-LoRA pass that failed as a whole is redone one set at a time
    result = _row(p.key, shard.shard_hash, "ok", None, outcome.eval_loss, outcome.per_row_losses,
                  outcome.train_losses, outcome.train_tokens, outcome.eval_tokens,
                  outcome.train_seconds + outcome.eval_seconds, provenance, attempts, metrics=outcome.metrics)
    store.record_eval_result(result)
    return _record_of(p.hotkey, result, cached=False)


def _row(key, shard, status, error, loss, per_row, train_losses, train_tokens, eval_tokens, seconds, provenance,
         attempts, final: bool = True, metrics: dict | None = None) -> EvalResultRecord:
    return EvalResultRecord(cache_key=key, shard_hash=shard, status=status, final=final, error=error,
                            eval_loss=None if loss is None else float(loss),
                            per_row_losses=tuple(float(x) for x in per_row),
                            train_losses=tuple(float(x) for x in train_losses), train_tokens=int(train_tokens),
                            eval_tokens=int(eval_tokens), seconds=float(seconds), provenance=provenance,
                            attempts=int(attempts), created_at=utcnow(), metrics=dict(metrics) if metrics else None)


def _record_of(hotkey: str, row: EvalResultRecord, cached: bool) -> EvalRecord:
    ok = row.status == "ok"
    return EvalRecord(hotkey=hotkey, status=row.status, reason=None if ok else row.error,
                      cache_key=row.cache_key, eval_loss=float(row.eval_loss) if ok else None, cached=cached,
                      attempts=int(row.attempts), seconds=float(row.seconds or 0.0),
                      train_tokens=int(row.train_tokens or 0), metrics=row.metrics if ok else None)


BASE_SHARD = "base-model"  # the cache entry of the base model's own eval loss (no training)


def base_eval_loss(evaluator: EvaluatorResource, hub: HubResource, store: StoreResource, eval_repo: str,
                   eval_revision: str, competition: Competition) -> float:
    """The base model's score under the competition's objective on its eval set (the bar a miner's data must
    beat), cached like a miner's result under (base model, recipe, eval revision)."""
    recipe = competition.recipe_overrides()
    provenance = evaluator.provenance(recipe=recipe)
    key = cache_key(BASE_SHARD, provenance, eval_revision)
    cached = store.eval_result(key)
    if cached is not None and cached.status == "ok":
        return float(cached.eval_loss)
    outcome = evaluator.base_loss(load_eval_rows(hub, eval_repo, eval_revision, competition.row_format),
                                  recipe=recipe, objective=competition.objective)
    store.record_eval_result(_row(key, BASE_SHARD, "ok", None, outcome.eval_loss, outcome.per_row_losses, [], 0,
                                      outcome.eval_tokens, outcome.eval_seconds, provenance, 1))
    return float(outcome.eval_loss)


def record_abandoned_evaluation(store: StoreResource, shard_hash: str, provenance: dict, eval_revision: str,
                                error: str, attempts: int) -> None:
    """Record a final failure for a shard whose evaluation runs kept dying without recording anything (killed,
    out of memory, over their time limit): the miner then scores 0 with this error instead of staying pending."""
    key = cache_key(shard_hash, provenance, eval_revision)
    existing = store.eval_result(key)
    if existing is not None and existing.final:
        return
    store.record_eval_result(_row(key, shard_hash, "failed", error, None, [], [], 0, 0, 0.0, provenance, attempts,
                                      final=True))
