"""The two databases behind the store: an embedded DuckDB file and a PostgreSQL server.

Both take SQL written once with `?` placeholders and the types of `migrations.TYPES`. A backend runs reads, runs a
transaction (commit on success, rollback on any error) and brings the schema up to date on first use.

DuckDB allows one writing process per file: a connection is opened per operation (or held for a `session`, a step's
batch of miners, and let go during training) and retried while another process holds the file's lock (up to
LOCK_WAIT_S). PostgreSQL takes any number of processes on any number of hosts: each
process keeps a small connection pool (psycopg_pool), made again after a fork, and writers of one scope (an epoch's
commitments, one cache key) are serialised with a transaction-level advisory lock, so a retried or racing write
replaces rows instead of duplicating or failing on them.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from flock_pipeline.errors import ConfigError, NotWritable
from flock_pipeline.store.migrations import LATEST, MIGRATIONS, VERSION_TABLE, statements
from flock_pipeline.store.records import utcnow

LOCK_WAIT_S = 120.0  # seconds to wait for another process's DuckDB write lock before giving up


class StoreURLError(ConfigError):
    """The store's URL names no supported database."""


def parse_url(url: str) -> tuple[str, str]:
    """(dialect, target): `duckdb:///abs/path.duckdb`, a plain file path (DuckDB), or `postgresql://...`."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        if not parts.path.strip("/"):
            raise StoreURLError(f"{_redact(url)}: name the database (postgresql://user@host:port/DBNAME)")
        return "postgresql", url
    if url.startswith("duckdb://"):
        path = url[len("duckdb://"):]
        if not path:
            raise StoreURLError("duckdb:// needs a file path, e.g. duckdb:///var/flock/warehouse.duckdb")
        return "duckdb", path
    if "://" in url:
        raise StoreURLError(f"{_redact(url)}: use duckdb:///path/to/file.duckdb or postgresql://user@host/db")
    if not url:
        raise StoreURLError("the store URL is empty")
    return "duckdb", url


def store_dialect(url: str | None = None) -> str:
    """The dialect of `url` (default: FLOCK_STORE); "duckdb" when unset or not valid (that error is reported when
    the configuration is read)."""
    url = os.environ.get("FLOCK_STORE", "") if url is None else url
    try:
        return parse_url(url)[0] if url else "duckdb"
    except StoreURLError:
        return "duckdb"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


class Transaction:
    """One open transaction: execute, executemany, fetch, lock."""

    def __init__(self, backend: Backend, con, cursor=None):
        self._backend, self._con, self._cur = backend, con, cursor

    def execute(self, sql: str, params: list | tuple = ()) -> None:
        self._backend._execute(self._con, self._cur, sql, params)

    def executemany(self, sql: str, rows: list[list]) -> None:
        if rows:
            self._backend._executemany(self._con, self._cur, sql, rows)

    def fetch(self, sql: str, params: list | tuple = ()) -> list[dict]:
        return self._backend._fetch(self._con, self._cur, sql, params)

    def lock(self, scope: str) -> None:
        """Serialise this transaction with every other one that locks the same scope (PostgreSQL; DuckDB has one
        writer at a time anyway)."""
        self._backend._lock(self._con, self._cur, scope)


class Backend:
    dialect: str

    def read(self, sql: str, params: list | tuple = ()) -> list[dict]:
        raise NotImplementedError

    def transaction(self):
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self):
        """A block of work that may keep one connection open (DuckDB); PostgreSQL's pool already does."""
        yield

    @contextlib.contextmanager
    def released(self):
        """Inside a session: let other processes at the database for a long computation (DuckDB)."""
        yield

    def schema_version(self) -> int:
        rows = self.read("SELECT max(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0)

    def _migrate(self, tx: Transaction) -> None:
        tx.execute(VERSION_TABLE)
        have = {int(r["version"]) for r in tx.fetch("SELECT version FROM schema_migrations")}
        for m in MIGRATIONS:
            if m.version in have:
                continue
            for sql in statements(m, self.dialect):
                tx.execute(sql)
            tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                       [m.version, m.name, utcnow()])


