"""One whole epoch, through the same assets, stage by stage (what the sensors do over time).

Used by `flock epoch run` and `flock demo`, and by the tests. The runner asks the epoch sensor's own request logic
(`sensors.next_epoch_requests`) for the next stage and executes exactly those runs (per-miner stages in batches of
miners), each a run of the stage's job (`epoch_stage` or `miner_stage`, as the sensors launch them) with the given
resources and instance, so the runs, materializations and check results are recorded in that Dagster instance
exactly as when the sensors launch them.
With FLOCK_EXECUTOR=celery each stage is instead a run of the stage job on the (persistent) instance, and its steps
execute on the Celery workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from flock_pipeline.defs.assets import (ASSETS, EPOCH_TAG, RANGE_END, RANGE_START, SCORING_STAGE,
                                        chain_commitments, epochs_partitions, miner_eval_losses)
from flock_pipeline.core import stop
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, stage_job
from flock_pipeline.defs.planner import failure_messages, next_epoch_requests, provenance_lookup, request_miners
from flock_pipeline.defs.stages import stage_tags
from flock_pipeline.errors import FlockError
from flock_pipeline.validator.evaluation import MinerDone

class EpochFailed(FlockError, RuntimeError):
    """An epoch stopped before its end; the message says at which stage and why (what was recorded is kept)."""


class RunnerBusy(EpochFailed):
    """Another epoch runner works on the same home."""


@contextlib.contextmanager
def runner_lock(home: Path):
    """One in-process epoch runner per home at a time (two would both train every miner): an exclusive, non-blocking
    lock on `<home>/epoch-runner.lock`, released when the runner exits or dies. (Several machines coordinate through
    Dagster's run queue and the shared store instead.)"""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "epoch-runner.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunnerBusy(f"another epoch runner ({holder}) is working on {home}: wait for it to finish or stop "
                             "it; nothing was started") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}  # the runs' info and warnings off the console


def console_config(verbose: int = 0) -> dict:
    """The runs' console log level: warnings (the default), the steps' own info lines (-v: each miner's outcome
    in each step), or every event Dagster logs (-vv)."""
    if verbose <= 0:
        return QUIET
    return {"loggers": {"console": {"config": {"log_level": "INFO" if verbose == 1 else "DEBUG"}}}}


def _run(selection: list, partition_key: str | None, resources: dict, instance: dg.DagsterInstance,
         epoch: int | None = None, tags: dict | None = None, watch: Callable | None = None,
         verbose: int = 0) -> None:
    """One run of `selection` for one partition (or, with range tags and no `partition_key`, a range of them). A
    stop asked for by a signal is honoured before the run starts, and a run it cut short ends as Stopped.
    `watch(entry)` is told each entry of the run's event log as it is written (runs in this process)."""
    halted = stop.stopped()
    if halted is not None:
        raise halted
    tags = {**stage_tags(selection), **({EPOCH_TAG: str(epoch)} if epoch is not None else {}), **(tags or {})}
    if _steps_elsewhere():
        events, success = _run_elsewhere(selection, partition_key, instance, tags, verbose)
    else:
        from flock_pipeline.defs.wiring import build_definitions

        # a run of the stage's job (as the sensors launch it), with these resources, in this process
        job = build_definitions(resources).resolve_job_def(stage_job(selection))
        run_id = str(uuid.uuid4())
        if watch is not None:
            instance.add_event_listener(run_id, watch)
        result = job.execute_in_process(run_config=console_config(verbose), instance=instance,
                                        partition_key=partition_key, raise_on_error=False, tags=tags or None,
                                        asset_selection=[a.key for a in selection], run_id=run_id)
        events, success = result.all_events, result.success
    if not success:
        halted = stop.stopped()
        if halted is not None:  # the run stopped at a safe point between miners: what it finished is recorded
            raise halted
        errors = failure_messages(events)
        where = partition_key if partition_key is not None else \
            f"{tags.get(RANGE_START)}...{tags.get(RANGE_END)}"
        raise EpochFailed(f"{[a.key.to_user_string() for a in selection]} [{where}] failed: "
                          + ("; ".join(errors) or "see the Dagster logs"))


def _steps_elsewhere() -> bool:
    """FLOCK_EXECUTOR=celery: each stage is a run of the stage job whose steps the Celery workers execute (with
    the resources their own environment builds), instead of this process."""
    from flock_pipeline.resources import executor_settings

    return executor_settings()[0] == "celery"


def _run_elsewhere(selection: list, partition_key: str | None, instance: dg.DagsterInstance, tags: dict,
                   verbose: int = 0):
    from flock_pipeline.defs import wiring

    factory = wiring.epoch_stage_job if stage_job(selection) == EPOCH_STAGE_JOB else wiring.miner_stage_job
    where = {"dagster/partition": partition_key} if partition_key is not None else {}
    with dg.execute_job(dg.reconstructable(factory), instance=instance, run_config=console_config(verbose),
                        tags={**tags, **where}, asset_selection=[a.key for a in selection]) as result:
        return list(result.all_events), result.success


