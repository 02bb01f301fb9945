"""Progress while an evaluation batch runs: one event per finished miner in the run's event log as it finishes (the
UI shows them while the step is still running), and `flock epoch run` prints a line per miner with done / total."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from types import SimpleNamespace

import dagster as dg
import pytest

from flock_pipeline.defs.assets import miner_eval_losses
from flock_pipeline.defs.epoch import MinerTicker
from flock_pipeline.demo import seed_demo_network
from flock_pipeline.validator.evaluation import MinerDone
from flock_pipeline_tests.homes import home_with_model

LINE = re.compile(r"^\[(\d+)/(\d+)\] uid (\d+) (hk-[\w-]+): (.*)$")
TRAINED = {"hk-honest-good", "hk-honest-fair", "hk-weak-offdomain"}
SKIPPED = {"hk-malformed", "hk-empty", "hk-copier"}


class _Console(io.StringIO):
    """stderr of the command: at each per-miner line, when it came and what the Dagster instance held at that
    moment (the evaluation run's progress lines, and miner_eval_losses' materializations, which come when the step
    ends)."""

    def __init__(self, instance: dg.DagsterInstance):
        super().__init__()
        self.instance, self.seen = instance, []

    def write(self, text: str) -> int:
        if LINE.match(text):
            held = len(_progress(self.instance.all_logs(_eval_run(self.instance).run_id)))
            self.seen.append((time.monotonic(), held,
                              len(self.instance.fetch_materializations(miner_eval_losses.key, limit=100).records)))
        return super().write(text)


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory, tiny_model_dir):
    """`flock epoch run --json -v` on a freshly seeded demo network (six miners, one evaluation batch: three
    trained one after the other, three skipped), in this process, on an instance the test reads: (instance,
    stdout, console)."""
    from flock_pipeline.cli import main, validator

    home = home_with_model(tmp_path_factory.mktemp("progress"), tiny_model_dir)
    seed_demo_network(home)
    instance = dg.DagsterInstance.ephemeral()
    console, out = _Console(instance), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOCK_HOME", str(home))
        mp.setenv("FLOCK_VERBOSE", "1")  # what -v sets, undone after the run
        mp.setenv("FLOCK_MULTI_LORA", "off")  # one trainer (on a GPU too): each miner finishes at its own time
        mp.setattr(validator, "_instance", lambda: instance)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(console):
            assert main(["epoch", "run", "--json", "-v"]) == 0, console.getvalue()[-3000:]
    return instance, out.getvalue(), console


def _eval_run(instance: dg.DagsterInstance):
    [run] = [r for r in instance.get_runs() if "miners:" in r.tags.get("dagster/run_key", "")]
    return run


def _progress(logs) -> list[tuple[int, tuple[MinerDone, int, int]]]:
    """(position in the run's log, what the line says) of the evaluation step's progress lines."""
    return [(i, read) for i, e in enumerate(logs) if e.dagster_event is None and e.step_key == "miner_eval_losses"
            and (read := MinerDone.of_line(e.user_message)) is not None]


def test_the_batch_run_logs_one_event_per_miner_while_the_step_runs(epoch_run):
    instance, _, console = epoch_run
    logs = instance.all_logs(_eval_run(instance).run_id)
    progress = _progress(logs)
    told = [miner for _, (miner, _, _) in progress]
    assert [m.hotkey for m in told[:3]] == ["hk-malformed", "hk-empty", "hk-copier"]  # answered at once
    assert {m.hotkey for m in told} == TRAINED | SKIPPED and len(told) == 6  # one event per miner
    assert [(k, n) for _, (_, k, n) in progress] == [(k, 6) for k in range(1, 7)]
    good = next(m for m in told if m.hotkey == "hk-honest-good")
    assert good.status == "ok" and good.rows == 100 and good.uid == 1 and not good.cached
    assert good.loss == pytest.approx(1.7769, abs=1e-4) and good.seconds > 0
    assert "train loss" in logs[next(i for i, (m, _, _) in progress if m.hotkey == "hk-honest-good")].user_message
    assert {m.status for m in told if m.hotkey in SKIPPED} == {"skipped"}
    assert all(m.reason for m in told if m.hotkey in SKIPPED)
    # before the step's results: the first event precedes the step's materializations and its end
    step_end = [i for i, e in enumerate(logs) if e.dagster_event is not None and e.step_key == "miner_eval_losses"
                and e.dagster_event.event_type in (dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                   dg.DagsterEventType.STEP_SUCCESS)]
    assert len(step_end) == 7 and progress[-1][0] < min(step_end)
    # ... and in the event log while the step runs: when the command printed miner k, the instance held k events
    # and not one of the step's materializations yet ...
    assert [(held, materialized) for _, held, materialized in console.seen] == [(k, 0) for k in range(1, 7)]
    # ... each as its miner finished, not all at the end: the last two trained miners' lines came at least their
    # training and scoring time after the first trained miner's
    seconds = sum(m.seconds for m in told[4:])
    assert seconds > 0.1 and console.seen[5][0] - console.seen[3][0] >= 0.9 * seconds


def test_flock_epoch_run_prints_a_line_per_miner_with_done_and_total(epoch_run):
    _, stdout, console = epoch_run
    err = console.getvalue().splitlines()
    lines = [LINE.match(line) for line in err if LINE.match(line)]
    assert [(int(m[1]), int(m[2])) for m in lines] == [(k, 6) for k in range(1, 7)]
    by_miner = {m[4]: (int(m[3]), m[5]) for m in lines}
    assert by_miner.keys() == TRAINED | SKIPPED
    uid, what = by_miner["hk-honest-good"]
    assert uid == 1 and re.fullmatch(r"loss 1\.7769 \(\d+\.\d s\)( ETA \d+ s)?", what), what
    assert by_miner["hk-copier"][1].startswith("skipped: duplicate: ")
    assert "ETA" in lines[3][5] and "ETA" not in lines[-1][5]  # once a miner has trained; none after the last
    stage = err.index("epoch 1: deduplicating + evaluating 6 miner(s) in 1 run(s)")
    assert stage < err.index(lines[0][0]) and err.index(lines[-1][0]) < err.index("epoch 1: scoring")
    # -v: each step's own info lines (every miner's outcome in every step) come through too
    assert any(" - deduplicated_shards - hk-copier: " in line and "duplicates_earlier 100" in line for line in err)
    assert any(" - miner_eval_losses - miner 4/6 uid " in line and "train loss" in line for line in err)
    doc = json.loads(stdout)  # the progress is on stderr: the JSON document on stdout is whole
    assert doc["epoch"] == 1 and len(doc["miners"]) == 6


def test_the_epochs_json_document_names_every_miner_with_its_outcome(epoch_run):
    """The document `flock epoch run --json` (and `flock demo --json`) prints: every field per miner, the score's
    old name kept for one release, and the demo's outcomes."""
    doc = json.loads(epoch_run[1])
    fields = {"uid", "hotkey", "label", "status", "reason", "rows_kept", "eval_loss", "score", "win_rate", "weight",
              "sent", "explanation"}
    assert all(fields <= set(m) for m in doc["miners"])
    assert all(m["win_rate"] == m["score"] for m in doc["miners"])
    miners = {m["hotkey"].removeprefix("hk-"): m for m in doc["miners"]}
    assert set(miners) == {"honest-good", "honest-fair", "weak-offdomain", "copier", "malformed", "empty"}
    assert miners["honest-good"]["weight"] == 1.0  # the others lose every comparison or do not beat the base
    assert miners["honest-fair"]["eval_loss"] < miners["weak-offdomain"]["eval_loss"]
    for label in ("copier", "malformed", "empty"):
        assert miners[label]["weight"] == 0 and miners[label]["reason"]


# Issue 30: Dagster's event storage grows by at most 5 MB per epoch at 256 miners; a miner's share, 19.5 KB
MINER_EVENT_BYTES = 5_000_000 // 256


def test_a_miners_events_of_an_epoch_fit_its_share_of_5_mb_at_256_miners(epoch_run):
    """What one miner adds to the event log in an epoch's evaluation batch, serialized as Dagster stores it and
    counted once: its planned and recorded materializations, its check evaluation and the log lines naming it.
    Storage adds its own copies and pages on top of this (docs/benchmarks.md: at 256 miners PostgreSQL stores about
    1.1 times the serialized bytes, SQLite's run files and asset index about 4 times)."""
    from dagster._serdes import serialize_value

    instance, _, _ = epoch_run
    hotkeys, per_miner = TRAINED | SKIPPED, {}
    for entry in instance.all_logs(_eval_run(instance).run_id):
        text = serialize_value(entry)
        named = [h for h in hotkeys if f'"{h}"' in text or f'"{h}:' in text or f" {h}:" in text]
        if len(named) == 1:  # (events that list the whole batch are the run's, not a miner's)
            per_miner[named[0]] = per_miner.get(named[0], 0) + len(text.encode())
    assert per_miner.keys() == hotkeys
    assert max(per_miner.values()) <= MINER_EVENT_BYTES, per_miner


def _entry(hotkey: str, status: str, cached: bool = False, loss: float = float("nan")) -> SimpleNamespace:
    """A progress line as the evaluation step logs it (uid not known to the step)."""
    miner = MinerDone(hotkey, None, status, 10, 2.0, loss, reason="why", cached=cached)
    return SimpleNamespace(dagster_event=None, step_key="miner_eval_losses", user_message=miner.line(1, 1))


def test_a_retried_step_counts_each_miner_once():
    """A step retry tells the batch's miners again (those already done from the store): each counts once, and the
    estimate uses the miners that trained."""
    lines: list[str] = []
    ticker = MinerTicker(1, [], dg.DagsterInstance.ephemeral(), store=None, progress=lines.append)
    ticker.total, ticker.uids = 3, {"hk-a": 7}
    ticker(_entry("hk-a", "failed"))
    ticker(_entry("hk-a", "ok", loss=1.5))  # the retry: trained again
    ticker(_entry("hk-b", "skipped"))
    ticker(_entry("hk-c", "ok", cached=True, loss=2.25))
    ticker(SimpleNamespace(dagster_event=None, step_key="miner_eval_losses", user_message="loading the model"))
    ticker(SimpleNamespace(dagster_event=object(), step_key="miner_eval_losses", user_message=""))  # an event
    assert [line.split(" ETA ")[0] for line in lines] == [
        "[1/3] uid 7 hk-a: failed: why", "[1/3] uid 7 hk-a: loss 1.5000 (2.0 s)", "[2/3] uid ? hk-b: skipped: why",
        "[3/3] uid ? hk-c: loss 2.2500 (from the store)"]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
