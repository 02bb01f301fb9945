"""SIGTERM and SIGINT stop `flock epoch run` at the next safe point: between runs and between the miners a run
trains. Every finished result is kept, nothing starts afterwards (no scores, weights or corpus), the exit code says
which signal (143, 130), a second signal ends the process at once, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from flock_pipeline.core import stop
from flock_pipeline.defs.epoch import run_epoch
from flock_pipeline.demo import epoch_report
from flock_pipeline.resources import build_resources
from flock_pipeline.store import EvalResultRecord


def _report(home, epoch):
    return {m["hotkey"]: (m["status"], m["eval_loss"], m["weight"]) for m in epoch_report(epoch, build_resources(
        home)["store"])}


def test_a_stop_between_miners_keeps_what_was_finished_and_a_resumed_run_equals_an_uninterrupted_one(
        demo_pair, monkeypatch):
    from flock_pipeline.core import evaluator as core_eval

    epoch, reference, home = demo_pair
    trained = []
    original = core_eval.train_and_evaluate_tokens

    def then_a_signal(*args, **kwargs):
        outcome = original(*args, **kwargs)
        trained.append(outcome)
        stop.request(signal.SIGTERM)  # arrives while the first miner trains: honoured before the second
        return outcome

    monkeypatch.setattr(core_eval, "train_and_evaluate_tokens", then_a_signal)
    resources = build_resources(home)
    stop.clear()
    try:
        with pytest.raises(stop.Stopped) as info:
            run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    finally:
        stop.clear()
    assert info.value.exit_code == 143 and len(trained) == 1
    store = resources["store"]
    assert [r.status for r in store.rows(EvalResultRecord)] == ["ok"]  # the finished miner is kept, alone
    assert store.scores(epoch) == [] and resources["chain"].weights_history("validator") == []  # nothing after
    monkeypatch.undo()
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    assert _report(home, epoch) == _report(reference, epoch)
    assert len(resources["chain"].weights_history("validator")) == 1


def test_a_run_interrupted_inside_a_batch_keeps_the_miners_it_finished(demo_pair, monkeypatch):
    """Dagster terminating a sensor's run raises its interrupt inside the training call of whatever miner is being
    trained: the miners of the batch that were already trained keep their results; the interrupted one gets none,
    and a resumed run equals an uninterrupted one."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    from flock_pipeline.core import evaluator as core_eval

    epoch, reference, home = demo_pair
    original = core_eval.train_and_evaluate_tokens
    calls = []

    def interrupted_from_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:  # the run is being terminated: every training from here on is interrupted
            raise DagsterExecutionInterruptedError()  # what the run worker's SIGTERM handler raises
        return original(*args, **kwargs)

    resources = build_resources(home)
    monkeypatch.setattr(core_eval, "train_and_evaluate_tokens", interrupted_from_the_second)
    try:
        run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    except BaseException as exc:  # noqa: BLE001 - how the run ends is Dagster's; what was kept is the point
        print(f"the run ended with {type(exc).__name__}: {exc}")
    store = resources["store"]
    assert [r.status for r in store.rows(EvalResultRecord)] == ["ok"] and len(calls) >= 2  # the first is kept
    assert store.scores(epoch) == [] and resources["chain"].weights_history("validator") == []
    monkeypatch.undo()
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    assert _report(home, epoch) == _report(reference, epoch)
    assert len(resources["chain"].weights_history("validator")) == 1


def _start(home):
    env = {**os.environ, "FLOCK_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "flock")), "epoch", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _when_evaluating(proc) -> None:
    for line in proc.stderr:
        if "evaluating" in line:
            return
    raise AssertionError("the run never reached the evaluation")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_command_with_its_exit_code(demo_pair, signum, code):
    epoch, _, home = demo_pair
    proc = _start(home)
    _when_evaluating(proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"flock: stopped by {signal.Signals(signum).name}")
    assert "Segmentation" not in err and build_resources(home)["store"].scores(epoch) == []


def test_a_second_signal_ends_it_at_once(demo_pair):
    _, _, home = demo_pair
    proc = _start(home)
    _when_evaluating(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # the first is handled (a note on stderr) ...
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)  # ... the second does not wait for a safe point
    proc.communicate(timeout=60)
    # exit 130 from the handler, or killed by the signal itself when it lands while the interpreter shuts down
    # (Python restores the default handler then): a shell shows 130 for both
    assert proc.returncode in (130, -signal.SIGINT) and time.monotonic() - sent < 3
