"""`flock`: the command line (demo network, epochs, local chain utilities).

Exit codes: 0 ok, 1 a run or check failed, 2 usage or configuration error.
"""

from __future__ import annotations

import errno
import os
import sys

from flock_pipeline.cli.parser import EXAMPLES, build_parser
from flock_pipeline.cli.validator import worker_command

__all__ = ["EXAMPLES", "build_parser", "main", "worker_command"]


def _log_level(verbose: int) -> None:
    """Quiet by default: log records below ERROR (retry notes, library warnings, debug lines) and the libraries'
    progress bars stay off the console; -v shows warnings and info, -vv debug. Only the console: the runs' own
    lines still reach Dagster's event log whatever the level (`logging.disable` would drop them there too, the
    evaluation step's per-miner progress lines with them), and the runs' console logger has its own level
    (`defs.epoch.console_config`)."""
    import logging

    level = logging.ERROR if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if logging.lastResort is not None:  # what prints the records of loggers without a handler (the libraries')
        logging.lastResort.setLevel(level)
    if verbose > 0:
        os.environ.setdefault("FLOCK_VERBOSE", str(verbose))  # the libraries' progress bars are shown again
    if verbose <= 0:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn every FlockError into one line on stderr and its exit code (nothing heavy is imported
    before the command runs: `flock --help` answers at once)."""
    from flock_pipeline.errors import FlockError, NotWritable

    import logging

    args = build_parser().parse_args(argv)
    before = logging.lastResort.level if logging.lastResort is not None else None
    _log_level(args.verbose)
    try:
        return args.func(args)
    except FlockError as exc:  # the top of the CLI: one line for the user, not a traceback
        print(f"flock: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        error = NotWritable(f"cannot write {exc.filename or 'a file of the home'}: {exc.strerror.lower()}")
        print(f"flock: {error.line()}", file=sys.stderr)
        return error.exit_code
    finally:
        if before is not None:  # main() may run inside another program (the tests): leave its logging as it was
            logging.lastResort.setLevel(before)


if __name__ == "__main__":
    sys.exit(main())
