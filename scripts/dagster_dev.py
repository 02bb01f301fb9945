"""Start `dagster dev` with default signal handlers (a parent shell may leave SIGINT/SIGTERM ignored, which
Dagster's child processes would inherit and then never stop). Arguments are passed on to `dagster dev`."""

import os
import signal
import sys

for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_DFL)
dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
os.execv(dagster, [dagster, "dev", "-w", "workspace.yaml", *sys.argv[1:]])
