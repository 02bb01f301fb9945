"""`flock miner history HOTKEY`: a miner's loss, rank and weight per epoch, from the validator's store alone."""

import json
import math

import pytest

from flock_pipeline.cli import main
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord, WeightSubmissionRecord


def _score(epoch, uid, hotkey, status, loss, weight, reason=None):
    return ScoreRecord(epoch=epoch, hotkey=hotkey, uid=uid, status=status, reason=reason, eval_loss=loss,
                       score=weight, weight=weight, competition="curation", competition_weight=weight)


@pytest.fixture
def store_home(tmp_path, monkeypatch):
    """A home whose store scored two miners over three epochs (epoch 2: hk-a's evaluation failed); only epochs 1
    and 3 sent weights."""
    monkeypatch.setenv("FLOCK_HOME", str(tmp_path))
    monkeypatch.delenv("FLOCK_STORE", raising=False)
    store = StoreResource(url=f"duckdb://{tmp_path / 'warehouse.duckdb'}")
    store.record_scores(1, [_score(1, 1, "hk-a", "scored", 2.25, 0.75), _score(1, 2, "hk-b", "scored", 2.5, 0.25)])
    store.record_scores(2, [_score(2, 1, "hk-a", "failed", math.nan, 0.0, "evaluation failed: boom"),
                            _score(2, 2, "hk-b", "scored", 2.4, 1.0)])
    store.record_scores(3, [_score(3, 1, "hk-a", "scored", 2.0, 0.6), _score(3, 2, "hk-b", "scored", 2.3, 0.4)])
    for epoch, weights in ((1, (49152, 16384)), (3, (39321, 26214))):
        store.record_weight_submission(WeightSubmissionRecord(epoch=epoch, success=True, block=epoch * 10,
                                                              message="ok", uids=(1, 2), weights=weights,
                                                              state="applied"))
    return tmp_path


def test_history_prints_the_miners_loss_rank_and_weight_in_every_epoch(store_home, capsys):
    assert main(["miner", "history", "hk-a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["epoch", "uid", "competition", "status", "eval_loss", "rank", "score", "weight",
                                "sent", "reason"]
    assert lines[1].split()[:9] == ["1", "1", "curation", "scored", "2.2500", "1/2", "0.750", "0.750000",
                                    "0.750000"]
    # epoch 2: the failure has no loss and no rank, its reason says why; nothing was sent that epoch
    assert lines[2].split() == ["2", "1", "curation", "failed", "0.000", "0.000000", "-", "evaluation", "failed:",
                                "boom"]
    assert lines[3].split()[:6] == ["3", "1", "curation", "scored", "2.0000", "1/2"]

    assert main(["miner", "history", "hk-a", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hotkey"] == "hk-a" and [e["epoch"] for e in doc["epochs"]] == [1, 2, 3]
    assert [e["eval_loss"] for e in doc["epochs"]] == [2.25, None, 2.0]  # a failure is a gap, never a loss
    assert [e["rank"] for e in doc["epochs"]] == [1, None, 1]
    assert doc["epochs"][0]["sent"] == 0.75 and doc["epochs"][1]["sent"] is None


def test_history_of_a_hotkey_never_scored_exits_1(store_home, capsys):
    assert main(["miner", "history", "hk-nobody"]) == 1
    assert "no epoch scored" in capsys.readouterr().err
    assert main(["miner", "history", "hk-nobody", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"hotkey": "hk-nobody", "epochs": []}
