"""`flock demo --network adversarial`: every attacker ends at weight 0 with its reason, honest miners by quality.

One whole epoch of the adversarial network through the CLI (about a minute on one core), shared by the tests.
"""

import json

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core.ranking import spearman

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
}


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory, tiny_model_dir):
    import shutil

    home = tmp_path_factory.mktemp("adversarial")
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    return home


@pytest.fixture(scope="module")
def report(adversarial):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--network", "adversarial", "--json", "--home", str(adversarial)]) == 0
    doc = json.loads(out.getvalue())
    assert doc["network"] == "adversarial"
    return {m["label"]: m for m in doc["miners"]}


def test_report_lists_every_miner_with_quality(report):
    assert set(ATTACKERS) <= set(report)
    honest = [m for m in report.values() if m["label"].startswith("honest-")]
    assert sorted(m["quality"] for m in honest) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(report[label]["quality"] is None for label in ATTACKERS)


@pytest.mark.parametrize("label", sorted(ATTACKERS))
def test_every_attacker_gets_zero_with_its_reason(report, label):
    status, reason = ATTACKERS[label]
    m = report[label]
    assert m["weight"] == 0.0
    assert m["status"] == status, m
    assert reason in (m["reason"] or ""), m
    if status != "no_improvement":
        assert m["eval_loss"] is None  # never trained, never a made-up loss


def test_honest_miners_ranked_by_quality(report):
    honest = [m for m in report.values() if m["quality"] is not None]
    assert all(m["status"] == "scored" and m["weight"] > 0 for m in honest), honest
    quality = [m["quality"] for m in honest]
    assert spearman(quality, [m["weight"] for m in honest]) >= 0.9
    assert spearman(quality, [-m["eval_loss"] for m in honest]) >= 0.9
    assert abs(sum(m["weight"] for m in report.values()) - 1.0) < 1e-9
