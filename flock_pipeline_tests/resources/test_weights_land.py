"""Weights that land: every refusal the runtime would make at reveal is made before sending, and everything sent
ends "applied" with the vector the chain stores equal to the recorded one.

Real bittensor 11.3 `Subtensor` (its `SetWeights` intent, conform step and timelock encryption) over the test
substrate, which models the runtime's weight rules at inclusion and at reveal, the reveal itself and tempo changes.
"""

import pytest
from bittensor_core import Keypair

from flock_pipeline.core.weights import WeightsPlan
from flock_pipeline.defs.sensors import confirmation_requests
from flock_pipeline.resources.bittensor_chain import BittensorChainResource
from flock_pipeline.resources.chain import LocalChainResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord
from flock_pipeline.validator.weights import confirm_epoch_weights, submit_epoch_weights
from flock_pipeline_tests.resources.fake_substrate import FakeSubstrate

VALIDATOR, MINER_1, MINER_2, MINER_3, OWNER = (Keypair.create_from_uri(u) for u in
                                              ("//Alice", "//Bob", "//Charlie", "//Dave", "//Eve"))
SIGNERS = [VALIDATOR, MINER_1, MINER_2, MINER_3, OWNER]


@pytest.fixture
def sub() -> FakeSubstrate:
    fake = FakeSubstrate(netuid=96, tempo=20, weights_rate_limit=5, commit_reveal=True)
    fake.register(VALIDATOR.ss58_address, stake=1000.0, validator_permit=True)  # uid 0
    for miner in (MINER_1, MINER_2, MINER_3):  # uids 1-3
        fake.register(miner.ss58_address, stake=1.0)
    fake.register(OWNER.ss58_address)  # uid 4: the subnet owner's hotkey, no permit, no stake
    fake.owner_hotkey = OWNER.ss58_address
    return fake


@pytest.fixture
def chain(sub):
    resource = BittensorChainResource.with_substrate(sub, signers=SIGNERS, backoff_s=0.0)
    yield resource
    resource.close()


def next_epochs(sub: FakeSubstrate, n: int = 1) -> None:
    """Advance the fake chain to the first block of the n-th next epoch."""
    target = len(sub.epochs) + n
    while len(sub.epochs) < target:
        sub.advance(1)


def land(chain, sub, hotkey, weights, version_key=0) -> tuple[WeightsPlan, dict | None]:
    """Plan; send when sendable; let the chain reveal; return the plan and what the chain stores for the hotkey."""
    plan = chain.plan_weights(hotkey, weights, version_key)
    if not plan.sendable:
        return plan, None
    before = chain.stored_weights(hotkey)
    receipt = chain.submit_weights(hotkey, plan)
    assert receipt.success and receipt.committed, receipt
    assert chain.stored_weights(hotkey) == before  # a commit applies nothing until the reveal
    next_epochs(sub, sub.reveal_period)
    return plan, chain.stored_weights(hotkey)


