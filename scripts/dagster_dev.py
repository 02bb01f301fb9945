"""Start `dg dev` (the Dagster webserver and daemon for this project, as `[tool.dg]` in pyproject.toml names it) with
default signal handlers (a parent shell may leave SIGINT/SIGTERM ignored, which Dagster's child processes would
inherit and then never stop). Arguments are passed on to `dg dev`."""

import os
import signal
import sys

for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_DFL)
dg = os.path.join(os.path.dirname(sys.executable), "dg")
os.execv(dg, [dg, "dev", *sys.argv[1:]])
