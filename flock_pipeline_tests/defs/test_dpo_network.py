"""`flock demo --network dpo --json`: honest miners ranked by the share of their pairs labelled right, the
swapped-labels, trivial-rejected, copier, leaker and marks-copier miners at weight 0 with their reasons, in every
scoring mode (one epoch through the assets, about 20 s on one core, shared by the tests)."""

import json
import math

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core.ranking import spearman
from flock_pipeline_tests.defs.conftest import assert_card_snippet_loads, assert_zero_with_reason, demo_home, demo_json
from flock_pipeline_tests.defs.test_adversarial_network import SCORING_MODES

ATTACKERS = {
    "swapped-labels": ("no_improvement", "is not below the base model's 0.6931"),
    "trivial-rejected": ("ineligible", "trivial rejected answers"),
    "copier": ("ineligible", "committed earlier by another miner"),
    "leaker": ("ineligible", "eval leakage"),
    "marks-copier": ("ineligible", "committed earlier by another miner"),
}
# a copier's reason names the miner it copied, by uid (the marks-copier's pairs carry Greek look-alikes and
# combining marks in the prompt and on both sides)
ORIGINALS = {"copier": "honest-q100", "marks-copier": "honest-q100"}


@pytest.fixture(scope="module")
def dpo_home(tmp_path_factory, tiny_model_dir):
    return demo_home(tmp_path_factory, tiny_model_dir, "dpo-network")


@pytest.fixture(scope="module")
def doc(dpo_home):
    return demo_json(dpo_home, "dpo")


@pytest.fixture(scope="module")
def report(doc):
    return {m["label"]: m for m in doc["miners"]}


def test_honest_miners_are_ranked_by_quality(doc, report):
    honest = sorted((m for m in report.values() if m["quality"] is not None), key=lambda m: -m["quality"])
    assert [m["label"] for m in honest] == ["honest-q100", "honest-q85", "honest-q70"]
    assert doc["honest_spearman"] >= 0.9
    assert all(m["status"] == "scored" for m in honest), honest
    losses = [m["eval_loss"] for m in honest]
    assert losses == sorted(losses) and losses[0] < math.log(2), honest  # better data, lower DPO loss
    # the weakest loses both its comparisons: only improvement is paid
    assert honest[0]["weight"] > honest[1]["weight"] > honest[2]["weight"] == 0
    assert "won no comparison" in honest[2]["explanation"]


@pytest.mark.parametrize("label", sorted(ATTACKERS))
def test_every_attacker_gets_zero_with_its_reason(report, label):
    m = report[label]
    assert_zero_with_reason(m, *ATTACKERS[label])
    if label in ORIGINALS:
        assert f"uid {report[ORIGINALS[label]]['uid']}: 80" in m["reason"]


@pytest.mark.parametrize("mode", list(SCORING_MODES))
def test_every_scoring_mode_pays_no_attacker_and_ranks_honest_miners_by_quality(dpo_home, report, mode):
    """The epoch re-scored from its recorded evaluations in each scoring mode."""
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.scoring import compute_epoch_scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        r = build_resources()
    settings = r["settings"].model_copy(update={**SCORING_MODES[mode], "replace_results": True})
    scores = {s.hotkey: (float(s.weight), float(s.eval_loss))
              for s in compute_epoch_scores(r["store"].latest_epoch(), r["evaluator"], settings, r["store"], r["hub"],
                                            r["chain"])}
    assert all(scores[report[label]["hotkey"]][0] == 0.0 for label in ATTACKERS), mode
    honest = [m for m in report.values() if m["quality"] is not None]
    ranked = sorted(honest, key=lambda m: (-scores[m["hotkey"]][0], scores[m["hotkey"]][1]))
    assert spearman([m["quality"] for m in ranked], list(range(len(ranked), 0, -1))) >= 0.9, ranked
    assert abs(sum(w for w, _ in scores.values()) - 1.0) < 1e-9


def test_the_marks_copier_disguises_both_sides_of_every_pair():
    """Its pairs differ from honest-q100's as written (the prompt, chosen and rejected side of each) and fold back
    to them: what matching sees is the copy."""
    from flock_pipeline.core.textnorm import fold
    from flock_pipeline.demo import dpo_miners

    files = {m.label: [json.loads(line) for line in m.data.splitlines()] for m in dpo_miners()}
    pairs = list(zip(files["marks-copier"], files["honest-q100"]))
    assert len(pairs) == 80
    for copy, original in pairs:
        sides = [(copy[k][0]["content"], original[k][0]["content"]) for k in ("prompt", "chosen", "rejected")]
        assert all(a != b and fold(a) == fold(b) for a, b in sides), sides


