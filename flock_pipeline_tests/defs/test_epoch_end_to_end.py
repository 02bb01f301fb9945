"""The whole demo epoch through the assets: the ranking DESIGN and the demo promise."""

import json

import dagster as dg
import pandas as pd
import pytest

from flock_pipeline.defs.epoch import run_epoch
from flock_pipeline.demo import epoch_report
from flock_pipeline_tests.homes import home_with_model


def test_ranking(demo_epoch):
    *_, report = demo_epoch
    good, fair, weak = report["honest-good"], report["honest-fair"], report["weak-offdomain"]
    # only improvement is paid: honest-fair loses its one comparison (to honest-good), so it earns nothing
    assert good["weight"] == 1.0 and fair["weight"] == 0.0 and "won no comparison" in fair["explanation"]
    assert good["eval_loss"] < fair["eval_loss"] < weak["eval_loss"]
    # off-domain data makes the model worse than the base model: evaluated, but it earns nothing
    assert weak["status"] == "no_improvement" and weak["weight"] == 0.0
    assert "not below the base model's" in weak["reason"]
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
    home, resources, instance, epoch, report = demo_epoch
    row = resources["store"].corpus(epoch)
    frame = pd.read_parquet(row.parquet_path)
    # the scored miners holding 95 % of the weight: honest-fair (scored, but it won no comparison: weight 0) stays
    # out, and so does off-domain data that does not beat the base model
    assert report["honest-fair"]["status"] == "scored" and report["honest-fair"]["weight"] == 0
    assert len(frame) == report["honest-good"]["rows_kept"] == row.rows == row.sft_rows and row.dpo_rows == 0
    assert set(frame["hotkey"]) == {"hk-honest-good"} and row.miners == 1
    assert frame["miner_weight"].eq(report["honest-good"]["weight"]).all()
    assert frame["revision"].str.len().eq(40).all() and frame["row_hash"].is_unique
    assert frame["competition"].eq("curation").all() and frame["epoch"].eq(epoch).all()
    assert frame["base_model"].eq("flock/tiny-qwen2").all() and frame["base_revision"].str.len().eq(40).all()
    assert frame["eval_repo"].eq("flock/eval-atlas").all() and frame["eval_revision"].str.len().eq(40).all()
    first = json.loads(open(row.jsonl_path).readline())
    assert first["conversations"][0]["role"] == "user" and first["uid"] == report["honest-good"]["uid"]
    (latest_sft,) = (home / "corpus" / "latest").glob("sft-*.parquet")
    assert pd.read_parquet(latest_sft).equals(frame)
    meta = instance.get_latest_materialization_event(dg.AssetKey("final_corpus")).asset_materialization.metadata
    assert meta["rows"].value == row.rows and meta["sha256"].value == row.sha256 and meta["miners"].value == 1
    assert meta["release"].value == row.release_dir and meta["latest"].value == str(home / "corpus" / "latest")
    card = meta["card"].value  # the card declares the configs that hold rows: no pairs here
    assert "config_name: sft" in card and "config_name: dpo" not in card and meta["published"].value == ""


