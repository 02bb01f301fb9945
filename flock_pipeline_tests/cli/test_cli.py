"""The README's commands, run as a user runs them: `flock demo`, the `dagster asset materialize` epoch and
`dg dev` (`make dev`)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(home: Path, dagster_home: Path | None = None) -> dict:
    env = {**os.environ, "FLOCK_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if dagster_home is not None:
        dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def _flock(*args, env, check=True):
    return subprocess.run([str(BIN / "flock"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          check=check, timeout=600)


def _by_label(report: list[dict]) -> dict:
    return {m["label"]: m for m in report}


@pytest.mark.slow
def test_epoch_through_dagster_asset_materialize(flock_home, tmp_path):
    """scripts/materialize_epoch.sh: the README's `dagster asset materialize` commands for one epoch."""
    env = _env(flock_home, tmp_path / "dagster_home")
    _flock("demo", "--no-run", env=env)
    run = subprocess.run([str(REPO / "scripts" / "materialize_epoch.sh")], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    epoch = json.loads(_flock("chain", "status", env=env).stdout)["epoch"]
    miners = _by_label(json.loads(_flock("epoch", "report", str(epoch), "--json", env=env).stdout)["miners"])
    assert miners["honest-good"]["weight"] == 1.0  # the others lose every comparison or do not beat the base
    assert miners["honest-fair"]["eval_loss"] < miners["weak-offdomain"]["eval_loss"]
    assert miners["copier"]["weight"] == 0 and miners["empty"]["weight"] == 0 and miners["malformed"]["weight"] == 0
    # the console shows the stages, not Dagster's DEBUG event log or progress bars (FLOCK_VERBOSE=1 shows them)
    assert " - DEBUG - " not in run.stderr and "Loading weights" not in run.stderr, run.stderr[-2000:]
    assert "== scores, weights, corpus, report" in run.stderr
    import dagster as dg

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:  # the checks ran, one per miner
        records = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=50)
        stages = [run.tags.get("flock/stage") for run in reversed(instance.get_runs())]
    # runs launched without the tag name their stage from their first step
    assert stages == ["commitments", "datasets", "evaluation", "scoring"], stages
    checks = {(e.check_name, e.partition, e.passed)
              for e in (r.event_log_entry.dagster_event.event_specific_data for r in records)}
    labels = {m["hotkey"]: label for label, m in miners.items()}
    assert {(name, labels.get(p, p), passed) for name, p, passed in checks} == {
        ("weights_are_valid", None, True),
        *(("miner_evaluated", label, True) for label in miners)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dagster_dev_serves_the_ten_assets(flock_home, tmp_path):
    port = _free_port()
    env = _env(flock_home, tmp_path / "dagster_home")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "dagster_dev.py"), "-p", str(port), "-h",
                             "127.0.0.1"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
    keys = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and keys is None:
            time.sleep(2)
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    nodes = json.loads(resp.read())["data"]["assetNodes"]
                keys = {"/".join(n["assetKey"]["path"]) for n in nodes} if nodes else None
            except (OSError, KeyError, TypeError, ValueError):
                continue
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert keys == {"chain_commitments", "miner_datasets", "deduplicated_shards", "miner_eval_losses", "win_rates",
                    "submitted_weights", "miner_history", "final_corpus", "epoch_report", "corpus_value"}


def test_chain_commands_and_config_errors(flock_home):
    env = _env(flock_home)
    _flock("demo", "--no-run", env=env)
    status = json.loads(_flock("chain", "status", env=env).stdout)
    assert status["neurons"] == 7 and status["commitments"] == 6 and status["block"] % status["tempo"] == 0
    block = int(_flock("chain", "advance", "--to-next-epoch", env=env).stdout)
    assert block == status["block"] + status["tempo"]
    for bad_env, message in [({"FLOCK_NETWORK": "mainnet"}, "use one of local, test, finney"),
                             ({"FLOCK_NETWORK": "finney"}, "FLOCK_EVAL_REPO"),
                             ({"FLOCK_SETTINGS": '{"scoring_mod": "curve"}'}, "unknown setting(s) scoring_mod"),
                             ({"FLOCK_SETTINGS": "[1]"}, "must be a JSON object")]:
        bad = _flock("chain", "status", env={**env, **bad_env}, check=False)
        assert bad.returncode == 2 and "configuration error" in bad.stderr and "Traceback" not in bad.stderr
        assert message in bad.stderr
    usage = _flock("epoch", env=env, check=False)
    assert usage.returncode == 2


@pytest.mark.slow
def test_the_docs_tables_are_what_the_demo_prints():
    """`flock demo --network dpo` prints exactly docs/competitions.md's table: the shipped model makes it the same on
    every machine of this kind; scripts/readme_numbers.py regenerates it (the README's `make demo` table is compared
    by test_docs.py, which runs the README's commands)."""
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_numbers.py"), "--check",
                          "docs/competitions.md"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
