"""The Bittensor chain resource, through the real bittensor 11.3 `Subtensor` and its `substrate=` seam."""

import logging
import time

import dagster as dg
import pytest
from bittensor_core import Keypair

from flock_pipeline.resources.bittensor_chain import BittensorChainResource, decode_commitment_fields
from flock_pipeline.errors import ConfigError
from flock_pipeline.resources.chain import ChainError, Neuron, RawCommitment
from flock_pipeline_tests.resources.fake_substrate import FakeSubstrate
from datetime import UTC

REVISION = "0123456789abcdef0123456789abcdef01234567"
VALIDATOR = Keypair.create_from_uri("//Alice")
MINER = Keypair.create_from_uri("//Bob")
OTHER_MINER = Keypair.create_from_uri("//Charlie")
OUTSIDER = Keypair.create_from_uri("//Dave")
SIGNERS = [VALIDATOR, MINER, OTHER_MINER, OUTSIDER]
WALLET_ENV = ("BT_WALLET_NAME", "BT_WALLET_HOTKEY", "BT_WALLET_PATH", "BT_WALLET_PASSWORD")


def commitment(repo: str = "ns/data") -> str:
    return f"{repo}:1:{REVISION}"


@pytest.fixture(autouse=True)
def _no_ambient_wallet(monkeypatch):
    for name in WALLET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sub() -> FakeSubstrate:
    fake = FakeSubstrate(netuid=96, tempo=20, weights_rate_limit=10)
    fake.register(VALIDATOR.ss58_address, coldkey="cold-v", stake=1000.0, validator_permit=True)
    fake.register(MINER.ss58_address, coldkey="cold-m", stake=2.5)
    fake.register(OTHER_MINER.ss58_address)
    return fake


@pytest.fixture
def make_chain():
    made = []

    def make(substrate, signers=SIGNERS, **config) -> BittensorChainResource:
        config.setdefault("backoff_s", 0.0)
        chain = BittensorChainResource.with_substrate(substrate, signers=signers, **config)
        made.append(chain)
        return chain

    yield make
    for chain in made:
        chain.close()


@pytest.fixture
def chain(sub, make_chain) -> BittensorChainResource:
    return make_chain(sub)


def submitted(sub: FakeSubstrate) -> list[str]:
    return [e["function"] for e in sub.extrinsics]


# -- reads ---------------------------------------------------------------------------------------------------


def test_metagraph_fields(chain, sub):
    assert chain.current_block() == sub.block == 3
    assert chain.metagraph() == [
        Neuron(0, VALIDATOR.ss58_address, "cold-v", 1000.0, True, 1),
        Neuron(1, MINER.ss58_address, "cold-m", 2.5, False, 2),
        Neuron(2, OTHER_MINER.ss58_address, f"cold-{OTHER_MINER.ss58_address}", 0.0, False, 3),
    ]
    sub.register(MINER.ss58_address, coldkey="cold-m")  # re-registration: same uid, new block
    assert chain.metagraph()[1].registration_block == sub.block


def test_block_time_and_tempo(chain, sub, make_chain):
    assert chain.seconds_per_block() == 12.0
    assert chain.effective_tempo() == chain.chain_tempo() == 20
    assert chain.epoch_of(45) == 2 and chain.epoch_start(3) == 60
    assert make_chain(sub, tempo=360).epoch_start(1) == 360  # a pinned tempo wins over the chain's


def test_commit_then_read_back(chain, sub):
    first = chain.set_commitment(MINER.ss58_address, commitment("ns/one"))
    assert first == sub.block and submitted(sub) == ["set_commitment"]
    assert chain.commitments() == [RawCommitment(MINER.ss58_address, first, commitment("ns/one"))]
    sub.advance(5)
    second = chain.set_commitment(MINER.ss58_address, commitment("ns/two"))
    other = chain.set_commitment(OTHER_MINER.ss58_address, commitment("ns/three"))
    assert sub.commitments[MINER.ss58_address]["data"] == commitment("ns/two")
    assert chain.commitments() == [RawCommitment(MINER.ss58_address, second, commitment("ns/two")),
                                   RawCommitment(OTHER_MINER.ss58_address, other, commitment("ns/three"))]
    # pinned to a past block: the state of that block, overwritten commitment included
    assert chain.commitments(at_block=second - 1) == [RawCommitment(MINER.ss58_address, first, commitment("ns/one"))]
    assert chain.commitments(at_block=first - 1) == []
    assert chain.commitments(at_block=sub.block + 100) == chain.commitments()


