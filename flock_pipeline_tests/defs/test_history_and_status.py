"""Three epochs of the demo network in which one miner fails in epoch 2 and succeeds in epoch 3 (the scenario of
`scripts/screenshots.py`): the per-miner status (the `miner_standing` check) and the epochs' history
(`miner_history`) say what happened."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import dagster as dg
import pytest

from flock_pipeline.defs.assets import miner_eval_losses, miner_history, miners_partitions
from flock_pipeline.defs.checks import MINER_EVALUATED
from flock_pipeline.resources import build_resources
from flock_pipeline.validator.history import series_key
from flock_pipeline_tests.homes import home_with_model

pytestmark = pytest.mark.slow  # three epochs, one of them with retried evaluations: about a minute



def _script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("flock_screenshots", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_state(instance: dg.DagsterInstance, name: str) -> dict[str, tuple[str, str]]:
    """miner partition -> (the check's latest status there, with the severity of a failure: FAILED/WARN or
    FAILED/ERROR; the verdict of that evaluation)."""
    key = dg.AssetCheckKey(miner_eval_losses.key, name)
    latest: dict[str, dg.AssetCheckEvaluation] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=1000):  # newest first
        evaluation = record.event.dagster_event.event_specific_data if record.event is not None else None
        if evaluation is not None and evaluation.partition not in latest:
            latest[evaluation.partition] = evaluation
    out = {}
    for info in instance.event_log_storage.get_asset_check_partition_info([key]):
        evaluation = latest[info.partition_key]
        status = info.latest_execution_status.value
        out[info.partition_key] = (status + ("/" + evaluation.severity.value if status == "FAILED" else ""),
                                   evaluation.metadata["verdict"].value)
    return out


def standings(instance: dg.DagsterInstance) -> dict[str, tuple[str, str]]:
    """miner partition -> (`miner_evaluated`'s status, the verdict)."""
    return _check_state(instance, MINER_EVALUATED)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, tiny_model_dir):

    home = tmp_path_factory.mktemp("three-epochs")
    home_with_model(home, tiny_model_dir)
    instance = dg.DagsterInstance.ephemeral()
    seen = []
    epochs = _script().run_scenario(home, instance, after_epoch=lambda i, e: seen.append(standings(instance)))
    return home, instance, epochs, seen


def test_status_is_red_only_for_a_failure_and_a_later_success_supersedes_it(three_epochs):
    home, instance, epochs, seen = three_epochs
    first, second, third = seen
    assert first["hk-honest-good"] == ("SUCCEEDED", "improving")
    assert first["hk-honest-fair"] == ("SUCCEEDED", "improving")
    # judged soundly (the run succeeded; the miner's data earns nothing): a pass, with the verdict
    assert first["hk-copier"] == ("SUCCEEDED", "copied")
    assert first["hk-malformed"] == ("SUCCEEDED", "rejected")
    assert first["hk-empty"] == ("SUCCEEDED", "rejected")
    assert first["hk-weak-offdomain"] == ("SUCCEEDED", "no_improvement")
    # epoch 2: honest-fair's new revision crashes training on every attempt: a real failure (red), recorded
    assert second["hk-honest-fair"] == ("FAILED/ERROR", "failed")
    assert second["hk-honest-good"] == first["hk-honest-good"]
    # epoch 3: its fixed revision is evaluated: the success supersedes the failure
    assert third["hk-honest-fair"] == ("SUCCEEDED", "improving")
    assert {k: v for k, v in third.items() if k != "hk-honest-fair"} == \
        {k: v for k, v in first.items() if k != "hk-honest-fair"}
    # every miner's partition of the per-miner asset is materialized (green) after the three epochs
    keys = instance.get_dynamic_partitions(miners_partitions.name)
    status = instance.get_status_by_partition(miner_eval_losses.key, keys, miners_partitions)
    assert {k: s.value for k, s in status.items()} == {k: "MATERIALIZED" for k in keys}
    # every run names its stage (the jobs the sensors launch too), none is an anonymous asset job
    assert {r.job_name for r in instance.get_runs()} == {"epoch_stage", "miner_stage"}
    # the failure in epoch 2 was a real one: the evaluation step failed twice in that epoch's run, and was retried
    retry = dg.DagsterEventType.STEP_UP_FOR_RETRY
    failures = [r.event_log_entry for run in instance.get_runs() if run.tags.get("flock/epoch") == str(epochs[1])
                for r in instance.get_records_for_run(run.run_id, of_type=retry).records]
    assert len(failures) == 2  # attempts 1 and 2; the third is recorded as the miner's failure
    for e in failures:
        assert e.step_key == "miner_eval_losses", e.step_key
        assert "died on this dataset" in e.dagster_event.event_specific_data.error.to_string()


def test_miner_history_has_each_miners_series_over_the_epochs(three_epochs):
    home, instance, epochs, _ = three_epochs
    store = build_resources(home)["store"]
    events = instance.fetch_materializations(miner_history.key, limit=10).records
    meta = {int(e.partition_key): {k: v.value for k, v in e.asset_materialization.metadata.items()} for e in events}
    assert sorted(meta) == epochs
    for epoch in epochs:
        m = meta[epoch]
        scores = {r.hotkey: r for r in store.scores(epoch)}
        assert m["epoch"] == str(epoch) and m["miners"] == str(len(scores))
        weights = [v for k, v in m.items() if k.endswith("· weight")]
        assert len(weights) == len(scores) and sum(weights) == pytest.approx(1.0)
        for hotkey, r in scores.items():
            assert m[series_key(int(r.uid), hotkey, "weight")] == float(r.weight)  # full precision
            loss = m.get(series_key(int(r.uid), hotkey, "eval loss"))
            if r.eval_loss is not None and math.isfinite(r.eval_loss):
                assert loss == pytest.approx(r.eval_loss)
            else:
                assert loss is None  # a gap in the line, not a zero
        assert m[series_key(1, "hk-honest-good", "rank")] == 1
        assert 2 < m["base loss · curation"] < 3
        assert "| 1 | hk-honest-good | curation | scored |" in m["miners_table"]
    fair = [meta[e].get(series_key(2, "hk-honest-fair", "eval loss")) for e in epochs]
    assert fair[0] is not None and fair[1] is None and fair[2] is not None
    assert meta[epochs[1]][series_key(2, "hk-honest-fair", "weight")] == 0.0
    assert series_key(2, "hk-honest-fair", "rank") not in meta[epochs[1]]
