"""Weights reach the hotkeys that earned them: a uid whose hotkey changed since its commitment was read gets nothing
in our own games, with the reason recorded, when the epoch is scored and again when the weights are sent (the
selection game decides hand-overs by its own rules, tested in defs/test_selection_network.py)."""

from __future__ import annotations

import json

import pytest

from flock_pipeline.core.status import holder_changed
from flock_pipeline.resources import LocalChainResource, StoreResource, ValidatorSettingsResource
from flock_pipeline.store import ScoreRecord
from flock_pipeline.validator.weights import submit_epoch_weights


def hand_over(chain_file, hotkey: str, to: str) -> int:
    """Give `hotkey`'s uid to another hotkey (what deregistration and a new registration do on the chain)."""
    state = json.loads(chain_file.read_text())
    neuron = next(n for n in state["neurons"] if n["hotkey"] == hotkey)
    neuron.update(hotkey=to, coldkey=f"cold-{to}")
    chain_file.write_text(json.dumps(state))
    return int(neuron["uid"])


@pytest.mark.parametrize("now, reason", [
    pytest.param("hk-a", None, id="still held"),
    pytest.param("hk-newcomer", "uid 1 is held by another hotkey (hk-newcomer) since hk-a committed", id="handed over"),
    pytest.param(None, "uid 1 is no longer registered since hk-a committed", id="deregistered"),
])
def test_holder_changed(now, reason):
    verdict = holder_changed(1, "hk-a", now)
    assert (verdict is None) if reason is None else (verdict.status == "uid_changed" and reason in verdict.reason)


@pytest.fixture
def network(tmp_path):
    chain = LocalChainResource(path=str(tmp_path / "chain.json"))
    chain.register("validator", stake=1000.0, validator_permit=True)
    uids = {hk: chain.register(hk).uid for hk in ("hk-a", "hk-b")}
    store = StoreResource(url=f"duckdb://{tmp_path / 'store.duckdb'}")
    epoch = chain.epoch_of(chain.current_block())
    store.record_scores(epoch, [ScoreRecord(epoch=epoch, hotkey=hk, uid=uid, status="scored", reason=None,
                                            eval_loss=1.0, score=w, weight=w, competition="curation",
                                            competition_weight=w)
                                for (hk, uid), w in zip(uids.items(), (0.75, 0.25))])
    return chain, store, epoch, uids, tmp_path / "chain.json"


def test_a_uid_handed_over_after_scoring_is_not_sent_weight(network):
    chain, store, epoch, uids, chain_file = network
    hand_over(chain_file, "hk-a", "hk-newcomer")
    outcome = submit_epoch_weights(epoch, chain, ValidatorSettingsResource(), store)
    sent = dict(zip(outcome.submission.uids, outcome.submission.weights))
    assert outcome.sent_now and sent.get(uids["hk-a"], 0) == 0 and sent[uids["hk-b"]] == 65535
    assert f"not sent to uid {uids['hk-a']} is held by another hotkey (hk-newcomer)" in outcome.submission.detail
    stored = chain.stored_weights("validator")
    assert stored.get(uids["hk-a"], 0) == 0 and stored[uids["hk-b"]] > 0


def test_without_a_hand_over_both_miners_are_paid(network):
    chain, store, epoch, uids, _ = network
    outcome = submit_epoch_weights(epoch, chain, ValidatorSettingsResource(), store)
    sent = dict(zip(outcome.submission.uids, outcome.submission.weights))
    assert sent[uids["hk-a"]] == 65535 and sent[uids["hk-b"]] > 0 and not outcome.submission.detail


def test_when_every_paid_uid_changed_hands_nothing_is_sent(network):
    chain, store, epoch, uids, chain_file = network
    hand_over(chain_file, "hk-a", "hk-x")
    hand_over(chain_file, "hk-b", "hk-y")
    outcome = submit_epoch_weights(epoch, chain, ValidatorSettingsResource(), store)
    assert not outcome.sent_now and outcome.submission.state == "refused"
    assert "is held by another hotkey (hk-x)" in outcome.submission.message
    assert chain.stored_weights("validator") in (None, {})