def test_commitments_at_a_pruned_block_fall_back_to_the_head(chain, sub, caplog):
    first = chain.set_commitment(MINER.ss58_address, commitment("ns/one"))
    other = chain.set_commitment(OTHER_MINER.ss58_address, commitment("ns/other"))
    sub.advance(3)
    chain.set_commitment(MINER.ss58_address, commitment("ns/two"))
    sub.prune_state_before(sub.block)
    with caplog.at_level(logging.WARNING):
        assert chain.commitments(at_block=other) == [
            RawCommitment(OTHER_MINER.ss58_address, other, commitment("ns/other"))]
    assert "not available" in caplog.text and first < other


def test_malformed_commitments_are_skipped_with_a_reason(chain, sub, caplog):
    sub.put_commitment(MINER.ss58_address, b"\xff\xfe not utf-8")
    sub.put_commitment(OTHER_MINER.ss58_address, [{"Raw4": "0xzz"}])
    sub.put_commitment(OUTSIDER.ss58_address, [{"TimelockEncrypted": {"encrypted": "0x00", "reveal_round": 9}}])
    sub.put_commitment(VALIDATOR.ss58_address, commitment())
    with caplog.at_level(logging.WARNING, logger="flock_pipeline"):
        assert chain.commitments() == [RawCommitment(VALIDATOR.ss58_address, sub.block, commitment())]
    assert "not UTF-8" in caplog.text and "not valid hex" in caplog.text and "sealed" in caplog.text


def test_decode_commitment_fields_forms():
    assert decode_commitment_fields([{"Raw3": "0x616263"}]) == "abc"
    assert decode_commitment_fields([{"Raw3": b"abc"}, {"Raw1": [100]}]) == "abcd"
    assert decode_commitment_fields(["None", {"Sha256": "0x00"}]) is None
    with pytest.raises(ValueError, match="bytes"):
        decode_commitment_fields([{"Raw5": "0x616263"}])


# -- commitments ---------------------------------------------------------------------------------------------


def test_commitment_over_128_bytes_is_refused(chain, sub):
    with pytest.raises(ChainError, match="128 bytes"):
        chain.set_commitment(MINER.ss58_address, "x" * 129)
    assert chain.set_commitment(MINER.ss58_address, "x" * 128) == sub.block
    assert submitted(sub) == ["set_commitment"]


def test_unregistered_hotkey_cannot_commit(chain, sub):
    with pytest.raises(ChainError, match="not registered"):
        chain.set_commitment(OUTSIDER.ss58_address, commitment())
    assert sub.extrinsics == [] and sub.commitments == {}


def test_commitment_refused_by_the_chain_names_the_error(chain, sub):
    sub.fail_next("set_commitment", "SpaceLimitExceeded")
    with pytest.raises(ChainError, match="SpaceLimitExceeded"):
        chain.set_commitment(MINER.ss58_address, commitment())
    assert sub.commitments == {}


def test_hotkey_must_have_a_signing_key(chain, sub, make_chain):
    with pytest.raises(ChainError, match="no signing key"):
        make_chain(sub, signers=[VALIDATOR]).set_commitment(MINER.ss58_address, commitment())


# -- weights -------------------------------------------------------------------------------------------------


def test_set_weights_is_recorded_as_u16_with_the_version_key(sub, make_chain):
    chain = make_chain(sub, version_key=7)
    receipt = chain.set_weights(VALIDATOR.ss58_address, [1, 2], [65535, 1234])
    assert receipt.success and receipt.block == sub.block and receipt.message == "included"
    assert sub.weights == [{"hotkey": VALIDATOR.ss58_address, "uid": 0, "block": receipt.block, "mechid": 0,
                            "uids": [1, 2], "weights": [65535, 1234], "version_key": 7}]
    sub.advance(10)
    assert chain.set_weights(VALIDATOR.ss58_address, [1], [65535], version_key=9).success
    assert sub.weights[-1]["version_key"] == 9


def test_rate_limited_weights_are_not_submitted(chain, sub):
    first = chain.set_weights(VALIDATOR.ss58_address, [1], [65535])
    assert first.success
    sub.advance(4)
    limited = chain.set_weights(VALIDATOR.ss58_address, [1], [65535])
    assert not limited.success and "rate limited" in limited.message
    assert limited.retry_after_block == first.block + 10 and limited.block == sub.block
    assert submitted(sub) == ["set_mechanism_weights"]
    sub.advance(limited.retry_after_block - sub.block)
    assert chain.set_weights(VALIDATOR.ss58_address, [1], [65535]).success


