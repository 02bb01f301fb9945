"""build_resources: the environment decides the backends; nothing connects until a call needs it."""

import os

import pytest

from flock_pipeline.resources import ConfigError, LocalChainResource, LocalHubResource, build_resources


def test_local_is_the_default(tmp_path, monkeypatch):
    for name in ("FLOCK_NETWORK", "FLOCK_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    res = build_resources(tmp_path)
    assert isinstance(res["chain"], LocalChainResource) and isinstance(res["hub"], LocalHubResource)


@pytest.mark.parametrize("network", ["test", "finney"])
def test_real_networks_from_the_environment(tmp_path, monkeypatch, network):
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource
    from flock_pipeline.resources.hf_hub import HuggingFaceHubResource

    monkeypatch.setenv("FLOCK_NETWORK", network)
    monkeypatch.setenv("FLOCK_EVAL_REPO", "someone/eval-set")
    monkeypatch.setenv("FLOCK_CHAIN_FALLBACKS", "wss://a.example:443, wss://b.example:443")
    monkeypatch.setenv("FLOCK_TEMPO", "360")
    monkeypatch.setenv("BT_WALLET_HOTKEY", "my-hotkey")
    monkeypatch.setenv("FLOCK_SETTINGS", '{"scoring": {"mode": "curve"}, "min_commitment_age": 10}')
    res = build_resources(tmp_path)
    chain, hub, settings = res["chain"], res["hub"], res["settings"]
    assert isinstance(chain, BittensorChainResource) and chain.network == network and chain.tempo == 360
    assert chain.fallback_endpoints == ["wss://a.example:443", "wss://b.example:443"]
    assert isinstance(hub, HuggingFaceHubResource) and hub.offline is False
    assert hub.endpoint == "https://huggingface.co"
    assert settings.eval_repo == "someone/eval-set" and settings.validator_hotkey == "my-hotkey"
    assert settings.scoring_config().mode == "curve" and settings.min_commitment_age == 10


@pytest.mark.parametrize("env, message", [
    ({"FLOCK_NETWORK": "mainnet"}, "use one of"),
    ({"FLOCK_NETWORK": "test"}, "FLOCK_EVAL_REPO"),
    ({"FLOCK_NETWORK": "test", "FLOCK_EVAL_REPO": "a/b", "FLOCK_TEMPO": "ten"}, "FLOCK_TEMPO"),
    ({"FLOCK_SETTINGS": "{"}, "not valid JSON"),
])
def test_configuration_errors(tmp_path, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        build_resources(tmp_path)


@pytest.mark.parametrize("env, message", [
    ({"FLOCK_STORE": "mysql://db/results"}, "FLOCK_STORE: mysql://db/results: use duckdb"),
    ({"FLOCK_STORE": "postgresql://host:5432"}, "FLOCK_STORE: .*name the database"),
    ({"FLOCK_EXECUTOR": "dask"}, "FLOCK_EXECUTOR='dask': use one of in_process, multiprocess, celery"),
    ({"FLOCK_MINER_BATCH": "0"}, "FLOCK_MINER_BATCH='0': a whole number of miners per run, at least 1"),
    ({"FLOCK_MINER_BATCH": "eight"}, "FLOCK_MINER_BATCH='eight'"),
    ({"FLOCK_BACKFILL": "per_miner"}, "FLOCK_BACKFILL='per_miner': use one of single_run, multi_run"),
    ({"FLOCK_MULTI_LORA": "yes"}, "FLOCK_MULTI_LORA: multi_lora must be auto, on or off"),
    ({"FLOCK_DEVICE": "gpu"}, "FLOCK_DEVICE='gpu': use auto, cpu, cuda or cuda:N"),  # not torch's error mid-epoch
    ({"FLOCK_EXECUTOR": "celery"}, "set FLOCK_CELERY_BROKER"),
    ({"FLOCK_EXECUTOR": "celery", "FLOCK_CELERY_BROKER": "http://x"}, "FLOCK_CELERY_BROKER=.*redis:// or amqp://"),
    ({"FLOCK_EXECUTOR": "celery", "FLOCK_CELERY_BROKER": "redis://h:6379/0",
      "FLOCK_CELERY_VISIBILITY_TIMEOUT_S": "5"}, "FLOCK_CELERY_VISIBILITY_TIMEOUT_S must be at least 60"),
])
def test_a_wrong_store_or_executor_is_a_configuration_error(tmp_path, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        build_resources(tmp_path)


def test_a_wrong_store_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    from flock_pipeline.cli import main

    monkeypatch.setenv("FLOCK_HOME", str(tmp_path))
    monkeypatch.setenv("FLOCK_STORE", "sqlite:///x.db")
    assert main(["epoch", "run", "3"]) == 2
    assert "FLOCK_STORE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_the_store_and_the_celery_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOCK_STORE", "postgresql://flock:pw@db:5432/flock")
    monkeypatch.setenv("FLOCK_EXECUTOR", "celery")
    monkeypatch.setenv("FLOCK_CELERY_BROKER", "redis://broker:6379/0")
    res = build_resources(tmp_path)
    assert res["store"].dialect == "postgresql" and res["store"].local_dir() is None
    from flock_pipeline.cli import worker_command

    argv = worker_command(tmp_path, "gpu0", "gpu", 1, ["-P", "solo"])
    assert argv[1:] == ["worker", "start", "-A", "dagster_celery.app", "-y", str(tmp_path / "celery-worker.yaml"),
                        "-n", "gpu0", "-q", "gpu", "--", "--concurrency=1", "-P", "solo"]
    import yaml

    config = yaml.safe_load((tmp_path / "celery-worker.yaml").read_text())["execution"]["config"]
    assert config["broker"] == config["backend"] == "redis://broker:6379/0"
    assert config["config_source"]["task_acks_late"] and config["config_source"]["task_reject_on_worker_lost"]
    assert (tmp_path / "celery-worker.yaml").stat().st_mode & 0o077 == 0  # the broker URL is the owner's only


def test_the_default_store_is_the_duckdb_file_in_the_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOCK_STORE", raising=False)
    res = build_resources(tmp_path)
    assert res["store"].dialect == "duckdb" and res["store"].local_dir() == tmp_path


def test_loading_the_definitions_imports_no_training_library(tmp_path):
    """Every sensor tick, UI load and run start loads the code location: torch, transformers and peft stay unloaded
    until a step needs them (importing them costs seconds per process)."""
    import subprocess
    import sys

    code = ("import sys, flock_pipeline.definitions; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "FLOCK_HOME": str(tmp_path)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("env, kind, per_run", [({}, "SINGLE_RUN", None),
                                                ({"FLOCK_BACKFILL": "multi_run"}, "MULTI_RUN", 64),
                                                ({"FLOCK_BACKFILL": "multi_run", "FLOCK_MINER_BATCH": "16"},
                                                 "MULTI_RUN", 16)])
def test_the_miner_assets_backfill_policy_comes_from_the_environment(monkeypatch, env, kind, per_run):
    """single_run by default (Dagster's CLI accepts partition ranges only then); multi_run splits UI backfills into
    runs of FLOCK_MINER_BATCH miners."""
    from flock_pipeline.defs.assets import _backfill_policy

    for name in ("FLOCK_BACKFILL", "FLOCK_MINER_BATCH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    policy = _backfill_policy()
    assert policy.policy_type.value == kind and policy.max_partitions_per_run == per_run


def test_a_real_network_needs_no_eval_repo_when_the_games_name_their_own(tmp_path, monkeypatch):
    """A miner (or validator) of the selection game on testnet: its pool is named by the competitions document, so
    FLOCK_EVAL_REPO (the curation game's eval set) is not asked for."""
    monkeypatch.setenv("FLOCK_NETWORK", "test")
    monkeypatch.delenv("FLOCK_EVAL_REPO", raising=False)
    monkeypatch.setenv("FLOCK_COMPETITIONS", '[{"kind": "selection", "name": "selection", '
                                             '"eval_repo": "flock-io/flock-off-s1-competition"}]')
    resources = build_resources(tmp_path)
    assert resources["settings"].competition_set().competitions[0].eval_repo == "flock-io/flock-off-s1-competition"
    assert resources["settings"].heldout_repo == ""  # no held-out set on a real network unless one is named
