"""Sensors evaluated with build_sensor_context against the local chain and warehouse."""

import dagster as dg

from flock_pipeline.core.commitment import Commitment
from flock_pipeline.defs.assets import epochs_partitions, miners_partitions
from flock_pipeline.defs.epoch import _run
from flock_pipeline.defs.sensors import commitment_sensor, epoch_progress_sensor, new_block_sensor
from flock_pipeline.defs.assets import (chain_commitments, deduplicated_shards, miner_datasets,
                                        miner_eval_losses)


def _keys(result):
    return [(r.run_key, r.partition_key, [k.to_user_string() for k in r.asset_selection]) for r in result.run_requests]


def test_new_block_sensor_opens_each_epoch_once(demo):
    _, resources, instance, epoch = demo
    chain = resources["chain"]
    ctx = dg.build_sensor_context(instance=instance, resources={"chain": chain})
    result = new_block_sensor(ctx)
    assert _keys(result) == [(f"epoch:{epoch}", str(epoch), ["chain_commitments"])]
    assert result.dynamic_partitions_requests[0].partition_keys == [str(epoch)]
    assert result.cursor == str(epoch)
    again = new_block_sensor(dg.build_sensor_context(instance=instance, resources={"chain": chain},
                                                     cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)
    chain.advance(chain.tempo)
    later = new_block_sensor(dg.build_sensor_context(instance=instance, resources={"chain": chain},
                                                     cursor=result.cursor))
    assert _keys(later)[0][1] == str(epoch + 1)


def test_commitment_sensor_requests_a_download_per_new_revision(demo):
    _, resources, instance, _ = demo
    chain, hub = resources["chain"], resources["hub"]
    res = {"chain": chain, "settings": resources["settings"]}
    result = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res))
    runs = _keys(result)
    assert len(runs) == 6 and all(sel == ["miner_datasets"] for *_, sel in runs)
    assert all(key == f"{hotkey}:{c.revision}" for key, hotkey, _ in runs
               for c in [Commitment.from_compressed_str(next(x.data for x in chain.commitments() if x.hotkey == hotkey))])
    assert set(result.dynamic_partitions_requests[0].partition_keys) == {p for _, p, _ in runs}
    quiet = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=result.cursor))
    assert isinstance(quiet, dg.SkipReason)
    # a miner changes its commitment: one new run, keyed by the new revision; junk commitments are ignored
    owner = type(hub)(root=hub.root, as_owner=True)
    revision = owner.upload("bob/atlas-notes", b'{"conversations": []}\n')
    chain.set_commitment("hk-honest-fair", Commitment("bob/atlas-notes", "1", revision).to_compressed_str())
    chain.register("hk-junk")
    chain.set_commitment("hk-junk", "not a commitment")
    changed = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=result.cursor))
    assert _keys(changed) == [(f"hk-honest-fair:{revision}", "hk-honest-fair", ["miner_datasets"])]


def test_epoch_progress_sensor_walks_the_epoch(demo):
    _, resources, instance, epoch = demo
    key = str(epoch)
    res = {"warehouse": resources["warehouse"]}

    def tick():
        return epoch_progress_sensor(dg.build_sensor_context(instance=instance, resources=res))

    assert isinstance(tick(), dg.SkipReason)  # nothing recorded yet
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    downloads = _keys(tick())
    assert len(downloads) == 6 and {sel[0] for *_, sel in downloads} == {"miner_datasets"}
    for _, hotkey, _ in downloads:
        _run([miner_datasets], hotkey, resources, instance)
    per_miner = _keys(tick())
    assert len(per_miner) == 6
    assert all(sel == ["deduplicated_shards", "miner_eval_losses"] and run_key.startswith(f"miner:{key}:{hotkey}:")
               for run_key, hotkey, sel in per_miner)
    for _, hotkey, _ in per_miner:
        _run([deduplicated_shards, miner_eval_losses], hotkey, resources, instance)
    [(run_key, partition, selection)] = _keys(tick())
    assert run_key == f"score:{key}" and set(selection) == {"win_rates", "submitted_weights", "final_corpus"}
    assert set(instance.get_dynamic_partitions(miners_partitions.name)) == {h for _, h, _ in downloads}
