"""The alert sensors against a loopback webhook: each condition posts once, not again within the rate limit, again
after it; a failing webhook never breaks a sensor; no secret reaches a posted body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from flock_pipeline.defs import alerts as alert_defs
from flock_pipeline.defs.alerts import OFF, alert_sensor, run_failure_alert_sensor, standing_alerts
from flock_pipeline.errors import ConfigError, ValidatorFault
from flock_pipeline.resources import ValidatorSettingsResource
from flock_pipeline.resources.alerts import alert_body, post_alert, scrub
from flock_pipeline.resources.environment import alert_settings
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import CommitmentRecord, EpochRecord, WeightSubmissionRecord
from flock_pipeline.validator.alerts import CONDITIONS, landed, weights_not_applied
from flock_pipeline_tests.servers import free_port

HF_TOKEN = "hf_AlertTestToken0123456789abcdef"
WALLET_PASSWORD = "wallet-pass-8c1e77"
HOOK_PATH = "/hooks/T0001/B0002/secretpath9f3a"
HOTKEY = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"


class Webhook:
    """A loopback HTTP server that records every body posted to it and answers with `status`."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def posted(self) -> list[dict]:
        return [json.loads(b) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("FLOCK_ALERT_WEBHOOK", hook.url)
    monkeypatch.setenv("FLOCK_ALERT_EPOCHS", "2")
    monkeypatch.setenv("FLOCK_ALERT_MIN_INTERVAL_S", "3600")
    monkeypatch.setenv("FLOCK_NETWORK", "finney")
    monkeypatch.setenv("FLOCK_NETUID", "96")
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("BT_WALLET_PASSWORD", WALLET_PASSWORD)
    monkeypatch.setenv("FLOCK_STORE", f"postgresql://flock:{WALLET_PASSWORD}x@db:5432/flock")
    yield hook
    hook.close()
    _assert_no_secret(hook.bodies, hook.url)


def _assert_no_secret(bodies: list[bytes], url: str) -> None:
    for raw in bodies:
        text = raw.decode()
        for secret in (HF_TOKEN, WALLET_PASSWORD, url, "secretpath9f3a"):
            assert secret not in text, text


@pytest.fixture
def clock(monkeypatch):
    """The rate limit's clock, moved by hand."""
    now = [1_000_000.0]
    monkeypatch.setattr(alert_defs, "clock", lambda: now[0])
    return now


@pytest.fixture
def store(tmp_path):
    return StoreResource(url=f"duckdb://{tmp_path / 'alerts.duckdb'}")


@pytest.fixture(scope="module")
def shared_instance():
    return dg.DagsterInstance.ephemeral()  # one per module: an ephemeral instance takes most of a second to make


@pytest.fixture
def instance(shared_instance):
    """The module's instance with an empty alert ledger (as if nothing had been posted yet)."""
    shared_instance.run_storage.set_cursor_values({alert_defs.LEDGER_PREFIX + c: "{}" for c in CONDITIONS})
    return shared_instance


def _commitment(epoch: int) -> CommitmentRecord:
    return CommitmentRecord(epoch=epoch, hotkey="hk-miner", uid=1, repo="m/data", competition_id="1", revision="a" * 40,
                            commit_block=epoch * 100 - 5, registration_block=1, status="ok", reason=None)


def _epochs(store: StoreResource, epochs: range, commitments: bool = True) -> None:
    with store.session():
        for e in epochs:
            store.record_epoch(EpochRecord(epoch=e, block=e * 100, eval_repo="flock/eval-atlas", eval_revision="r"),
                               [_commitment(e)] if commitments else [])


def _weights(store: StoreResource, epoch: int, state: str, detail: str | None = None) -> None:
    store.record_weight_submission(WeightSubmissionRecord(
        epoch=epoch, success=state != "refused", block=epoch * 100 + 10, message=f"{state} at block {epoch * 100 + 10}",
        uids=(1,), weights=(65535,), state=state, hotkey=HOTKEY, detail=detail))


def _tick(store: StoreResource, instance: dg.DagsterInstance) -> str:
    result = alert_sensor(dg.build_sensor_context(instance=instance, resources={
        "store": store, "settings": ValidatorSettingsResource(validator_hotkey=HOTKEY)}))
    assert isinstance(result, dg.SkipReason)  # it never requests runs
    return result.skip_message


def _seed(store: StoreResource, condition: str) -> None:
    with store.session():
        _seed_records(store, condition)


def _seed_records(store: StoreResource, condition: str) -> None:
    if condition == "weights_not_applied":
        _epochs(store, range(1, 5))
        _weights(store, 1, "applied")
        _weights(store, 2, "rate limited")
        _weights(store, 3, "not applied", detail=f"the reveal was dropped; token {HF_TOKEN} in a log line")
    else:
        _epochs(store, range(1, 3))
        _epochs(store, range(3, 5), commitments=False)
        for e in range(1, 5):
            _weights(store, e, "applied")


@pytest.mark.parametrize("condition", ["weights_not_applied", "no_commitments"])
def test_a_standing_condition_posts_once_per_window(condition, webhook, clock, store, instance):
    _seed(store, condition)
    assert _tick(store, instance) == f"{condition}: posted"
    [body] = webhook.posted()
    assert body["text"] == body["content"] and condition in body["text"]
    assert body["flock"] == {**body["flock"], "condition": condition, "network": "finney", "netuid": 96,
                             "validator_hotkey": HOTKEY, "epoch": 4}
    assert body["flock"]["reason"] == (
        "no weights applied on the chain in epochs 2-3 (2 finished epochs); epoch 3: not applied (the reveal was "
        "dropped; token *** in a log line)" if condition == "weights_not_applied" else
        "no miner commitment recorded in epochs 3-4: check the chain endpoint and the netuid")
    clock[0] += 3599
    assert "already posted 3599 s ago" in _tick(store, instance)
    assert len(webhook.bodies) == 1
    clock[0] += 1
    assert _tick(store, instance) == f"{condition}: posted"
    assert [b["flock"]["condition"] for b in webhook.posted()] == [condition, condition]


def _failed_run(instance: dg.DagsterInstance, error: Exception, epoch: int):
    @dg.op
    def evaluate():
        raise error

    @dg.job(name="miner_stage")
    def miner_stage():
        evaluate()

    result = miner_stage.execute_in_process(instance=instance, raise_on_error=False, tags={"flock/epoch": str(epoch)})
    assert not result.success
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"settings": ValidatorSettingsResource(validator_hotkey=HOTKEY)}).for_run_failure()


