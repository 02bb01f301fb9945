"""Epoch reports: what a validator publishes for miners, and how a miner reads someone else's (untrusted) file."""

import json

import pytest

from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord, WeightSubmissionRecord
from flock_pipeline.validator import reports
from flock_pipeline.validator.report_table import epoch_report, format_report
from flock_pipeline.validator.reports import REPORT_FILE, publish_epoch_report, read_miner_report

REPO = "val/reports"


@pytest.fixture
def setup(tmp_path):
    hub = LocalHubResource(root=str(tmp_path / "hub"))
    store = StoreResource(url=f"duckdb://{tmp_path / 'w.duckdb'}")
    settings = ValidatorSettingsResource(validator_hotkey="val", report_repo=REPO)
    return hub, store, settings


def scores(store, epoch, rows):
    store.record_scores(epoch, [ScoreRecord(epoch=epoch, hotkey=h, uid=i, status=s, reason=r, eval_loss=loss,
                                                score=w, weight=w) for i, (h, s, r, loss, w) in enumerate(rows)])


def test_published_reports_rank_miners_and_keep_the_latest_epochs(setup, monkeypatch):
    hub, store, settings = setup
    monkeypatch.setattr(reports, "MAX_EPOCHS", 2)
    for epoch in (1, 2, 3):
        scores(store, epoch, [("a", "scored", None, 1.5, 0.25), ("b", "scored", None, 1.2, 0.75),
                                  ("c", "duplicate", "copies a", None, 0.0)])
        assert publish_epoch_report(epoch, hub, settings, store) is not None
    assert publish_epoch_report(3, hub, settings, store) is None  # unchanged: nothing uploaded
    document = json.loads(hub.download(REPO, hub.head(REPO), REPORT_FILE))
    assert [e["epoch"] for e in document["epochs"]] == [2, 3]
    assert read_miner_report(hub, REPO, "b") == {"repo": REPO, "validator": "val", "epoch": 3, "status": "scored",
                                                 "reason": None, "eval_loss": 1.2, "score": 0.75, "win_rate": 0.75,
                                                 "weight": 0.75, "sent": None,
                                                 "rank": 1, "of": 3}
    assert read_miner_report(hub, REPO, "c")["reason"] == "copies a"
    assert read_miner_report(hub, REPO, "nobody")["epoch"] is None


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[]", b'{"format": 1, "validator": "v", "epochs": [{"epoch": "x"}]}',
                                  b'{"format": 2, "validator": "v", "epochs": []}',
                                  b'{"format": 1, "validator": "v", "epochs": [{"epoch": 1, "miners": [3]}]}'])
def test_a_malformed_report_is_an_error_for_that_repo_only(setup, data):
    hub, _, _ = setup
    hub.upload("other/reports", data, filename=REPORT_FILE, private=False)
    out = read_miner_report(hub, "other/reports", "a")
    assert out["repo"] == "other/reports" and out["error"]


def test_an_oversized_report_is_refused_without_reading_it_whole(setup, monkeypatch):
    hub, _, _ = setup
    monkeypatch.setattr(reports, "MAX_REPORT_BYTES", 100)
    hub.upload("big/reports", b"{" + b" " * 1000 + b"}", filename=REPORT_FILE, private=False)
    assert "limit 100" in read_miner_report(hub, "big/reports", "a")["error"]


def test_every_weight_is_shown_beside_the_weight_the_chain_took(setup):
    """The computed weight and, once sent, the u16 vector's share: a weight the u16 conversion rounds away is 0."""
    hub, store, settings = setup
    scores(store, 1, [("a", "scored", None, 1.5, 0.999996), ("b", "scored", None, 1.9, 0.000004)])
    assert [m["sent"] for m in epoch_report(1, store)] == [None, None]  # nothing sent yet
    assert "-" in format_report(epoch_report(1, store)).splitlines()[1].split()
    store.record_weight_submission(WeightSubmissionRecord(epoch=1, success=True, block=5, message="ok", uids=(0, 1),
                                                weights=(65535, 0), state="applied"))
    report = {m["hotkey"]: m for m in epoch_report(1, store)}
    assert report["b"]["weight"] == 0.000004 and report["b"]["sent"] == 0.0 and report["a"]["sent"] == 1.0
    publish_epoch_report(1, hub, settings, store)
    assert read_miner_report(hub, REPO, "b")["sent"] == 0.0