CASES = {
    # name: (chain settings, signing hotkey, weights, configured version key, refusal (None: applied))
    "stale version key": ({"weights_version": 5}, VALIDATOR, {1: 1.0}, 3, "IncorrectWeightVersionKey"),
    "version key read from the chain": ({"weights_version": 5}, VALIDATOR, {1: 1.0}, 0, None),
    "too little stake": ({"stake_threshold": 5000.0}, VALIDATOR, {1: 1.0}, 0, "NotEnoughStakeToSetWeights"),
    "no validator permit": ({}, MINER_1, {2: 1.0}, 0, "NeuronNoValidatorPermit"),
    "too few non-zero weights": ({"min_allowed_weights": 4}, VALIDATOR, {1: 1.0}, 0, None),
    "more min weights than uids": ({"min_allowed_weights": 8}, VALIDATOR, {1: 1.0}, 0, "MinAllowedWeights is 8"),
    "max weight limit": ({"max_weight_limit": 32767}, VALIDATOR, {1: 0.98, 2: 0.01, 3: 0.01}, 0, None),
    "owner hotkey without a permit": ({}, OWNER, {1: 0.5, 2: 0.5}, 0, None),
    "owner hotkey under a stake threshold": ({"stake_threshold": 5000.0}, OWNER, {1: 1.0}, 0, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_submission_is_applied_as_recorded_or_refused_before_sending(name, sub, chain):
    settings, signer, weights, version_key, refusal = CASES[name]
    for attribute, value in settings.items():
        setattr(sub, attribute, value)
    plan, stored = land(chain, sub, signer.ss58_address, weights, version_key)
    if refusal is not None:
        assert not plan.sendable and refusal in plan.refusal
        assert sub.extrinsics == [] and sub.weight_commits == []  # nothing was sent
        return
    assert plan.sendable and stored is not None, sub.reveal_log
    assert stored == dict(zip(plan.uids, plan.values))  # the chain holds exactly the recorded vector
    assert sub.weights[-1]["version_key"] == plan.version_key == max(version_key, sub.weights_version)
    assert "TimelockedWeightsRevealed" in sub.reveal_log[-1]


def test_the_limits_change_the_vector_and_the_record_shows_it(sub, chain):
    sub.min_allowed_weights = 4
    plan, stored = land(chain, sub, VALIDATOR.ss58_address, {1: 1.0})
    assert plan.uids == (0, 1, 2, 3, 4) and plan.values == (1, 65535, 1, 1, 1)  # every uid, so the minimum holds
    assert any("MinAllowedWeights" in note for note in plan.notes)
    sub.min_allowed_weights, sub.max_weight_limit = 0, 32767
    next_epochs(sub)
    plan, stored = land(chain, sub, VALIDATOR.ss58_address, {1: 65535.0, 2: 1.0, 3: 1.0})
    assert plan.values == (65535, 32985, 32985) and stored == {1: 65535, 2: 32985, 3: 32985}
    assert any("MaxWeightsLimit" in note for note in plan.notes)


def test_without_the_checks_the_commit_is_accepted_and_silently_dropped(sub, chain):
    """What the checks prevent: the runtime takes a commit with a stale version key and drops it at reveal."""
    sub.weights_version = 5
    plan = chain.plan_weights(VALIDATOR.ss58_address, {1: 1.0}, version_key=3)
    unchecked = WeightsPlan(rules=plan.rules, version_key=3, inputs=plan.inputs, uids=plan.uids, values=plan.values)
    receipt = chain.submit_weights(VALIDATOR.ss58_address, unchecked)
    assert receipt.success and receipt.committed  # "success"...
    next_epochs(sub)
    assert chain.stored_weights(VALIDATOR.ss58_address) is None  # ...and nothing applied
    assert "IncorrectWeightVersionKey" in sub.reveal_log[-1]


def test_epochs_follow_the_chain_through_a_tempo_change(sub, chain):
    next_epochs(sub, 2)
    assert chain.epoch_of(sub.block) == 2 and chain.epoch_start(2) == 40
    plan = chain.plan_weights(VALIDATOR.ss58_address, {1: 1.0})
    assert chain.submit_weights(VALIDATOR.ss58_address, plan).committed  # committed in epoch 2
    sub.advance(5)
    sub.set_tempo(100)  # an owner's tempo increase mid-epoch: block // 100 would say epoch 0
    seen = [chain.epoch_of(sub.block)]
    while len(sub.epochs) < 5:
        sub.advance(1)
        seen.append(chain.epoch_of(sub.block))
    assert seen == sorted(seen) and set(seen) == {2, 3, 4}  # never back, none skipped
    assert chain.epoch_start(3) == 140 and chain.epoch_start(4) == 240 and chain.epoch_start(2) == 40
    assert chain.epoch_of(139) == 2 and chain.epoch_of(140) == 3
    assert chain.stored_weights(VALIDATOR.ss58_address) == {1: 65535}  # revealed at epoch 3's start, block 140
    assert sub.weights[-1]["block"] == 140


def test_the_local_chain_numbers_epochs_through_a_tempo_change(tmp_path):
    chain = LocalChainResource(path=str(tmp_path / "chain.json"), tempo=10)
    chain.advance(25)
    assert chain.epoch_of(25) == 2
    chain.configure(tempo=40)
    seen = [chain.epoch_of(chain.advance(1)) for _ in range(100)]
    assert seen == sorted(seen) and set(seen) == {2, 3, 4}  # epoch 3 starts at 20 + 40 = 60, epoch 4 at 100
    assert chain.epoch_start(3) == 60 and chain.epoch_start(4) == 100 and chain.epoch_start(2) == 20


# -- the pipeline's submissions: recorded, confirmed, never sent twice ----------------------------------------


@pytest.fixture
def store(tmp_path):
    return StoreResource(url=f"duckdb://{tmp_path / 'warehouse.duckdb'}")


def scored(store, epoch, weights, chain):
    """Scores for the uids of `weights`, each recorded for the hotkey that holds the uid on `chain` (a weight goes
    only to the hotkey that earned it: the send checks the metagraph)."""
    holders = {n.uid: n.hotkey for n in chain.metagraph()}
    store.record_scores(epoch, [ScoreRecord(epoch=epoch, hotkey=holders[uid], uid=uid, status="scored", reason=None,
                                            eval_loss=1.0, score=w, weight=w) for uid, w in weights.items()])


def settings_for(hotkey) -> ValidatorSettingsResource:
    return ValidatorSettingsResource(validator_hotkey=hotkey)


def test_a_commit_is_confirmed_applied_after_a_restart(sub, chain, store):
    next_epochs(sub)
    epoch = chain.epoch_of(sub.block)
    scored(store, epoch, {1: 0.75, 2: 0.25}, chain)
    sent = submit_epoch_weights(epoch, chain, settings_for(VALIDATOR.ss58_address), store).submission
    assert sent.state == "committed" and sent.reveal_epoch == epoch + 1 and sent.uids == (1, 2)
    chain.close()  # the validator restarts between the commit and the reveal
    restarted = BittensorChainResource.with_substrate(sub, signers=SIGNERS, backoff_s=0.0)
    assert confirm_epoch_weights(epoch, restarted, store) is None  # the reveal epoch has not started
    assert confirmation_requests(store, lambda: restarted.epoch_of(sub.block)) == []
    next_epochs(sub)
    [request] = confirmation_requests(store, lambda: restarted.epoch_of(sub.block))  # the sensor: a read-back
    assert request.partition_key == str(epoch) and request.asset_selection[0].path == ["submitted_weights"]
    outcome = submit_epoch_weights(epoch, restarted, settings_for(VALIDATOR.ss58_address), store)
    assert not outcome.sent_now and outcome.submission.state == "applied"
    assert restarted.stored_weights(VALIDATOR.ss58_address) == dict(zip(sent.uids, sent.weights))
    assert len(sub.weight_commits) == 1
    restarted.close()


def test_a_commit_that_is_never_revealed_is_reported_lost(sub, chain, store):
    next_epochs(sub)
    epoch = chain.epoch_of(sub.block)
    scored(store, epoch, {1: 1.0}, chain)
    sub.withhold_pulses = True  # the drand pulse never reaches the chain
    assert submit_epoch_weights(epoch, chain, settings_for(VALIDATOR.ss58_address), store).submission.state \
        == "committed"
    next_epochs(sub)
    assert confirm_epoch_weights(epoch, chain, store) is None  # still waiting in its reveal epoch
    next_epochs(sub)  # the commit expires
    lost = submit_epoch_weights(epoch, chain, settings_for(VALIDATOR.ss58_address), store).submission
    assert lost.state == "not applied" and "no weights" in lost.detail and "expired" in lost.detail
    assert len(sub.weight_commits) == 1  # an epoch that is over is not sent again


def test_a_reveal_dropped_by_the_runtime_is_reported_with_the_reason(sub, chain, store):
    next_epochs(sub)
    epoch = chain.epoch_of(sub.block)
    scored(store, epoch, {1: 1.0}, chain)
    submit_epoch_weights(epoch, chain, settings_for(VALIDATOR.ss58_address), store)
    sub.set_stake(VALIDATOR.ss58_address, 10.0)  # unstaked before the reveal
    sub.stake_threshold = 100.0
    next_epochs(sub)
    record = confirm_epoch_weights(epoch, chain, store)
    assert record.state == "not applied" and "NotEnoughStakeToSetWeights" in record.detail


class KilledAfterSending(Exception):
    pass


class DiesAfterSending:
    """A store whose process dies right after the chain took the weights: the answer is never recorded."""

    def __init__(self, store):
        self._warehouse = store

    def __getattr__(self, name):
        return getattr(self._warehouse, name)

    def record_weight_submission(self, record):
        if record.state not in ("in flight",):
            raise KilledAfterSending()
        self._warehouse.record_weight_submission(record)


def _local(tmp_path):
    chain = LocalChainResource(path=str(tmp_path / "chain.json"), tempo=20, weights_rate_limit=5)
    chain.register("validator", stake=1000.0, validator_permit=True)
    for hotkey in ("m1", "m2", "m3"):
        chain.register(hotkey)
    chain.advance(20 - chain.current_block())
    return chain, "validator", lambda: len(chain.weights_history("validator"))


def _substrate(tmp_path, commit_reveal):
    fake = FakeSubstrate(netuid=96, tempo=20, weights_rate_limit=5, commit_reveal=commit_reveal)
    fake.register(VALIDATOR.ss58_address, stake=1000.0, validator_permit=True)
    for miner in (MINER_1, MINER_2, MINER_3):
        fake.register(miner.ss58_address)
    next_epochs(fake)
    chain = BittensorChainResource.with_substrate(fake, signers=SIGNERS, backoff_s=0.0)
    return chain, VALIDATOR.ss58_address, lambda: len(fake.extrinsics)


@pytest.mark.parametrize("where", ["local chain", "test substrate", "test substrate, commit-reveal"])
@pytest.mark.parametrize("warehouse_after", ["kept", "deleted"])
def test_a_kill_between_the_chain_taking_weights_and_the_record_never_sends_twice(where, warehouse_after,
                                                                                   tmp_path):
    chain, hotkey, sends = (_local(tmp_path) if where == "local chain"
                            else _substrate(tmp_path, commit_reveal="commit-reveal" in where))
    first = StoreResource(url=f"duckdb://{tmp_path / 'first.duckdb'}")
    epoch = chain.epoch_of(chain.current_block())
    scored(first, epoch, {1: 0.6, 2: 0.4}, chain)
    with pytest.raises(KilledAfterSending):
        submit_epoch_weights(epoch, chain, settings_for(hotkey), DiesAfterSending(first))
    assert sends() == 1 and first.weight_submission(epoch).state == "in flight"
    store = first
    if warehouse_after == "deleted":
        store = StoreResource(url=f"duckdb://{tmp_path / 'second.duckdb'}")
        scored(store, epoch, {1: 0.6, 2: 0.4}, chain)
    again = submit_epoch_weights(epoch, chain, settings_for(hotkey), store)
    assert sends() == 1 and not again.sent_now and "already set" in again.submission.message
    assert again.submission.state == ("committed" if "commit-reveal" in where else "applied")
    if isinstance(chain, BittensorChainResource):
        chain.close()


def test_the_block_sensor_opens_each_epoch_once_through_a_tempo_change(tmp_path):
    import dagster as dg

    from flock_pipeline.defs.sensors import new_block_sensor

    from flock_pipeline.resources.hub import LocalHubResource
    from flock_pipeline.resources.settings import ValidatorSettingsResource
    from flock_pipeline.resources.store import StoreResource

    chain = LocalChainResource(path=str(tmp_path / "chain.json"), tempo=10)
    resources = {"chain": chain, "hub": LocalHubResource(root=str(tmp_path / "hub")),
                 "settings": ValidatorSettingsResource(competitions="curation"),
                 "store": StoreResource(url=f"duckdb://{tmp_path / 'w.duckdb'}")}
    opened, cursor = [], None
    with dg.instance_for_test() as instance:
        for block in range(1, 200):
            chain.advance(1)
            if block == 35:
                chain.configure(tempo=50)  # from epoch 3 (block 30) on: epoch 4 starts at block 80
            result = new_block_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                              resources=resources))
            if isinstance(result, dg.SensorResult):
                opened += [r.partition_key for r in result.run_requests]
                cursor = result.cursor
    assert opened == ["0", "1", "2", "3", "4", "5", "6"]  # blocks 1, 10, 20, 30, then 80, 130, 180
    assert [chain.epoch_start(e) for e in range(1, 7)] == [10, 20, 30, 80, 130, 180]


