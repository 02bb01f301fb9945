"""Dagster entry point (workspace.yaml and `dagster ... -m flock_pipeline.definitions` load this)."""

from flock_pipeline.defs import EPOCH_STAGE_JOB, MINER_STAGE_JOB, build_definitions

defs = build_definitions()


def epoch_stage_job():
    """The epoch-stage job, for `dg.reconstructable` (runs whose steps execute in other processes)."""
    return defs.resolve_job_def(EPOCH_STAGE_JOB)


def miner_stage_job():
    return defs.resolve_job_def(MINER_STAGE_JOB)
