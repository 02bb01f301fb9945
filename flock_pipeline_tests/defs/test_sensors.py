"""Sensors evaluated with build_sensor_context against the local chain and store."""

import json

import dagster as dg

from flock_pipeline.resources import EvaluatorResource
from flock_pipeline.store import EvalResultRecord
from flock_pipeline.core.commitment import Commitment
from flock_pipeline.defs.assets import epochs_partitions, miners_partitions
from flock_pipeline.defs.epoch import _run
from flock_pipeline.defs.planner import request_miners
from flock_pipeline.defs.sensors import commitment_sensor, epoch_progress_sensor, new_block_sensor
from flock_pipeline.defs.assets import (chain_commitments, deduplicated_shards, miner_datasets,
                                        miner_eval_losses)


def _keys(result):
    return [(r.run_key, r.partition_key, [k.to_user_string() for k in r.asset_selection]) for r in result.run_requests]


def test_new_block_sensor_opens_each_epoch_once(demo):
    _, resources, instance, epoch = demo
    chain = resources["chain"]
    block_res = {k: resources[k] for k in ("chain", "hub", "settings", "store")}
    ctx = dg.build_sensor_context(instance=instance, resources=block_res)
    result = new_block_sensor(ctx)
    net = chain.network_id()
    assert net.startswith("local-") and chain.network_id() == net
    assert _keys(result) == [(f"{net}/epoch:{epoch}", str(epoch), ["chain_commitments"])]
    assert result.run_requests[0].job_name == "epoch_stage"
    assert result.dynamic_partitions_requests[0].partition_keys == [str(epoch)]
    assert json.loads(result.cursor) == {"network": net, "state": epoch}
    again = new_block_sensor(dg.build_sensor_context(instance=instance, resources=block_res,
                                                     cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)
    legacy = new_block_sensor(dg.build_sensor_context(instance=instance, resources=block_res,
                                                      cursor=str(epoch)))  # a cursor from before networks
    assert isinstance(legacy, dg.SkipReason)
    chain.advance(chain.tempo)
    later = new_block_sensor(dg.build_sensor_context(instance=instance, resources=block_res,
                                                     cursor=result.cursor))
    assert _keys(later)[0][1] == str(epoch + 1)


def test_sensors_start_again_on_a_reseeded_network(demo):
    """`flock demo` seeds a new local chain whose epochs, blocks and revisions repeat the old one's: the sensors'
    cursors and run keys name the network, so the new network's epoch opens and its datasets are fetched (Dagster
    never launches a run key twice, so the old keys would leave the sensors stuck)."""
    from flock_pipeline.demo import seed_demo_network
    from flock_pipeline.resources import build_resources

    home, resources, instance, epoch = demo
    res = {k: resources[k] for k in ("chain", "hub", "settings", "store")}
    opened = new_block_sensor(dg.build_sensor_context(instance=instance, resources=res))
    fetched = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res))
    old = resources["chain"].network_id()
    assert seed_demo_network(home) == epoch
    again = build_resources(home)
    res = {k: again[k] for k in ("chain", "hub", "settings", "store")}
    assert again["chain"].network_id() != old
    reopened = new_block_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=opened.cursor))
    assert [r.partition_key for r in reopened.run_requests] == [str(epoch)]
    assert reopened.run_requests[0].run_key != opened.run_requests[0].run_key
    refetched = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=fetched.cursor))
    assert [request_miners(r, instance) for r in refetched.run_requests] == \
        [request_miners(r, instance) for r in fetched.run_requests]
    assert {r.run_key for r in refetched.run_requests}.isdisjoint(r.run_key for r in fetched.run_requests)


