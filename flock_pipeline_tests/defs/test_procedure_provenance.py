"""A result says how it was trained: a multi-LoRA pass that fails as a whole is redone one miner at a time, and the
results of those runs record the single procedure, not the one that failed."""

from __future__ import annotations

import dagster as dg
import pytest

from flock_pipeline.defs.epoch import run_epoch
from flock_pipeline.demo import seed_demo_network
from flock_pipeline.resources import build_resources
from flock_pipeline.store import EvalResultRecord
from flock_pipeline.validator.evaluation import BASE_SHARD


@pytest.mark.parametrize("fails, procedure", [(False, "multi-lora"), (True, "single")])
def test_the_recorded_procedure_is_the_one_that_ran(flock_home, monkeypatch, fails, procedure):
    from flock_pipeline.core import multilora

    epoch = seed_demo_network(flock_home)
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    monkeypatch.setenv("FLOCK_MULTI_LORA", "on")  # multi-LoRA on the CPU too
    if fails:
        def out_of_memory(*args, **kwargs):
            raise RuntimeError("CUDA out of memory at the smallest micro-batch")  # the whole pass fails

        monkeypatch.setattr(multilora, "train_and_evaluate_many", out_of_memory)
    resources = build_resources(flock_home)
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    results = [r for r in resources["store"].rows(EvalResultRecord, status="ok") if r.shard_hash != BASE_SHARD]
    assert results and {r.provenance["procedure"] for r in results} == {procedure}
