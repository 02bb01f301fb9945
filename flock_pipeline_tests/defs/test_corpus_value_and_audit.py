"""What training on the corpus is worth (`flock corpus value`, the `corpus_value` asset) and re-checking a recorded
score (`flock audit`, also from another validator's published `reports.json`), on the default demo network."""

from __future__ import annotations

import json
import shutil
from statistics import mean

import duckdb
import pytest

from flock_pipeline.cli import main
from flock_pipeline_tests.defs.conftest import assert_card_snippet_loads, demo_home, demo_json


@pytest.fixture(scope="module")
def default_home(tmp_path_factory, tiny_model_dir):
    home = demo_home(tmp_path_factory, tiny_model_dir, "value")
    demo_json(home, "default")
    return home


def _json(capsys, *argv, code=0):
    capsys.readouterr()
    assert main(list(argv)) == code
    return json.loads(capsys.readouterr().out)


def test_the_release_beats_random_submitted_rows_which_beat_the_base_model(default_home, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_HOME", str(default_home))
    doc = _json(capsys, "corpus", "value", "--json")
    (sft,) = doc["configs"]
    assert doc["epoch"] == 1 and sft["config"] == "sft" and sft["heldout_repo"] == "flock/heldout-atlas"
    assert sft["heldout_rows"] == 40 and sft["rows"] == 100 and len(sft["random_losses"]) == 3
    assert sft["release_loss"] < mean(sft["random_losses"]) < sft["base_loss"]
    assert doc["not_measured"] == {"dpo": "the release has no rows of this config"}
    card = (default_home / "corpus" / "epoch-1" / "README.md").read_text()
    assert "## What training on this release does" in card and f"| this release | {sft['release_loss']:.4f} |" in card
    assert _json(capsys, "corpus", "value", "1", "--json") == doc  # recorded: read back, not trained again
    again = _json(capsys, "corpus", "value", "1", "--json", "--again")["configs"][0]
    assert again["release_loss"] == sft["release_loss"] and again["random_losses"] == sft["random_losses"]
    card = (default_home / "corpus" / "epoch-1" / "README.md").read_text()
    assert card.count("## What training on this release does") == 1  # replaced, never repeated


def test_the_next_release_is_measured_against_the_previous_one(default_home, tmp_path, monkeypatch, capsys):
    home = tmp_path / "next"
    shutil.copytree(default_home, home)
    monkeypatch.setenv("FLOCK_HOME", str(home))
    assert main(["chain", "advance", "--to-next-epoch"]) == 0
    assert main(["epoch", "run", "2"]) == 0
    (sft,) = _json(capsys, "corpus", "value", "--json")["configs"]
    assert sft["previous_epoch"] == 1 and sft["previous_loss"] is not None
    report = (home / "corpus" / "reports" / "epoch-2" / "report.html")
    capsys.readouterr()
    assert main(["epoch", "report", "2", "--html"]) == 0
    assert "What training on the release is worth" in report.read_text()
    assert (home / "corpus" / "reports" / "epoch-2" / "value.png").stat().st_size > 0


def test_an_audit_of_a_recorded_score_matches(default_home, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_HOME", str(default_home))
    doc = _json(capsys, "audit", "1", "hk-honest-good", "--json")
    assert doc["verdict"] == "match" and doc["differences"] == []
    assert doc["rerun_loss"] == doc["recorded_loss"] and doc["max_row_difference"] == 0.0
    assert main(["audit", "1", "hk-copier"]) == 2  # its shard was never evaluated: nothing to audit


def test_an_audit_names_the_input_that_changed(default_home, tmp_path, monkeypatch, capsys):
    home = tmp_path / "altered"
    shutil.copytree(default_home, home)
    monkeypatch.setenv("FLOCK_HOME", str(home))
    with duckdb.connect(str(home / "warehouse.duckdb")) as db:
        shard = db.execute("SELECT shard_hash FROM shards WHERE hotkey = 'hk-honest-good'").fetchone()[0]
        db.execute("UPDATE shard_rows SET row_json = replace(row_json, '.', '!') WHERE shard_hash = ? "
                   "AND pos = 3", [shard])
    doc = _json(capsys, "audit", "1", "hk-honest-good", "--json", code=1)
    assert doc["verdict"] == "inputs differ" and doc["differences"][0].startswith("shard: stored row 3")
    (model,) = (home / "models").glob("tiny-qwen2-*/model.safetensors")
    with model.open("r+b") as f:  # one byte of the weights, changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    doc = _json(capsys, "audit", "1", "hk-honest-fair", "--json", code=1)
    assert [d.split(":")[0] for d in doc["differences"]] == ["model digest"]


def test_anyone_audits_a_published_score_from_public_data(default_home, tmp_path, monkeypatch, capsys):
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.reports import publish_epoch_report

    home = tmp_path / "published"
    shutil.copytree(default_home, home)
    monkeypatch.setenv("FLOCK_HOME", str(home))
    monkeypatch.setenv("FLOCK_SETTINGS", json.dumps({"report_repo": "validator/flock-reports"}))
    resources = build_resources()
    with resources["store"].session():
        assert publish_epoch_report(1, resources["hub"], resources["settings"], resources["store"])
    monkeypatch.delenv("FLOCK_SETTINGS")
    (home / "warehouse.duckdb").unlink()  # the auditor has none of the validator's records: only public data
    doc = _json(capsys, "audit", "1", "hk-honest-good", "--reports", "validator/flock-reports", "--json")
    assert doc["verdict"] == "match" and doc["inputs"]["lines"] == "1-100"
    assert doc["rerun_loss"] == doc["recorded_loss"]
    doc = _json(capsys, "audit", "1", "hk-honest-fair", "--reports", "validator/flock-reports", "--json")
    assert doc["verdict"] == "match" and doc["inputs"]["lines"] == "1-50"  # all 50 kept (test_audit_lines.py:
    # a shard with gaps, its published ranges read back line for line)


def test_the_cards_load_snippet_loads_every_config_it_names(default_home, tmp_path):
    for folder in (default_home / "corpus" / "epoch-1", default_home / "corpus" / "latest"):
        assert assert_card_snippet_loads(folder, tmp_path / "cache") == ["sft"]  # the dpo config has no rows