def test_at_a_glance_each_runs_stage_and_who_was_paid_on_the_report(demo_epoch):
    """`flock epoch run` tags every run with its stage; the epoch report's materialization carries who was paid and
    why as a table (the UI draws a table value inline), weights as sent, and the figures embedded."""
    from flock_pipeline.defs.stages import STAGE_TAG

    home, resources, instance, epoch, report = demo_epoch
    stages = [run.tags.get(STAGE_TAG) for run in reversed(instance.get_runs())]
    assert stages[0] == "commitments" and stages[-1] == "scoring"
    assert set(stages) == {"commitments", "datasets", "evaluation", "scoring"}
    meta = instance.get_latest_materialization_event(dg.AssetKey("epoch_report")).asset_materialization.metadata
    assert list(meta)[0] == "who was paid and why"
    table = meta["who was paid and why"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["uid", "hotkey", "competition", "status", "eval_loss",
                                                      "weight", "sent", "why"]
    rows = [r.data for r in table.records]
    paid = rows[0]  # the paid miner first, with its weight as the chain took it
    assert paid["hotkey"] == "hk-honest-good" and paid["weight"] == 1.0 and paid["sent"] == 1.0
    assert paid["why"] and paid["uid"] == report["honest-good"]["uid"]
    listed = {r["hotkey"] for r in rows}  # every other miner is in the table, alone or in its status's row
    assert len(rows) <= 1 + len({m["status"] for m in report.values()})
    assert all(m["hotkey"] in listed or any(r["status"] == m["status"] and r["uid"] is None for r in rows)
               for m in report.values())
    assert "![curation](data:image/png;base64," in meta["figures"].value


def test_rerun_is_reproducible_and_resumes_from_cache(demo_epoch):
    home, resources, instance, epoch, report = demo_epoch
    run_epoch(epoch, resources, instance)  # every evaluation is cached by content: nothing is retrained
    again = {m["label"]: m for m in epoch_report(epoch, resources["store"],
                                                  {m["hotkey"]: m["label"] for m in report.values()})}
    for label, m in report.items():
        assert again[label]["eval_loss"] == m["eval_loss"]
    mats = instance.get_latest_materialization_event(dg.AssetKey("miner_eval_losses"))
    assert mats is not None
    evals = instance.fetch_materializations(dg.AssetKey("miner_eval_losses"), limit=100).records
    trained = [r.asset_materialization.metadata["from_cache"].value for r in evals
               if r.asset_materialization.metadata["status"].value == "ok"]
    # the first run trained 3; the re-run found every miner's work recorded and ran none of it again
    assert trained.count(False) == 3 and trained.count(True) == 0
    # weights were already submitted for this epoch: not sent a second time
    assert len(resources["chain"].weights_history("validator")) == 1


def test_same_losses_on_a_fresh_network(demo, demo_epoch):
    home, resources, instance, epoch = demo
    *_, first = demo_epoch
    run_epoch(epoch, resources, instance)
    labels = json.loads((home / "demo.json").read_text())["labels"]
    second = {m["label"]: m for m in epoch_report(epoch, resources["store"], labels)}
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
    report = {m["hotkey"]: m for m in epoch_report(epoch + 1, resources["store"])}
    assert report["hk-honest-good"]["status"] == "scored" and report["hk-honest-good"]["rows_kept"] == 100
    assert report["hk-copier"]["weight"] == 0 and report["hk-copier"]["reason"].startswith("duplicate")
    # 100 capped rows: the update's new rows are past the size cap, so the shard (and its loss) is unchanged
    assert report["hk-honest-good"]["eval_loss"] == epoch_report(epoch, resources["store"])[0]["eval_loss"]


# ---------------------------------------------------------------------------------------------------------------
# The same demo epoch through the real-network client code: the Hugging Face resource on a loopback hub and the
# Bittensor resource on the SDK's substrate seam. Same data, same ranking, and no secret anywhere in what the run
# logged or recorded.

FAKE_HF_TOKEN = "hf_FAKESECRETe2e9d1c7"
FAKE_WALLET_PASSWORD = "bt-FAKEPASS-e2e-41f"


def test_demo_epoch_through_the_real_clients(demo_epoch, tmp_path, tiny_model_dir, monkeypatch, caplog, capsys):
    import logging

    from bittensor_core import Keypair

    from flock_pipeline.core.commitment import DEFAULT_COMPETITION_ID, Commitment
    from flock_pipeline.core.schema import rows_to_jsonl
    from flock_pipeline.demo import EVAL_REPO, demo_miners, eval_split
    from flock_pipeline.resources import build_resources
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource
    from flock_pipeline.resources.hf_hub import HuggingFaceHubResource
    from flock_pipeline.resources.settings import ValidatorSettingsResource
    from flock_pipeline_tests.resources.fake_substrate import FakeSubstrate
    from flock_pipeline_tests.resources.hf_server import FakeHubServer

    *_, local_report = demo_epoch
    secret_path = tmp_path / "SECRETWALLETDIR"
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("BT_WALLET_PASSWORD", FAKE_WALLET_PASSWORD)
    monkeypatch.setenv("BT_WALLET_PATH", str(secret_path))
    caplog.set_level(logging.DEBUG)
    secrets = [FAKE_HF_TOKEN, FAKE_WALLET_PASSWORD, "SECRETWALLETDIR"]

    validator = Keypair.create_from_uri("//Alice")
    miners = demo_miners(7)
    keys = {m.hotkey: Keypair.create_from_uri(f"//demo-{m.label}") for m in miners}
    sub = FakeSubstrate(netuid=96, tempo=20, weights_rate_limit=10)
    sub.register(validator.ss58_address, stake=1000.0, validator_permit=True)
    for m in miners:
        sub.register(keys[m.hotkey].ss58_address)
    vanished = Keypair.create_from_uri("//demo-vanished")  # commits a repo the hub answers 404 for
    sub.register(vanished.ss58_address)
    home = tmp_path / "home"
    home_with_model(home, tiny_model_dir)
    with FakeHubServer(tokens={FAKE_HF_TOKEN: "validator"}) as server:
        server.add_repo(EVAL_REPO)
        eval_revision = server.commit(EVAL_REPO, {"data.jsonl": rows_to_jsonl(eval_split(7)[0]).encode()})
        chain = BittensorChainResource.with_substrate(sub, signers=[validator, vanished, *keys.values()],
                                                      backoff_s=0.0)
        for m in miners:
            server.add_repo(m.repo)
            revision = server.commit(m.repo, {"data.jsonl": m.data})
            text = Commitment(m.repo, DEFAULT_COMPETITION_ID, revision).to_compressed_str()
            chain.set_commitment(keys[m.hotkey].ss58_address, text)  # signed by the miner's hotkey
        chain.set_commitment(vanished.ss58_address, f"ghost/vanished:{DEFAULT_COMPETITION_ID}:{'c' * 40}")
        epoch = chain.epoch_of(chain.current_block()) + 1
        sub.advance(chain.epoch_start(epoch) - chain.current_block())
        resources = build_resources(home)
        resources.update(
            chain=chain,
            hub=HuggingFaceHubResource(endpoint=server.url, cache_dir=str(home / "hub-cache"), offline=False,
                                       backoff_s=0.0),
            settings=ValidatorSettingsResource(corpus_dir=str(home / "corpus"), eval_repo=EVAL_REPO,
                                               eval_revision=eval_revision, validator_hotkey=validator.ss58_address))
        instance = dg.DagsterInstance.ephemeral()
        run_epoch(epoch, resources, instance)
        labels = {keys[m.hotkey].ss58_address: m.label for m in miners} | {vanished.ss58_address: "vanished"}
        report = {m["label"]: m for m in epoch_report(epoch, resources["store"], labels)}
        assert server.requests_to("/resolve/", "GET")  # the datasets really came over HTTP
    chain.close()

    def ranking(rep):
        return [label for label, m in sorted(rep.items(), key=lambda kv: (-kv[1]["weight"], kv[0]))]

    gone = report.pop("vanished")  # a permanent 404: that miner is unavailable, the epoch went on for the rest
    assert gone["weight"] == 0.0 and gone["status"] == "ineligible" and "dataset unavailable" in gone["reason"]
    assert ranking(report) == ranking(local_report)
    for label, m in report.items():
        assert m["status"] == local_report[label]["status"], label
        if m["eval_loss"] is not None:
            assert m["eval_loss"] == pytest.approx(local_report[label]["eval_loss"], abs=1e-6)
        assert m["weight"] == pytest.approx(local_report[label]["weight"], abs=1e-9)
    assert len(sub.weights) == 1  # the validator's weights were included on the (test) chain

    texts = [r.getMessage() for r in caplog.records] + list(capsys.readouterr())
    runs = instance.get_runs()
    assert runs
    for run in runs:  # every event of every run: log messages and materialization metadata
        texts.extend(str(entry) for entry in instance.all_logs(run.run_id))
    for secret in secrets:
        assert not any(secret in t for t in texts), secret
