"""`flock doctor`: every check of what a validator needs, in order, each failure with its fix; exit 0 / 1 / 2. On the
demo home every check passes; a wallet that is not there is a configuration error (exit 2) naming the file; the live
`sn96` recipe on a CPU machine fails the device check while the commands that train nothing still answer."""

import json
import shutil

import pytest
from bittensor_core import Keypair

from flock_pipeline.cli import main
from flock_pipeline.cli.doctor import CHECKS, _tiny_model
from flock_pipeline.demo import seed_demo_network
from flock_pipeline_tests.homes import home_with_model

NAMES = ["configuration", "wallet", "chain", "registration", "validator permit", "stake", "hugging face token",
         "eval repos", "device", "base model", "disk", "store", "dagster instance"]
POOL = "flock-io/flock-off-s1-competition"  # the sn96 preset's selection pool


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(capsys, *argv):
    code, out, err = _run(capsys, "doctor", "--json", *argv)
    doc = json.loads(out)
    assert doc["exit"] == code
    return code, {row["check"]: row for row in doc["checks"]}, err


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, tiny_model_dir):
    """One seeded demo home for the module: the doctor reads it and changes nothing."""
    home = home_with_model(tmp_path_factory.mktemp("doctor") / "home", tiny_model_dir)
    seed_demo_network(home)
    return home


@pytest.fixture
def demo_env(demo_home, monkeypatch):
    for name in ("FLOCK_NETWORK", "FLOCK_COMPETITIONS", "FLOCK_DEVICE", "FLOCK_STORE", "DAGSTER_HOME", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOCK_HOME", str(demo_home))
    return demo_home


def test_the_demo_home_is_all_green(demo_env, capsys):
    assert [c.name for c in CHECKS] == NAMES
    code, out, err = _run(capsys, "doctor")
    lines = out.splitlines()
    assert code == 0 and err == "" and lines[0].split() == ["check", "status", "detail"]
    for name, line in zip(NAMES, lines[1:]):
        assert line.startswith(name) and line[len(name):].split()[0] == "ok", line
    assert "fix:" not in out and lines[-1] == f"{len(NAMES)} ok, 0 warn, 0 fail, 0 skip"
    code, rows, _ = _rows(capsys)
    assert code == 0 and list(rows) == NAMES and {r["status"] for r in rows.values()} == {"ok"}
    assert "hotkey validator is uid 0" in rows["registration"]["detail"]
    assert "curation: flock/eval-atlas@" in rows["eval repos"]["detail"]
    assert "as recorded at its build" in rows["base model"]["detail"]


def test_a_bad_value_is_exit_2_and_the_checks_that_need_the_configuration_are_skipped(demo_env, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_NETUID", "abc")
    code, rows, err = _rows(capsys)
    assert code == 2 and "FLOCK_NETUID='abc': must be a whole number" in rows["configuration"]["detail"]
    assert err.startswith("flock: configuration error: FLOCK_NETUID") and err.count("\n") == 1
    assert rows["wallet"] == {"check": "wallet", "status": "skip", "detail": "the configuration check failed",
                              "fix": ""}
    assert rows["stake"]["status"] == "skip" and rows["disk"]["status"] == "ok"  # disk needs no configuration
    monkeypatch.delenv("FLOCK_NETUID")
    monkeypatch.setenv("FLOCK_DEVICE", "gpu")
    code, rows, _ = _rows(capsys)  # checked when the configuration is read, like every other value
    assert code == 2 and "FLOCK_DEVICE='gpu': use auto, cpu, cuda or cuda:N" in rows["configuration"]["detail"]
    assert rows["device"]["status"] == "skip"


def test_the_store_schema_against_this_release(demo_env, tmp_path, monkeypatch, capsys):
    from flock_pipeline.resources import StoreResource
    from flock_pipeline.store import SCHEMA_VERSION

    url = f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("FLOCK_STORE", url)
    StoreResource(url=url).schema_version()  # opening it applies every migration
    code, rows, _ = _rows(capsys)
    assert code == 0 and f"schema {SCHEMA_VERSION} (up to date)" in rows["store"]["detail"]
    import duckdb

    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:  # as a newer release would leave it
        con.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', now())", [SCHEMA_VERSION + 1])
    code, rows, _ = _rows(capsys)
    assert code == 1 and rows["store"]["status"] == "fail" and "newer than this release's" in rows["store"]["detail"]
    assert rows["store"]["fix"].startswith("upgrade this installation")


def test_a_changed_embedded_model_file_fails_its_digest(tiny_model_dir, tmp_path):
    cache = tmp_path / "models"
    model = shutil.copytree(tiny_model_dir, cache / tiny_model_dir.name)
    assert _tiny_model(cache).status == "ok"
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1])
    row = _tiny_model(cache)
    assert row.status == "fail" and "do not match their recorded digest" in row.detail and row.fix == \
        f"delete {model}: the next run copies it again"


