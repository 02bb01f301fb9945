#!/usr/bin/env python
"""Regenerate (or, with --check, compare) the demo tables of the README and docs/ from what the code prints now.

Each table after a line `<!-- numbers: flock demo ARGS -->` is the output of `flock demo ARGS` on a fresh home (the
report's lines, before its timing line), run here with one thread: a plain block holds the table alone; in a
console block the table is the lines from its `uid  hotkey` header to the next blank line. The shipped tiny model
makes these numbers the same on every machine of this kind; the tests compare them (the README's through its
console block, docs/ through `--check`).

    python scripts/readme_numbers.py                              # rewrite the tables in README.md and docs/
    python scripts/readme_numbers.py --check docs/competitions.md # exit 1 (with a diff) when a file differs
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
MARKER = re.compile(r"^<!-- numbers: flock demo(?P<args>[^>\n]*)-->\n"
                    r"(?P<head>```\n|```console\n(?:(?!uid  hotkey)[^\n]*\n)*?)"
                    r"(?P<table>uid  hotkey(?:[^\n]*\n)*?)(?P<tail>```\n|\n)", re.M)


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
        return (f"<!-- numbers: flock demo{match.group('args')}-->\n{match.group('head')}{demo_table(args)}"
                f"{match.group('tail')}")

    return MARKER.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    parser.add_argument("files", nargs="*", help="the files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    files = [REPO / f for f in args.files] or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    differ = 0
    for path in files:
        text = path.read_text()
        if not MARKER.search(text):
            if args.files:
                print(f"{path.name} has no `<!-- numbers: flock demo ... -->` table", file=sys.stderr)
                return 1
            continue
        fresh = regenerate(text)
        name = str(path.relative_to(REPO))
        if args.check:
            if fresh != text:
                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), name,
                                                           "what the code prints"))
                differ = 1
            else:
                print(f"{name}: the demo tables are what the code prints")
        elif fresh != text:
            path.write_text(fresh)
            print(f"{name}: demo tables regenerated")
        else:
            print(f"{name}: demo tables unchanged")
    return differ


if __name__ == "__main__":
    raise SystemExit(main())
