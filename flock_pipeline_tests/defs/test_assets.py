"""Each asset materialized on its own with dg.materialize and the local resources."""

import dagster as dg
import pytest

from flock_pipeline.store import EvalResultRecord, frame as records_frame
from flock_pipeline.defs import build_definitions
from flock_pipeline.defs.assets import (ASSETS, chain_commitments, deduplicated_shards, epochs_partitions,
                                        final_corpus, miner_datasets, miner_eval_losses, miners_partitions,
                                        submitted_weights, win_rates, corpus_value)
from flock_pipeline.defs.checks import CHECKS


def _materialize(selection, key, resources, instance, raise_on_error=True):
    return dg.materialize(ASSETS + CHECKS, selection=selection, partition_key=key, resources=resources,
                          instance=instance, raise_on_error=raise_on_error)


def _metadata(result, asset):
    [mat] = result.asset_materializations_for_node(asset.key.path[-1])
    return {k: v.value for k, v in mat.metadata.items()}


def test_definitions_have_the_ten_assets_documented(demo):
    _, resources, _, _ = demo
    defs = build_definitions(resources)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"chain_commitments", "miner_datasets", "deduplicated_shards", "miner_eval_losses", "win_rates",
                    "submitted_weights", "miner_history", "final_corpus", "epoch_report", "corpus_value"}
    for asset in ASSETS:
        assert asset.descriptions_by_key[asset.key], asset.key
    blocking = [c for c in CHECKS if any(spec.blocking for spec in c.check_specs)]
    assert [spec.asset_key for c in blocking for spec in c.check_specs] == [win_rates.key]
    assert miner_eval_losses.op.pool == "gpu" and corpus_value.op.pool == "gpu"


def test_asset_by_asset(demo):
    home, resources, instance, epoch = demo
    key = str(epoch)
    instance.add_dynamic_partitions(epochs_partitions.name, [key])

    meta = _metadata(_materialize([chain_commitments], key, resources, instance), chain_commitments)
    assert meta["commitments"] == 6 and meta["accepted"] == 6 and meta["new_miners"] == 6
    assert set(instance.get_dynamic_partitions(miners_partitions.name)) >= {"hk-honest-good", "hk-copier"}

    meta = _metadata(_materialize([miner_datasets], "hk-malformed", resources, instance), miner_datasets)
    assert meta["status"] == "invalid" and meta["rows_valid"] == 0 and meta["rows_total"] == 5
    assert "| 1 | turn 0: role must be 'user'" in meta["rejected_rows"]
    for hotkey in ("hk-honest-good", "hk-copier", "hk-honest-fair", "hk-weak-offdomain", "hk-empty"):
        meta = _metadata(_materialize([miner_datasets], hotkey, resources, instance), miner_datasets)
        assert len(meta["revision"]) == 40
    assert meta["status"] == "invalid" and meta["reason"] == "empty dataset: no rows"

    meta = _metadata(_materialize([deduplicated_shards], "hk-copier", resources, instance), deduplicated_shards)
    assert meta["status"] == "ineligible" and meta["duplicates_earlier"] == 100 and meta["rows_kept"] == 0
    assert meta["reason"].startswith("duplicate: 100/100 rows") and "uid 1: 100" in meta["reason"]
    meta = _metadata(_materialize([deduplicated_shards], "hk-honest-good", resources, instance), deduplicated_shards)
    assert meta["status"] == "eligible" and meta["rows_kept"] == 100 and len(meta["shard_hash"]) == 64
    meta = _metadata(_materialize([deduplicated_shards], "hk-honest-fair", resources, instance), deduplicated_shards)
    assert meta["status"] == "eligible" and meta["rows_kept"] + meta["duplicates_earlier"] == meta["rows_in"]

    result = _materialize([miner_eval_losses], "hk-honest-good", resources, instance)
    meta = _metadata(result, miner_eval_losses)
    assert meta["status"] == "ok" and 0 < meta["eval_loss"] < 3 and meta["from_cache"] is False
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks.keys() == {"miner_evaluated"}
    assert all(c.passed and c.partition == "hk-honest-good" for c in checks.values())
    meta = _metadata(_materialize([miner_eval_losses], "hk-copier", resources, instance), miner_eval_losses)
    assert meta["status"] == "skipped" and meta["reason"].startswith("duplicate")

    # honest-fair is not evaluated and weak-offdomain not even deduplicated yet: win_rates says so, weight 0
    meta = _metadata(_materialize([win_rates, submitted_weights, final_corpus], key, resources, instance),
                     win_rates)
    assert meta["scored"] == 1
    frame = records_frame(resources["store"].scores(epoch)).set_index("hotkey")
    assert frame.loc["hk-honest-fair", "status"] == "not_evaluated"
    assert frame.loc["hk-weak-offdomain", "status"] == "not_deduplicated"
    assert frame.loc["hk-copier", "status"] == "ineligible" and frame.loc["hk-copier", "weight"] == 0
    assert frame.loc["hk-honest-good", "weight"] == pytest.approx(1.0)


def test_blocking_check_stops_weight_submission(demo, monkeypatch):
    home, resources, instance, epoch = demo
    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.validator import scoring

    run_epoch(epoch, resources, instance)
    before = len(resources["chain"].weights_history("validator"))
    real = scoring.compute_epoch_scores

    def tampered(epoch, evaluator, settings, store, hub, chain):  # a scoring bug that pays an ineligible miner
        scores = [r.replace(weight=0.5) if r.hotkey == "hk-copier" else r
                  for r in real(epoch, evaluator, settings, store, hub, chain)]
        store.record_scores(epoch, scores)
        return scores

    monkeypatch.setattr("flock_pipeline.defs.assets.compute_epoch_scores", tampered)
    result = _materialize([win_rates, submitted_weights], str(epoch), resources, instance, raise_on_error=False)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "not eligible" in check.metadata["problem"].value
    assert result.asset_materializations_for_node("submitted_weights") == []
    assert len(resources["chain"].weights_history("validator")) == before


