"""The whole demo epoch through the assets: the ranking DESIGN and the demo promise."""

import json

import dagster as dg
import pandas as pd

from flock_pipeline.defs.epoch import run_epoch
from flock_pipeline.demo import epoch_report


def test_ranking(demo_epoch):
    *_, report = demo_epoch
    good, fair, weak = report["honest-good"], report["honest-fair"], report["weak-offdomain"]
    assert good["weight"] > fair["weight"] > weak["weight"] > 0
    assert good["eval_loss"] < fair["eval_loss"] < weak["eval_loss"]
    assert abs(sum(m["weight"] for m in report.values()) - 1.0) < 1e-9


def test_bad_miners_get_exactly_zero_with_reasons(demo_epoch):
    *_, report = demo_epoch
    assert report["copier"]["weight"] == 0.0 and report["copier"]["reason"].startswith("duplicate")
    assert report["malformed"]["weight"] == 0.0 and "no valid rows" in report["malformed"]["reason"]
    assert report["empty"]["weight"] == 0.0 and "empty dataset" in report["empty"]["reason"]
    for label in ("copier", "malformed", "empty"):
        assert report[label]["eval_loss"] is None  # never a made-up loss


def test_weights_reached_the_chain(demo_epoch):
    home, resources, _, epoch, report = demo_epoch
    history = resources["chain"].weights_history("validator")
    assert len(history) == 1
    uids = history[0]["uids"]
    by_uid = {m["uid"]: m for m in report.values()}
    assert all(by_uid[u]["status"] == "scored" for u in uids)
    top = max(zip(history[0]["weights"], uids))[1]
    assert by_uid[top]["label"] == "honest-good"


def test_corpus_has_provenance_and_best_first(demo_epoch):
    home, resources, _, epoch, report = demo_epoch
    row = resources["warehouse"].query("SELECT * FROM corpora WHERE epoch = ?", [epoch]).iloc[0]
    frame = pd.read_parquet(row["parquet_path"])
    assert len(frame) == report["honest-good"]["rows_kept"] + report["honest-fair"]["rows_kept"] + \
        report["weak-offdomain"]["rows_kept"]
    assert frame["hotkey"].iloc[0] == "hk-honest-good"
    assert list(frame["miner_score"]) == sorted(frame["miner_score"], reverse=True)
    assert frame["revision"].str.len().eq(40).all() and frame["row_hash"].is_unique
    first = json.loads(open(row["jsonl_path"]).readline())
    assert first["conversations"][0]["role"] == "user" and first["uid"] == report["honest-good"]["uid"]


def test_rerun_is_reproducible_and_resumes_from_cache(demo_epoch):
    home, resources, instance, epoch, report = demo_epoch
    run_epoch(epoch, resources, instance)  # every evaluation is cached by content: nothing is retrained
    again = {m["label"]: m for m in epoch_report(epoch, resources["warehouse"],
                                                  {m["hotkey"]: m["label"] for m in report.values()})}
    for label, m in report.items():
        assert again[label]["eval_loss"] == m["eval_loss"]
    mats = instance.get_latest_materialization_event(dg.AssetKey("miner_eval_losses"))
    assert mats is not None
    evals = instance.fetch_materializations(dg.AssetKey("miner_eval_losses"), limit=100).records
    trained = [r.asset_materialization.metadata["from_cache"].value for r in evals
               if r.asset_materialization.metadata["status"].value == "ok"]
    assert trained.count(True) == 3 and trained.count(False) == 3  # first run trained 3, the re-run none
    # weights were already submitted for this epoch: not sent a second time
    assert len(resources["chain"].weights_history("validator")) == 1


def test_same_losses_on_a_fresh_network(demo, demo_epoch):
    home, resources, instance, epoch = demo
    *_, first = demo_epoch
    run_epoch(epoch, resources, instance)
    labels = json.loads((home / "demo.json").read_text())["labels"]
    second = {m["label"]: m for m in epoch_report(epoch, resources["warehouse"], labels)}
    assert {k: v["eval_loss"] for k, v in second.items()} == {k: v["eval_loss"] for k, v in first.items()}


def test_an_updated_dataset_keeps_rows_the_copier_took_from_its_first_version(demo):
    """Epoch 2: the good miner re-commits its data plus new rows, in a block after the copier's commitment. The
    copied rows still belong to the good miner (first committed by it in epoch 1); the copier stays at zero."""
    from flock_pipeline.core import synthetic
    from flock_pipeline.core.commitment import Commitment
    from flock_pipeline.core.schema import rows_to_jsonl
    from flock_pipeline.demo import demo_miners
    from flock_pipeline.resources import LocalHubResource

    home, resources, instance, epoch = demo
    run_epoch(epoch, resources, instance)
    good = next(m for m in demo_miners() if m.label == "honest-good")
    extra = rows_to_jsonl(synthetic.off_domain_rows(5, 99)).encode()
    hub = LocalHubResource(root=resources["hub"].root, as_owner=True)
    revision = hub.upload(good.repo, good.data + extra, private=False)
    chain = resources["chain"]
    chain.set_commitment(good.hotkey, Commitment(good.repo, "1", revision).to_compressed_str())
    chain.advance(chain.epoch_start(epoch + 1) - chain.current_block())
    run_epoch(epoch + 1, resources, instance)
    report = {m["hotkey"]: m for m in epoch_report(epoch + 1, resources["warehouse"])}
    assert report["hk-honest-good"]["status"] == "scored" and report["hk-honest-good"]["rows_kept"] == 100
    assert report["hk-copier"]["weight"] == 0 and report["hk-copier"]["reason"].startswith("duplicate")
    # 100 capped rows: the update's new rows are past the size cap, so the shard (and its loss) is unchanged
    assert report["hk-honest-good"]["eval_loss"] == epoch_report(epoch, resources["warehouse"])[0]["eval_loss"]
