"""`flock demo --network dpo --json`: honest miners ranked by the share of their pairs labelled right, the
swapped-labels, trivial-rejected, copier and leaker miners at weight 0 with their reasons (one epoch through the
assets, about 20 s on one core, shared by the tests)."""

import contextlib
import io
import json
import math
import shutil

import pytest

from flock_pipeline.cli import main

ATTACKERS = {
    "swapped-labels": ("no_improvement", "is not below the base model's 0.6931"),
    "trivial-rejected": ("ineligible", "trivial rejected answers"),
    "copier": ("ineligible", "committed earlier by another miner"),
    "leaker": ("ineligible", "eval leakage"),
}


@pytest.fixture(scope="module")
def dpo_home(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("dpo-network")
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    return home


@pytest.fixture(scope="module")
def doc(dpo_home):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--network", "dpo", "--json", "--home", str(dpo_home)]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def report(doc):
    return {m["label"]: m for m in doc["miners"]}


def test_honest_miners_are_ranked_by_quality(doc, report):
    honest = sorted((m for m in report.values() if m["quality"] is not None), key=lambda m: -m["quality"])
    assert [m["label"] for m in honest] == ["honest-q100", "honest-q85", "honest-q70"]
    assert doc["honest_spearman"] >= 0.9
    assert all(m["status"] == "scored" and m["weight"] > 0 for m in honest), honest
    losses = [m["eval_loss"] for m in honest]
    assert losses == sorted(losses) and losses[0] < math.log(2), honest  # better data, lower DPO loss
    assert honest[0]["weight"] > honest[1]["weight"] > honest[2]["weight"]


@pytest.mark.parametrize("label", sorted(ATTACKERS))
def test_every_attacker_gets_zero_with_its_reason(report, label):
    status, reason = ATTACKERS[label]
    m = report[label]
    assert m["weight"] == 0.0
    assert m["status"] == status, m
    assert reason in (m["reason"] or ""), m
    if label == "copier":
        assert f"uid {report['honest-q100']['uid']}: 80" in m["reason"]


def test_the_swapped_labels_miner_learned_the_wrong_preference(report):
    assert report["swapped-labels"]["eval_loss"] > math.log(2)


def test_invalid_pairs_are_recorded_with_reasons(dpo_home, doc):
    """The trivial-rejected miner's empty rejected answers are rejected rows with their reason."""
    from flock_pipeline.resources import build_resources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        warehouse = build_resources()["warehouse"]
    commitment = warehouse.miner_commitment("hk-trivial-rejected", doc["epoch"])
    dataset = warehouse.dataset(commitment.repo, commitment.revision)
    assert (dataset.rows_total, dataset.rows_valid) == (80, 40)
    assert {r["reason"] for r in dataset.rejected} == {"'rejected': 'content' is empty"}


def test_dpo_metrics_are_recorded_with_the_loss(dpo_home, doc, report):
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.evaluation import miner_shard, shard_cache_key

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        r = build_resources()
    found = miner_shard(r["warehouse"], report["honest-q100"]["hotkey"], doc["epoch"])
    key = shard_cache_key(found.shard, found.eval_revision, r["evaluator"], r["settings"])
    result = r["warehouse"].eval_result(key)
    assert result.eval_loss == pytest.approx(report["honest-q100"]["eval_loss"], abs=1e-6)
    assert result.metrics["pairs"] == 150 and result.metrics["reward_accuracy"] > 0.5
    assert result.provenance["recipe"]["objective"] == "dpo" and result.provenance["recipe"]["dpo_beta"] == 0.1


def test_the_corpus_release_holds_the_selected_miners_pairs(dpo_home, doc, report):
    """The epoch's release: the pairs of the miners holding 95 % of the weight (here honest-q100 alone), loadable
    as the `dpo` config of the release folder and straight from its Parquet file."""
    import datasets

    from flock_pipeline.resources import build_resources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        corpus = build_resources()["warehouse"].corpus(doc["epoch"])
    best = report["honest-q100"]
    assert (corpus.sft_rows, corpus.dpo_rows, corpus.miners) == (0, best["rows_kept"], 1)
    folder = dpo_home / "corpus" / f"epoch-{doc['epoch']}"
    pairs = datasets.load_dataset(str(folder), "dpo", split="train", cache_dir=str(dpo_home / "hf-cache"))
    same = datasets.load_dataset("parquet", data_files=str(folder / "dpo.parquet"), split="train",
                                 cache_dir=str(dpo_home / "hf-cache"))
    assert pairs.to_list() == same.to_list() and len(pairs) == best["rows_kept"]
    assert {r["hotkey"] for r in pairs} == {best["hotkey"]}
    assert all(r["competition"] == "dpo" and r["epoch"] == doc["epoch"] and r["eval_repo"] == "flock/eval-atlas-pairs"
               and len(r["chosen"]) == len(r["rejected"]) == 1 for r in pairs)
