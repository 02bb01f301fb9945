"""The commitment acceptance rules and the miner status machine (core/status.py), one table row per rule."""

import pytest

from flock_pipeline.core.competitions import Round
from flock_pipeline.core.status import (Outcome, Verdict, acceptance, is_late, late_reason, miner_status,
                                        round_gate)

EPOCH_ROUND = Round("epoch", "scoring", 1000)
VALIDATION = Round("20260202", "validation", 89)
SUBMISSION = Round("20260202", "submission", 89)


@pytest.mark.parametrize("rnd, reused, expected", [
    pytest.param(EPOCH_ROUND, None, None, id="a per-epoch round judges now"),
    pytest.param(VALIDATION, None, None, id="a daily round after its window judges"),
    pytest.param(SUBMISSION, None, ("pending", "round 20260202's submission window is open (it closes after block "
                                               "89)"), id="the window is open: pending"),
    pytest.param(VALIDATION, "20260201", ("pending", "round 20260202 reuses round 20260201 (the pool did not change)"),
                 id="a reused round evaluates nothing"),
    pytest.param(SUBMISSION, "20260201", ("pending", "submission window is open"), id="the open window comes first"),
])
def test_round_gate(rnd, reused, expected):
    gate = round_gate(rnd, reused)
    if expected is None:
        assert gate is None
    else:
        assert gate.status == expected[0] and expected[1] in gate.reason


@pytest.mark.parametrize("block, late", [(88, False), (89, False), (90, True)])
def test_a_commitment_after_the_windows_last_block_is_late(block, late):
    assert is_late(block, VALIDATION) is late
    assert late_reason(90, VALIDATION) == ("late: committed at block 90, after round 20260202's submission window "
                                           "closed (block 89)")


@pytest.mark.parametrize("commit, registered, epoch_block, min_age, expected", [
    pytest.param(500, 100, 1000, 0, Verdict("ok"), id="registered before committing"),
    pytest.param(500, None, 1000, 0, Verdict("rejected", "hotkey is not registered on the subnet"),
                 id="not registered"),
    pytest.param(500, 600, 1000, 0, Verdict("rejected", "commitment predates the hotkey's registration"),
                 id="committed before a re-registration"),
    pytest.param(600, 600, 1000, 0, Verdict("ok"), id="committed in the registration block"),
    pytest.param(995, 100, 1000, 10, Verdict("rejected", "commitment is 5 blocks old at the epoch's block, the "
                                                         "minimum age is 10"), id="too young"),
    pytest.param(990, 100, 1000, 10, Verdict("ok"), id="exactly the minimum age"),
    pytest.param(995, None, 1000, 10, Verdict("rejected", "hotkey is not registered on the subnet"),
                 id="registration is checked before age"),
])
def test_acceptance(commit, registered, epoch_block, min_age, expected):
    assert acceptance(commit, registered, epoch_block, min_age) == expected


OK, ELIGIBLE = Outcome("ok"), Outcome("eligible")


@pytest.mark.parametrize("commitment, shard, result, expected", [
    pytest.param(Outcome("rejected", "invalid commitment: x"), None, None, Verdict("rejected", "invalid commitment: x"),
                 id="a rejected commitment"),
    pytest.param(Outcome("pending", "window open"), ELIGIBLE, OK, Verdict("pending", "window open"),
                 id="pending whatever was recorded"),
    pytest.param(OK, None, None, Verdict("not_deduplicated", "deduplicated_shards has not run for this miner"),
                 id="no shard yet"),
    pytest.param(OK, Outcome("ineligible", "duplicate: 100/100 rows"), None,
                 Verdict("ineligible", "duplicate: 100/100 rows"), id="an ineligible shard"),
    pytest.param(OK, ELIGIBLE, None, Verdict("not_evaluated", "no evaluation result for this shard and recipe"),
                 id="no result yet"),
    pytest.param(OK, ELIGIBLE, Outcome("failed", "ValueError: no rows"),
                 Verdict("failed", "evaluation failed: ValueError: no rows"), id="a failed evaluation"),
    pytest.param(OK, ELIGIBLE, OK, Verdict("scored"), id="scored: the competition decides the rest"),
])
def test_miner_status(commitment, shard, result, expected):
    assert miner_status(commitment, shard, result) == expected