def test_weights_need_registration_a_permit_and_known_uids(chain, sub):
    no_permit = chain.set_weights(MINER.ss58_address, [2], [65535])
    assert not no_permit.success and "validator permit" in no_permit.message
    unregistered = chain.set_weights(OUTSIDER.ss58_address, [1], [65535])
    assert not unregistered.success and "not registered" in unregistered.message
    assert not chain.set_weights(VALIDATOR.ss58_address, [7], [1]).success
    malformed = chain.set_weights(VALIDATOR.ss58_address, [1, 2], [70000, 1])
    assert not malformed.success and "u16" in malformed.message
    assert sub.extrinsics == []


def test_weights_use_commit_reveal_when_the_subnet_has_it(chain, sub):
    sub.commit_reveal = True
    receipt = chain.set_weights(VALIDATOR.ss58_address, [1, 2], [65535, 100])
    assert receipt.success and "commit-reveal" in receipt.message
    assert submitted(sub) == ["commit_timelocked_mechanism_weights"] and sub.weights == []
    (commit,) = sub.weight_commits
    assert commit["hotkey"] == VALIDATOR.ss58_address and commit["block"] == receipt.block
    assert commit["reveal_round"] > 0 and len(commit["commit"]) > 0


def test_weights_refused_by_the_chain_are_a_receipt(chain, sub):
    sub.fail_next("set_weights", "IncorrectWeightVersionKey")
    receipt = chain.set_weights(VALIDATOR.ss58_address, [1], [65535])
    assert not receipt.success and "IncorrectWeightVersionKey" in receipt.message
    assert receipt.block == sub.block and sub.weights == []


# -- connection failures -------------------------------------------------------------------------------------


def test_a_transient_connection_error_is_retried(chain, sub, caplog):
    assert chain.current_block() == sub.block
    sub.drop_connections(2)
    with caplog.at_level(logging.WARNING, logger="flock_pipeline"):
        assert chain.set_commitment(MINER.ss58_address, commitment()) == sub.block
    assert "retry 1 of 3" in caplog.text and "retry 2 of 3" in caplog.text
    assert submitted(sub) == ["set_commitment"]


def test_retries_are_bounded(sub, make_chain):
    chain = make_chain(sub, max_retries=2)
    sub.drop_connections(1000)
    with pytest.raises(ChainError, match="after 3 attempts"):
        chain.metagraph()
    assert sub.connect_attempts == 3


def test_a_call_that_hangs_times_out_and_is_retried(sub, make_chain):
    chain = make_chain(sub, timeout_s=0.3)
    sub.stall(1, 5.0)
    start = time.monotonic()
    assert chain.current_block() == sub.block
    assert time.monotonic() - start < 3


def test_a_lost_answer_is_not_resubmitted(chain, sub):
    sub.lose_next_receipt()
    block = chain.set_commitment(MINER.ss58_address, commitment())
    assert block == sub.commitments[MINER.ss58_address]["block"] and submitted(sub) == ["set_commitment"]
    sub.lose_next_receipt()
    receipt = chain.set_weights(VALIDATOR.ss58_address, [1], [65535])
    assert receipt.success and receipt.block == sub.weights[0]["block"]
    assert submitted(sub) == ["set_commitment", "set_mechanism_weights"]


def test_fallback_endpoints_are_tried_in_order(sub):
    down = FakeSubstrate()
    down.drop_connections(1000)
    primary, fallback = "ws://primary.invalid:9944", "ws://fallback.invalid:9944"
    chain = BittensorChainResource.with_substrate_factory(lambda url: down if url == primary else sub,
                                                          network=primary, fallback_endpoints=[fallback],
                                                          signers=SIGNERS, backoff_s=0.0)
    try:
        assert chain.current_block() == sub.block
        assert down.connect_attempts == 1 and sub.connect_attempts == 1
    finally:
        chain.close()


def test_the_injection_survives_dagster_reinstantiating_the_resource(chain, sub):
    @dg.asset
    def head(context: dg.AssetExecutionContext, chain: BittensorChainResource) -> int:
        return chain.current_block()

    result = dg.materialize([head], resources={"chain": chain})
    assert result.success and result.output_for_node("head") == sub.block


# -- the wallet from the environment -------------------------------------------------------------------------


SECRET_PATH = "SECRETPATH123"
SECRET_PASSWORD = "pw-SECRETPW456"
SECRET_NAME = "coldSECRETNAME789"


def assert_no_secret(text: str) -> None:
    for secret in (SECRET_PATH, SECRET_PASSWORD, SECRET_NAME):
        assert secret not in text