class DuckDBBackend(Backend):
    dialect = "duckdb"
    _migrated: set[tuple[int, str]] = set()  # (pid, path): brought up to date by this process
    _migrating: set[tuple[int, str]] = set()

    def __init__(self, path: str):
        self.path = str(Path(path))
        self._held: tuple[int, object] | None = None  # (pid, connection) kept open by a session
        self._sessions = 0
        self._session_pid = 0

    @contextlib.contextmanager
    def session(self):
        """One connection for the whole block (a step's batch of miners: about 20 operations per miner) instead of
        one per operation (opening a DuckDB file costs about 20 ms, an operation on an open one about 2 ms).

        The file stays locked for other processes while the block runs, except inside `released()`, which the
        evaluation step wraps around training. Nested sessions share the outer one's connection."""
        if self._sessions and self._session_pid == os.getpid():
            self._sessions += 1
            try:
                yield
            finally:
                self._sessions -= 1
            return
        self._held, self._sessions, self._session_pid = None, 1, os.getpid()
        try:
            yield  # the connection opens with the first operation
        finally:
            self._sessions = 0
            self._drop()

    @contextlib.contextmanager
    def released(self):
        """Close the session's connection for the block (other processes may use the file); the session's next
        operation opens it again. Outside a session nothing happens."""
        if not self._sessions or self._held is None or self._held[0] != os.getpid():
            yield
            return
        self._drop()
        yield  # the session's next operation opens the file again (`_connect`)

    def _hold(self) -> None:
        self._ensure_migrated()  # (a first migration already takes the session's connection)
        if self._held is None or self._held[0] != os.getpid():
            self._held = (os.getpid(), self._open(read_only=False))

    def _drop(self) -> None:
        held, self._held = self._held, None
        if held is not None and held[0] == os.getpid():
            held[1].close()

    @contextlib.contextmanager
    def _connect(self, read_only: bool = False):
        held = self._held
        if held is None and self._sessions and self._session_pid == os.getpid():
            self._hold()  # a session whose connection was released: take it again
            held = self._held
        if held is not None and held[0] == os.getpid():  # the session's connection (read-write serves reads too)
            yield held[1]
            return
        self._ensure_migrated()
        con = self._open(read_only)
        try:
            yield con
        finally:
            con.close()

    def _open(self, read_only: bool):
        import duckdb

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only)
                break
            except duckdb.IOException as exc:  # another process holds the file lock
                text = str(exc)
                if "Read-only file system" in text or "Permission denied" in text:
                    why = "read-only file system" if "Read-only" in text else "permission denied"
                    raise NotWritable(f"cannot open the store {self.path}: {why}") from None
                if "lock" not in text.lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.2)
        return con

    def _ensure_migrated(self) -> None:
        key = (os.getpid(), self.path)
        if key in self._migrating:  # the migration's own connection
            return
        if key in self._migrated and Path(self.path).exists():  # (a file deleted since is a new database)
            return
        self._migrating.add(key)
        try:
            with self.transaction() as tx:
                self._migrate(tx)
        finally:
            self._migrating.discard(key)
        self._migrated.add(key)

    def read(self, sql: str, params: list | tuple = ()) -> list[dict]:
        with self._connect(read_only=True) as con:
            return self._fetch(con, None, sql, params)

    @contextlib.contextmanager
    def transaction(self):
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield Transaction(self, con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @staticmethod
    def _execute(con, cur, sql, params):
        con.execute(sql, list(params))

    @staticmethod
    def _executemany(con, cur, sql, rows):
        con.executemany(sql, rows)

    @staticmethod
    def _fetch(con, cur, sql, params):
        result = con.execute(sql, list(params))
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]

    @staticmethod
    def _lock(con, cur, scope):
        return None


class PostgresBackend(Backend):
    dialect = "postgresql"
    POOL_SIZE = 4  # connections per process: steps are sequential inside a process
    _pools: dict[tuple[int, str], object] = {}
    _guard = threading.Lock()

    def __init__(self, url: str):
        self.url = url

    def _pool(self):
        from psycopg_pool import ConnectionPool

        key = (os.getpid(), self.url)
        with self._guard:
            pool = self._pools.get(key)
            if pool is None:  # a forked child never uses its parent's sockets
                pool = ConnectionPool(self.url, min_size=1, max_size=self.POOL_SIZE, open=True, timeout=60,
                                      kwargs={"autocommit": False})
                self._pools[key] = pool
                try:
                    with self.transaction(pool) as tx:
                        tx.lock("flock-schema-migrations")
                        self._migrate(tx)
                except BaseException:
                    self._pools.pop(key, None)
                    pool.close()
                    raise
        return pool

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def read(self, sql: str, params: list | tuple = ()) -> list[dict]:
        with self._pool().connection() as con:
            with con.cursor() as cur:
                return self._fetch(con, cur, sql, params)

    @contextlib.contextmanager
    def transaction(self, pool=None):
        with (pool or self._pool()).connection() as con:
            with con.transaction():
                with con.cursor() as cur:
                    yield Transaction(self, con, cur)

    def _execute(self, con, cur, sql, params):
        cur.execute(self._sql(sql), list(params))

    def _executemany(self, con, cur, sql, rows):
        cur.executemany(self._sql(sql), rows)

    def _fetch(self, con, cur, sql, params):
        cur.execute(self._sql(sql), list(params))
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def _lock(self, con, cur, scope):
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(scope.encode())])

    @classmethod
    def close_all(cls) -> None:
        with cls._guard:
            for key, pool in list(cls._pools.items()):
                if key[0] == os.getpid():
                    pool.close()
                    cls._pools.pop(key)


def backend_for(url: str) -> Backend:
    dialect, target = parse_url(url)
    return PostgresBackend(target) if dialect == "postgresql" else DuckDBBackend(target)


__all__ = ["Backend", "DuckDBBackend", "PostgresBackend", "StoreURLError", "Transaction", "backend_for",
           "parse_url", "store_dialect", "LATEST"]