def test_weights_the_chain_took_but_did_not_store_are_sent_again_within_the_epoch(monkeypatch, tmp_path):
    chain, hotkey, sends = _substrate(tmp_path, commit_reveal=False)
    fake = _injected_substrate(chain)
    store = StoreResource(url=f"duckdb://{tmp_path / 'w.duckdb'}")
    epoch = chain.epoch_of(chain.current_block())
    scored(store, epoch, {1: 0.6, 2: 0.4}, chain)
    real_store = fake._store
    monkeypatch.setattr(fake, "_store", lambda *a, **k: None)  # included, then lost: nothing stored
    lost = submit_epoch_weights(epoch, chain, settings_for(hotkey), store).submission
    assert lost.state == "not applied" and lost.attempts == 1 and "no weights" in lost.detail
    monkeypatch.setattr(fake, "_store", real_store)
    fake.advance(fake.weights_rate_limit)
    [request] = confirmation_requests(store, lambda: chain.epoch_of(fake.block))
    assert request.run_key == f"weights:{epoch}:resend:1"
    again = submit_epoch_weights(epoch, chain, settings_for(hotkey), store)
    assert again.sent_now and again.submission.state == "applied" and again.submission.attempts == 2
    assert sends() == 2 and confirmation_requests(store, lambda: chain.epoch_of(fake.block)) == []
    chain.close()


def _injected_substrate(chain):
    from flock_pipeline.resources.bittensor_chain import _INJECTED

    return _INJECTED[chain.injected_handle].factory("")


def test_an_older_epochs_weights_never_overwrite_a_newer_epochs(tmp_path, store):
    chain, hotkey, sends = _local(tmp_path)
    first = chain.epoch_of(chain.current_block())
    scored(store, first, {1: 1.0}, chain)
    chain.advance(chain.epoch_start(first + 1) - chain.current_block())
    scored(store, first + 1, {2: 1.0}, chain)
    assert submit_epoch_weights(first + 1, chain, settings_for(hotkey), store).submission.state == "applied"
    chain.advance(10)  # past the rate limit: only the rule keeps epoch `first` from going out now
    late = submit_epoch_weights(first, chain, settings_for(hotkey), store).submission
    assert late.state == "refused" and f"epoch {first + 1}'s weights are already on the chain" in late.message
    assert sends() == 1 and chain.stored_weights(hotkey) == {2: 65535}