def test_commitment_sensor_downloads_new_revisions_in_one_batch(demo):
    """New commitments are fetched ahead of the epoch in one run over the miners' partition range (their
    partitions are added by the same tick), keyed by every miner's hotkey:revision; one changed commitment is a run
    of its own."""
    from flock_pipeline.defs.assets import RANGE_END, RANGE_START
    from flock_pipeline.defs.planner import PREFETCH_TAG

    _, resources, instance, _ = demo
    chain, hub = resources["chain"], resources["hub"]
    res = {"chain": chain, "settings": resources["settings"]}
    result = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res))
    hotkeys = [c.hotkey for c in chain.commitments()]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == hotkeys
    [run] = result.run_requests
    assert [k.to_user_string() for k in run.asset_selection] == ["miner_datasets"]
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (hotkeys[0], hotkeys[-1])
    net = chain.network_id()
    assert run.tags[PREFETCH_TAG] == "true"
    assert run.run_key.startswith(f"{net}/prefetch:{hotkeys[0]}..{hotkeys[-1]}:6:")
    quiet = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=result.cursor))
    assert isinstance(quiet, dg.SkipReason)
    # a miner changes its commitment: one new run, keyed by the new revision; junk commitments are ignored
    instance.add_dynamic_partitions(miners_partitions.name, hotkeys)
    owner = type(hub)(root=hub.root, as_owner=True)
    revision = owner.upload("bob/atlas-notes", b'{"conversations": []}\n')
    chain.set_commitment("hk-honest-fair", Commitment("bob/atlas-notes", "1", revision).to_compressed_str())
    chain.register("hk-junk")
    chain.set_commitment("hk-junk", "not a commitment")
    changed = commitment_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=result.cursor))
    assert _keys(changed) == [(f"{net}/hk-honest-fair:{revision}", "hk-honest-fair", ["miner_datasets"])]


def test_epoch_progress_sensor_walks_the_epoch(demo):
    _, resources, instance, epoch = demo
    key = str(epoch)
    res = {"store": resources["store"], "evaluator": resources["evaluator"], "chain": resources["chain"],
           "settings": resources["settings"]}

    def tick():
        return epoch_progress_sensor(dg.build_sensor_context(instance=instance, resources=res))

    assert isinstance(tick(), dg.SkipReason)  # nothing recorded yet
    chain = resources["chain"]
    assert chain.set_weights("validator", [0], [65535]).success  # a recent submission: the next is rate-limited
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    hotkeys = [c.hotkey for c in resources["store"].epoch_commitments(epoch)]
    [downloads] = tick().run_requests  # every dataset in one run over the miners' partition range
    assert [k.to_user_string() for k in downloads.asset_selection] == ["miner_datasets"]
    assert downloads.tags["flock/epoch"] == key and request_miners(downloads, instance) == hotkeys
    _run_request(downloads, resources, instance)
    [batch] = tick().run_requests  # shards + evaluations: 6 miners, one batch (FLOCK_MINER_BATCH is 64)
    assert [k.to_user_string() for k in batch.asset_selection] == ["deduplicated_shards", "miner_eval_losses"]
    net = chain.network_id()
    assert batch.run_key.startswith(f"{net}/miners:{key}:") and request_miners(batch, instance) == hotkeys
    assert (downloads.job_name, batch.job_name) == ("miner_stage", "miner_stage")
    _run_request(batch, resources, instance)
    [(run_key, partition, selection)] = _keys(tick())
    assert run_key == f"{net}/score:{key}" and tick().run_requests[0].job_name == "epoch_stage"
    assert set(selection) == {"win_rates", "submitted_weights", "miner_history", "final_corpus", "epoch_report"}
    from flock_pipeline.defs.assets import final_corpus, submitted_weights, win_rates

    _run([win_rates, submitted_weights, final_corpus], key, resources, instance)
    sent = resources["store"].weight_submission(epoch)
    assert not sent.success and "rate limited" in sent.message
    waiting = tick()
    assert isinstance(waiting, dg.SkipReason) and "rate-limited until block" in waiting.skip_message
    chain.advance(chain.weights_rate_limit)
    [(run_key, _, selection)] = _keys(tick())
    assert run_key == f"{net}/weights:{key}:{sent.retry_after_block}" and selection == ["submitted_weights"]
    _run([submitted_weights], key, resources, instance)
    assert resources["store"].weight_submission(epoch).success
    assert isinstance(tick(), dg.SkipReason)
    assert instance.get_dynamic_partitions(miners_partitions.name) == hotkeys


def _run_request(request, resources, instance):
    """Execute a sensor's run request as the daemon would launch it (its tags, range and run key)."""
    from flock_pipeline.defs.epoch import ASSET_BY_KEY

    _run([ASSET_BY_KEY[k] for k in request.asset_selection], request.partition_key, resources, instance,
         tags={**request.tags, "dagster/run_key": request.run_key})


def _repo_revision(resources, hotkey):
    c = resources["store"].miner_commitment(hotkey)
    return c.repo, c.revision


