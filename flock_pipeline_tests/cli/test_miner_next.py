"""Miners are told what happens to their submission: what a commitment counts for (`flock miner submit`) and when
the validators next look (`flock miner status`, before any evaluation too)."""

from __future__ import annotations

import json

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.demo import seed_demo_network, selection_pool


def _json(capsys, *argv, code=0):
    capsys.readouterr()
    assert main(list(argv)) == code
    return json.loads(capsys.readouterr().out)


def test_a_selection_submitted_after_the_window_says_the_round_it_counts_for(flock_home, tmp_path, monkeypatch,
                                                                              capsys):
    seed_demo_network(flock_home, network="selection")  # the chain stands after day 0's 12:00-12:30 window
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    data = tmp_path / "data.jsonl"
    data.write_bytes(rows_to_jsonl(selection_pool()[:100]).encode())
    doc = _json(capsys, "miner", "submit", str(data), "--repo", "idle3/selection", "--hotkey", "hk-idle-3", "--json")
    assert doc["competition"] == "selection"
    assert doc["counts"].startswith("is late for round 20260202 (its submission window closed at 2026-02-02 12:30 UTC)")
    assert "counts for round 20260203" in doc["counts"]
    capsys.readouterr()
    assert main(["miner", "submit", str(data), "--repo", "idle3/selection", "--hotkey", "hk-idle-3"]) == 0
    assert "it is late for round 20260202" in capsys.readouterr().out


def test_status_before_any_evaluation_says_when_the_validators_look(flock_home, monkeypatch, capsys):
    epoch = seed_demo_network(flock_home)  # committed, nothing evaluated yet
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    doc = _json(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json")
    assert doc["status"] is None and doc["eval_loss"] is None  # nothing recorded yet ...
    assert doc["counts"].startswith(f"counts from epoch {epoch}, which opens at block")  # ... and what comes next
    assert doc["next"].startswith(f"the next epoch, {epoch + 1}, opens at block")


@pytest.mark.parametrize("hotkey, counts", [("hk-random-selector", "counts for round 20260202"),
                                            ("hk-late", "is late for round 20260202")])
def test_status_in_a_daily_game_names_the_round_and_its_phase(flock_home, monkeypatch, capsys, hotkey, counts):
    seed_demo_network(flock_home, network="selection")
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    doc = _json(capsys, "miner", "status", "--hotkey", hotkey, "--json")
    assert doc["next"].startswith("round 20260202 of selection is in its validation phase")
    assert doc["counts"].startswith(counts)
