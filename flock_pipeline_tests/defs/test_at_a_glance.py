"""What the UI says at a glance: every run names its stage (`flock/stage`), however it was launched, and an
evaluation given up after its runs kept dying is failed where the miner partitions' checks are listed."""

import dagster as dg

from flock_pipeline.defs.assets import (ASSETS, chain_commitments, deduplicated_shards, epochs_partitions,
                                        miner_datasets, miner_eval_losses)
from flock_pipeline.defs.checks import MINER_EVALUATED
from flock_pipeline.defs.epoch import ASSET_BY_KEY, _run
from flock_pipeline.defs.planner import MAX_RUN_ATTEMPTS, _weights_requests, next_epoch_requests
from flock_pipeline.defs.sensors import commitment_sensor, confirmation_requests, new_block_sensor
from flock_pipeline.defs.stages import STAGE_TAG, stage_of
from flock_pipeline.store import WeightSubmissionRecord


def _stages(requests) -> set[str]:
    for r in requests:  # the tag says the stage of exactly what the request materializes
        assert r.tags[STAGE_TAG] == stage_of(r.asset_selection), r
    return {r.tags[STAGE_TAG] for r in requests}


class _Submissions:
    """A store holding one weight submission (what the weights' follow-ups read)."""

    def __init__(self, record):
        self.record = record

    def weight_submissions_in(self, states):
        return [self.record] if self.record.state in states else []

    def weight_submission(self, epoch):
        return self.record


def test_every_run_request_and_every_run_names_its_stage(demo):
    _, resources, instance, epoch = demo
    key = str(epoch)
    res = {k: resources[k] for k in ("chain", "hub", "settings", "store")}
    assert _stages(new_block_sensor(dg.build_sensor_context(instance=instance, resources=res)).run_requests) == \
        {"commitments"}
    fetched = commitment_sensor(dg.build_sensor_context(instance=instance, resources={
        "chain": resources["chain"], "settings": resources["settings"]}))
    assert _stages(fetched.run_requests) == {"datasets"}
    # a run launched without the tag (`dagster asset materialize`, the UI) gets it from its first step
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    plain = dg.materialize(ASSETS, selection=[chain_commitments], partition_key=key, resources=resources,
                           instance=instance)
    assert instance.get_run_by_id(plain.run_id).tags[STAGE_TAG] == "commitments"
    provenance = resources["evaluator"].provenance()
    downloads, _ = next_epoch_requests(epoch, resources["store"], instance, lambda _c: provenance, batch=8)
    assert _stages(downloads) == {"datasets"}
    for r in downloads:
        _run([ASSET_BY_KEY[k] for k in r.asset_selection], r.partition_key, resources, instance,
             tags={**r.tags, "dagster/run_key": r.run_key})
    evaluations, _ = next_epoch_requests(epoch, resources["store"], instance, lambda _c: provenance, batch=8)
    assert _stages(evaluations) == {"evaluation"}
    committed = WeightSubmissionRecord(epoch=epoch, success=True, block=5, message="ok", uids=(1,), weights=(1,),
                                       state="committed", reveal_epoch=0)
    assert _stages(confirmation_requests(_Submissions(committed), lambda: 1)) == {"weights"}
    limited = WeightSubmissionRecord(epoch=epoch, success=False, block=5, message="rate limited",
                                     state="rate limited", retry_after_block=7)
    assert _stages(_weights_requests(epoch, _Submissions(limited), instance, 8, "")[0]) == {"weights"}
    # every run so far, whoever launched it, carries its stage
    runs = instance.get_runs()
    assert len(runs) == 1 + len(downloads)
    for run in runs:
        assert run.tags[STAGE_TAG] == stage_of(run.asset_selection or [chain_commitments]), run.tags


def _check_partitions(instance, name) -> dict[str, str]:
    key = dg.AssetCheckKey(miner_eval_losses.key, name)
    return {info.partition_key: info.latest_execution_status.value + ("" if info.is_current else " (stale)")
            for info in instance.event_log_storage.get_asset_check_partition_info([key])}


def test_an_evaluation_given_up_is_failed_where_its_partitions_are_listed(demo):
    """Evaluation runs that die without a record are given up after MAX_RUN_ATTEMPTS and recorded as the miner's
    failure, outside any run: both standing checks fail on its partition (the check's partition list in the UI,
    red for `miner_evaluated`), once."""
    _, resources, instance, epoch = demo
    key = str(epoch)
    store = resources["store"]
    instance.add_dynamic_partitions(epochs_partitions.name, [key])
    _run([chain_commitments], key, resources, instance)
    for hotkey in [c.hotkey for c in store.epoch_commitments(epoch)]:
        _run([miner_datasets], hotkey, resources, instance, epoch)
    _run([deduplicated_shards], "hk-honest-fair", resources, instance, epoch)
    provenance = resources["evaluator"].provenance()
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    fair = next(r for r in requests if r.partition_key == "hk-honest-fair")
    for attempt in range(MAX_RUN_ATTEMPTS):
        run_key = fair.run_key if attempt == 0 else f"{fair.run_key}#retry{attempt}"
        instance.add_run(dg.DagsterRun(job_name="miner_stage", run_id=f"died-{attempt}",
                                       status=dg.DagsterRunStatus.FAILURE, tags={"dagster/run_key": run_key}))
    assert _check_partitions(instance, MINER_EVALUATED) == {}
    requests, _ = next_epoch_requests(epoch, store, instance, lambda _c: provenance)
    assert "hk-honest-fair" not in [r.partition_key for r in requests]
    assert _check_partitions(instance, MINER_EVALUATED) == {"hk-honest-fair": "FAILED"}
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(miner_eval_losses.key, MINER_EVALUATED), limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR and evaluation.metadata["verdict"].value == "failed"
    assert "3 evaluation runs failed without a result" in evaluation.description
    next_epoch_requests(epoch, store, instance, lambda _c: provenance)  # reported once, not at every tick
    assert len(instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(miner_eval_losses.key, MINER_EVALUATED), limit=10)) == 1


def test_who_was_paid_stays_a_bounded_table_for_256_miners():
    from flock_pipeline.defs.paid import PAID_ROWS, paid_table

    entries = [{"uid": u, "hotkey": f"hk{u}", "competition": "curation", "status": "scored" if u < 200 else "failed",
                "reason": None if u < 200 else "evaluation failed", "eval_loss": 2.0 + u / 1000,
                "weight": (200 - u) / 20100 if u < 200 else 0.0, "sent": None if u < 200 else 0.0,
                "explanation": "x" * 5000} for u in range(256)]
    entries[3]["sent"] = 0.5  # as sent: the chain's share orders the table, not the weight computed
    rows = [r.data for r in paid_table(entries, 9).records]
    assert len(rows) == PAID_ROWS + 2
    assert rows[0]["uid"] == 3 and rows[0]["sent"] == 0.5 and len(rows[0]["why"]) <= 203
    assert [r["uid"] for r in rows[1:4]] == [0, 1, 2]  # then by weight: the most paid first
    more, failed = rows[-2], rows[-1]
    assert more["hotkey"] == f"{200 - PAID_ROWS} more paid miners" and more["uid"] is None
    assert more["weight"] == round(sum(e["weight"] for e in entries[PAID_ROWS:200]), 6)
    assert failed["hotkey"] == "56 miners, weight 0" and failed["status"] == "failed"
    assert failed["why"].startswith("56 x evaluation failed") and "flock epoch report 9" in failed["why"]
