"""The production runbook's files, checked as far as a machine without systemd as PID 1 and without Docker allows:
the systemd units pass `systemd-analyze verify` with the programs they start, compose.yaml passes the compose-spec
schema, every command that a unit, a compose service or the runbook (docs/operations.md, "Run it for weeks") starts
parses with that program's own command line, the environment examples set only variables something reads, `dg` loads
the project from `[tool.dg]`, and the documented backup of a PostgreSQL store restores it."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from flock_pipeline_tests.docblocks import REPO, _product_reads, _program_words, blocks, check_offline
from flock_pipeline_tests.servers import _pg_bindir, unavailable

SYSTEMD = REPO / "deploy" / "systemd"
COMPOSE = REPO / "deploy" / "compose"
INSTALLED = "/opt/flock-pipeline"  # where the units expect the checkout
ENV_FILE = "/etc/flock/flock.env"
BIN = Path(sys.executable).parent
RUNBOOK = [("docs/operations.md", "Run it for weeks")]  # (document, section)

# What starts each long-running unit and compose service: the program and the arguments it must be given.
EXPECTED_COMMANDS = {
    "webserver": ["dagster-webserver", "-w", "workspace.yaml"],
    "daemon": ["dagster-daemon", "run", "-w", "workspace.yaml"],
    "gpu-worker": ["flock", "worker", "--queues", "gpu"],
    "cpu-worker": ["flock", "worker", "--queues", "dagster"],
}
# Variables read by something other than the package's code: Dagster, deploy/postgres/dagster.yaml, the CUDA runtime,
# the postgres image's entrypoint (compose).
READ_ELSEWHERE = {"DAGSTER_HOME", "CUDA_VISIBLE_DEVICES", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}


# ------------------------------------------------------------------------------------------------------------------
# Parsing a command line with the program's own parser, without running it.

@functools.cache
def _click_command(program: str):
    if program == "dagster":
        from dagster._cli import cli
    elif program == "dagster-daemon":
        from dagster._daemon.cli import cli
    elif program == "dagster-webserver":
        from dagster_webserver.cli import cli
    elif program == "dagster-celery":
        from dagster_celery.cli import main as cli
    elif program == "dg":
        from dagster_dg_cli.cli import cli
    else:
        return None
    return cli


def _click_parses(program: str, args: list[str]) -> str | None:
    """Why `program args` would be refused by its click command line (None: it parses)."""
    import click

    command, name = _click_command(program), program
    while isinstance(command, click.Group):
        if not args or args[0].startswith("-"):
            return f"`{program}`: no subcommand in {args}"
        sub = command.get_command(click.Context(command), args[0])
        if sub is None:
            return f"`{program}`: no subcommand {args[0]!r}"
        command, name, args = sub, args[0], args[1:]
    try:
        command.make_context(name, list(args))
    except click.exceptions.Exit:  # --help
        return None
    except click.ClickException as exc:
        return f"`{program} {' '.join(args)}`: {exc.format_message()}"
    return None


def command_problem(words: list[str]) -> str | None:
    """Why one project command (the venv's flock / dagster / dg / hf ...) would not run as written."""
    program, args = Path(words[0]).name, words[1:]
    if words[0].startswith("/") and not words[0].startswith(f"{INSTALLED}/.venv/bin/"):
        return f"{words[0]} is not a program of the installed checkout's venv"
    if not (BIN / program).exists():
        return f"{program} is not installed in the venv"
    if program == "flock":
        from flock_pipeline.cli.parser import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            return f"`flock {' '.join(args)}` does not parse (exit {exc.code})"
        return None
    if _click_command(program) is not None:
        return _click_parses(program, args)
    return None


def test_the_command_check_catches_drift(monkeypatch):
    monkeypatch.chdir(REPO)
    assert command_problem(["dagster-daemon", "run", "-w", "workspace.yaml"]) is None
    assert command_problem(["dagster", "sensor", "start", "--start-all", "-w", "workspace.yaml"]) is None
    assert command_problem(["flock", "worker", "--name", "gpu0", "--queues", "gpu"]) is None
    assert command_problem(["dg", "check", "defs"]) is None
    assert "no subcommand" in command_problem(["dagster-daemon", "start"])
    assert "No such option" in command_problem(["dagster-webserver", "--workers", "4"])
    assert "does not exist" in command_problem(["dagster-daemon", "run", "-w", "missing.yaml"])
    assert "does not parse" in command_problem(["flock", "worker", "--gpus", "1"])
    assert "not installed" in command_problem(["dagster-agent", "run"])


# ------------------------------------------------------------------------------------------------------------------
# systemd

def _unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _units() -> list[Path]:
    return sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")])


def _role(unit: Path) -> str:
    return unit.name.removeprefix("flock-").split("@")[0].removesuffix(".service")


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` with the checkout's venv at the units' paths: syntax, directives, and that each
    program they start exists and is executable."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    for unit in _units():
        text = unit.read_text().replace(f"{INSTALLED}/.venv", sys.prefix).replace(INSTALLED, str(REPO))
        (tmp_path / unit.name).write_text(text.replace(ENV_FILE, str(SYSTEMD / "flock.env.example")))
    names = [f"./{u.name.replace('@.', '@0.')}" for u in _units()]
    assert len(names) == 5
    result = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    # warnings (an unknown key, a bad value) are printed without failing: the output must be empty too
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr

    broken = tmp_path / "broken.service"
    broken.write_text((tmp_path / "flock-daemon.service").read_text().replace("Restart=always", "Restart=sometimes"))
    result = subprocess.run([analyze, "verify", "--man=no", "./broken.service"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert "restart specifier" in result.stderr  # the check sees a wrong value


def test_the_units_run_the_project_and_restart(monkeypatch):
    monkeypatch.chdir(REPO)  # -w workspace.yaml: the units' WorkingDirectory is the checkout
    services = [u for u in _units() if u.suffix == ".service"]
    assert {_role(u) for u in services} == set(EXPECTED_COMMANDS)
    problems = []
    for unit in services:
        sections = _unit_sections(unit)
        service, role = sections["Service"], _role(unit)
        argv = shlex.split(service["ExecStart"][0].replace("%i", "0"))
        expected = EXPECTED_COMMANDS[role]
        if Path(argv[0]).name != expected[0] or not all(a in argv for a in expected[1:]):
            problems.append(f"{unit.name}: ExecStart {argv} is not {expected}")
        problems += [f"{unit.name}: {p}" for p in [command_problem(argv)] if p]
        wanted = {"User": ["flock"], "WorkingDirectory": [INSTALLED], "EnvironmentFile": [ENV_FILE],
                  "Restart": ["on-failure" if "worker" in role else "always"]}
        problems += [f"{unit.name}: {k}={service.get(k)}, expected {v}" for k, v in wanted.items()
                     if service.get(k) != v]
        if [sections["Unit"].get("PartOf"), sections["Install"].get("WantedBy")] != [["flock.target"]] * 2:
            problems.append(f"{unit.name}: not part of flock.target")
    assert not problems, "\n".join(problems)
    target = _unit_sections(SYSTEMD / "flock.target")
    assert set(target["Unit"]["Wants"][0].split()) == {"flock-webserver.service", "flock-daemon.service"}


def test_flock_run_starts_the_venv_program_as_the_units_do(tmp_path):
    """deploy/systemd/flock-run hands systemd-run the units' user, environment file and directory (a stand-in
    systemd-run records its arguments: there is no systemd manager here)."""
    fake = tmp_path / "bin" / "systemd-run"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'argv'}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    script = SYSTEMD / "flock-run"
    result = subprocess.run([str(script), "flock", "chain", "status"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-3:] == [f"{INSTALLED}/.venv/bin/flock", "chain", "status"]
    for option in ("--uid=flock", "--gid=flock", "--wait", "--pipe", f"--property=EnvironmentFile={ENV_FILE}",
                   f"--property=WorkingDirectory={INSTALLED}"):
        assert option in argv
    usage = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


# ------------------------------------------------------------------------------------------------------------------
# Environment files

def _env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= and compose's env_file read them (comments and blanks aside)."""
    pairs = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S*)", line)
        assert match, f"{path.name}:{number}: not KEY=value: {line!r}"
        pairs[match[1]] = match[2]
    return pairs


@pytest.mark.parametrize("path", [SYSTEMD / "flock.env.example", COMPOSE / "flock.env.example"],
                         ids=["systemd", "compose"])
def test_the_environment_examples_set_what_is_read(path):
    pairs = _env_file(path)
    dagster_yaml = (REPO / "deploy" / "postgres" / "dagster.yaml").read_text()
    unread = [k for k in pairs if not (_product_reads(k) or k in READ_ELSEWHERE or f"env: {k}" in dagster_yaml)]
    assert not unread, f"{path.name} sets variables nothing reads: {unread}"
    assert {"FLOCK_STORE", "FLOCK_DAGSTER_POSTGRES_URL", "FLOCK_NETWORK", "BT_WALLET_NAME"} <= set(pairs)
    assert pairs["FLOCK_STORE"].startswith("postgresql://")
    assert pairs["FLOCK_DAGSTER_POSTGRES_URL"].rsplit("/", 1)[1] != pairs["FLOCK_STORE"].rsplit("/", 1)[1]


# ------------------------------------------------------------------------------------------------------------------
# Docker Compose

def _compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())  # merge keys (<<: *flock) resolved


def test_compose_file_passes_the_compose_spec_schema(tmp_path):
    checker = BIN / "check-jsonschema"
    if not checker.exists():
        unavailable("check-jsonschema is not installed (the dev extra)")
    argv = [str(checker), "--builtin-schema", "vendor.compose-spec", "--output-format", "json"]
    result = subprocess.run([*argv, str(COMPOSE / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
    broken = tmp_path / "compose.yaml"
    broken.write_text((COMPOSE / "compose.yaml").read_text().replace("stop_grace_period: 5m", "stop_grace: 5m"))
    assert subprocess.run([*argv, str(broken)], capture_output=True, text=True, timeout=120).returncode == 1


def test_compose_services_run_the_project_and_restart(monkeypatch):
    monkeypatch.chdir(REPO)  # the image's working directory is the checkout's root
    services = _compose()["services"]
    problems = []
    for name, service in services.items():
        if "build" not in service:  # postgres, redis: images of their own
            continue
        argv = service["command"]
        problems += [f"{name}: {p}" for p in [command_problem(argv)] if p]
        role = name.replace("worker-", "") + "-worker" if name.startswith("worker-") else name
        expected = EXPECTED_COMMANDS.get(role)
        if expected and (argv[0] != expected[0] or not all(a in argv for a in expected[1:])):
            problems.append(f"{name}: command {argv} is not {expected}")
        if service["restart"] != ("no" if name == "migrate" else "unless-stopped"):
            problems.append(f"{name}: restart {service['restart']}")
        mounts = [v.split(":")[0] for v in service["volumes"]]
        problems += [f"{name}: mounts a missing {m}" for m in mounts
                     if m.startswith("../") and not (COMPOSE / m).exists()]
    assert not problems, "\n".join(problems)
    assert {"postgres", "redis", "migrate", "webserver", "daemon", "worker-gpu", "worker-cpu"} == set(services)
    assert all(s.get("restart") == "unless-stopped" for s in (services["postgres"], services["redis"]))
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert services["daemon"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["dagster", "instance", "migrate"]
    for name in ("postgres", "migrate"):
        assert (COMPOSE / services[name]["env_file"]).with_suffix(".env.example").exists()


def test_the_image_builds_from_files_that_exist():
    """The Dockerfile's build arguments are the ones compose.yaml passes, and each file it copies exists in the
    repository and is not left out of the build context."""
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
    build = _compose()["services"]["webserver"]["build"]
    assert set(build["args"]) <= declared and (COMPOSE / build["context"] / build["dockerfile"]).exists()
    included = {line[1:].rstrip("/") for line in (COMPOSE / "Dockerfile.dockerignore").read_text().splitlines()
                if line.startswith("!")}
    sources = [s for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for s in line.split()[:-1]]
    assert sources and all((REPO / s).exists() and s.rstrip("/") in included for s in sources), sources
    assert "torch==${TORCH_VERSION}" in dockerfile and "--index-url" in dockerfile  # a pinned torch, never PyPI's


# ------------------------------------------------------------------------------------------------------------------
# dg

def test_dg_loads_the_project_from_pyproject(tmp_path):
    """`dg list defs` finds the project through `[tool.dg]`: the definitions workspace.yaml loads, under the same
    code location name (sensor states and runs belong to a location)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dg"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert config["directory_type"] == "project"
    assert config["project"]["code_location_target_module"] == workspace["module_name"]
    assert config["project"]["code_location_name"] == workspace.get("location_name", workspace["module_name"])

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")  # an empty instance, telemetry off
    # (`dg check defs` runs in docs/operations.md's own block, which test_docs.py executes)
    listed = subprocess.run([str(BIN / "dg"), "list", "defs", "--json"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, timeout=300)
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)

    from flock_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {a["asset_key"] for a in found["assets"]} == {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {s["name"] for s in found["sensors"]} == {s.name for s in defs.sensors}
    assert {"epoch_stage", "miner_stage"} <= {j["name"] for j in found["jobs"]}


# ------------------------------------------------------------------------------------------------------------------
# The runbook's commands

def _runbook_commands(document: str, heading: str) -> list[list[str]]:
    """The simple commands of every console block in a document's section, as words."""
    lines = (REPO / document).read_text().splitlines()
    start = lines.index(f"## {heading}")  # 0-based: the heading is line start + 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = [b for b in blocks(document) if start < b.line <= end and b.language == "console"]
    return [words for b in section for c in b.commands() for words in _program_words(c.text)]


def _strip_runner(words: list[str]) -> list[str]:
    """The command under `runuser -u USER --`, `deploy/systemd/flock-run` and `docker compose exec|run SERVICE`."""
    if words[0] == "runuser":
        return words[words.index("--") + 1:]
    if words[0].endswith("deploy/systemd/flock-run"):
        return words[1:]
    return words


def _unit_exists(name: str) -> bool:
    name = name if name.endswith((".service", ".target")) else f"{name}.service"
    return (SYSTEMD / re.sub(r"@[^.]+\.", "@.", name)).exists()


def _paths_problem(words: list[str], created: set[str]) -> str | None:
    """Paths under deploy/ must be in the repository or made by an earlier command (the target of cp, mkdir)."""
    paths = [w.split("=", 1)[-1].rstrip("/") for w in words if w.split("=", 1)[-1].startswith("deploy/")]
    if words[0] in ("cp", "mkdir") and paths and paths[-1] == words[-1].rstrip("/"):
        created.add(paths.pop())
    missing = [p for p in paths if not any(REPO.glob(p)) and p not in created]
    return f"no {missing} in the repository" if missing else None


def runbook_problem(words: list[str], services: set[str], created: set[str] | None = None) -> str | None:
    """Why a runbook command would not work here as written: a unit, a compose service, a file or a program that
    is not what the repository has (nor an earlier command made: `created`)."""
    words = _strip_runner(words)
    program = words[0]
    problem = _paths_problem(words, set() if created is None else created)
    if problem:
        return problem
    if program in ("systemctl", "journalctl"):
        units = [w for w in words[1:] if re.fullmatch(r"flock[\w@.-]*", w)]
        if program == "journalctl":
            units = [w for i, w in enumerate(words) if i and words[i - 1] == "-u" and "*" not in w]
        bad = [u for u in units if not _unit_exists(u)]
        return f"no unit {bad} in deploy/systemd" if bad else None
    if program == "docker":
        return _docker_problem(words, services)
    if program == "make":
        return check_offline(words, BIN)
    if Path(program).name in ("flock", "dagster", "dagster-daemon", "dagster-webserver", "dagster-celery", "dg",
                              "hf") or program.startswith(".venv/bin/"):
        return command_problem(words)
    return None  # the operating system's own tools (useradd, install, git, pg_dump, tar, ...)


def _docker_problem(words: list[str], services: set[str]) -> str | None:
    args = words[2:] if words[1] == "compose" else []
    while args[:1] in (["-f"], ["--file"]):  # the compose file, checked with the other paths
        args = args[2:]
    if not args:
        return f"not a `docker compose` command: {words}"
    sub, rest = args[0], args[1:]
    named = [w for w in rest if not w.startswith("-")]
    if sub in ("exec", "run"):
        service, command = named[0], rest[rest.index(named[0]) + 1:]
        if service not in services:
            return f"no compose service {service}"
        return command_problem(command) if Path(command[0]).name in ("flock", "dagster", "dg", "hf") else None
    if sub in ("logs", "restart", "stop", "start", "up", "ps", "build", "pull", "down"):
        bad = [w for w in named if w not in services]
        return f"no compose service {bad}" if bad else None
    return f"a compose subcommand the runbook does not use: {sub}"


def test_every_runbook_command_names_what_the_repository_has(monkeypatch):
    monkeypatch.chdir(REPO)
    commands = [words for document, heading in RUNBOOK for words in _runbook_commands(document, heading)]
    assert len(commands) >= 50
    services, created = set(_compose()["services"]), set()
    problems = [f"{' '.join(w)}: {p}" for w in commands for p in [runbook_problem(w, services, created)] if p]
    assert not problems, "\n".join(problems)
    # the check sees drift
    assert runbook_problem(["systemctl", "restart", "flock-scheduler"], services)
    assert runbook_problem(["docker", "compose", "logs", "worker"], services)
    assert runbook_problem(["deploy/systemd/flock-run", "dagster", "instance", "migrat"], services)
    assert runbook_problem(["cp", "deploy/systemd/flock.env", "/etc/flock/"], services)
    assert runbook_problem(["make", "deploy"], services)


def test_the_documented_backup_restores_the_store(postgres_url, tmp_path):
    """The runbook's backup of a PostgreSQL store (`pg_dump -Fc`) and its restore (`pg_restore --clean
    --if-exists`) bring back the store as it was, its schema version included."""
    from flock_pipeline.store import SCHEMA_VERSION, EpochRecord, Store
    from flock_pipeline.store.backends import PostgresBackend

    bindir = _pg_bindir()
    if bindir is None:
        unavailable("no PostgreSQL client programs (pg_dump)")
    bindir = Path(os.path.realpath(bindir / "pg_ctl")).parent  # the server's own version of pg_dump
    store = Store(postgres_url)
    store.record_epoch(EpochRecord(7, 700, "flock/eval", "e" * 40, datetime(2026, 12, 1)), [])
    dump = tmp_path / "flock-store.dump"
    subprocess.run([str(bindir / "pg_dump"), "-Fc", "-f", str(dump), "-d", postgres_url], check=True, timeout=120)
    store.record_epoch(EpochRecord(8, 800, "flock/eval", "e" * 40, datetime(2026, 12, 2)), [])  # after the backup
    assert store.latest_epoch() == 8
    PostgresBackend.close_all()
    subprocess.run([str(bindir / "pg_restore"), "--clean", "--if-exists", "-d", postgres_url, str(dump)],
                   check=True, timeout=120)
    restored = Store(postgres_url)
    assert restored.latest_epoch() == 7 and restored.schema_version() == SCHEMA_VERSION