def test_a_run_that_crashes_is_retried_under_a_new_key_then_given_up(demo, tmp_path, monkeypatch):
    """A run that dies without recording anything must not block its miner's run key, nor the epoch, for good.
    (One miner per run here; how a dying batch comes apart into such runs is the next test.)"""
    from flock_pipeline.defs.assets import ASSETS
    from flock_pipeline.defs.checks import CHECKS
    from flock_pipeline.resources import EvaluatorResource

    monkeypatch.setattr("flock_pipeline.resources.DATASET_BATCH", 1)
    monkeypatch.setenv("FLOCK_MINER_BATCH", "1")

    _, resources, instance, epoch = demo
    key = str(epoch)
    res = {"store": resources["store"], "evaluator": resources["evaluator"], "chain": resources["chain"],
           "settings": resources["settings"]}
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    broken = {**resources, "evaluator": EvaluatorResource(base_model=str(tmp_path), cache_dir=str(tmp_path))}

    def tick():
        return epoch_progress_sensor(dg.build_sensor_context(instance=instance, resources=res))

    for attempt in range(3):
        request = next(r for r in tick().run_requests if r.partition_key == "hk-empty")
        suffix = "" if attempt == 0 else f"#retry{attempt}"
        assert request.run_key.endswith(suffix)
        assert request.run_key.split("/", 1)[1].startswith(f"dataset:{key}:hk-empty:")
        tags = {"dagster/run_key": request.run_key, **request.tags}
        if attempt == 0:  # a real crash (the step fails through its retries and records nothing)
            failed = dg.materialize(ASSETS + CHECKS, selection=[miner_datasets], partition_key="hk-empty",
                                    resources=broken, instance=instance, raise_on_error=False, tags=tags)
            assert not failed.success
            assert resources["store"].dataset(*_repo_revision(resources, "hk-empty")) is None
        else:  # later crashes: recorded straight as failed runs (the real path takes ~15 s of retry back-off)
            instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=f"crash-{attempt}",
                                           status=dg.DagsterRunStatus.FAILURE, tags=tags))
    assert "hk-empty" not in [r.partition_key for r in tick().run_requests]  # given up after three crashes


def test_an_evaluation_whose_runs_keep_dying_is_recorded_as_failed(demo):
    """Evaluation runs that die without a result (killed, out of memory, over their time limit) are retried under
    new keys; after the last one the miner is recorded as failed with the error, and the epoch goes on."""
    from flock_pipeline.defs.planner import MAX_RUN_ATTEMPTS, next_epoch_requests
    from flock_pipeline.validator.evaluation import cache_key
    from flock_pipeline.validator.scoring import compute_epoch_scores

    _, resources, instance, epoch = demo
    key = str(epoch)
    store, evaluator = resources["store"], resources["evaluator"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    hotkeys = [c.hotkey for c in store.epoch_commitments(epoch)]
    for hotkey in hotkeys:
        _run([miner_datasets], hotkey, resources, instance, epoch)
    _run([deduplicated_shards], "hk-honest-fair", resources, instance, epoch)
    provenance = evaluator.provenance()
    gpu = EvaluatorResource(run_tags=json.dumps({"dagster-k8s/config": {"container_config": {
        "resources": {"limits": {"nvidia.com/gpu": "1"}}}}})).evaluation_run_tags()
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, eval_timeout_s=600,
                                      eval_tags=gpu)
    fair = next(r for r in requests if r.partition_key == "hk-honest-fair")
    assert fair.tags["dagster/max_runtime"] == "600"  # run monitoring fails it past 10 minutes
    assert json.loads(fair.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"] == {
        "nvidia.com/gpu": "1"}  # the Kubernetes run launcher gives the evaluation run's pod a GPU
    for attempt in range(MAX_RUN_ATTEMPTS):
        run_key = fair.run_key if attempt == 0 else f"{fair.run_key}#retry{attempt}"
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=f"died-{attempt}",
                                       status=dg.DagsterRunStatus.FAILURE, tags={"dagster/run_key": run_key}))
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    assert "hk-honest-fair" not in [r.partition_key for r in requests]  # given up: the others go on
    assert len(requests) == len(hotkeys) - 1
    shard = next(s for s in store.epoch_shards(epoch) if s.hotkey == "hk-honest-fair")
    result = store.eval_result(cache_key(shard.shard_hash, provenance, store.epoch_info(epoch).eval_revision))
    assert result.status == "failed" and result.final and result.eval_loss is None
    assert "3 evaluation runs failed without a result" in result.error
    for hotkey in hotkeys:
        if hotkey != "hk-honest-fair":
            _run([deduplicated_shards, miner_eval_losses], hotkey, resources, instance, epoch)
    scores = compute_epoch_scores(epoch, evaluator, resources["settings"], store, resources["hub"])
    by_hotkey = {r.hotkey: r for r in scores}
    row = by_hotkey["hk-honest-fair"]
    assert row.status == "failed" and row.weight == 0.0 and "evaluation runs failed" in row.reason
    assert by_hotkey["hk-honest-good"].weight > 0


