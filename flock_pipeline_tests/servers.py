"""Real PostgreSQL and Redis servers for the tests.

`FLOCK_TEST_POSTGRES_URL` / `FLOCK_TEST_REDIS_URL` point the tests at servers that are already running (CI starts
them in `.ci/run`). Without them a throwaway server is started from the installed binaries (PostgreSQL refuses to
run as root: as root it runs as the `postgres` user, like the Debian package starts it) and stopped afterwards.
A test that needs a server nobody can start skips with the reason, except in CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """A throwaway cluster: initdb into a temporary directory, started on a free port, trust auth for `flock`."""

    def __init__(self):
        self.bindir = _pg_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (pg_ctl) on this machine")
        self.root = Path(tempfile.mkdtemp(prefix="flock-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "flock", "--no-sync",
                   "-E", "UTF8", "--locale=C"])
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                   "-w", "-t", "60", "start"])
        self.url = f"postgresql://flock@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def postgres_admin_url() -> tuple[str, PostgresServer | None]:
    """(URL of a database on a running server that may create databases, the server started for it or None)."""
    url = os.environ.get("FLOCK_TEST_POSTGRES_URL")
    if url:
        return url, None
    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        unavailable(f"no PostgreSQL server could be started: {exc} {detail}".strip())
    return server.url, server


def create_database(admin_url: str) -> str:
    """A new, empty database on the admin URL's server; returns its URL."""
    import psycopg

    name = f"flock_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    from flock_pipeline.store.backends import PostgresBackend

    PostgresBackend.close_all()
    name = url.rpartition("/")[2]
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RedisServer:
    def __init__(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary on this machine")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="flock-redis-"))
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def redis_url() -> tuple[str, RedisServer | None]:
    url = os.environ.get("FLOCK_TEST_REDIS_URL")
    if url:
        return url, None
    try:
        server = RedisServer()
    except (RuntimeError, OSError) as exc:
        unavailable(f"no Redis server could be started: {exc}")
    return server.url, server


def requirements_line() -> str:
    """One line for the start of `make test`: the servers the suite uses, where they come from here, and what skips
    without them."""
    ci = os.environ.get("CI") == "true"

    def source(variable: str, binary: str, found: bool, skipped: str) -> str:
        if os.environ.get(variable):
            return f"{variable}"
        if found:
            return f"a throwaway server ({binary})"
        return f"none found: {skipped} {'fail (CI=true)' if ci else 'skip'}"

    pg = source("FLOCK_TEST_POSTGRES_URL", "pg_ctl", _pg_bindir() is not None,
                "the PostgreSQL store tests")
    redis = source("FLOCK_TEST_REDIS_URL", "redis-server", shutil.which("redis-server") is not None,
                   "defs/test_cluster.py (Celery workers)")
    return f"make test needs PostgreSQL and Redis; PostgreSQL: {pg}; Redis: {redis}"


if __name__ == "__main__":
    print(requirements_line())