@pytest.mark.parametrize("damage", ["weights missing", "no build record"])
def test_a_broken_base_model_is_the_validators_fault_not_the_miners(demo, damage):
    """A base model whose weights are missing: the epoch stops with an operator error at the first evaluation; no
    miner gets a failure (or a made-up loss) recorded, and no weights are sent."""
    import shutil

    home, resources, instance, epoch = demo
    from flock_pipeline.defs.epoch import EpochFailed, run_epoch
    from flock_pipeline.resources import EvaluatorResource

    broken = home / "weights-missing"
    shutil.copytree(resources["evaluator"].model_path(), broken)
    (broken / "model.safetensors").unlink()
    if damage == "no build record":  # a plain model directory: nothing to compare with, so it fails to load
        (broken / "flock_build.json").unlink()
    resources = {**resources, "evaluator": EvaluatorResource(base_model=str(broken), cache_dir=str(home / "m"))}
    with pytest.raises(EpochFailed, match="validator fault"):
        run_epoch(epoch, resources, instance)
    assert resources["store"].scores(epoch) == []
    assert resources["store"].rows(EvalResultRecord) == []
    assert resources["chain"].weights_history("validator") == []


def test_commitment_rules(tmp_path):
    """Stale (before re-registration), unregistered, other competition, too young, malformed: rejected with a
    reason; a changed commitment counts from its own block."""
    from flock_pipeline.resources import LocalChainResource, LocalHubResource, ValidatorSettingsResource
    from flock_pipeline.resources.store import StoreResource
    from flock_pipeline.validator.commitments import snapshot_commitments

    chain = LocalChainResource(path=str(tmp_path / "chain.json"), tempo=20)
    hub = LocalHubResource(root=str(tmp_path / "hub"))
    hub.upload("flock/eval-atlas", b'{"conversations": [{"role": "user", "content": "q"}, '
                                   b'{"role": "assistant", "content": "a"}]}\n', private=False)
    store = StoreResource(path=str(tmp_path / "w.duckdb"))
    rev_a, rev_b = "a" * 40, "b" * 40
    for hk in ("ok", "stale", "young", "other", "changed", "bad"):
        chain.register(hk)
    chain.set_commitment("ok", f"ns/ok:1:{rev_a}")
    chain.set_commitment("stale", f"ns/stale:1:{rev_a}")
    chain.set_commitment("other", f"ns/other:2:{rev_a}")
    chain.set_commitment("changed", f"ns/changed:1:{rev_a}")
    chain.set_commitment("bad", "ns/bad:1:main")
    chain.register("stale")  # re-registered after committing
    changed_block = chain.set_commitment("changed", f"ns/changed:1:{rev_b}")
    chain.advance(40 - chain.current_block() - 2)
    young_block = chain.set_commitment("young", f"ns/young:1:{rev_a}")  # 1 block before epoch 2 opens
    chain.advance(1)
    settings = ValidatorSettingsResource(corpus_dir=str(tmp_path / "corpus"), min_commitment_age=5)
    frame = records_frame(snapshot_commitments(2, chain, hub, settings, store)).set_index("hotkey")
    assert frame.loc["ok", "status"] == "ok"
    assert "predates the hotkey's registration" in frame.loc["stale", "reason"]
    assert "competition '2'" in frame.loc["other", "reason"]
    assert "invalid commitment" in frame.loc["bad", "reason"]
    assert frame.loc["young", "commit_block"] == young_block and "minimum age is 5" in frame.loc["young", "reason"]
    assert frame.loc["changed", "status"] == "ok" and frame.loc["changed", "revision"] == rev_b
    assert frame.loc["changed", "commit_block"] == changed_block  # a new submission: its own, later block
    relaxed = ValidatorSettingsResource(corpus_dir=str(tmp_path / "corpus"))
    young = next(c for c in snapshot_commitments(2, chain, hub, relaxed, store) if c.hotkey == "young")
    assert young.status == "ok"


def test_the_epoch_dedup_plan_is_made_once_and_remade_when_its_inputs_change(demo, monkeypatch):
    """Every miner's run plans the whole epoch; near-duplicate matching over all rows runs for the first only."""
    import flock_pipeline.core.competitions.curation as curation
    import flock_pipeline.validator.shards as shards

    _, resources, instance, epoch = demo
    instance.add_dynamic_partitions(epochs_partitions.name, [str(epoch)])
    _materialize([chain_commitments], str(epoch), resources, instance)
    hotkeys = [c.hotkey for c in resources["store"].epoch_commitments(epoch)]
    for hotkey in hotkeys[:-1]:
        _materialize([miner_datasets], hotkey, resources, instance)
    calls = []
    real = curation.deduplicate
    monkeypatch.setattr(curation, "deduplicate", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = (epoch, resources["hub"], resources["settings"], resources["store"])
    first = shards.plan_epoch_shards(*args)
    again = shards.plan_epoch_shards(*args)
    assert len(calls) == 1 and again[0] == first[0]
    kept = [{h: [row_hash for row_hash, _ in rows] for h, rows in plan[1].items()} for plan in (first, again)]
    assert kept[0] == kept[1]
    _materialize([miner_datasets], hotkeys[-1], resources, instance)  # one more dataset: a new plan
    shards.plan_epoch_shards(*args)
    assert len(calls) == 2
