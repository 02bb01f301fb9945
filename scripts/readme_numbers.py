#!/usr/bin/env python
"""Regenerate (or, with --check, compare) the README's demo tables from what the code prints now.

Each table in README.md that follows a line `<!-- numbers: flock demo ARGS -->` is the output of `flock demo ARGS`
on a fresh home (the report's lines, before its timing line), run here with one thread. The shipped tiny model
makes these numbers the same on every machine of this kind; a test runs `--check`.

    python scripts/readme_numbers.py           # rewrite the tables in README.md
    python scripts/readme_numbers.py --check   # exit 1 (with a diff) when README.md differs from the code
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- numbers: flock demo(?P<args>[^>]*)-->\n```\n(?P<table>.*?)```\n", re.M | re.S)


def demo_table(args: list[str]) -> str:
    """The report table `flock demo ARGS` prints on a fresh home."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "FLOCK_HOME": home}
        for key in ("FLOCK_SETTINGS", "FLOCK_COMPETITIONS", "FLOCK_RECIPE", "DAGSTER_HOME"):
            env.pop(key, None)
        out = subprocess.run([str(Path(sys.executable).parent / "flock"), "demo", "--home", home, *args], env=env,
                             cwd=REPO, capture_output=True, text=True, check=True, timeout=1800).stdout
    return out.split("\n\n")[0].rstrip("\n") + "\n"


def regenerate(text: str) -> str:
    def table(match: re.Match) -> str:
        args = shlex.split(match.group("args"))
        return f"<!-- numbers: flock demo{match.group('args')}-->\n```\n{demo_table(args)}```\n"

    return MARKER.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the README differs")
    args = parser.parse_args(argv)
    readme = REPO / "README.md"
    text = readme.read_text()
    if not MARKER.search(text):
        print("README.md has no `<!-- numbers: flock demo ... -->` table", file=sys.stderr)
        return 1
    fresh = regenerate(text)
    if args.check:
        if fresh != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True),
                                                       "README.md", "what the code prints"))
            return 1
        print("README.md's demo tables are what the code prints")
        return 0
    if fresh != text:
        readme.write_text(fresh)
        print("README.md: demo tables regenerated")
    else:
        print("README.md: demo tables unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
