"""Monotone outcomes through the whole epoch: later commitments never change an earlier miner's kept rows, loss or
dedup status (whether its rows are kept depends only on the eval set and the commitments before it)."""

import random

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core import synthetic
from flock_pipeline.core.schema import rows_to_jsonl, validate_bytes
from flock_pipeline.demo import DemoMiner, _commit, demo_miners, epoch_report, seed_demo_network
from flock_pipeline.resources import LocalChainResource, LocalHubResource, build_resources
from flock_pipeline_tests.homes import home_with_model

pytestmark = pytest.mark.slow  # two demo epochs (about 40 s)


def _later_miners(seed: int = 5) -> list[DemoMiner]:
    """Commitments after the demo's: disguised copies of its honest miners, a merge of both, and a new honest miner
    whose rows sit in the same templates as theirs."""
    rng = random.Random(seed)
    by_label = {m.label: m for m in demo_miners()}
    good = [r.row for r in validate_bytes(by_label["honest-good"].data).valid_rows]
    fair = [r.row for r in validate_bytes(by_label["honest-fair"].data).valid_rows]
    atlas = synthetic.make_atlas(7)
    rows = {
        "late-homoglyph": [synthetic.disguise(r, "homoglyph", rng) for r in good],
        "late-packer": synthetic.pack(good),
        "late-merger": [synthetic.paraphrase(r, rng) for r in good[:40]] + fair[:30],
        "late-signature": [synthetic.disguise(r, "signature", rng) for r in fair],
        "late-honest": synthetic.honest_rows(atlas, 60, seed=99),
    }
    return [DemoMiner(label, f"hk-{label}", f"{label}/atlas", rows_to_jsonl(r).encode()) for label, r in rows.items()]


def _epoch(home, monkeypatch, later: list[DemoMiner]) -> dict[str, dict]:
    seed_demo_network(home)
    chain = LocalChainResource(path=str(home / "chain.json"))
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    for m in later:
        chain.register(m.hotkey)
        _commit(chain, hub, m)
    chain.advance(chain.epoch_start(chain.epoch_of(chain.current_block()) + 1) - chain.current_block())
    monkeypatch.setenv("FLOCK_HOME", str(home))
    assert main(["epoch", "run"]) == 0
    store = build_resources()["store"]
    epoch = store.latest_epoch()
    shards = {s.hotkey: s for s in store.epoch_shards(epoch)}
    return {m["hotkey"]: {**m, "shard_hash": shards[m["hotkey"]].shard_hash if m["hotkey"] in shards else None}
            for m in epoch_report(epoch, store)}


def test_later_commitments_change_nothing_for_the_earlier_miners(tmp_path, tiny_model_dir, monkeypatch):

    homes = []
    for name in ("alone", "with-later"):
        home = tmp_path / name
        (home / "models").mkdir(parents=True)
        home_with_model(home, tiny_model_dir)
        homes.append(home)
    later = _later_miners()
    alone = _epoch(homes[0], monkeypatch, [])
    crowded = _epoch(homes[1], monkeypatch, later)
    for hotkey, before in alone.items():
        after = crowded[hotkey]
        assert after["rows_kept"] == before["rows_kept"] and after["shard_hash"] == before["shard_hash"], hotkey
        assert after["eval_loss"] == pytest.approx(before["eval_loss"], abs=0, nan_ok=True), hotkey
        # the dedup verdict is the same; a scored miner stays scored (its weight may be shared with newcomers)
        assert (after["status"] == "ineligible") == (before["status"] == "ineligible"), hotkey
        assert after["reason"] == before["reason"] or before["status"] != "ineligible", hotkey
    for m in later:  # and the later copiers gained nothing from the earlier miners' rows
        if m.label != "late-honest":
            assert crowded[m.hotkey]["status"] == "ineligible" and crowded[m.hotkey]["weight"] == 0.0, m.label