def run_epoch(epoch: int, resources: dict, instance: dg.DagsterInstance,
              progress: Callable[[str], None] = lambda msg: None, batch: int | None = None,
              verbose: int = 0) -> None:
    """Materialize every asset of `epoch` in order: commitments, then exactly the runs the epoch sensor would
    request, stage by stage (datasets, shards + evaluations in batches of `batch` miners, default
    FLOCK_MINER_BATCH, then scores, weights and corpus), each executed in this process.

    `progress` is told a line per stage and, while the evaluations run, a line per finished miner:
    `[k/n] uid U HOTKEY: loss L (S s) ETA T s` (k of the stage's n miners; runs in this process only: with
    FLOCK_EXECUTOR=celery the miners' lines are in the runs' event logs). `verbose` 1 or 2 lets the runs' own
    info or debug lines through to the console logger."""
    from flock_pipeline.resources import flock_home

    with runner_lock(resources["store"].local_dir() or flock_home()):
        _run_stages(epoch, resources, instance, progress, batch, verbose)


ASSET_BY_KEY = {a.key: a for a in ASSETS}


class MinerTicker:
    """The per-miner lines of an evaluation stage: each miner's outcome as the evaluation step writes it to its
    run's event log (the step's progress lines, see `assets.miner_progress`), counted over the whole stage
    (every batch run of it), with an estimate of the time left from the miners trained so far."""

    def __init__(self, epoch: int, requests: list, instance: dg.DagsterInstance, store,
                 progress: Callable[[str], None]):
        self.total = sum(len(request_miners(r, instance)) for r in requests
                         if miner_eval_losses.key in (r.asset_selection or []))
        self.uids = {c.hotkey: c.uid for c in store.epoch_commitments(epoch)} if self.total else {}
        self.progress, self.started = progress, time.monotonic()
        self.seen: set[str] = set()  # a retried step tells its miners again: each counts once
        self.trained = 0

    def __call__(self, entry) -> None:
        if entry.dagster_event is not None or entry.step_key != miner_eval_losses.key.to_user_string():
            return
        read = MinerDone.of_line(entry.user_message or "")
        if read is None:
            return
        miner = read[0]
        if miner.hotkey not in self.seen:
            self.seen.add(miner.hotkey)
            self.trained += miner.status != "skipped" and not miner.cached
        uid = miner.uid if miner.uid is not None else self.uids.get(miner.hotkey, "?")
        done, total = len(self.seen), max(self.total, len(self.seen))
        if miner.status == "ok":
            what = f"loss {miner.loss:.4f} " + ("(from the store)" if miner.cached else f"({miner.seconds:.1f} s)")
        else:
            what = miner.summary()
        eta = ""
        if self.trained and done < total:
            eta = f" ETA {(time.monotonic() - self.started) / self.trained * (total - done):.0f} s"
        self.progress(f"[{done}/{total}] uid {uid} {miner.hotkey}: {what}{eta}")


def _run_stages(epoch: int, resources: dict, instance: dg.DagsterInstance, progress: Callable[[str], None],
                batch: int | None = None, verbose: int = 0) -> None:
    from flock_pipeline.resources import batch_settings
    from flock_pipeline.validator.datasets import verdict_keys

    key = str(epoch)
    if not instance.has_dynamic_partition(epochs_partitions.name, key):
        instance.add_dynamic_partitions(epochs_partitions.name, [key])
    store, evaluator, settings = resources["store"], resources["evaluator"], resources["settings"]
    progress(f"epoch {epoch}: reading commitments")
    _run([chain_commitments], key, resources, instance, verbose=verbose)
    provenance_of = provenance_lookup(evaluator, settings)
    launched: set[str] = set()
    size = batch or batch_settings()[0]
    while True:
        requests, stage = next_epoch_requests(epoch, store, instance, provenance_of,
                                              resources["chain"].current_block(), 0,
                                              verdict_keys(settings), batch=size,
                                              network=resources["chain"].network_id())
        if not requests:
            if stage.startswith("stopped by a validator fault"):
                raise EpochFailed(f"epoch {epoch}: {stage}")
            # every miner's work is recorded (this run or an earlier one): the epoch's own stage runs again, so
            # a re-run applies today's scoring settings (weights already sent are confirmed, never sent twice)
            progress(f"epoch {epoch}: scoring (every miner's work was already recorded)")
            _run(SCORING_STAGE, key, resources, instance, verbose=verbose)
            return
        if launched & {r.run_key for r in requests}:
            raise EpochFailed(f"epoch {epoch}: no progress at stage {stage!r}: its runs succeeded but recorded "
                              "nothing (see the Dagster logs)")
        progress(f"epoch {epoch}: {stage}")
        ticker = MinerTicker(epoch, requests, instance, store, progress)
        for request in requests:
            launched.add(request.run_key)
            _run([ASSET_BY_KEY[k] for k in request.asset_selection], request.partition_key, resources, instance,
                 tags={**request.tags, "dagster/run_key": request.run_key}, watch=ticker if ticker.total else None,
                 verbose=verbose)
        if any(r.partition_key == key for r in requests):  # the epoch's own stage: scores, weights, corpus
            return