def test_evaluation_runs_stopped_by_a_validator_fault_are_never_recorded_against_the_miner(demo):
    """Three evaluation runs that failed with a ValidatorFault (here: FLOCK_DEVICE=cuda on a CPU-only machine): the
    sensor gives them up like any dying run, but records no failure for the miner and says the epoch is stopped by the
    validator's fault; with the device fixed, a new run key evaluates the miner."""
    from flock_pipeline.defs.assets import ASSETS
    from flock_pipeline.defs.checks import CHECKS
    from flock_pipeline.defs.planner import MAX_RUN_ATTEMPTS, next_epoch_requests
    from flock_pipeline.resources import EvaluatorResource

    home, resources, instance, epoch = demo
    key = str(epoch)
    store = resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    for hotkey in [c.hotkey for c in store.epoch_commitments(epoch)]:
        _run([miner_datasets], hotkey, resources, instance, epoch)
    cuda = {**resources, "evaluator": EvaluatorResource(device="cuda", cache_dir=str(home / "models"))}
    provenance = cuda["evaluator"].provenance()
    for _attempt in range(MAX_RUN_ATTEMPTS):
        requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
        fair = next(r for r in requests if r.partition_key == "hk-honest-fair")
        failed = dg.materialize(ASSETS + CHECKS, selection=[deduplicated_shards, miner_eval_losses],
                                partition_key="hk-honest-fair", resources=cuda, instance=instance,
                                raise_on_error=False, tags={"dagster/run_key": fair.run_key, **fair.tags})
        assert not failed.success
    requests, stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    assert "hk-honest-fair" not in [r.partition_key for r in requests]
    assert store.rows(EvalResultRecord) == []  # nothing recorded against the miner
    for r in requests:  # the others run into the same fault; once they have too, the epoch says why it stopped
        for attempt in range(MAX_RUN_ATTEMPTS):
            suffix = "" if attempt == 0 else f"#retry{attempt}"
            run_key = r.run_key.split("#")[0] + suffix
            dg.materialize(ASSETS + CHECKS, selection=[deduplicated_shards, miner_eval_losses],
                           partition_key=r.partition_key, resources=cuda, instance=instance, raise_on_error=False,
                           tags={**r.tags, "dagster/run_key": run_key})
    requests, stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    assert requests == [] and stage.startswith("stopped by a validator fault") and "FLOCK_DEVICE=cuda" in stage
    assert store.rows(EvalResultRecord) == []


def test_a_batch_that_keeps_dying_comes_apart_into_runs_of_one_miner(demo):
    """Batches follow the partitions' order and the batch size; a batch whose runs died MAX_RUN_ATTEMPTS times is
    requested again one miner per run (under each miner's own key), so a miner that kills its run is found alone."""
    from flock_pipeline.defs.planner import MAX_RUN_ATTEMPTS, next_epoch_requests

    _, resources, instance, epoch = demo
    key = str(epoch)
    store = resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    hotkeys = [c.hotkey for c in store.epoch_commitments(epoch)]
    provenance = resources["evaluator"].provenance()
    [download], stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4)
    assert request_miners(download, instance) == hotkeys and stage == "downloading 6 dataset(s) in 1 run(s)"
    for attempt in range(MAX_RUN_ATTEMPTS):
        run_key = download.run_key if attempt == 0 else f"{download.run_key}#retry{attempt}"
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=f"batch-died-{attempt}",
                                       status=dg.DagsterRunStatus.FAILURE, tags={"dagster/run_key": run_key}))
    singles, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4)
    assert [r.partition_key for r in singles] == hotkeys
    assert all(r.run_key.startswith(f"dataset:{key}:{r.partition_key}:") for r in singles)
    _run_request(download, resources, instance)  # (the batch itself works: a real run of all six)
    evaluations, stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4)
    assert [request_miners(r, instance) for r in evaluations] == [hotkeys[:4], hotkeys[4:]]
    assert stage == "deduplicating + evaluating 6 miner(s) in 2 run(s)"


