"""The commitments step on its own, against a real embedded chain, hub and store (no model, no Dagster): each
commitment of the epoch is decoded, assigned to its competition and accepted or rejected with the rule's reason."""

from __future__ import annotations

import pytest

from flock_pipeline.core.commitment import Commitment
from flock_pipeline.resources import LocalChainResource, LocalHubResource, StoreResource, ValidatorSettingsResource
from flock_pipeline.validator.commitments import EpochNotReached, snapshot_commitments

REVISION = "a" * 40


@pytest.fixture
def network(tmp_path):
    chain = LocalChainResource(path=str(tmp_path / "chain.json"))
    hub = LocalHubResource(root=str(tmp_path / "hub"), as_owner=True)
    hub.upload("flock/eval-atlas", b'{"conversations": [{"role": "user", "content": "q"}, '
                                   b'{"role": "assistant", "content": "a"}]}\n', private=False)
    store = StoreResource(url=f"duckdb://{tmp_path / 'store.duckdb'}")
    for hotkey in ("good", "other-game", "garbage", "reregistered", "young"):
        chain.register(hotkey)
    chain.set_commitment("good", Commitment("miner/good", "1", REVISION).to_compressed_str())
    chain.set_commitment("other-game", Commitment("miner/other", "9", REVISION).to_compressed_str())
    chain.set_commitment("garbage", "not a commitment")
    chain.set_commitment("reregistered", Commitment("miner/rereg", "1", REVISION).to_compressed_str())
    chain.register("reregistered")  # registered again after committing: the old commitment no longer counts
    epoch = chain.epoch_of(chain.current_block()) + 1
    chain.advance(chain.epoch_start(epoch) - chain.current_block() - 3)  # a commitment takes a block: at start - 2
    chain.set_commitment("young", Commitment("miner/young", "1", REVISION).to_compressed_str())
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    return chain, hub, store, epoch


def test_each_commitment_is_accepted_or_rejected_with_its_reason(network):
    chain, hub, store, epoch = network
    settings = ValidatorSettingsResource(min_commitment_age=3)
    records = {r.hotkey: r for r in snapshot_commitments(epoch, chain, hub, settings, store)}
    assert (records["good"].status, records["good"].competition, records["good"].repo) == ("ok", "curation",
                                                                                          "miner/good")
    assert records["other-game"].status == "rejected"
    assert records["other-game"].reason == "commitment is for competition '9'; this validator runs '1' (curation)"
    assert records["garbage"].status == "rejected" and records["garbage"].reason.startswith("invalid commitment:")
    assert (records["reregistered"].status, records["reregistered"].reason) == (
        "rejected", "commitment predates the hotkey's registration")
    assert records["young"].status == "rejected"
    assert records["young"].reason == "commitment is 2 blocks old at the epoch's block, the minimum age is 3"
    assert {r.hotkey: (r.status, r.reason) for r in store.epoch_commitments(epoch)} == {
        h: (r.status, r.reason) for h, r in records.items()}  # recorded as returned


def test_without_a_minimum_age_the_young_commitment_counts(network):
    chain, hub, store, epoch = network
    records = {r.hotkey: r for r in snapshot_commitments(epoch, chain, hub, ValidatorSettingsResource(), store)}
    assert records["young"].status == "ok" and records["young"].commit_block == chain.epoch_start(epoch) - 2


def test_an_epoch_the_chain_has_not_reached_records_nothing(network):
    chain, hub, store, epoch = network
    with pytest.raises(EpochNotReached):
        snapshot_commitments(epoch + 1, chain, hub, ValidatorSettingsResource(), store)
    assert store.epoch_info(epoch + 1) is None
