"""The two partitioned halves of the graph as jobs: a run of one epoch's stage (its commitments, or its scores,
weights, history, corpus and report), or of one miner's stage (its dataset, or its shard and evaluation). The
sensors launch their runs as these jobs, `flock epoch run` executes the same jobs in its own process, and with
Celery each stage is a run of them on the workers: every run in the UI names the stage it belongs to."""

import dagster as dg

from flock_pipeline.defs.assets import (SCORING_STAGE, chain_commitments, deduplicated_shards, miner_datasets,
                                        miner_eval_losses)

EPOCH_STAGE_JOB = "epoch_stage"
MINER_STAGE_JOB = "miner_stage"
EPOCH_STAGE = [chain_commitments, *SCORING_STAGE]
MINER_STAGE = [miner_datasets, deduplicated_shards, miner_eval_losses]

epoch_stage = dg.define_asset_job(EPOCH_STAGE_JOB, selection=EPOCH_STAGE,
                                  description="An epoch-partitioned stage: commitments, or scores + weights + "
                                              "history + corpus + report.")
miner_stage = dg.define_asset_job(MINER_STAGE_JOB, selection=MINER_STAGE,
                                  description="A miner-partitioned stage: its dataset, or its shard + evaluation "
                                              "(one miner, or a range of them).")
JOBS = [epoch_stage, miner_stage]
_EPOCH_KEYS = {a.key for a in EPOCH_STAGE}


def stage_job(asset_keys) -> str:
    """The job whose runs materialize `asset_keys` (all of one stage's partitioning)."""
    keys = {k.key if isinstance(k, dg.AssetsDefinition) else k for k in asset_keys}
    return EPOCH_STAGE_JOB if keys <= _EPOCH_KEYS else MINER_STAGE_JOB
