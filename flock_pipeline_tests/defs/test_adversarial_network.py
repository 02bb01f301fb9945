"""`flock demo --network adversarial`: every attacker ends at weight 0 with its reason, honest miners by quality.

One whole epoch of the adversarial network through the CLI (about a minute on one core), shared by the tests; the
other scoring modes re-score the same epoch from its recorded evaluations (dedup and training do not depend on the
scoring mode).
"""

import pytest

from flock_pipeline.core.ranking import spearman
from flock_pipeline_tests.defs.conftest import assert_zero_with_reason, demo_home, demo_json

# label -> (status, a piece of the reason)
ATTACKERS = {
    "exact-copier": ("ineligible", "committed earlier by another miner"),
    "paraphrase-copier": ("ineligible", "committed earlier by another miner"),
    "partial-copier": ("ineligible", "committed earlier by another miner"),
    "late-recommit": ("ineligible", "committed earlier by another miner"),
    "eval-leaker": ("ineligible", "eval leakage"),
    "junk": ("no_improvement", "not below the base model's"),
    "empty": ("ineligible", "empty dataset"),
    "oversize": ("ineligible", "bytes, limit"),
    "malformed": ("ineligible", "no valid rows"),
    "stale": ("rejected", "predates the hotkey's registration"),
    "invisible-copier": ("ineligible", "committed earlier by another miner"),
    "homoglyph-copier": ("ineligible", "committed earlier by another miner"),
    "preamble-copier": ("ineligible", "committed earlier by another miner"),
    "signature-copier": ("ineligible", "committed earlier by another miner"),
    "numbers-copier": ("ineligible", "committed earlier by another miner"),
    "packer": ("ineligible", "committed earlier by another miner"),
    "merger": ("ineligible", "committed earlier by another miner"),
    "marks-copier": ("ineligible", "committed earlier by another miner"),
    "new-question-copier": ("ineligible", "committed earlier by another miner"),
    "answer-merger": ("ineligible", "committed earlier by another miner"),
    "system-prompt-copier": ("ineligible", "committed earlier by another miner"),
    "disguised-eval-leaker": ("ineligible", "eval leakage"),
    "reword-copier": ("ineligible", "committed earlier by another miner"),
    "reword-eval-leaker": ("ineligible", "eval leakage"),
    **{f"sybil-{i}": ("ineligible", "committed earlier by another miner") for i in (1, 2, 3)},
}
# a copier's reason names the honest miner(s) it copied, by uid
ORIGINALS = {"exact-copier": ["honest-q100"], "paraphrase-copier": ["honest-q100"], "partial-copier": ["honest-q80"],
             "late-recommit": ["honest-q100"], "invisible-copier": ["honest-q100"],
             "homoglyph-copier": ["honest-q80"], "preamble-copier": ["honest-q60"],
             "signature-copier": ["honest-q40"], "numbers-copier": ["honest-q100"], "packer": ["honest-q100"],
             "merger": ["honest-q100", "honest-q80"], "marks-copier": ["honest-q60"],
             "new-question-copier": ["honest-q80"], "answer-merger": ["honest-q100"],
             "system-prompt-copier": ["honest-q60"], "reword-copier": ["honest-q40"],
             **{f"sybil-{i}": ["honest-q80"] for i in (1, 2, 3)}}
SCORING_MODES = {"win_rate": {},  # the settings' scoring object (a model copy skips validation: JSON text)
                 "decaying epsilon + bootstrap": {
                     "scoring": '{"epsilon_decay_blocks": 7200, "significance": "bootstrap"}'},
                 "top_k": {"scoring": '{"mode": "top_k"}'}, "curve": {"scoring": '{"mode": "curve"}'}}


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory, tiny_model_dir):
    return demo_home(tmp_path_factory, tiny_model_dir, "adversarial")


@pytest.fixture(scope="module")
def report(adversarial):
    return {m["label"]: m for m in demo_json(adversarial, "adversarial")["miners"]}


def test_report_lists_every_miner_with_quality(report):
    assert set(ATTACKERS) <= set(report)
    honest = [m for m in report.values() if m["label"].startswith("honest-")]
    assert sorted(m["quality"] for m in honest) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(report[label]["quality"] is None for label in ATTACKERS)


@pytest.mark.parametrize("label", sorted(ATTACKERS))
def test_every_attacker_gets_zero_with_its_reason(report, label):
    status, reason = ATTACKERS[label]
    m = report[label]
    assert_zero_with_reason(m, status, reason)
    if status != "no_improvement":
        assert m["eval_loss"] is None  # never trained, never a made-up loss
    for original in ORIGINALS.get(label, []):
        assert f"uid {report[original]['uid']}:" in m["reason"], m