def test_a_validator_fault_and_a_run_failure_each_post_once_per_epoch_and_window(webhook, clock, instance):
    fault = ValidatorFault(f"FLOCK_DEVICE=cuda but this machine has no visible CUDA device (pw {WALLET_PASSWORD})")
    assert run_failure_alert_sensor(_failed_run(instance, fault, 5)) is None
    [body] = webhook.posted()
    assert body["flock"]["condition"] == "validator_fault" and body["flock"]["epoch"] == 5
    assert "a validator fault stopped the epoch: miner_stage run" in body["text"]
    assert "no visible CUDA device (pw ***)" in body["text"]
    run_failure_alert_sensor(_failed_run(instance, fault, 5))  # the same epoch, within the window: held
    assert len(webhook.bodies) == 1
    run_failure_alert_sensor(_failed_run(instance, RuntimeError("the hub timed out"), 5))  # another condition
    assert [b["flock"]["condition"] for b in webhook.posted()] == ["validator_fault", "run_failure"]
    assert "the hub timed out" in webhook.posted()[1]["flock"]["reason"]
    run_failure_alert_sensor(_failed_run(instance, fault, 6))  # a fault in the next epoch is news
    clock[0] += 3600
    run_failure_alert_sensor(_failed_run(instance, fault, 6))  # the same epoch after the window
    assert [(b["flock"]["condition"], b["flock"]["epoch"]) for b in webhook.posted()] == \
        [("validator_fault", 5), ("run_failure", 5), ("validator_fault", 6), ("validator_fault", 6)]


def test_a_failing_webhook_never_breaks_a_sensor_and_the_alert_is_not_lost(webhook, clock, store, monkeypatch,
                                                                           instance):
    _seed(store, "weights_not_applied")
    webhook.status = 500
    assert _tick(store, instance) == "weights_not_applied: not posted (the webhook answered HTTP 500)"
    ledger = instance.run_storage.get_cursor_values({"flock/alerts/weights_not_applied"})
    assert "HTTP 500" in json.loads(ledger["flock/alerts/weights_not_applied"])["error"]
    webhook.status = 200
    assert _tick(store, instance) == "weights_not_applied: posted"  # the failed post did not count
    assert len(webhook.bodies) == 2
    closed = f"http://127.0.0.1:{free_port()}{HOOK_PATH}"
    monkeypatch.setenv("FLOCK_ALERT_WEBHOOK", closed)
    clock[0] += 3600  # the window has passed: due again
    refused = _tick(store, instance)
    assert refused.startswith("weights_not_applied: not posted (the webhook could not be reached")
    assert "secretpath9f3a" not in refused
    assert run_failure_alert_sensor(_failed_run(instance, RuntimeError("boom"), 7)) is None


