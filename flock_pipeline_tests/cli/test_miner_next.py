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


def test_repeated_reasons_are_one_line_with_their_count(flock_home, tmp_path, monkeypatch, capsys):
    from flock_pipeline.demo import demo_miners

    seed_demo_network(flock_home)
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    monkeypatch.setenv("FLOCK_COMPETITIONS", "curation+dpo")
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(demo_miners()[0].data)  # 100 chat rows, sent to the DPO game
    capsys.readouterr()
    assert main(["miner", "validate", str(chat), "--competition", "dpo", "--no-eval-check"]) == 1
    out = capsys.readouterr().out
    assert out.count("a chat row: this competition takes preference rows") == 2  # the headline, then one group
    assert "  100 rows (lines 1, 2, 3, 4, 5, ...): a chat row" in out


def test_a_short_selection_is_said_to_be_allowed(flock_home, tmp_path, monkeypatch, capsys):
    seed_demo_network(flock_home, network="selection")
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    data = tmp_path / "fifty.jsonl"
    data.write_bytes(rows_to_jsonl(selection_pool()[:50]).encode())
    capsys.readouterr()
    assert main(["miner", "validate", str(data)]) == 0
    assert ("a valid selection of 50 distinct pool rows (fewer than 100 is allowed: validators train on these 50)"
            in capsys.readouterr().out)


def test_a_dpo_score_shows_the_reward_accuracy_and_margin(flock_home, tmp_path, monkeypatch, capsys):
    from flock_pipeline.demo import dpo_miners

    seed_demo_network(flock_home, network="dpo")
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(dpo_miners()[1].data)
    doc = _json(capsys, "miner", "score", str(pairs), "--competition", "dpo", "--json")
    metrics = doc["results"][0]["metrics"]
    assert 0.0 <= metrics["reward_accuracy"] <= 1.0 and "mean_margin" in metrics
    capsys.readouterr()
    assert main(["miner", "score", str(pairs), "--competition", "dpo"]) == 0
    assert "reward accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("competitions, network, hint", [
    ("selection-local", "local", "seed the local network with `flock demo --no-run --network selection`"),
    ("dpo-local", "local", "seed the local network with `flock demo --no-run --network dpo`"),
    ("", "local", "seed the local network with `flock demo --no-run`;"),
])
def test_a_missing_eval_set_hint_names_the_command_for_the_game(flock_home, tmp_path, monkeypatch, capsys,
                                                                competitions, network, hint):
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))  # nothing seeded: no eval set, no pool
    monkeypatch.setenv("FLOCK_COMPETITIONS", competitions)
    data = tmp_path / "data.jsonl"
    data.write_bytes(rows_to_jsonl(selection_pool()[:3]).encode())
    capsys.readouterr()
    assert main(["miner", "validate", str(data)]) == 2
    assert hint in capsys.readouterr().err