def test_the_sybils_are_hotkeys_of_one_coldkey_each_holding_a_disjoint_part(adversarial, report):
    """One coldkey, three hotkeys, each committing a third of honest-q80's rows merged three to an exchange: their
    parts hold no question in common and together hold all of honest-q80's; none of them is paid."""
    import json

    from flock_pipeline.resources import build_resources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(adversarial))
        r = build_resources()
    sybils = [report[f"sybil-{i}"] for i in (1, 2, 3)]
    coldkeys = {n.hotkey: n.coldkey for n in r["chain"].metagraph()}
    assert len({coldkeys[m["hotkey"]] for m in sybils}) == 1
    assert coldkeys[report["honest-q80"]["hotkey"]] not in {coldkeys[m["hotkey"]] for m in sybils}
    epoch = r["store"].latest_epoch()

    def questions(m: dict) -> list[str]:
        commitment = r["store"].miner_commitment(m["hotkey"], epoch)
        rows = r["hub"].download(commitment.repo, commitment.revision).splitlines()
        return [q for row in rows for q in json.loads(row)["conversations"][0]["content"].split(" Also, ")]

    parts = [questions(m) for m in sybils]
    assert all(len(p) >= 20 for p in parts) and len(set().union(*parts)) == sum(map(len, parts))  # disjoint
    assert sorted(q for p in parts for q in p) == sorted(questions(report["honest-q80"]))  # the whole copy
    assert sum(m["weight"] for m in sybils) == 0.0


@pytest.fixture(scope="module")
def rescored(adversarial, report):
    """The same epoch scored in each scoring mode: hotkey -> (weight, eval loss) per mode."""
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.scoring import compute_epoch_scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOCK_HOME", str(adversarial))
        r = build_resources()
    epoch = r["store"].latest_epoch()
    out = {}
    for mode, overrides in SCORING_MODES.items():
        settings = r["settings"].model_copy(update={**overrides, "replace_results": True})
        scores = compute_epoch_scores(epoch, r["evaluator"], settings, r["store"], r["hub"], r["chain"])
        out[mode] = {s.hotkey: (float(s.weight), float(s.eval_loss)) for s in scores}
    return out


@pytest.mark.parametrize("mode", list(SCORING_MODES))
def test_every_scoring_mode_pays_no_attacker_and_ranks_honest_miners_by_quality(report, rescored, mode):
    scores = rescored[mode]
    assert all(scores[report[label]["hotkey"]][0] == 0.0 for label in ATTACKERS), mode
    honest = [m for m in report.values() if m["quality"] is not None]
    # the validator's ranking: by weight, ties (a winner-take-all or flat mode) broken by the lower loss
    ranked = sorted(honest, key=lambda m: (-scores[m["hotkey"]][0], scores[m["hotkey"]][1]))
    assert spearman([m["quality"] for m in ranked], list(range(len(ranked), 0, -1))) >= 0.9, ranked
    assert abs(sum(w for w, _ in scores.values()) - 1.0) < 1e-9


def test_honest_miners_ranked_by_quality(report):
    honest = [m for m in report.values() if m["quality"] is not None]
    assert all(m["status"] == "scored" for m in honest), honest
    # only improvement is paid: an honest miner at weight 0 is one that won no comparison, and the best is paid
    assert all(m["weight"] > 0 or "won no comparison" in m["explanation"] for m in honest), honest
    assert max(honest, key=lambda m: m["quality"])["weight"] > 0
    quality = [m["quality"] for m in honest]
    assert spearman(quality, [m["weight"] for m in honest]) >= 0.9
    assert spearman(quality, [-m["eval_loss"] for m in honest]) >= 0.9
    assert abs(sum(m["weight"] for m in report.values()) - 1.0) < 1e-9


def test_the_release_of_the_paid_miners_beats_random_rows_of_everything_submitted(adversarial, report, monkeypatch,
                                                                                   capsys):
    """Everything submitted includes the junk, the copies and the leaked eval rows; the release is what the
    validators paid for. On held-out rows no miner is scored against, training on the release does better."""
    import json
    from statistics import mean

    from flock_pipeline.cli import main

    monkeypatch.setenv("FLOCK_HOME", str(adversarial))
    capsys.readouterr()
    assert main(["corpus", "value", "--json"]) == 0
    (sft,) = json.loads(capsys.readouterr().out)["configs"]
    assert sft["release_loss"] < mean(sft["random_losses"]) < sft["base_loss"]
