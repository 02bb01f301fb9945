"""The README and docs/ as a reader meets them: every command block runs (or, where it needs the real network, is
checked against the command line and the Makefile), its output matches, every link resolves, the example miner
files are what the generators make, and the README stays short. Conventions: `flock_pipeline_tests/docblocks.py`."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flock_pipeline_tests.docblocks import (DOCUMENTS, REPO, Session, _program_words, blocks, check_offline,
                                            matches, unmarked_commands)

MODES = re.compile(r"^(run|real network|script \S+|not run: .+)$")
# documents whose blocks run for more than a few seconds (demo epochs, training): left out of `make test-fast`
SLOW = {"README.md", "docs/corpus.md"}


def _all_blocks():
    return [b for doc in DOCUMENTS for b in blocks(doc)]


def test_every_command_block_says_how_it_is_tested():
    problems = []
    for block in _all_blocks():
        if not MODES.match(block.mode):
            problems.append(f"{block.where}: unknown doc-test mode {block.mode!r}")
        if block.language in ("bash", "sh", "shell", "zsh") and not block.mode.startswith("script "):
            problems.append(f"{block.where}: a {block.language} block that is not a script's listing: write "
                            "commands as a console block (`$ `)")
        if unmarked_commands(block):
            problems.append(f"{block.where}: commands in a block without a language: {unmarked_commands(block)[0]!r}")
        if block.language == "console":
            try:
                if not block.commands():
                    problems.append(f"{block.where}: a console block without a `$ ` command")
            except ValueError as exc:
                problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_real_network_blocks_parse_and_name_what_exists():
    """Blocks that need the live chain, the Hub or a GPU are not run here: each `flock` command parses with the
    command line's own parser, each `make` target exists, each program is installed in the venv, each exported
    variable is one the product reads; a pycon block compiles."""
    bin_dir = Path(sys.executable).parent
    problems, checked = [], 0
    for block in (b for b in _all_blocks() if b.mode == "real network"):
        if block.language == "pycon":
            for example in doctest.DocTestParser().get_examples(block.body):
                compile(re.sub(r"<[^<>\n]+>", "x", example.source), block.where, "exec")
                checked += 1
            continue
        for command in block.commands():
            for words in _program_words(command.text):
                checked += 1
                why = check_offline(words, bin_dir)
                if why:
                    problems.append(f"{block.where}: {' '.join(words)}: {why}")
    assert checked >= 20 and not problems, "\n".join(problems)


def test_the_offline_check_catches_what_has_drifted():
    bin_dir = Path(sys.executable).parent
    assert "does not parse" in check_offline(["flock", "miner", "sumbit", "data.jsonl"], bin_dir)
    assert "does not parse" in check_offline(["flock", "miner", "submit", "data.jsonl"], bin_dir)  # --repo required
    assert check_offline(["flock", "miner", "submit", "d.jsonl", "--repo", "a/b"], bin_dir) is None
    assert "no make target" in check_offline(["make", "deploy"], bin_dir)
    assert "never reads" in check_offline(["export", "FLOCK_NETWROK=test"], bin_dir)
    assert check_offline(["export", "FLOCK_NETWORK=test", "HF_TOKEN=x"], bin_dir) is None
    assert _program_words("A=1 flock chain status   # comment <x>") == [["A=1", "flock", "chain", "status"]]


def test_script_blocks_are_lines_of_their_script():
    problems = []
    for block in (b for b in _all_blocks() if b.mode.startswith("script ")):
        script = REPO / block.mode.split(" ", 1)[1]
        lines = {line.split("#")[0].strip() for line in script.read_text().splitlines()}
        for line in block.body.splitlines():
            code = line.split("#")[0].strip()
            if code and code not in lines:
                problems.append(f"{block.where}: {code!r} is not a line of {script.name}")
    assert not problems, "\n".join(problems)


def test_output_matching():
    assert matches(["a", "...", "c ... e"], "a\nx\ny\nc d e\n")
    assert matches(["a", "...", "c"], "a\nc\n")
    assert not matches(["a", "c"], "a\nb\nc\n")
    assert not matches(["a 1.7769"], "a 1.7770\n")
    assert matches([], "anything at all")


def _run_document(document: str, tmp_path: Path) -> list[str]:
    session, failures = Session(tmp_path), []
    for block in blocks(document):
        if block.mode != "run":
            continue
        if block.language == "pycon":
            run = session.run_python(block)
            if run.returncode:
                failures.append(f"{block.where}: the Python session failed:\n{run.stdout[-4000:]}")
            continue
        if block.language != "console":
            continue
        for command in block.commands():
            run = session.run(command.text)
            if run.returncode != command.exit_code or not matches(command.expected, run.stdout):
                failures.append(f"{block.where}: $ {command.text}\n  exit {run.returncode} (expected "
                                f"{command.exit_code}); output:\n{run.stdout[-4000:]}")
                return failures  # later commands build on this one
    return failures


@pytest.mark.parametrize("document", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW else d
                                      for d in DOCUMENTS])
def test_the_documents_commands_run_and_print_what_they_say(document, tmp_path):
    failures = _run_document(document, tmp_path)
    assert not failures, "\n\n".join(failures)


def test_every_relative_link_resolves():
    broken = []
    for document in DOCUMENTS:
        text = re.sub(r"```.*?```", "", (REPO / document).read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / document).parent / path if path else REPO / document
            if not file.exists():
                broken.append(f"{document}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{document}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _anchors(file: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in file.read_text().splitlines() if line.startswith("#")}


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move detail to docs/"


def test_the_example_miner_files_are_what_the_generators_make():
    run = subprocess.run([sys.executable, str(REPO / "examples" / "miner" / "make_examples.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