def test_the_swapped_labels_miner_learned_the_wrong_preference(report):
    assert report["swapped-labels"]["eval_loss"] > math.log(2)


def test_invalid_pairs_are_recorded_with_reasons(dpo_home, doc):
    """The trivial-rejected miner's empty rejected answers are rejected rows with their reason."""
    from flock_pipeline.resources import build_resources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        store = build_resources()["store"]
    commitment = store.miner_commitment("hk-trivial-rejected", doc["epoch"])
    dataset = store.dataset(commitment.repo, commitment.revision)
    assert (dataset.rows_total, dataset.rows_valid) == (80, 40)
    assert {r["reason"] for r in dataset.rejected} == {"'rejected': 'content' is empty"}


def test_dpo_metrics_are_recorded_with_the_loss(dpo_home, doc, report):
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.evaluation import miner_shard, shard_cache_key

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        r = build_resources()
    found = miner_shard(r["store"], report["honest-q100"]["hotkey"], doc["epoch"])
    key = shard_cache_key(found.shard, found.eval_revision, r["evaluator"], r["settings"])
    result = r["store"].eval_result(key)
    assert result.eval_loss == pytest.approx(report["honest-q100"]["eval_loss"], abs=1e-6)
    assert result.metrics["pairs"] == 120 and result.metrics["reward_accuracy"] > 0.5  # 150 eval pairs, 30 held out
    assert result.provenance["recipe"]["objective"] == "dpo" and result.provenance["recipe"]["dpo_beta"] == 0.1


def test_the_corpus_release_holds_the_selected_miners_pairs(dpo_home, doc, report):
    """The epoch's release: the pairs of the miners holding 95 % of the weight (here honest-q100 alone), loadable
    as the `dpo` config of the release folder and straight from its Parquet file."""
    import datasets

    from flock_pipeline.resources import build_resources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        corpus = build_resources()["store"].corpus(doc["epoch"])
    best = report["honest-q100"]
    assert (corpus.sft_rows, corpus.dpo_rows, corpus.miners) == (0, best["rows_kept"], 1)
    folder = dpo_home / "corpus" / f"epoch-{doc['epoch']}"
    pairs = datasets.load_dataset(str(folder), "dpo", split="train", cache_dir=str(dpo_home / "hf-cache"))
    (pairs_file,) = folder.glob("dpo-*.parquet")
    same = datasets.load_dataset("parquet", data_files=str(pairs_file), split="train",
                                 cache_dir=str(dpo_home / "hf-cache"))
    assert pairs.to_list() == same.to_list() and len(pairs) == best["rows_kept"]
    assert {r["hotkey"] for r in pairs} == {best["hotkey"]}
    assert all(r["competition"] == "dpo" and r["epoch"] == doc["epoch"] and r["eval_repo"] == "flock/eval-atlas-pairs"
               and len(r["chosen"]) == len(r["rejected"]) == 1 for r in pairs)


def test_each_explanation_matches_the_numbers_it_explains(report):
    """Every miner's record says in words how its weight came about, with the numbers the validator used."""
    import re

    by_uid = {m["uid"]: m for m in report.values()}
    for m in report.values():
        text = m["explanation"]
        assert text, m
        if m["status"] != "scored":
            assert m["reason"] in text
            continue
        assert f"eval loss {m['eval_loss']:.4f}" in text and f"win rate {m['win_rate']:.3f}" in text
        assert text.endswith(f"weight {m['weight']:.6f}")
        verdicts = re.findall(r"(beat|lost to) uid (\d+) \(([\d.]+)(?: x ([\d.]+) = ([\d.]+))?[^;]*? against its "
                              r"([\d.]+)(?: x ([\d.]+) = ([\d.]+))?", text)
        others = [o for o in report.values() if o["status"] == "scored" and o["uid"] != m["uid"]]
        assert len(verdicts) == len(others)
        wins = 0
        for verb, uid, mine, _, mine_adj, theirs, _, theirs_adj in verdicts:
            other = by_uid[int(uid)]
            assert float(mine) == round(m["eval_loss"], 4) and float(theirs) == round(other["eval_loss"], 4)
            compared_mine = float(mine_adj or mine)
            compared_theirs = float(theirs_adj or theirs)
            assert (verb == "beat") == (compared_mine < compared_theirs)  # the numbers decide the verdict
            wins += verb == "beat"
        assert f"= {wins} of {len(others)} comparisons won" in text
        assert abs(wins / len(others) - m["win_rate"]) < 1e-9
    q85 = report["honest-q85"]["explanation"]
    assert "for committing earlier" in q85 and "lost to uid 2" in q85  # the advantage is spelled out where it applies
    assert "5 rows copied from an earlier commitment" in report["honest-q100"]["explanation"]


