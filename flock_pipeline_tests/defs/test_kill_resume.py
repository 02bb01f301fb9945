"""Fault injection: the epoch runner killed (SIGKILL) or stopped (SIGTERM: it stops at the next safe point, exit
143) at random points, again and again, then resumed: the final report, the corpus and the single weight submission
are those of an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flock_pipeline.demo import epoch_report
from flock_pipeline.resources import build_resources
from flock_pipeline.store import CorpusRecord

# 7 of each signal at random points: what fits `make test`'s 10 minutes; FLOCK_SOAK_KILLS=100 soaks longer
KILLS = int(os.environ.get("FLOCK_SOAK_KILLS", "14"))
DEADLINE_S = max(600, 30 * KILLS)  # the whole test, kills and resumes together


def _outcome(home: Path, epoch: int) -> dict:
    resources = build_resources(home)
    store = resources["store"]
    corpus = [(c.rows, c.sha256) for c in store.rows(CorpusRecord, epoch=epoch)]
    return {"report": {m["hotkey"]: (m["status"], m["reason"], m["eval_loss"], m["win_rate"], m["weight"])
                       for m in epoch_report(epoch, store)},
            "corpus": corpus,
            "weights": [(w["uids"], w["weights"]) for w in resources["chain"].weights_history("validator")]}


@pytest.mark.slow
def test_killing_the_runner_at_random_points_changes_nothing(demo_pair):
    epoch, calm, killed = demo_pair
    expected = _outcome(calm, epoch)
    assert len(expected["weights"]) == 1 and expected["corpus"][0][0] > 0

    env = {**os.environ, "FLOCK_HOME": str(killed)}
    env.pop("DAGSTER_HOME", None)
    command = [str(Path(sys.executable).parent / "flock"), "epoch", "run", str(epoch), "--json"]
    rng = random.Random(1234)
    started, kills, completed = time.monotonic(), 0, 0
    while True:
        assert time.monotonic() - started < DEADLINE_S, f"out of time after {kills} kills"
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < KILLS:
            try:
                proc.wait(timeout=rng.uniform(3.0, 12.0))  # start-up is about 4 s; the rest lands anywhere
            except subprocess.TimeoutExpired:
                how = signal.SIGTERM if kills % 2 else signal.SIGKILL
                proc.send_signal(how)
                _, err = proc.communicate(timeout=DEADLINE_S)
                # stopped at a safe point (143) or done (0); or, landing before the handlers are installed at start-up
                # or after they are gone at shut-down, killed by the signal itself (-15): the outcome is checked alike
                assert how == signal.SIGKILL or proc.returncode in (0, 143, -signal.SIGTERM), err[-2000:]
                kills += 1
                continue
        _, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, err.decode()[-2000:]
        completed += 1
        # every run that completes (later ones re-run a finished epoch, and are killed too) ends where an
        # uninterrupted run ends: the same report and corpus, and still one weight submission
        assert _outcome(killed, epoch) == expected, f"after {kills} kills"
        if kills >= KILLS:
            break
    assert kills >= KILLS and completed >= 1
