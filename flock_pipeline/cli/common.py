"""What every command shares: the Dagster instance, and quiet libraries on the console."""

from __future__ import annotations

import os
import sys


def _instance():
    """The Dagster instance of DAGSTER_HOME when set (so the UI shows the runs), else an ephemeral one."""
    import dagster as dg

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _quiet_torch() -> None:
    """The embedded network needs no hub; library progress bars and deprecation chatter stay off the console."""
    import warnings

    if os.environ.get("FLOCK_NETWORK", "local") == "local":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub resource of the real networks decides for itself
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def run_stoppable(work):
    """`work()` in a worker thread while this (main) thread owns SIGTERM and SIGINT: the first asks the work to
    stop at its next safe point (between runs, between miners), a second ends the process at once. The work raises
    Stopped when it stopped (exit 143 for SIGTERM, 130 for SIGINT). Dagster replaces signal handlers only on the
    main thread, so inside the worker it leaves them alone and no signal lands in the middle of a library call."""
    import signal
    import threading

    from flock_pipeline.core import stop

    if threading.current_thread() is not threading.main_thread():
        return work()  # only the main thread may own signal handlers (a caller that runs the CLI in a thread)
    stop.clear()

    def handler(signum, _frame):
        if stop.requested() is not None:
            os._exit(stop.exit_code(stop.requested()))  # asked twice: at once
        stop.request(signum)
        print(f"flock: {signal.Signals(signum).name} received: stopping at the next safe point, keeping every "
              "finished result (send it again to stop at once)", file=sys.stderr, flush=True)

    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            outcome["error"] = exc

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=target, name="flock-work", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    finally:
        for s, h in previous.items():  # after a stop, a further signal ends the process at once (its exit code)
            signal.signal(s, h if stop.requested() is None else handler)
    if "error" in outcome:
        halted = stop.stopped()
        if halted is not None and not isinstance(outcome["error"], stop.Stopped):
            raise halted from outcome["error"]
        raise outcome["error"]
    return outcome.get("value")
