"""The README's and docs/'s command blocks, read and run as a reader would run them.

Conventions (docs/testing.md says the same for writers):

- A ```console block is a transcript: a line starting with `$ ` is a command (a line ending in `\\` continues it),
  the lines after it are its expected output. In the expected output a line `...` stands for any number of lines and
  `...` inside a line for any text; a last line `[exit N]` says the command exits N (otherwise 0). A command with no
  expected output must only succeed.
- A ```pycon block is a Python session (`>>> ` prompts, doctest's rules, `...` as above).
- Every block of a document runs in one session, in order, like a reader following the page: one scratch folder
  (the repository's venv, Makefile, examples and scripts linked in), environment variables and the working
  directory carried from one command to the next, nothing of the caller's `FLOCK_*` settings.
- An HTML comment on the line before a block changes what is done with it:
  `<!-- doc-test: real network -->` (it needs the live chain, the Hugging Face Hub or a GPU machine): every command
  is checked without running it: `flock` commands parse with the command line's own parser, `make` targets exist,
  programs exist in the venv, exported variables are ones the product reads;
  `<!-- doc-test: script PATH -->`: every command of the block is a line of that script (a test runs the script);
  `<!-- doc-test: not run: REASON -->`: not run, for the reason given.
- A block without a language whose lines look like commands is an error: mark it `console`.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
LINKED = (".venv", "Makefile", "pyproject.toml", "dagster.yaml", "workspace.yaml", "examples", "scripts",
          "benchmarks", "flock_pipeline", "docs")
COMMAND_LIKE = re.compile(r"^(\$ |export |\.venv/bin/|flock |make |dagster|pip |python )")
MARKER = re.compile(r"^<!-- doc-test: (?P<mode>.*?) -->$")
EXIT = re.compile(r"^\[exit (?P<code>\d+)\]$")


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


@dataclass
class Block:
    document: str
    line: int  # 1-based line of the opening fence
    language: str
    body: str
    mode: str = "run"  # run | real network | script PATH | not run: REASON

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    def commands(self) -> list[Command]:
        """A console block's commands with their expected output."""
        commands: list[Command] = []
        continued = False
        for line in self.body.splitlines():
            if continued:
                commands[-1].text += "\n" + line
                continued = line.endswith("\\")
            elif line.startswith("$ "):
                commands.append(Command(line[2:]))
                continued = line.endswith("\\")
            elif commands:
                match = EXIT.match(line)
                if match:
                    commands[-1].exit_code = int(match["code"])
                else:
                    commands[-1].expected.append(line)
            elif line.strip():
                raise ValueError(f"{self.where}: output before the first `$ ` command: {line!r}")
        return commands


def blocks(document: str) -> list[Block]:
    """Every fenced block of a document, with the doc-test marker on the line before it."""
    lines = (REPO / document).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = lines[i]
        if not fence.startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1].strip() if i else ""
        marker = MARKER.match(before)
        found.append(Block(document, i + 1, fence[3:].strip(), "\n".join(lines[i + 1:end]) + "\n",
                           marker["mode"] if marker else "run"))
        i = end + 1
    return found


def unmarked_commands(block: Block) -> list[str]:
    """Lines of a block without a language that look like commands (they should be a console block)."""
    if block.language:
        return []
    return [line for line in block.body.splitlines() if COMMAND_LIKE.match(line)]


def matches(expected: list[str], actual: str) -> bool:
    """Whether `actual` (output lines) matches the expected lines: `...` lines match any lines, `...` in a line any
    text; trailing whitespace is ignored."""
    if not expected:
        return True
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "[^\n]*".join(re.escape(part) for part in line.rstrip().split("...")) + r"[ \t]*\n"
    text = "\n".join(line.rstrip() for line in actual.rstrip("\n").splitlines()) + "\n"
    return re.fullmatch(pattern, text) is not None


