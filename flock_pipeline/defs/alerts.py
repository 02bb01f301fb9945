"""Alert sensors: the operator is told, on a webhook (FLOCK_ALERT_WEBHOOK), when something goes wrong.

- `alert_sensor` reads the store each minute: the chain applied none of the validator's weights for
  FLOCK_ALERT_EPOCHS finished epochs; no commitment was recorded for FLOCK_ALERT_EPOCHS epochs.
- `run_failure_alert_sensor` (a run-failure sensor over this code location's jobs) posts each failed run: a
  validator fault (the device, the base model, the eval set: the epoch stops until it is fixed) or any other
  failure, with its steps' errors.

One post per condition per FLOCK_ALERT_MIN_INTERVAL_S (a run failure of another epoch posts at once). When each
condition last posted is kept in the Dagster instance's key-value storage (the storage sensor cursors live in), so
the limit holds across daemon restarts and, with Dagster on PostgreSQL, across hosts. A post that fails is logged
and recorded with its error and does not count: a standing condition posts again at the next tick. Without
FLOCK_ALERT_WEBHOOK both sensors do nothing and say so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import dagster as dg

from flock_pipeline.defs.assets import EPOCH_TAG
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB
from flock_pipeline.defs.planner import FAULT_CLASSES, error_cause, failure_messages
from flock_pipeline.resources.alerts import AlertSettings, alert_body, post_alert
from flock_pipeline.resources.environment import alert_settings
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import EpochRecord
from flock_pipeline.validator.alerts import Alert, due, no_commitments, run_failed, weights_not_applied

ALERT_INTERVAL_S = 60
LEDGER_PREFIX = "flock/alerts/"  # + condition: {"at": last post (unix seconds), "scope", "failed_at", "error"}
OFF = "FLOCK_ALERT_WEBHOOK is not set: alerts are off"
clock = time.time  # the time the rate limit reads


def standing_alerts(store: StoreResource, n: int) -> list[Alert]:
    """The store's standing conditions now: weights not applied and no commitments, over the last `n` epochs."""
    with store.session():  # one connection for the tick's reads
        epochs = [int(r.epoch) for r in store.rows(EpochRecord)]
        recent = epochs[-(n + 1):]
        submissions = {e: store.weight_submission(e) for e in recent}
        counts = {e: len(store.epoch_commitments(e)) for e in recent[-n:]}
    found = (weights_not_applied(epochs, submissions, n), no_commitments(epochs, counts, n))
    return [a for a in found if a is not None]


def _ledger(instance: dg.DagsterInstance, alerts: Sequence[Alert]) -> dict[str, dict]:
    keys = {LEDGER_PREFIX + a.condition for a in alerts}
    out = {}
    for key, raw in instance.run_storage.get_cursor_values(keys).items():
        try:
            value = json.loads(raw)
        except ValueError:
            continue  # unreadable: as if never posted
        if isinstance(value, dict):
            out[key] = value
    return out


def deliver(instance: dg.DagsterInstance, log, alerts: Sequence[Alert], config: AlertSettings,
            hotkey: str) -> str:
    """Post each alert that is due, record what happened in the instance's storage, and say it in one line."""
    now = clock()
    ledger = _ledger(instance, alerts)
    said = []
    for alert in alerts:
        key = LEDGER_PREFIX + alert.condition
        last = ledger.get(key)
        if not due(last, alert, now, config.min_interval_s):
            said.append(f"{alert.condition}: already posted {int(now - float(last['at']))} s ago (one post per "
                        f"{config.min_interval_s} s)")
            continue
        error = post_alert(config.webhook, alert_body(config, alert.condition, alert.reason, alert.epoch, hotkey))
        if error is None:
            entry = {"at": now, "scope": alert.scope}
            said.append(f"{alert.condition}: posted")
        else:
            entry = {**(last or {}), "failed_at": now, "error": error}
            log.warning(f"alert {alert.condition} not posted: {error}")
            said.append(f"{alert.condition}: not posted ({error})")
        instance.run_storage.set_cursor_values({key: json.dumps(entry)})
    return "; ".join(said)


@dg.sensor(minimum_interval_seconds=ALERT_INTERVAL_S, default_status=dg.DefaultSensorStatus.STOPPED)
def alert_sensor(context: dg.SensorEvaluationContext, store: StoreResource,
                 settings: ValidatorSettingsResource) -> dg.SkipReason:
    """Posts "weights not applied for N epochs" and "no commitments for N epochs" to FLOCK_ALERT_WEBHOOK while they
    hold, once per FLOCK_ALERT_MIN_INTERVAL_S. Requests no runs: every tick ends with what it found and did."""
    config = alert_settings()
    if not config.enabled:
        return dg.SkipReason(OFF)
    alerts = standing_alerts(store, config.epochs)
    if not alerts:
        return dg.SkipReason(f"no alert: weights applied and commitments recorded within the last {config.epochs} "
                             "epoch(s)")
    return dg.SkipReason(deliver(context.instance, context.log, alerts, config, settings.validator_hotkey))


def run_epoch(run: dg.DagsterRun) -> int | None:
    """The epoch a run worked for: its `flock/epoch` tag, or an epoch-stage run's partition."""
    raw = run.tags.get(EPOCH_TAG)
    if raw is None and run.job_name == EPOCH_STAGE_JOB:
        raw = run.tags.get("dagster/partition")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _is_fault(error) -> bool:
    while error is not None:
        if error.cls_name in FAULT_CLASSES:
            return True
        error = error.cause
    return False


def failure_of(context: dg.RunFailureSensorContext) -> tuple[list[str], bool]:
    """A failed run's error messages (each failed step's own; the run's when no step failed) and whether any was a
    validator fault."""
    steps = context.get_step_failure_events()
    errors = [getattr(e.event_specific_data, "error", None) for e in steps if e.event_specific_data is not None]
    messages = failure_messages(steps)
    if not messages:
        event = context.failure_event
        error = getattr(event.event_specific_data, "error", None) if event.event_specific_data is not None else None
        errors.append(error)
        messages = [error_cause(error) if error is not None else (event.message or "")]
    return messages, any(_is_fault(e) for e in errors)


@dg.run_failure_sensor(name="run_failure_alert_sensor", minimum_interval_seconds=ALERT_INTERVAL_S,
                       default_status=dg.DefaultSensorStatus.STOPPED)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, settings: ValidatorSettingsResource):
    """Posts each failed run of this code location's jobs to FLOCK_ALERT_WEBHOOK: `validator_fault` when the
    validator's own environment failed, else `run_failure`; once per condition and epoch per
    FLOCK_ALERT_MIN_INTERVAL_S."""
    config = alert_settings()
    if not config.enabled:
        return dg.SkipReason(OFF)
    run = context.dagster_run
    messages, fault = failure_of(context)
    alert = run_failed(run.job_name, run.run_id, run_epoch(run), messages, fault)
    context.log.info(deliver(context.instance, context.log, [alert], config, settings.validator_hotkey))
    return None  # None: the next failed run of this tick is handled too (a returned value ends the tick)


ALERT_SENSORS = [alert_sensor, run_failure_alert_sensor]
