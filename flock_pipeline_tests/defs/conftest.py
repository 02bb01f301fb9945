import json

import dagster as dg
import pytest

from flock_pipeline.defs.epoch import run_epoch
from flock_pipeline.demo import epoch_report, seed_demo_network
from flock_pipeline.resources import build_resources
from flock_pipeline_tests.homes import home_with_model


@pytest.fixture
def demo(flock_home):
    """A freshly seeded demo network (nothing run yet): (home, resources, instance, epoch)."""
    epoch = seed_demo_network(flock_home)
    return flock_home, build_resources(flock_home), dg.DagsterInstance.ephemeral(), epoch


@pytest.fixture(scope="module")
def demo_epoch(tmp_path_factory, tiny_model_dir):
    """The demo network after one whole epoch: (home, resources, instance, epoch, report by label)."""

    home = tmp_path_factory.mktemp("demo-epoch")
    home_with_model(home, tiny_model_dir)
    epoch = seed_demo_network(home)
    resources = build_resources(home)
    instance = dg.DagsterInstance.ephemeral()
    run_epoch(epoch, resources, instance)
    labels = json.loads((home / "demo.json").read_text())["labels"]
    report = {m["label"]: m for m in epoch_report(epoch, resources["store"], labels)}
    return home, resources, instance, epoch, report


def demo_home(tmp_path_factory, tiny_model_dir, name: str):
    """A fresh home holding a copy of the session's tiny model."""

    home = tmp_path_factory.mktemp(name)
    home_with_model(home, tiny_model_dir)
    return home


def demo_json(home, network: str) -> dict:
    """`flock demo --network NETWORK --json --home HOME`, run in this process: its JSON document."""
    import contextlib
    import io

    from flock_pipeline.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--network", network, "--json", "--home", str(home)]) == 0
    doc = json.loads(out.getvalue())
    assert doc["network"] == network
    return doc


def assert_zero_with_reason(m: dict, status: str, reason: str) -> None:
    """A demo report entry of an attacker: weight 0, the expected status, and its reason."""
    assert m["weight"] == 0.0
    assert m["status"] == status, m
    assert reason in (m["reason"] or ""), m


def assert_card_snippet_loads(folder, cache) -> list[str]:
    """Every `load_dataset(WHERE, CONFIG, split="train")` line of a release card's load snippet, run on the release
    folder: each config it names loads the release's own rows. Returns the configs it names."""
    import re
    from pathlib import Path

    import datasets

    from flock_pipeline.core.corpus import read_release

    card = (Path(folder) / "README.md").read_text()
    snippet = card.split("## Load", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    configs = re.findall(r'load_dataset\("[^"]+", "(\w+)", split="train"\)', snippet)
    records = read_release(Path(folder))
    for config in configs:
        loaded = datasets.load_dataset(str(folder), config, split="train", cache_dir=str(cache))
        assert loaded.to_list() == records[config] and records[config], config
    return configs
