import pytest

from flock_pipeline.resources.chain import ChainError, LocalChainResource


@pytest.fixture
def chain(tmp_path):
    return LocalChainResource(path=str(tmp_path / "chain.json"), tempo=10, weights_rate_limit=5)


def test_register_assigns_uids_and_advances_blocks(chain):
    a = chain.register("a")
    b = chain.register("b", validator_permit=True)
    assert (a.uid, b.uid) == (0, 1)
    assert (a.registration_block, b.registration_block) == (1, 2)
    assert chain.current_block() == 2
    again = chain.register("a")
    assert again.uid == 0 and again.registration_block == 3  # re-registration: same uid, new block
    assert [n.hotkey for n in chain.metagraph()] == ["a", "b"]


def test_commitments_history_by_block(chain):
    chain.register("a")
    first = chain.set_commitment("a", "one")
    second = chain.set_commitment("a", "two")
    assert second == first + 1
    assert [c.data for c in chain.commitments()] == ["two"]
    assert [c.data for c in chain.commitments(at_block=first)] == ["one"]
    assert chain.commitments(at_block=first - 1) == []


def test_commitment_requires_registration_and_size(chain):
    with pytest.raises(ChainError, match="not registered"):
        chain.set_commitment("ghost", "x")
    chain.register("a")
    with pytest.raises(ChainError, match="128 bytes"):
        chain.set_commitment("a", "x" * 129)


def test_weights_rate_limit_and_permits(chain):
    chain.register("miner")
    chain.register("val", validator_permit=True)
    refused = chain.set_weights("miner", [1], [65535])
    assert not refused.success and "validator permit" in refused.message
    assert not chain.set_weights("nobody", [0], [1]).success
    assert not chain.set_weights("val", [7], [1]).success  # unknown uid
    ok = chain.set_weights("val", [0], [65535])
    assert ok.success
    limited = chain.set_weights("val", [0], [65535])
    assert not limited.success and limited.retry_after_block == ok.block + 5
    chain.advance(5)
    assert chain.set_weights("val", [0], [65535]).success
    assert len(chain.weights_history("val")) == 2


def test_epochs(chain):
    assert chain.epoch_of(19) == 1 and chain.epoch_start(2) == 20
    assert chain.advance(25) == 25
