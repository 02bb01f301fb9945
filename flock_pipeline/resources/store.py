"""The store resource: the store (`flock_pipeline.store`) as a Dagster resource.

Per-miner steps write here (not only to Dagster's IO manager) so that epoch-level steps can read every miner's
result, a killed run resumes without redoing finished miners, and evaluations are cached by content.

`url` picks the database: a DuckDB file (`duckdb:///path/warehouse.duckdb`, or a plain path; the embedded default,
one writing process at a time) or PostgreSQL (`postgresql://user:password@host:5432/flock`: any number of processes
and hosts). `path` is the older spelling of a DuckDB file and still works.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from flock_pipeline.store.backends import Backend, backend_for, parse_url
from flock_pipeline.store.store import StoreOps

_BACKENDS: dict[str, Backend] = {}  # one per URL per process (PostgreSQL: one connection pool)


class StoreResource(dg.ConfigurableResource, StoreOps):
    """The pipeline's store: a DuckDB file (its name must differ from any schema inside it) or PostgreSQL."""

    url: str = ""
    path: str = ""

    @property
    def store_url(self) -> str:
        return self.url or self.path

    @property
    def dialect(self) -> str:
        return parse_url(self.store_url)[0]

    def local_dir(self) -> Path | None:
        """The directory of a DuckDB file (None for a server database)."""
        dialect, target = parse_url(self.store_url)
        return Path(target).parent if dialect == "duckdb" else None

    def _backend(self) -> Backend:
        url = self.store_url
        if url not in _BACKENDS:
            _BACKENDS[url] = backend_for(url)
        return _BACKENDS[url]
