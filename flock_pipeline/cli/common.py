"""What every command shares: the Dagster instance, and quiet libraries on the console."""

from __future__ import annotations

import os


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
