"""A failed run's message is the asset's own error, not Dagster's wrapper: a step that used up its retries says
"exceeded max_retries" after its cause, and its first attempt's cause when that was a different one."""

from __future__ import annotations

import dagster as dg

from flock_pipeline.defs.planner import failure_messages


def _events(errors: list[str]):
    attempts = iter(errors)

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=len(errors) - 1))
    def flaky():
        raise RuntimeError(next(attempts))

    @dg.job
    def job():
        flaky()

    return job.execute_in_process(raise_on_error=False,
                                  run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
                                  ).all_events


def test_a_retried_failure_names_its_last_and_its_first_cause():
    [message] = failure_messages(_events(["the hub timed out", "disk full", "disk full"]))
    assert message == ("RuntimeError: disk full (exceeded max_retries of 2); first attempt: RuntimeError: the hub "
                       "timed out")


def test_a_retried_failure_with_one_cause_names_it_once():
    assert failure_messages(_events(["disk full"] * 3)) == ["RuntimeError: disk full (exceeded max_retries of 2)"]


def test_a_failure_without_retries_is_its_own_error():
    assert failure_messages(_events(["disk full"])) == ["RuntimeError: disk full"]  # a policy of 0 retries
