"""The distributed deployment on one machine: the store and Dagster's own storage on PostgreSQL, every step executed
by two Celery workers (Redis broker). A demo epoch gives exactly the losses, weights and corpus of the embedded run
(DuckDB, steps in-process), also when the process running one evaluation is killed (its worker lives on) and then a
whole worker is killed during another evaluation (the other worker takes it over)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from flock_pipeline.demo import epoch_report
from flock_pipeline.resources import build_resources
from flock_pipeline.store import CorpusRecord, EvalResultRecord
from flock_pipeline_tests.servers import create_database

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEADLINE_S = 900


def _outcome(resources: dict, epoch: int) -> dict:
    store = resources["store"]
    return {"report": {m["hotkey"]: (m["status"], m["reason"], m["eval_loss"], m["win_rate"], m["weight"])
                       for m in epoch_report(epoch, store)},
            "losses": sorted((r.shard_hash, r.status, r.eval_loss, r.per_row_losses)
                             for r in store.rows(EvalResultRecord)),
            "corpus": [(c.rows, c.miners, c.sha256) for c in store.rows(CorpusRecord, epoch=epoch)],
            "weights": [(w["uids"], w["weights"]) for w in resources["chain"].weights_history("validator")]}


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, restore_signals=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's whole process group: wrapper, celery main, pool child
    proc.wait(timeout=30)


def _evaluation_step(instance: dg.DagsterInstance) -> tuple[str, int] | None:
    """(run id, pid) of an evaluation step running right now: STEP_START of miner_eval_losses is written by it."""
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        ends = {e.step_key for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
        for entry in starts:
            if entry.step_key == "miner_eval_losses" and entry.step_key not in ends:
                return run.run_id, entry.dagster_event.pid
    return None


def _evaluation_starts(instance: dg.DagsterInstance, run_id: str) -> int:
    return sum(e.step_key == "miner_eval_losses"
               for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


@pytest.mark.slow
def test_an_epoch_on_postgres_and_celery_workers_equals_the_embedded_run(tmp_path, demo_pair, postgres_admin,
                                                                       redis_server, monkeypatch):
    epoch, embedded, cluster = demo_pair
    expected = _outcome(build_resources(embedded), epoch)
    assert expected["corpus"][0][0] > 0 and len(expected["weights"]) == 1

    store_url, dagster_url = create_database(postgres_admin), create_database(postgres_admin)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "postgres" / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("FLOCK_DAGSTER_POSTGRES_URL", dagster_url)
    instance = dg.DagsterInstance.from_config(str(dagster_home))  # creates Dagster's tables before anyone races
    env = {**os.environ, "FLOCK_HOME": str(cluster), "FLOCK_STORE": store_url, "FLOCK_EXECUTOR": "celery",
           "FLOCK_CELERY_BROKER": redis_server, "DAGSTER_HOME": str(dagster_home),
           "FLOCK_DAGSTER_POSTGRES_URL": dagster_url, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "FLOCK_CELERY_VISIBILITY_TIMEOUT_S": "60",  # a dead worker's step is handed out again after 60 s
           "FLOCK_MINER_BATCH": "2",  # three evaluation runs (two miners each): one is killed, another's worker dies
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    workers = [_start([str(BIN / "flock"), "worker", "--name", f"w{i}", "--queues", "dagster,gpu"], env,
                      tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        runner = _start([str(BIN / "flock"), "epoch", "run", str(epoch), "--json"], env, tmp_path / "runner.log")
        killed, lost_worker, started = None, None, time.monotonic()
        while runner.poll() is None:
            assert time.monotonic() - started < DEADLINE_S, (tmp_path / "runner.log").read_text()[-3000:]
            step = _evaluation_step(instance)
            if step is not None and killed is None:
                time.sleep(1.0)  # into the training
                os.kill(step[1], signal.SIGKILL)  # the process running this miner's evaluation dies
                killed = step
            elif step is not None and lost_worker is None and step[0] != killed[0]:
                # another miner's evaluation, still running (checked just before): now its whole worker dies
                worker = next(w for w in workers if w.pid == os.getpgid(step[1]))
                if _evaluation_step(instance) == step:
                    _stop(worker)
                    lost_worker = (step[0], worker)
            time.sleep(0.2)
        log = (tmp_path / "runner.log").read_text()
        assert runner.returncode == 0, log[-3000:] + "".join(
            (tmp_path / f"worker{i}.log").read_text()[-2000:] for i in (1, 2))
    finally:
        for w in workers:
            _stop(w)
    assert killed is not None and lost_worker is not None, "evaluation steps were not seen running on workers"
    worker_logs = "".join((tmp_path / f"worker{i}.log").read_text(errors="replace") for i in (1, 2))
    assert f"pid:{killed[1]} exited with 'signal 9 (SIGKILL)'" in worker_logs  # the process really died ...
    assert _evaluation_starts(instance, killed[0]) == 2  # ... and its evaluation ran again, to the end
    assert lost_worker[1].returncode == -signal.SIGKILL  # a whole worker died mid-evaluation ...
    assert _evaluation_starts(instance, lost_worker[0]) == 2  # ... and the other worker ran that evaluation again

    monkeypatch.setenv("FLOCK_STORE", store_url)
    assert _outcome(build_resources(cluster), epoch) == expected  # the same losses, weights and corpus
    assert not (cluster / "warehouse.duckdb").exists()  # everything went to PostgreSQL
    steps = [e.dagster_event.pid for r in instance.get_runs()
             for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_START)]
    assert runner.pid not in steps and len(set(steps)) >= 3  # no step ran in the runner; several worker processes
