"""Per-miner stages in batches: a run covers a range of miners, with one materialization and one outcome each."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from flock_pipeline.defs.assets import (chain_commitments, deduplicated_shards, epochs_partitions, miner_datasets,
                                        miner_eval_losses)
from flock_pipeline.defs.epoch import _run, run_epoch
from flock_pipeline.resources import build_resources
from flock_pipeline.store import EvalResultRecord

RANGE = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _losses(home) -> dict[str, float]:
    """hotkey -> its recorded eval loss in the home's only epoch."""
    store = build_resources(home)["store"]
    epoch = store.latest_epoch()
    return {r.hotkey: r.eval_loss for r in store.scores(epoch)
            if r.eval_loss is not None and r.eval_loss == r.eval_loss}  # (NaN: not evaluated)


def _eval_runs(instance) -> list:
    """The shard + evaluation runs (their run keys, after the network's scope: `miner:` one miner, `miners:` a
    batch)."""
    return [r for r in instance.get_runs()
            if r.tags.get("dagster/run_key", "").split("/", 1)[-1].startswith(("miner:", "miners:"))]


def test_a_batch_gives_the_same_losses_as_one_run_per_miner_and_as_multi_lora(demo_pair, tmp_path):
    """The reference home ran its miners in one batch run; the same network run one miner per run gives exactly the
    same losses (the same trainer), and multi-LoRA training of the batch gives them to float rounding."""
    epoch, reference, other = demo_pair
    multi = tmp_path / "multi"
    shutil.copytree(other, multi)
    instance = dg.DagsterInstance.ephemeral()
    run_epoch(epoch, build_resources(other), instance, batch=1)
    assert len(_eval_runs(instance)) == 6  # the six miners, one run each (no batch)
    expected = _losses(reference)
    assert len(expected) == 3 and _losses(other) == expected
    resources = build_resources(multi)
    resources["evaluator"] = resources["evaluator"].model_copy(update={"multi_lora": "on"})
    instance = dg.DagsterInstance.ephemeral()
    run_epoch(epoch, resources, instance)
    [batch_run] = _eval_runs(instance)
    assert RANGE[0] in batch_run.tags and RANGE[1] in batch_run.tags
    together = _losses(multi)
    assert together.keys() == expected.keys()
    for hotkey, loss in expected.items():
        assert together[hotkey] == pytest.approx(loss, rel=1e-5)


def test_a_miner_that_fails_inside_a_batch_is_recorded_and_the_others_succeed(demo, monkeypatch):
    """In one batch run: honest-fair's data makes training raise a ValueError (final: recorded as its failure at
    once) and weak-offdomain crashes once with a RuntimeError (the step is retried; the miners already evaluated
    come from the store). Every miner gets its own materialization with its own status."""
    from flock_pipeline.defs.planner import next_epoch_requests, request_miners
    from flock_pipeline.core import evaluator as core_eval
    from flock_pipeline.core.chat import tokenize_row
    from flock_pipeline.validator.datasets import rows_from_json
    from flock_pipeline.validator.shards import build_miner_shard

    home, resources, instance, epoch = demo
    store = resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [str(epoch)])
    _run([chain_commitments], str(epoch), resources, instance)
    hotkeys = [c.hotkey for c in store.epoch_commitments(epoch)]
    provenance = resources["evaluator"].provenance()
    [download], _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=32)
    _run([miner_datasets], None, resources, instance, epoch, tags=dict(download.tags))
    [batch], _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=32)
    assert request_miners(batch, instance) == hotkeys
    base = resources["evaluator"].load()
    recipe = resources["evaluator"].train_recipe()
    owner = {}  # a training set's first tokenised row -> its miner
    for hotkey in hotkeys:
        shard = build_miner_shard(hotkey, resources["hub"], resources["settings"], store, epoch)
        if shard.status == "eligible":
            first = rows_from_json(store.shard_rows(shard.shard_hash))[0]
            owner[tokenize_row(first, base.tokenizer, recipe.max_seq_len).input_ids] = hotkey
    assert len(owner) == 3
    real, crashed = core_eval.train_and_evaluate_tokens, []

    def flaky(base, train_tok, eval_tok, recipe, on_step=None):
        miner = owner[train_tok[0].input_ids]
        if miner == "hk-honest-fair":
            raise ValueError("poisoned rows")
        if miner == "hk-weak-offdomain" and not crashed:
            crashed.append(miner)
            raise RuntimeError("the process lost its worker")
        return real(base, train_tok, eval_tok, recipe, on_step)

    monkeypatch.setattr(core_eval, "train_and_evaluate_tokens", flaky)
    _run([deduplicated_shards, miner_eval_losses], None, resources, instance, epoch, tags=dict(batch.tags))
    results = {r.shard_hash: r for r in store.rows(EvalResultRecord)}
    shards = {s.hotkey: s for s in store.epoch_shards(epoch)}
    fair = results[shards["hk-honest-fair"].shard_hash]
    assert fair.status == "failed" and fair.final and "poisoned rows" in fair.error and fair.attempts == 1
    weak = results[shards["hk-weak-offdomain"].shard_hash]
    assert weak.status == "ok" and weak.attempts == 2  # crashed once, then evaluated on the step's retry
    good = results[shards["hk-honest-good"].shard_hash]
    assert good.status == "ok" and good.attempts == 1  # evaluated once: the retry took it from the store
    events = instance.fetch_materializations(dg.AssetKey("miner_eval_losses"), limit=100).records
    status = {e.partition_key: e.asset_materialization.metadata["status"].value for e in events}
    assert status == {"hk-honest-good": "ok", "hk-honest-fair": "failed", "hk-weak-offdomain": "ok",
                      "hk-malformed": "skipped", "hk-empty": "skipped", "hk-copier": "skipped"}
