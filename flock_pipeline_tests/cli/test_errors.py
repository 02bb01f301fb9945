"""Every failure of the command line is one line on stderr with the next step and the right exit code (2: usage,
input or configuration, nothing done; 1: a check failed or a service did not answer), never a traceback; bad
settings stop before any dataset is fetched; `--help` answers at once, with examples."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flock_pipeline.cli import EXAMPLES, build_parser, main
from flock_pipeline.core import synthetic
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.demo import seed_demo_network

BIN = Path(sys.executable).parent


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    assert err.startswith("flock: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def network(flock_home, monkeypatch):
    seed_demo_network(flock_home)
    monkeypatch.setenv("FLOCK_HOME", str(flock_home))
    return flock_home


@pytest.mark.parametrize("settings, message", [
    ({"scoring": {"mode": "curvy"}}, "scoring.mode: mode must be one of win_rate, curve, top_k, got 'curvy'"),
    ({"dedup": {"max_leak_fraction": 3}}, "dedup.max_leak_fraction: max_leak_fraction must be in [0, 1]"),
    ({"dedup": {"near": {"threshold": 0}}}, "dedup.near.threshold: threshold must be in (0, 1]"),
    ({"limits": {"max_turns_per_row": 3}}, "limits.max_turns_per_row: max_turns_per_row must be even"),
    ({"scoring": {"epsilon": "lots"}}, "scoring.epsilon: must be a number, got 'lots'"),
    ({"scoring": {"temperature": float("inf")}}, "scoring.temperature"),
    ({"scoring": {"mood": "curve"}}, "scoring: unknown field(s) mood"),
    ({"scoring_mode": "curve"}, "scoring_mode is now scoring.mode"),
    ({"near_duplicates": False}, "near_duplicates is now dedup.near (null: exact matching only)"),
    ({"corpus_policy": '{"weight_coverage": 2}'}, "corpus_policy.weight_coverage must be in (0, 1]"),
    ({"scoring_mod": "win_rate"}, "unknown setting(s) scoring_mod"),
])
def test_a_bad_setting_exits_2_before_any_dataset_is_fetched(network, monkeypatch, capsys, settings, message):
    monkeypatch.setenv("FLOCK_SETTINGS", json.dumps(settings))
    code, _, err = _run(capsys, "epoch", "run")
    assert code == 2 and message in _one_line(err) and err.startswith("flock: configuration error: FLOCK_SETTINGS")
    assert not (network / "warehouse.duckdb").exists()  # nothing recorded, nothing downloaded


@pytest.mark.parametrize("recipe, message", [
    ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
    ({"lora_r": 2.5}, "lora_r must be a whole number, got 2.5"),
    ({"deterministic": 1}, "deterministic must be true or false, got 1"),
    ({"objective": "dpo"}, "objective is not a validator-wide setting"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number, got nan"),  # JSON's NaN parses
    ({"max_grad_norm": float("inf")}, "max_grad_norm must be a finite number, got inf"),
])
def test_a_bad_recipe_field_exits_2_naming_it(network, monkeypatch, capsys, recipe, message):
    monkeypatch.setenv("FLOCK_RECIPE", json.dumps(recipe))
    code, _, err = _run(capsys, "demo", "--no-run", "--home", str(network))
    assert code == 2 and message in _one_line(err)


@pytest.mark.parametrize("document, message", [
    ('[{"kind": "selection", "name": "selection", "rules": "live"}]',
     "rules must be one of intended, live-492c7bb, got 'live'"),
    ('[{"kind": "selection", "name": "selection", "benchmark_loss": -1}]', "benchmark_loss must be a positive number"),
])
def test_a_bad_rule_set_exits_2_at_start_up_naming_the_field(network, monkeypatch, capsys, document, message):
    monkeypatch.setenv("FLOCK_COMPETITIONS", document)
    code, _, err = _run(capsys, "epoch", "run")
    assert code == 2 and message in _one_line(err) and err.startswith("flock: configuration error: ")
    assert not (network / "warehouse.duckdb").exists()  # nothing recorded


@pytest.mark.parametrize("variable, value, message", [
    ("FLOCK_NETUID", "abc", "FLOCK_NETUID='abc': must be a whole number"),
    ("FLOCK_EVAL_TIMEOUT_S", "abc", "FLOCK_EVAL_TIMEOUT_S='abc': must be a whole number"),
    ("FLOCK_EVAL_TIMEOUT_S", "-5", "FLOCK_EVAL_TIMEOUT_S=-5: must be at least 0"),
    ("FLOCK_NETUID", "1.5", "FLOCK_NETUID='1.5': must be a whole number"),
])
def test_a_mistyped_variable_is_one_line_naming_it(network, monkeypatch, capsys, variable, value, message):
    monkeypatch.setenv(variable, value)
    code, _, err = _run(capsys, "epoch", "run")
    assert code == 2 and message in _one_line(err) and err.startswith("flock: configuration error: ")
    assert not (network / "warehouse.duckdb").exists()  # nothing recorded


def test_miner_failures_are_one_line_with_the_right_exit_code(network, tmp_path, monkeypatch, capsys):
    good = tmp_path / "data.jsonl"
    good.write_text(rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(7), 20, 3)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "not json\n")
    missing = str(tmp_path / "nope.jsonl")
    for argv in (["miner", "validate", missing], ["miner", "score", missing],
                 ["miner", "submit", str(good), "--repo", "me/data", "--hotkey", "hk-x", "--competition", "nope"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2, (argv, err)
        _one_line(err)
    code, _, err = _run(capsys, "miner", "submit", str(good), "--repo", "not a repo", "--hotkey", "hk-x")
    assert code == 2 and "repo id 'not a repo' must be 'namespace/name'" in _one_line(err)
    # an unregistered hotkey is told to register, not to run the same command again
    code, _, err = _run(capsys, "miner", "submit", str(good), "--repo", "me/data", "--hotkey", "hk-nobody")
    assert code == 1 and "not registered" in _one_line(err) and "flock chain register" in err
    # an invalid file is refused by score unless --force
    code, _, err = _run(capsys, "miner", "score", str(bad))
    assert code == 1 and "is invalid" in _one_line(err) and "--force" in err
    code, out, err = _run(capsys, "miner", "score", str(bad), "--force", "--json")
    assert code == 0 and json.loads(out)["results"][0]["eval_loss"] > 0
    # the common {"messages": ...} layout is told the expected one
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "a"}]}) + "\n")
    code, out, _ = _run(capsys, "miner", "validate", str(messages), "--json")
    assert code == 1 and "'messages' is not a field here" in json.loads(out)["rejected"][0]["reason"]


def test_an_unreachable_chain_is_one_line_with_the_next_step(tmp_path):
    env = {**os.environ, "FLOCK_HOME": str(tmp_path), "FLOCK_NETWORK": "test", "FLOCK_EVAL_REPO": "a/b",
           "FLOCK_CHAIN_ENDPOINT": "ws://127.0.0.1:9"}  # nothing listens on the discard port
    for argv in (["chain", "status"], ["miner", "status", "--hotkey", "hk-x"]):
        run = subprocess.run([str(BIN / "flock"), *argv], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        assert "no answer from ws://127.0.0.1:9" in _one_line(run.stderr) and "FLOCK_CHAIN_ENDPOINT" in run.stderr


def test_help_is_fast_and_every_command_has_examples():
    best = min(_timed([str(BIN / "flock"), "--help"]) for _ in range(3))
    assert best < 0.5, f"flock --help took {best:.2f} s"
    parser = build_parser()
    assert "examples:" in parser.format_help()
    commands = [k for k in EXAMPLES if k]
    for path in commands:
        node = parser
        for word in path.split():
            node = next(a for a in node._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
        text = node.format_help()
        assert "examples:" in text and node.description, path


def _timed(argv) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - start


@pytest.fixture
def read_only_home(network, tmp_path):
    """The seeded home, read-only: a read-only bind mount of it when running as root (root writes through
    permissions), else the home with every write permission removed."""
    if os.geteuid() != 0:
        for path in [network, *network.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        yield network
        for path in [network, *network.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        return
    view = tmp_path / "read-only-view"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(network), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a read-only home as root needs a bind mount, and mount refused: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.mark.parametrize("argv", [["epoch", "report", "1"], ["chain", "status"], ["epoch", "run"],
                                  ["miner", "status", "--hotkey", "hk-honest-good"]])
def test_a_read_only_home_is_one_line_naming_the_path(read_only_home, monkeypatch, capsys, argv):
    monkeypatch.setenv("FLOCK_HOME", str(read_only_home))
    code, _, err = _run(capsys, *argv)
    assert code == 2 and str(read_only_home) in _one_line(err)
    assert "read-only file system" in err or "permission denied" in err


def test_the_live_recipe_on_a_cpu_machine_refuses_training_not_the_read_only_commands(network, monkeypatch, capsys):
    """The `sn96` preset trains on a 4-bit base (CUDA only): on this CPU machine `flock epoch run` stops at start-up
    (exit 2, naming the recipe), while the commands that train nothing still answer."""
    monkeypatch.setenv("FLOCK_COMPETITIONS", "sn96")
    code, _, err = _run(capsys, "epoch", "run")
    assert code == 2 and "runs on CUDA only" in _one_line(err)
    code, out, _ = _run(capsys, "chain", "status")
    assert code == 0 and json.loads(out)["neurons"] == 7
    code, _, _ = _run(capsys, "epoch", "miners", "1")
    assert code == 0
    code, out, _ = _run(capsys, "miner", "status", "--hotkey", "hk-honest-good", "--json")
    assert code == 0 and json.loads(out)["registered"] is True


@pytest.mark.parametrize("argv, level", [(["epoch", "run", "-v"], 1), (["-vv", "chain", "status"], 2),
                                         (["miner", "status", "--hotkey", "x", "-vv"], 2), (["chain", "status"], 0)])
def test_verbose_is_taken_before_or_after_the_command(argv, level):
    assert build_parser().parse_args(argv).verbose == level


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_quiet_console_still_keeps_the_runs_lines_in_dagsters_event_log(verbose, capsys):
    """The CLI quiets the console, not the runs: an info line a step logs (the evaluation step's per-miner progress
    is one) is in the run's event log at every verbosity, and on the console only with -v."""
    import logging

    import dagster as dg

    from flock_pipeline.cli import _log_level
    from flock_pipeline.defs.epoch import console_config

    @dg.op
    def step(context):
        context.log.info("miner 1/1 uid 7 hk-a: loss 1.5000 (from the store)")

    @dg.job
    def quiet():
        step()

    before = logging.lastResort.level
    try:
        _log_level(verbose)
        with dg.DagsterInstance.ephemeral() as instance:
            result = quiet.execute_in_process(instance=instance, run_config=console_config(verbose))
            logged = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    finally:
        logging.lastResort.setLevel(before)
    assert logged == ["miner 1/1 uid 7 hk-a: loss 1.5000 (from the store)"]
    assert ("uid 7 hk-a" in capsys.readouterr().err) == (verbose > 0)
