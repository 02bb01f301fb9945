"""Shared fixtures. Tests run offline, single-threaded (2-core machines: thread contention slows training 10x+)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.pop("DAGSTER_HOME", None)  # tests use their own instances, never the developer's
os.environ.pop("FLOCK_HOME", None)

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from flock_pipeline_tests.homes import home_with_model  # noqa: E402


# The longest test files (minutes each), collected first: on two workers the longest starts at once and runs beside
# everything else, instead of starting last and holding the suite up for its whole length after the rest is done.
LONGEST_FIRST = ("defs/test_kill_resume.py", "defs/test_cluster.py", "cli/test_cli.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("flock_pipeline_tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny model, built once per session."""
    from flock_pipeline.core.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def flock_home(tmp_path, tiny_model_dir) -> Path:
    """An empty FLOCK_HOME whose model cache already holds the tiny model."""
    home = tmp_path / "flock"
    home_with_model(home, tiny_model_dir)
    return home


@pytest.fixture(scope="session")
def postgres_admin():
    """URL of a PostgreSQL database that may create databases (a throwaway server unless FLOCK_TEST_POSTGRES_URL)."""
    from flock_pipeline_tests.servers import postgres_admin_url

    url, server = postgres_admin_url()
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def postgres_url(postgres_admin):
    """A new, empty PostgreSQL database for one test."""
    from flock_pipeline_tests.servers import create_database, drop_database

    url = create_database(postgres_admin)
    yield url
    drop_database(postgres_admin, url)


@pytest.fixture(params=["duckdb", "postgresql"])
def store_url(request, tmp_path):
    """The same test on both backends of the store."""
    if request.param == "duckdb":
        return f"duckdb://{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_server():
    from flock_pipeline_tests.servers import redis_url

    url, server = redis_url()
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def demo_pair(tmp_path, tiny_model_dir):
    """(epoch, a demo home after one uninterrupted in-process epoch, an identical home seeded but not run)."""
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import seed_demo_network
    from flock_pipeline.resources import build_resources

    seeded = tmp_path / "seeded"
    home_with_model(seeded, tiny_model_dir)
    epoch = seed_demo_network(seeded)
    reference, other = tmp_path / "reference", tmp_path / "other"
    shutil.copytree(seeded, reference)
    shutil.copytree(seeded, other)
    run_epoch(epoch, build_resources(reference), dg.DagsterInstance.ephemeral())
    return epoch, reference, other