def test_the_epoch_sensor_waits_for_the_commitment_sensors_downloads(demo):
    """While a prefetch run of the commitment sensor is in progress, the epoch sensor requests no download of its
    own (the same files would be fetched twice); once it has ended, the missing datasets are requested."""
    from flock_pipeline.defs.planner import PREFETCH_TAG, next_epoch_requests

    _, resources, instance, epoch = demo
    instance.add_dynamic_partitions(epochs_partitions.name, [str(epoch)])
    _run([chain_commitments], str(epoch), resources, instance)
    provenance = resources["evaluator"].provenance()
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id="prefetching", status=dg.DagsterRunStatus.STARTED,
                                   tags={PREFETCH_TAG: "true"}))
    requests, stage = next_epoch_requests(epoch, resources["store"], instance, lambda _c: provenance)
    assert requests == [] and stage == "waiting for the commitment sensor's downloads (6 dataset(s) missing)"
    instance.delete_run("prefetching")  # it ended (here: failed, so nothing was recorded)
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id="prefetched", status=dg.DagsterRunStatus.FAILURE,
                                   tags={PREFETCH_TAG: "true"}))
    requests, stage = next_epoch_requests(epoch, resources["store"], instance, lambda _c: provenance)
    assert len(requests) == 1 and stage == "downloading 6 dataset(s) in 1 run(s)"


def test_the_epoch_sensor_never_requests_a_miner_that_a_run_in_progress_covers(demo):
    """A shards + evaluation run of 4 miners is still going (on a `gpu` pool of 2 another run could start beside
    it): the next tick requests only the other miners, and while nothing else is left it waits for that run instead
    of requesting its miners again or moving on to scoring."""
    from flock_pipeline.defs.assets import EPOCH_TAG, RANGE_END, RANGE_START
    from flock_pipeline.defs.jobs import MINER_STAGE_JOB
    from flock_pipeline.defs.planner import next_epoch_requests

    _, resources, instance, epoch = demo
    key, store = str(epoch), resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    hotkeys = [c.hotkey for c in store.epoch_commitments(epoch)]
    provenance = resources["evaluator"].provenance()
    [download], _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4, wait_for_runs=True)
    _run_request(download, resources, instance)
    instance.add_run(dg.DagsterRun(job_name=MINER_STAGE_JOB, run_id="evaluating", status=dg.DagsterRunStatus.STARTED,
                                   tags={EPOCH_TAG: key, RANGE_START: hotkeys[0], RANGE_END: hotkeys[3]}))
    requests, stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4,
                                          wait_for_runs=True)
    assert [request_miners(r, instance) for r in requests] == [hotkeys[4:]]
    assert stage == "deduplicating + evaluating 2 miner(s) in 1 run(s); 4 more in runs in progress"
    _run_request(requests[0], resources, instance)
    requests, stage = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4,
                                          wait_for_runs=True)
    assert requests == [] and stage == "waiting for 4 miner(s) being evaluated by runs in progress"
    # the in-process runner executes its runs one after the other: a run left "started" by a killed process is
    # not waited for there
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance, batch=4)
    assert [request_miners(r, instance) for r in requests] == [hotkeys[:4]]


def test_terminated_evaluation_runs_are_retried_and_never_held_against_the_miner(demo):
    """A run the operator terminates (SIGTERM to its worker, "terminate" in the UI: CANCELED) frees its key: the
    next tick requests the miner again under a new key; after MAX_RUN_ATTEMPTS terminated runs nothing is recorded
    against the miner and the epoch says it stopped, like for the validator's own faults."""
    from flock_pipeline.defs.planner import MAX_RUN_ATTEMPTS, next_epoch_requests

    _, resources, instance, epoch = demo
    key, store = str(epoch), resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    for hotkey in [c.hotkey for c in store.epoch_commitments(epoch)]:
        _run([miner_datasets], hotkey, resources, instance, epoch)
    provenance = resources["evaluator"].provenance()
    for attempt in range(MAX_RUN_ATTEMPTS):
        requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
        fair = next(r for r in requests if r.partition_key == "hk-honest-fair")
        assert fair.run_key.endswith("" if attempt == 0 else f"#retry{attempt}")  # a new key after each
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=f"terminated-{attempt}",
                                       status=dg.DagsterRunStatus.CANCELED, tags={"dagster/run_key": fair.run_key}))
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    assert "hk-honest-fair" not in [r.partition_key for r in requests]
    assert store.rows(EvalResultRecord) == []  # nothing against the miner