def test_the_epoch_report_is_written_with_figures_and_explanations(dpo_home, doc, report, capsys, monkeypatch):
    """The epoch's stage writes the report next to the corpus: one self-contained HTML page (the figure inline,
    every miner's explanation) and the competition's PNG; `flock epoch report N --html` rewrites it and prints
    its path."""
    import html

    folder = dpo_home / "corpus" / "reports" / f"epoch-{doc['epoch']}"
    png, page = folder / "dpo.png", folder / "report.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_mode & 0o777 == 0o644
    text = page.read_text()
    assert "data:image/png;base64," in text and "base model's eval loss: 0.6931" in text
    for m in report.values():
        assert html.escape(m["explanation"]) in text, m["label"]
    monkeypatch.setenv("FLOCK_HOME", str(dpo_home))
    page.unlink()
    assert main(["epoch", "report", str(doc["epoch"]), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(page) and page.is_file()
    assert "honest-q100" in page.read_text()  # the demo's labels name the miners


def test_an_evaluation_names_its_competition_and_the_base_models_bar(dpo_home, doc, report):
    """What the miner_eval_losses materialization shows beside the loss: the competition and the base model's own
    loss on the same eval set (from the cache the scoring step filled: nothing is trained again)."""
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.evaluation import evaluate_miners

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(dpo_home))
        r = build_resources()
    hotkeys = [report["honest-q100"]["hotkey"], report["copier"]["hotkey"]]
    records = evaluate_miners(hotkeys, r["evaluator"], r["hub"], r["store"], r["settings"], doc["epoch"])
    best, copier = (records[h] for h in hotkeys)
    assert best.cached and best.competition == "dpo" and best.base_loss == pytest.approx(math.log(2), abs=1e-12)
    assert copier.status == "skipped" and copier.base_loss is None


def test_training_on_the_release_beats_random_submitted_pairs_which_beat_the_base_model(dpo_home, doc, monkeypatch,
                                                                                         capsys):
    """The DPO release (the paid miners' pairs) against pairs drawn at random from everything submitted (swapped
    labels, trivial rejected answers, copies and leaked eval pairs included), on held-out pairs no miner is scored
    against: its DPO loss is the lowest, and the random pairs' still beats the base model's ln 2."""
    import json
    from statistics import mean

    from flock_pipeline.cli import main

    monkeypatch.setenv("FLOCK_HOME", str(dpo_home))
    capsys.readouterr()
    assert main(["corpus", "value", "--json"]) == 0
    (dpo,) = json.loads(capsys.readouterr().out)["configs"]
    assert dpo["config"] == "dpo" and dpo["objective"] == "dpo" and dpo["heldout_repo"] == "flock/heldout-atlas-pairs"
    assert dpo["release_loss"] < mean(dpo["random_losses"]) < dpo["base_loss"] == pytest.approx(0.693147, abs=1e-6)
    card = next((dpo_home / "corpus").glob("epoch-*/README.md")).read_text()
    assert "**`dpo`** (dpo loss on `flock/heldout-atlas-pairs`" in card


def test_the_cards_load_snippet_loads_every_config_it_names(dpo_home, doc, tmp_path):
    folder = dpo_home / "corpus" / f"epoch-{doc['epoch']}"
    assert assert_card_snippet_loads(folder, tmp_path / "cache") == ["dpo"]  # the sft config has no rows
    assert assert_card_snippet_loads(dpo_home / "corpus" / "latest", tmp_path / "cache") == ["dpo"]