def test_alerts_are_off_without_a_webhook(store, monkeypatch, instance):
    monkeypatch.delenv("FLOCK_ALERT_WEBHOOK", raising=False)
    _seed(store, "weights_not_applied")
    assert _tick(store, instance) == OFF
    result = run_failure_alert_sensor(_failed_run(instance, RuntimeError("boom"), 1))
    assert isinstance(result, dg.SkipReason) and result.skip_message == OFF


@pytest.mark.parametrize("variable, value, said", [
    ("FLOCK_ALERT_EPOCHS", "0", "FLOCK_ALERT_EPOCHS=0: must be at least 1"),
    ("FLOCK_ALERT_EPOCHS", "three", "FLOCK_ALERT_EPOCHS='three': must be a whole number"),
    ("FLOCK_ALERT_MIN_INTERVAL_S", "-5", "FLOCK_ALERT_MIN_INTERVAL_S=-5: must be at least 0"),
    ("FLOCK_ALERT_WEBHOOK", "ftp://hooks.example/secretpath9f3a", "FLOCK_ALERT_WEBHOOK must be an http"),
])
def test_alert_settings_are_checked_when_read(monkeypatch, variable, value, said):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        alert_settings()
    assert said in str(raised.value) and raised.value.exit_code == 2
    assert "secretpath9f3a" not in str(raised.value)


def test_the_conditions_and_the_scrub():
    applied = WeightSubmissionRecord(epoch=3, success=True, block=1, message="", state="applied")
    legacy = WeightSubmissionRecord(epoch=3, success=True, block=1, message="")
    assert landed(applied) and landed(legacy) and not landed(None)
    assert weights_not_applied([1, 2, 3], {3: applied}, 2) is None  # the newest epoch's weights landed
    assert weights_not_applied([1, 2], {}, 2) is None  # fewer than N finished epochs
    assert weights_not_applied([1, 2, 3], {}, 2).reason.startswith("no weights applied on the chain in epochs 1-2")
    assert scrub("postgresql://u:pw1234@h/db Bearer abc.def hf_abcdefghijkl12") == \
        "postgresql://***@h/db Bearer *** ***"


def test_standing_alerts_read_only_the_last_epochs(webhook, store, instance):
    _epochs(store, range(1, 6), commitments=False)
    _weights(store, 1, "applied")  # older than the last N finished epochs: it does not count
    assert {a.condition for a in standing_alerts(store, 2)} == {"weights_not_applied", "no_commitments"}
    _weights(store, 4, "applied")
    assert {a.condition for a in standing_alerts(store, 2)} == {"no_commitments"}
    _epochs(store, range(6, 8))  # commitments again, and epoch 6's weights landed (epoch 7 is still working)
    _weights(store, 6, "applied")
    assert standing_alerts(store, 2) == []
    assert _tick(store, instance).startswith("no alert")
    assert webhook.bodies == []


def test_a_post_to_a_slow_webhook_times_out_as_a_recorded_failure(monkeypatch):
    """A webhook that never answers costs the sensor its timeout, then a failure in words (never an exception)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}{HOOK_PATH}"
        monkeypatch.setenv("FLOCK_ALERT_WEBHOOK", url)
        body = alert_body(alert_settings(), "run_failure", "x", 1, HOTKEY)
        error = post_alert(url, body, timeout_s=0.2)
    assert error is not None and "secretpath9f3a" not in error


def test_the_alert_sensors_are_defined_and_off_until_turned_on(tmp_path, monkeypatch):
    from flock_pipeline.defs import build_definitions
    from flock_pipeline.resources import build_resources

    monkeypatch.delenv("FLOCK_ALERT_WEBHOOK", raising=False)
    repo = build_definitions(build_resources(tmp_path / "home")).get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {"alert_sensor", "run_failure_alert_sensor"} <= set(sensors)
    assert all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in sensors.values())
    assert isinstance(sensors["run_failure_alert_sensor"], dg.RunStatusSensorDefinition)
