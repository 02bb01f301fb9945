"""`make test` says in its first line which servers it uses, where they come from, and what skips without them."""

from __future__ import annotations

import pytest

from flock_pipeline_tests import servers


@pytest.mark.parametrize("ci, found, expected", [
    ("", True, "PostgreSQL: a throwaway server (pg_ctl); Redis: a throwaway server (redis-server)"),
    ("", False, "Redis: none found: defs/test_cluster.py (Celery workers) skip"),
    ("true", False, "Redis: none found: defs/test_cluster.py (Celery workers) fail (CI=true)"),
])
def test_the_line_names_each_server_and_what_skips_without_it(monkeypatch, ci, found, expected):
    monkeypatch.setenv("CI", ci)
    for variable in ("FLOCK_TEST_POSTGRES_URL", "FLOCK_TEST_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(servers.shutil, "which", lambda name: f"/usr/bin/{name}" if found else None)
    monkeypatch.setattr(servers, "_pg_bindir", lambda: "/usr/lib/postgresql/15/bin" if found else None)
    line = servers.requirements_line()
    assert line.startswith("make test needs PostgreSQL and Redis") and expected in line


def test_a_server_given_by_url_is_named_by_its_variable(monkeypatch):
    monkeypatch.setenv("FLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert "Redis: FLOCK_TEST_REDIS_URL" in servers.requirements_line()
