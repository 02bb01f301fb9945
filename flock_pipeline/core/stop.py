"""A stop asked for by a signal (SIGTERM, SIGINT), honoured at safe points: between the runs of an epoch and between
the miners a run trains. What was finished is kept, what was in progress is dropped (never recorded against a
miner), and nothing starts afterwards (no scoring, weights or corpus). The command line sets it from its signal
handlers; the epoch runner and the objectives' training loops read it.
"""

from __future__ import annotations

import signal

from flock_pipeline.errors import FlockError

_requested: list[int] = []  # the signals received, in order (the first decides the exit code)


def request(signum: int) -> None:
    _requested.append(int(signum))


def requested() -> int | None:
    """The signal a stop was asked for with, or None."""
    return _requested[0] if _requested else None


def clear() -> None:
    _requested.clear()


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by `signum` (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


class Stopped(FlockError, RuntimeError):
    """The work stopped at a safe point because a signal asked it to; every finished result is kept."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = exit_code(signum)
        name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {name}: every finished result is kept; nothing was started after it "
                         "(run the same command again to resume)")


def stopped() -> Stopped | None:
    """A Stopped for the requested signal, or None when no stop was asked for."""
    signum = requested()
    return Stopped(signum) if signum is not None else None
