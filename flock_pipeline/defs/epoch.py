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
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from flock_pipeline.defs.assets import (ASSETS, EPOCH_TAG, RANGE_END, RANGE_START, SCORING_STAGE, chain_commitments,
                                        epochs_partitions)
from flock_pipeline.core import stop
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, stage_job
from flock_pipeline.defs.planner import failure_messages, next_epoch_requests, provenance_lookup
from flock_pipeline.errors import FlockError

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


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # per-event DEBUG lines off the console


def _run(selection: list, partition_key: str | None, resources: dict, instance: dg.DagsterInstance,
         epoch: int | None = None, tags: dict | None = None) -> None:
    """One run of `selection` for one partition (or, with range tags and no `partition_key`, a range of them). A
    stop asked for by a signal is honoured before the run starts, and a run it cut short ends as Stopped."""
    halted = stop.stopped()
    if halted is not None:
        raise halted
    tags = {**({EPOCH_TAG: str(epoch)} if epoch is not None else {}), **(tags or {})}
    if _steps_elsewhere():
        events, success = _run_elsewhere(selection, partition_key, instance, tags)
    else:
        from flock_pipeline.defs.wiring import build_definitions

        # a run of the stage's job (as the sensors launch it), with these resources, in this process
        job = build_definitions(resources).resolve_job_def(stage_job(selection))
        result = job.execute_in_process(run_config=QUIET, instance=instance, partition_key=partition_key,
                                        raise_on_error=False, tags=tags or None,
                                        asset_selection=[a.key for a in selection])
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


def _run_elsewhere(selection: list, partition_key: str | None, instance: dg.DagsterInstance, tags: dict):
    from flock_pipeline.defs import wiring

    factory = wiring.epoch_stage_job if stage_job(selection) == EPOCH_STAGE_JOB else wiring.miner_stage_job
    where = {"dagster/partition": partition_key} if partition_key is not None else {}
    with dg.execute_job(dg.reconstructable(factory), instance=instance, run_config=QUIET,
                        tags={**tags, **where}, asset_selection=[a.key for a in selection]) as result:
        return list(result.all_events), result.success


def run_epoch(epoch: int, resources: dict, instance: dg.DagsterInstance,
              progress: Callable[[str], None] = lambda msg: None, batch: int | None = None) -> None:
    """Materialize every asset of `epoch` in order: commitments, then exactly the runs the epoch sensor would
    request, stage by stage (datasets, shards + evaluations in batches of `batch` miners, default
    FLOCK_MINER_BATCH, then scores, weights and corpus), each executed in this process."""
    from flock_pipeline.resources import flock_home

    with runner_lock(resources["store"].local_dir() or flock_home()):
        _run_stages(epoch, resources, instance, progress, batch)


ASSET_BY_KEY = {a.key: a for a in ASSETS}


def _run_stages(epoch: int, resources: dict, instance: dg.DagsterInstance, progress: Callable[[str], None],
                batch: int | None = None) -> None:
    from flock_pipeline.resources import batch_settings
    from flock_pipeline.validator.datasets import verdict_keys

    key = str(epoch)
    if not instance.has_dynamic_partition(epochs_partitions.name, key):
        instance.add_dynamic_partitions(epochs_partitions.name, [key])
    store, evaluator, settings = resources["store"], resources["evaluator"], resources["settings"]
    progress(f"epoch {epoch}: reading commitments")
    _run([chain_commitments], key, resources, instance)
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
            _run(SCORING_STAGE, key, resources, instance)
            return
        if launched & {r.run_key for r in requests}:
            raise EpochFailed(f"epoch {epoch}: no progress at stage {stage!r}: its runs succeeded but recorded "
                              "nothing (see the Dagster logs)")
        progress(f"epoch {epoch}: {stage}")
        for request in requests:
            launched.add(request.run_key)
            _run([ASSET_BY_KEY[k] for k in request.asset_selection], request.partition_key, resources, instance,
                 tags={**request.tags, "dagster/run_key": request.run_key})
        if any(r.partition_key == key for r in requests):  # the epoch's own stage: scores, weights, corpus
            return
