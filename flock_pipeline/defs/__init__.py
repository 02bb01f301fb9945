"""The Dagster layer: assets, asset checks, partitions, sensors, jobs, the stage planner, the executor and resource
wiring. Thin by design."""

from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, MINER_STAGE_JOB
from flock_pipeline.defs.wiring import build_definitions, build_executor, epoch_stage_job, miner_stage_job

__all__ = ["EPOCH_STAGE_JOB", "MINER_STAGE_JOB", "build_definitions", "build_executor", "epoch_stage_job",
           "miner_stage_job"]
