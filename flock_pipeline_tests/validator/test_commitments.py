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


@pytest.mark.parametrize("rules", ["live-492c7bb", "intended"])
def test_live_selection_takes_any_competition_field_and_a_short_revision_resolved_on_the_hub(tmp_path, rules):
    """Fact 4 of the live selection validators (FLock-subnet 492c7bb): they never read the commitment's competition
    field, and accept a 7-39 hex prefix of the dataset's commit. `intended` reads both as written."""
    from datetime import UTC, datetime

    chain = LocalChainResource(path=str(tmp_path / "chain.json"))
    hub = LocalHubResource(root=str(tmp_path / "hub"), as_owner=True)
    hub.upload("flock/pool", b'{"system": "s", "conversations": [{"role": "user", "content": "q"}, '
                             b'{"role": "assistant", "content": "a"}]}\n', private=False)
    revision = hub.upload("miner/sel", b"{}\n", private=False)
    chain.configure(genesis=datetime(2026, 2, 2, 11, tzinfo=UTC).timestamp(), block_seconds=60.0, owner="owner")
    for hotkey in ("owner", "other-field", "short", "too-short", "unknown"):
        chain.register(hotkey)
    chain.advance(61 - chain.current_block())  # 12:01, inside the submission window
    chain.set_commitment("other-field", Commitment("miner/sel", "9", revision).to_compressed_str())
    chain.set_commitment("short", f"miner/sel:1:{revision[:7]}")
    chain.set_commitment("too-short", f"miner/sel:1:{revision[:6]}")
    chain.set_commitment("unknown", "miner/sel:1:" + "0" * 12)
    epoch = 6  # 13:00, the validation phase
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    settings = ValidatorSettingsResource(competitions=f'[{{"kind": "selection", "name": "selection", '
                                                      f'"eval_repo": "flock/pool", "rules": "{rules}"}}]')
    store = StoreResource(url=f"duckdb://{tmp_path / 'store.duckdb'}")
    records = {r.hotkey: r for r in snapshot_commitments(epoch, chain, hub, settings, store)}
    assert records["too-short"].status == "rejected" and "invalid commitment" in records["too-short"].reason
    if rules == "live-492c7bb":
        assert (records["other-field"].status, records["other-field"].competition) == ("ok", "selection")
        assert (records["short"].status, records["short"].revision) == ("ok", revision)  # the full commit id
        assert records["unknown"].status == "rejected" and "names no commit of miner/sel" in records["unknown"].reason
    else:
        assert records["other-field"].status == "rejected" and "competition '9'" in records["other-field"].reason
        assert records["short"].status == "rejected" and "not a full 40-hex commit id" in records["short"].reason
