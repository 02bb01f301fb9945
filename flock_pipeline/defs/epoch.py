"""One whole epoch in this process, through the same assets, stage by stage (what the sensors do over time).

Used by `flock epoch run` and `flock demo`, and by the tests. Each stage is a `dg.materialize` of the same asset
definitions with the given resources and instance, so the runs, materializations and check results are recorded
in that Dagster instance exactly as when the sensors launch them.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from flock_pipeline.defs.assets import (ASSETS, EPOCH_TAG, chain_commitments, deduplicated_shards,
                                        epochs_partitions, final_corpus, miner_datasets, miner_eval_losses, submitted_weights,
                                        win_rates)
from flock_pipeline.defs.checks import CHECKS


class EpochFailed(RuntimeError):
    pass


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # per-event DEBUG lines off the console


def _run(selection: list, partition_key: str, resources: dict, instance: dg.DagsterInstance,
         epoch: int | None = None) -> None:
    tags = {EPOCH_TAG: str(epoch)} if epoch is not None else None
    result = dg.materialize(ASSETS + CHECKS, selection=selection, partition_key=partition_key, resources=resources,
                            instance=instance, raise_on_error=False, run_config=QUIET, tags=tags)
    if not result.success:
        errors = [str(e.event_specific_data.error.message).strip() for e in result.all_events
                  if e.is_step_failure and e.event_specific_data.error is not None]
        raise EpochFailed(f"{[a.key.to_user_string() for a in selection]} [{partition_key}] failed: "
                          + ("; ".join(errors) or "see the Dagster logs"))


def run_epoch(epoch: int, resources: dict, instance: dg.DagsterInstance,
              progress: Callable[[str], None] = lambda msg: None) -> None:
    """Materialize every asset of `epoch` in order: commitments, all datasets, then per miner its shard and its
    evaluation (one run per miner), then scores, weights and corpus."""
    key = str(epoch)
    if not instance.has_dynamic_partition(epochs_partitions.name, key):
        instance.add_dynamic_partitions(epochs_partitions.name, [key])
    warehouse = resources["warehouse"]
    progress(f"epoch {epoch}: reading commitments")
    _run([chain_commitments], key, resources, instance)
    commitments = warehouse.epoch_commitments(epoch)
    for c in commitments[commitments["status"] == "ok"].itertuples():
        progress(f"epoch {epoch}: dataset of uid {c.uid}")
        _run([miner_datasets], c.hotkey, resources, instance, epoch)
    for c in commitments[commitments["status"] == "ok"].itertuples():
        progress(f"epoch {epoch}: shard + evaluation of uid {c.uid}")
        _run([deduplicated_shards, miner_eval_losses], c.hotkey, resources, instance, epoch)
    progress(f"epoch {epoch}: win rates, weights, corpus")
    _run([win_rates, submitted_weights, final_corpus], key, resources, instance)