@pytest.fixture
def testnet(demo_env, tmp_path, monkeypatch):
    """A testnet validator with the `sn96` preset (no FLOCK_EVAL_REPO: the preset names its pool) on this CPU machine:
    the chain is the SDK's substrate seam over an in-memory subnet, the hub a loopback one holding the pool, and
    the wallet is named but not there yet."""
    import flock_pipeline.resources as resources
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource
    from flock_pipeline_tests.resources.fake_substrate import FakeSubstrate
    from flock_pipeline_tests.resources.hf_server import FakeHubServer

    sub = FakeSubstrate(netuid=96, tempo=20)
    chain = BittensorChainResource.with_substrate(sub, backoff_s=0.0)  # no signers: the environment's wallet signs
    real_build = resources.build_resources

    def with_the_fake_chain(*args, **kwargs):
        built = real_build(*args, **kwargs)
        built["chain"] = chain
        return built

    monkeypatch.setattr(resources, "build_resources", with_the_fake_chain)
    for name, value in {"FLOCK_NETWORK": "test", "FLOCK_COMPETITIONS": "sn96", "FLOCK_DEVICE": "cpu",
                        "BT_WALLET_NAME": "validator", "BT_WALLET_HOTKEY": "default",
                        "BT_WALLET_PATH": str(tmp_path / "wallets")}.items():
        monkeypatch.setenv(name, value)
    for name in ("FLOCK_EVAL_REPO", "BT_WALLET_PASSWORD", "FLOCK_VALIDATOR_HOTKEY"):
        monkeypatch.delenv(name, raising=False)
    with FakeHubServer() as server:
        server.add_repo(POOL)
        server.commit(POOL, {"data.jsonl": b'{"conversations": []}\n'})
        monkeypatch.setenv("FLOCK_HF_ENDPOINT", server.url)
        yield sub, tmp_path / "wallets" / "validator" / "hotkeys" / "default"
    chain.close()


def test_a_missing_wallet_is_exit_2_naming_its_path(testnet, capsys):
    _, hotkey_file = testnet
    code, rows, err = _rows(capsys)
    assert code == 2 and f"no wallet hotkey file at {hotkey_file}" in rows["wallet"]["detail"]
    assert "btcli wallet new-hotkey" in rows["wallet"]["fix"]
    assert str(hotkey_file) in err and err.count("\n") == 1
    assert rows["chain"]["status"] == "ok"  # the chain answers without a wallet
    assert [rows[n]["status"] for n in ("registration", "validator permit", "stake")] == ["skip"] * 3
    assert rows["registration"]["detail"] == "the wallet check failed"
    assert rows["eval repos"]["status"] == "ok" and f"selection: {POOL}@" in rows["eval repos"]["detail"]
    # the commands that open the wallet say the same: exit 2 naming the file, not a chain endpoint problem
    code, _, err = _run(capsys, "chain", "weights")
    assert code == 2 and err.startswith("flock: configuration error: no wallet hotkey file at ")
    assert str(hotkey_file) in err and err.count("\n") == 1 and "FLOCK_CHAIN_ENDPOINT" not in err


def test_sn96_on_a_cpu_machine_fails_the_device_check_and_the_chain_still_answers(testnet, capsys):
    from bittensor import Wallet

    sub, _ = testnet
    seed = bytes(range(32))
    Wallet("validator", "default", str(testnet[1].parents[2])).regenerate_hotkey(seed=seed, use_password=False,
                                                                                 suppress=True)
    address = Keypair.create_from_seed(seed).ss58_address
    sub.register(address, stake=10.0, validator_permit=True)
    sub.stake_threshold = 1000.0
    code, rows, err = _rows(capsys)
    assert code == 1 and err == ""
    assert rows["wallet"]["status"] == "ok" and address in rows["wallet"]["detail"]
    assert rows["registration"]["status"] == rows["validator permit"]["status"] == "ok"
    assert rows["stake"]["status"] == "fail" and "below the chain's threshold 1000.0000" in rows["stake"]["detail"]
    assert rows["stake"]["fix"] == "add at least 990.0000 to the hotkey (btcli stake add)"
    device = rows["device"]
    assert device["status"] == "fail" and "runs on CUDA only" in device["detail"]
    assert "a GPU machine with a CUDA build of torch and bitsandbytes" in device["fix"]
    assert rows["hugging face token"]["status"] == "warn"  # anonymous reads: a warning, not a failure
    code, out, err = _run(capsys, "doctor")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("device "))
    assert code == 1 and lines[at + 1].split()[:2] == ["fix:", "run"]  # the fix, on the line under its row
    sub.stake_threshold = 0.0
    code, rows, _ = _rows(capsys)
    assert code == 1 and [n for n, r in rows.items() if r["status"] == "fail"] == ["device"]
    code, out, _ = _run(capsys, "chain", "status")  # reads only: the training recipe is no reason to refuse it
    assert code == 0 and json.loads(out)["neurons"] == 1


def test_an_nvidia_driver_this_torch_build_cannot_use_fails_the_device_check(demo_env, monkeypatch, capsys):
    """FLOCK_DEVICE=auto on a machine whose NVIDIA driver this torch build cannot use (a CUDA build for a newer
    driver, or a CPU-only build): the device row says so, with the fix; the rest of the demo home stays green."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("flock_pipeline.core.model.nvidia_driver", lambda: "NVRM version: 535.54")
    code, rows, _ = _rows(capsys)
    assert code == 1 and [n for n, r in rows.items() if r["status"] != "ok"] == ["device"]
    assert "NVIDIA driver (NVRM version: 535.54)" in rows["device"]["detail"]
    assert rows["device"]["fix"].startswith("install a torch build for that driver")
    assert "FLOCK_DEVICE=cpu" in rows["device"]["fix"]


def test_the_dagster_instance_of_dagster_home(demo_env, tmp_path, monkeypatch, capsys):
    from flock_pipeline_tests.docblocks import REPO

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    code, rows, _ = _rows(capsys)
    assert code == 0 and rows["dagster instance"]["status"] == "warn" and "no dagster.yaml" in \
        rows["dagster instance"]["detail"]
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    code, rows, _ = _rows(capsys)
    assert rows["dagster instance"]["status"] == "ok" and "run monitoring on" in rows["dagster instance"]["detail"]
    (tmp_path / "dagster.yaml").write_text("run_monitoring:\n  enabled: false\n")
    code, rows, _ = _rows(capsys)
    assert code == 0 and rows["dagster instance"]["status"] == "warn"
    assert rows["dagster instance"]["fix"] == "set run_monitoring: enabled: true in it"