def test_wallet_secrets_never_reach_errors_or_logs(sub, make_chain, monkeypatch, tmp_path, caplog):
    wallet_dir = tmp_path / SECRET_PATH
    chain = make_chain(sub, signers=(), max_retries=0)
    monkeypatch.setenv("BT_WALLET_NAME", SECRET_NAME)
    monkeypatch.setenv("BT_WALLET_HOTKEY", "hot")
    monkeypatch.setenv("BT_WALLET_PATH", str(wallet_dir))
    messages = []
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ConfigError) as missing:  # no wallet there yet: exit 2, naming where it was looked for
        chain.set_commitment(MINER.ss58_address, commitment())
    expected = wallet_dir / SECRET_NAME / "hotkeys" / "hot"
    assert missing.value.exit_code == 2 and f"no wallet hotkey file at {expected}" in missing.value.line()
    assert chain.wallet_hotkey_file() == str(expected)

    from bittensor import Wallet

    seed = bytes(range(32))
    Wallet(SECRET_NAME, "hot", str(wallet_dir)).regenerate_hotkey(
        seed=seed, use_password=True, hotkey_password=SECRET_PASSWORD, suppress=True)
    hotkey = Keypair.create_from_seed(seed).ss58_address
    sub.register(hotkey, validator_permit=True)

    with pytest.raises(ConfigError, match="BT_WALLET_PASSWORD") as locked:  # encrypted, no password given
        chain.set_commitment(hotkey, commitment())
    messages.append(str(locked.value))

    monkeypatch.setenv("BT_WALLET_PASSWORD", "wrong-" + SECRET_PASSWORD)
    with pytest.raises(ConfigError) as wrong:
        chain.set_commitment(hotkey, commitment())
    messages.append(str(wrong.value))

    monkeypatch.setenv("BT_WALLET_PASSWORD", SECRET_PASSWORD)
    assert chain.set_commitment(hotkey, commitment()) == sub.block
    assert sub.commitments[hotkey]["data"] == commitment()
    assert chain.set_weights(hotkey, [1], [65535]).success

    with pytest.raises(ChainError, match="not the configured wallet") as mismatch:
        chain.set_commitment(MINER.ss58_address, commitment())
    messages.append(str(mismatch.value))

    sub.drop_connections(1000)
    with pytest.raises(ChainError) as unreachable:
        chain.set_commitment(hotkey, commitment())
    messages.append(str(unreachable.value))

    for error in (missing, locked, wrong, mismatch, unreachable):
        assert error.value.__cause__ is None
    assert_no_secret("\n".join(messages))  # the missing file's message names its path, and only that one
    assert SECRET_PASSWORD not in missing.value.line()
    assert_no_secret("\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records))


def test_the_chain_says_whether_this_validator_already_set_weights_since_a_block(chain, sub):
    """Asked before sending an epoch's weights: a run killed after the chain took them must not send them again."""
    start = sub.block
    assert chain.weights_set_since(VALIDATOR.ss58_address, start) is None
    receipt = chain.set_weights(VALIDATOR.ss58_address, [1], [65535])
    assert chain.weights_set_since(VALIDATOR.ss58_address, start) == receipt.block
    assert chain.weights_set_since(VALIDATOR.ss58_address, receipt.block + 1) is None


def test_the_block_clock_and_the_subnet_owner_come_from_the_chain(chain, sub):
    from datetime import datetime

    sub.advance(100)
    sub.owner_hotkey = MINER.ss58_address
    clock = chain.clock()
    assert clock.block_seconds == sub.block_time_s
    assert clock.time_of(0) == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.time_of(sub.block) == datetime.fromtimestamp(
        (sub.genesis_ms + sub.block * sub.block_time_s * 1000) / 1000, tz=UTC)
    assert chain.owner_hotkey() == MINER.ss58_address


def test_network_id_names_the_network_and_subnet_without_credentials():
    """The sensors' run keys are scoped by it, and run keys show in the UI: an endpoint's user info, path and
    query (where API keys go) stay out."""
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource

    assert BittensorChainResource(network="finney", netuid=96).network_id() == "finney-96"
    assert BittensorChainResource(network="test", netuid=221).network_id() == "test-221"
    private = BittensorChainResource(network="wss://alice:hunter2@node.example:443/rpc?api_key=k3y", netuid=96)
    assert private.network_id() == "wss://node.example:443-96"
    assert "hunter2" not in private._network_label() and "k3y" not in private._network_label()
