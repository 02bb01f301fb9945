"""The Dagster definitions from the parts under defs/: assets, checks, jobs, sensors, the executor and the
resources; and the stage jobs' factories for runs whose steps execute in other processes."""

from __future__ import annotations

import dagster as dg

from flock_pipeline.defs.alerts import ALERT_SENSORS
from flock_pipeline.defs.assets import ASSETS
from flock_pipeline.defs.checks import CHECKS
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, JOBS, MINER_STAGE_JOB
from flock_pipeline.defs.sensors import SENSORS
from flock_pipeline.resources import build_resources, executor_settings


def build_executor() -> dg.ExecutorDefinition:
    """FLOCK_EXECUTOR: in-process (the default: a run's steps share one process, so torch is imported and the base
    model loaded once per run), Dagster's multiprocess executor (a run's config may still pick `in_process`), or
    Celery workers."""
    kind, celery = executor_settings()
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery, name="flock_celery_executor")
    return dg.multi_or_in_process_executor


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(assets=ASSETS, asset_checks=CHECKS, sensors=[*SENSORS, *ALERT_SENSORS], jobs=JOBS,
                          executor=build_executor(),
                          resources=resources if resources is not None else build_resources())


def epoch_stage_job():
    """The epoch-stage job, for `dg.reconstructable` (runs whose steps execute in other processes)."""
    return build_definitions().resolve_job_def(EPOCH_STAGE_JOB)


def miner_stage_job():
    """The miner-stage job, for `dg.reconstructable`."""
    return build_definitions().resolve_job_def(MINER_STAGE_JOB)