class Session:
    """One document's reader: a scratch folder, and the environment and directory carried between commands."""

    def __init__(self, folder: Path):
        self.folder = folder
        venv = Path(sys.prefix)  # the venv running the tests
        for name in LINKED:
            target = venv if name == ".venv" else REPO / name
            if target.exists():
                (folder / name).symlink_to(target)
        self.state = folder / ".doc-session"
        self.state.mkdir()
        env = {k: v for k, v in os.environ.items()  # a reader's shell: none of the suite's settings, no outer make
               if not k.startswith(("FLOCK_", "DAGSTER_", "VIRTUAL_ENV", "HF_HOME", "HF_DATASETS", "MAKE", "MFLAGS",
                                    "PYTEST_", "COV_"))}
        env.update(HOME=str(folder / ".home"), HF_HOME=str(folder / ".home" / "hf"), OMP_NUM_THREADS="1",
                   HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONUNBUFFERED="1")  # output in the order a terminal shows it
        (folder / ".home").mkdir()
        (self.state / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        (self.state / "cwd").write_text(str(folder))
        self.env = env

    def run(self, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """Run one command as a reader's shell would, after the earlier ones (their exports and `cd`)."""
        script = (f"source {self.state / 'env'}\ncd \"$(cat {self.state / 'cwd'})\"\n{command}\n__rc=$?\n"
                  f"export -p > {self.state / 'env'}.new && mv {self.state / 'env'}.new {self.state / 'env'}\n"
                  f"pwd > {self.state / 'cwd'}\nexit $__rc\n")
        return subprocess.run(["bash", "-c", script], env=self.env, cwd=self.folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def run_python(self, block: Block, timeout: int = 600) -> subprocess.CompletedProcess:
        """A pycon block through doctest, in the session's folder and environment."""
        path = self.state / f"block-{block.line}.txt"
        path.write_text(block.body)
        return self.run(f"{shlex.quote(sys.executable)} -m doctest -o ELLIPSIS -o NORMALIZE_WHITESPACE "
                        f"{shlex.quote(str(path))}", timeout=timeout)


# ------------------------------------------------------------------------------------------------------------------
# Blocks that need the real network: checked without running.

def _program_words(command: str) -> list[list[str]]:
    """The simple commands of a command line, each as its words, with leading VAR=value assignments and comments
    removed and `<placeholders>` replaced by a word."""
    text = re.sub(r"<[^<>\n]+>", "PLACEHOLDER", command.replace("\\\n", " "))
    words = shlex.split(text, comments=True)
    parts, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "&", "|"):
            parts.append(current)
            current = []
        else:
            current.append(word.rstrip(";&"))
    parts.append(current)
    return [p for p in parts if p]


@functools.cache
def _product_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "flock_pipeline").rglob("*.py"))


def _product_reads(name: str) -> bool:
    """Whether the product's code reads this environment variable."""
    source = _product_source()
    return f'"{name}"' in source or f"'{name}'" in source


def check_offline(words: list[str], bin_dir: Path) -> str | None:
    """Why one simple command of a real-network block would not work as written (None: it would)."""
    if words[0] == "export":
        names = [w.split("=", 1)[0] for w in words[1:]]
        unread = [n for n in names if n not in ("PATH",) and not _product_reads(n)]
        return f"exports variables the product never reads: {', '.join(unread)}" if unread else None
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return None
    program, args = words[0], words[1:]
    name = Path(program).name
    if name == "flock":
        from flock_pipeline.cli.parser import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            return f"`flock {' '.join(args)}` does not parse (exit {exc.code})"
        return None
    if name == "make":
        targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
        missing = [a for a in args if "=" not in a and a not in targets]
        return f"no make target {', '.join(missing)}" if missing else None
    if program.startswith(".venv/bin/") or name in ("dagster", "dagster-daemon", "dagster-webserver", "dg", "hf"):
        return None if (bin_dir / name).exists() else f"{name} is not installed in the venv"
    if name in ("btcli", "cd", "mkdir", "cp", "systemctl", "docker", "pip", "python", "source"):
        return None  # the operator's own tools
    return f"unknown program {program!r}"
