"""Table tests for flock_pipeline.core.scoring: pairwise wins with the earlier-commitment advantage, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flock_pipeline.core.scoring import (
    Contender,
    ScoringConfig,
    beats,
    blend_weights,
    compute_win_rates,
    score_epoch,
    softmax_weights,
    validate_weights,
)

C = Contender


# ---------------------------------------------------------------------------------------------------------------
# beats


@pytest.mark.parametrize(
    "a, b, epsilon, a_wins, b_wins",
    [
        pytest.param(C(1, 1.0, 10), C(2, 1.1, 10), 0.04, True, False, id="same-block-lower-loss-wins"),
        pytest.param(C(1, 1.0, 10), C(2, 1.0, 10), 0.04, False, False, id="same-block-tie-nobody-wins"),
        pytest.param(C(1, 1.0, 10), C(2, 0.98, 20), 0.04, True, False, id="later-better-within-epsilon-loses"),
        pytest.param(C(1, 1.0, 10), C(2, 0.95, 20), 0.04, False, True, id="later-better-beyond-epsilon-wins"),
        pytest.param(C(1, 1.0, 10), C(2, 0.98, 20), 0.0, False, True, id="no-epsilon-plain-comparison"),
        pytest.param(C(1, 2.0, 10), C(2, 1.0, 20), 0.5, False, False, id="exact-tie-after-advantage"),
        pytest.param(C(1, 1.03, 10), C(2, 1.0, 20), 0.04, True, False, id="earlier-slightly-worse-still-wins"),
        pytest.param(C(1, 1.0, 20), C(2, 0.98, 10), 0.04, False, True, id="advantage-goes-to-b-when-earlier"),
        pytest.param(C(1, 0.5, 10), C(2, 1.0, 20), 0.04, True, False, id="earlier-and-better"),
    ],
)
def test_beats(a, b, epsilon, a_wins, b_wins):
    assert beats(a, b, epsilon) is a_wins
    assert beats(b, a, epsilon) is b_wins


# ---------------------------------------------------------------------------------------------------------------
# compute_win_rates


@pytest.mark.parametrize(
    "contenders, epsilon, expected",
    [
        pytest.param([C(5, 3.0, 10)], 0.04, {5: 1.0}, id="one-miner-wins-by-default"),
        pytest.param([C(5, 100.0, 10)], 0.04, {5: 1.0}, id="one-miner-any-loss"),
        pytest.param([C(1, 1.0, 10), C(2, 0.9, 10)], 0.04, {1: 0.0, 2: 1.0}, id="two-same-block"),
        pytest.param([C(1, 1.0, 10), C(2, 0.98, 20)], 0.04, {1: 1.0, 2: 0.0}, id="two-later-within-epsilon"),
        pytest.param([C(1, 1.0, 10), C(2, 0.90, 20)], 0.04, {1: 0.0, 2: 1.0}, id="two-later-beyond-epsilon"),
        pytest.param([C(1, 1.0, 10), C(2, 1.0, 10)], 0.04, {1: 0.0, 2: 0.0}, id="two-exact-tie"),
        pytest.param([C(1, 1.0, 10), C(2, 0.98, 20), C(3, 0.90, 30)], 0.04, {1: 0.5, 2: 0.0, 3: 1.0},
                     id="three-mixed"),
        pytest.param([C(3, 0.90, 30), C(1, 1.0, 10), C(2, 0.98, 20)], 0.04, {1: 0.5, 2: 0.0, 3: 1.0},
                     id="three-mixed-order-independent"),
        pytest.param([C(1, 1.0, 10), C(2, 2.0, 10), C(3, 3.0, 10)], 0.04, {1: 1.0, 2: 0.5, 3: 0.0},
                     id="three-same-block"),
        pytest.param([C(1, 1.0, 10), C(2, 0.99, 11), C(3, 0.98, 12), C(4, 0.97, 13)], 0.04,
                     {1: 1.0, 2: 2 / 3, 3: 1 / 3, 4: 0.0}, id="four-chain-of-small-improvements"),
        pytest.param([], 0.04, {}, id="empty"),
    ],
)
def test_compute_win_rates(contenders, epsilon, expected):
    rates = compute_win_rates(contenders, epsilon)
    assert rates.keys() == expected.keys()
    for uid, rate in expected.items():
        assert rates[uid] == pytest.approx(rate)
        assert 0.0 <= rates[uid] <= 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("n", [1, 3])
def test_non_finite_loss_raises(bad, n):
    contenders = [C(uid, 1.0, 10) for uid in range(n - 1)] + [C(42, bad, 10)]
    with pytest.raises(ValueError, match="uid 42 has a non-finite loss"):
        compute_win_rates(contenders, 0.04)


# ---------------------------------------------------------------------------------------------------------------
# softmax_weights


@pytest.mark.parametrize(
    "rates, temperature",
    [
        ({1: 1.0, 2: 0.5, 3: 0.0}, 0.08),
        ({1: 0.2, 2: 0.9, 3: 0.9, 4: 0.0}, 0.5),
        ({7: 0.3}, 0.08),
        ({i: i / 10 for i in range(11)}, 0.01),  # tiny temperature: no overflow thanks to the max shift
        ({1: 0.0, 2: 0.0}, 1.0),
    ],
)
def test_softmax_weights_sum_and_order(rates, temperature):
    weights = softmax_weights(rates, temperature)
    assert weights.keys() == rates.keys()
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(w > 0 or rates[u] < max(rates.values()) for u, w in weights.items())
    for a in rates:
        for b in rates:
            if rates[a] > rates[b]:
                assert weights[a] > weights[b]
            elif rates[a] == rates[b]:
                assert weights[a] == pytest.approx(weights[b])


@pytest.mark.parametrize(
    "rates, temperature, expected",
    [
        ({1: 1.0, 2: 0.0}, 0.5, {1: 1 / (1 + math.exp(-2)), 2: math.exp(-2) / (1 + math.exp(-2))}),
        ({1: 1.0, 2: 0.0}, 1.0, {1: 1 / (1 + math.exp(-1)), 2: math.exp(-1) / (1 + math.exp(-1))}),
        ({1: 0.5, 2: 0.5, 3: 0.5}, 0.08, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}),
        ({1: 0.3}, 0.08, {1: 1.0}),
    ],
)
def test_softmax_weights_values(rates, temperature, expected):
    weights = softmax_weights(rates, temperature)
    assert weights == pytest.approx(expected, rel=1e-12)


def test_softmax_lower_temperature_is_more_peaked():
    rates = {1: 1.0, 2: 0.5}
    assert softmax_weights(rates, 0.05)[1] > softmax_weights(rates, 0.5)[1] > 0.5


def test_softmax_empty():
    assert softmax_weights({}, 0.08) == {}


# ---------------------------------------------------------------------------------------------------------------
# blend_weights


@pytest.mark.parametrize(
    "new, previous, alpha, eligible, expected",
    [
        pytest.param({1: 0.7, 2: 0.3}, {}, 0.8, {1, 2}, {1: 0.7, 2: 0.3}, id="first-epoch-uses-new"),
        pytest.param({1: 0.2, 2: 0.8}, {1: 1.0}, 0.8, {1, 2}, {1: 0.84, 2: 0.16}, id="blend-with-previous"),
        pytest.param({1: 0.2, 2: 0.8}, {1: 0.5, 2: 0.5}, 0.0, {1, 2}, {1: 0.2, 2: 0.8}, id="alpha-zero"),
        pytest.param({1: 0.5, 2: 0.5}, {1: 0.5, 3: 0.5}, 0.8, {1, 2}, {1: 5 / 6, 2: 1 / 6},
                     id="ineligible-previous-uid-zeroed"),
        pytest.param({1: 0.6, 2: 0.4}, {3: 1.0}, 0.8, {1, 2}, {1: 0.6, 2: 0.4},
                     id="only-ineligible-previous-is-first-epoch"),
        pytest.param({1: 0.6, 2: 0.4}, {1: 0.0, 2: 0.0}, 0.8, {1, 2}, {1: 0.6, 2: 0.4},
                     id="zero-previous-is-first-epoch"),
        pytest.param({1: 0.5, 2: 0.3, 9: 0.2}, {}, 0.8, {1, 2}, {1: 0.625, 2: 0.375},
                     id="new-weight-of-ineligible-dropped-and-renormalised"),
        pytest.param({1: 1.0}, {}, 0.8, {1, 2}, {1: 1.0, 2: 0.0}, id="eligible-missing-from-new-gets-zero"),
        pytest.param({}, {}, 0.8, {1, 2}, {1: 0.0, 2: 0.0}, id="nothing-to-weigh"),
        pytest.param({1: 1.0}, {1: 1.0}, 0.8, set(), {}, id="no-eligible"),
    ],
)
def test_blend_weights(new, previous, alpha, eligible, expected):
    blended = blend_weights(new, previous, alpha, eligible)
    assert blended.keys() == expected.keys()
    assert blended == pytest.approx(expected, abs=1e-12)
    assert set(blended) <= eligible
    if any(expected.values()):
        assert math.fsum(blended.values()) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# score_epoch


def test_score_epoch_first_epoch():
    contenders = [C(1, 1.0, 10), C(2, 0.98, 20), C(3, 0.90, 30)]
    rates, weights = score_epoch(contenders, {}, ScoringConfig(epsilon=0.04, temperature=0.08, alpha=0.8))
    assert rates == {1: 0.5, 2: 0.0, 3: 1.0}
    # only improvement is paid: uid 2 won no comparison, so the softmax shares the weight over uids 1 and 3
    assert weights == pytest.approx({**softmax_weights({1: 0.5, 3: 1.0}, 0.08), 2: 0.0})
    assert max(weights, key=weights.get) == 3
    validate_weights(weights, eligible={1, 2, 3})
    # the reference's rule (require_a_win off): every improving miner gets the softmax's share, uid 2 too
    _, everyone = score_epoch(contenders, {}, ScoringConfig(require_a_win=False))
    assert everyone == pytest.approx(softmax_weights(rates, 0.08)) and everyone[2] > 0


def test_a_miner_that_wins_nothing_is_paid_nothing_even_with_earlier_weight():
    contenders = [C(1, 1.0, 10), C(2, 0.5, 20)]  # uid 2 beats uid 1 (0.5 < 0.96)
    rates, weights = score_epoch(contenders, {1: 0.4, 2: 0.6}, ScoringConfig(alpha=0.5))
    assert rates == {1: 0.0, 2: 1.0} and weights == {1: 0.0, 2: 1.0}
    assert score_epoch([C(1, 1.0, 10)], {}, ScoringConfig())[1] == {1: 1.0}  # a lone miner wins by default
    # every comparison a tie (same loss, same block): nobody won one, so all share alike and weight is still sent
    tied = score_epoch([C(1, 1.0, 10), C(2, 1.0, 10)], {}, ScoringConfig())
    assert tied == ({1: 0.0, 2: 0.0}, {1: 0.5, 2: 0.5})


def test_score_epoch_blends_and_drops_departed_miner():
    contenders = [C(1, 1.0, 10), C(2, 0.5, 20)]
    rates, weights = score_epoch(contenders, {1: 0.4, 7: 0.6}, ScoringConfig(alpha=0.5, temperature=1.0,
                                                                              require_a_win=False))
    fresh = softmax_weights(rates, 1.0)
    raw = {1: 0.5 * 0.4 + 0.5 * fresh[1], 2: 0.5 * fresh[2]}
    assert weights == pytest.approx({u: w / sum(raw.values()) for u, w in raw.items()})
    assert 7 not in weights


def test_score_epoch_no_contenders():
    assert score_epoch([], {1: 1.0}) == ({}, {})


# ---------------------------------------------------------------------------------------------------------------
# validate_weights


@pytest.mark.parametrize(
    "weights, eligible, reason_part",
    [
        pytest.param({1: math.nan, 2: 1.0}, None, "invalid weight nan", id="nan"),
        pytest.param({1: math.inf}, None, "invalid weight inf", id="inf"),
        pytest.param({1: 1.2, 2: -0.2}, None, "invalid weight -0.2", id="negative"),
        pytest.param({1: 0.5, 2: 0.4}, None, "not 1", id="sums-below-1"),
        pytest.param({1: 0.7, 2: 0.4}, None, "not 1", id="sums-above-1"),
        pytest.param({1: 0.0, 2: 0.0}, None, "not 1", id="all-zero"),
        pytest.param({1: 0.5, 2: 0.5}, {1}, "uid 2 is not eligible", id="ineligible-uid"),
        pytest.param({-1: 1.0}, None, "invalid uid -1", id="negative-uid"),
        pytest.param({"1": 1.0}, None, "invalid uid '1'", id="string-uid"),
        pytest.param({1.0: 1.0}, None, "invalid uid 1.0", id="float-uid"),
    ],
)
def test_validate_weights_rejects(weights, eligible, reason_part):
    with pytest.raises(ValueError) as info:
        validate_weights(weights, eligible)
    assert reason_part in str(info.value)


@pytest.mark.parametrize(
    "weights, eligible",
    [
        pytest.param({1: 0.5, 2: 0.5}, None, id="plain"),
        pytest.param({1: 0.5, 2: 0.5}, {1, 2, 3}, id="eligible-superset"),
        pytest.param({1: 1.0, 2: 0.0}, {1}, id="ineligible-with-zero-weight"),
        pytest.param({1: 0.5, 2: 0.5 + 5e-7}, None, id="within-tolerance"),
        pytest.param({}, None, id="empty"),
        pytest.param({i: 0.1 for i in range(10)}, None, id="float-sum"),
    ],
)
def test_validate_weights_accepts(weights, eligible):
    validate_weights(weights, eligible)


# ---------------------------------------------------------------------------------------------------------------
# ScoringConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.01}, "alpha"),
    ],
)
def test_scoring_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ScoringConfig(**kwargs)


def test_scoring_config_defaults():
    config = ScoringConfig()
    assert (config.epsilon, config.temperature, config.alpha) == (0.04, 0.08, 0.8)


# ---------------------------------------------------------------------------------------------------------------
# hardened and alternative modes

from flock_pipeline.core.scoring import (  # noqa: E402
    ScoringConfig as _Config,
    compute_win_rates as _rates,
    curve_score,
    epsilon_at,
    score_epoch as _score,
    top_k_winner,
)
from flock_pipeline.core.scoring import Contender as _C  # noqa: E402


@pytest.mark.parametrize("loss, expected", [(2.0, 1.0), (2.40, 1.0), (2.50, 0.05 + 0.95 * 0.25), (2.60, 0.05),
                                            (2.70, 0.05 * 0.25), (2.80, 0.0), (3.5, 0.0)])
def test_curve_score(loss, expected):
    assert curve_score(loss, _Config(mode="curve")) == pytest.approx(expected)


@pytest.mark.parametrize("age, decay, expected", [(0, 100, 0.04), (50, 100, 0.02), (100, 100, 0.0), (500, 100, 0.0),
                                                  (500, 0, 0.04)])
def test_epsilon_decays_with_the_age_of_the_earlier_commitment(age, decay, expected):
    assert epsilon_at(_Config(epsilon_decay_blocks=decay), 1000, 1000 + age) == pytest.approx(expected)


def test_decayed_epsilon_lets_a_better_newcomer_win():
    old, new = _C(1, 2.00, block=0), _C(2, 1.95, block=900)  # 2.5 % better, inside the 4 % head start
    assert _rates([old, new], 0.04) == {1: 1.0, 2: 0.0}
    assert _rates([old, new], _Config(epsilon_decay_blocks=1000), now_block=1000) == {1: 0.0, 2: 1.0}


def test_top_k_winner_is_the_earliest_of_the_best():
    cs = [_C(1, 2.0, 30), _C(2, 2.1, 10), _C(3, 2.05, 20), _C(4, 3.0, 5)]
    assert top_k_winner(cs, 0.05) == 1  # top 1 of 4
    assert top_k_winner(cs, 0.75) == 2  # top 3: uid 2 committed first
    assert top_k_winner([], 0.5) is None


def test_bootstrap_needs_a_significant_advantage():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.5, 2.5, 300)
    a = _C(1, float(base.mean()), 10, tuple(base))
    noisy = base + rng.normal(0, 0.2, 300)  # same quality, only noise
    b = _C(2, float(noisy.mean()), 10, tuple(noisy))
    better = base - 0.1
    c = _C(3, float(better.mean()), 10, tuple(better))
    config = _Config(epsilon=0.0, significance="bootstrap")
    rates = _rates([a, b, c], config)
    assert rates[3] == 1.0  # beats both, significantly
    assert rates[1] == 0.0 and rates[2] == 0.0  # neither of the two equal ones wins their pair
    assert _rates([a, b, c], config) == rates  # fixed seed: reproducible


def _pairwise_bootstrap_reference(contenders, config, now_block):
    """The paired bootstrap written pair by pair, indexing each pair's resamples (the plain formula)."""
    rng = np.random.Generator(np.random.PCG64(config.bootstrap_seed))
    resample = rng.integers(0, len(contenders[0].per_row), size=(config.bootstrap_samples,
                                                                   len(contenders[0].per_row)))
    wins = {c.uid: 0 for c in contenders}
    for i, a in enumerate(contenders):
        for b in contenders[i + 1:]:
            eps = epsilon_at(config, min(a.block, b.block), now_block)
            la = np.asarray(a.per_row) * ((1 - eps) if a.block < b.block else 1.0)
            lb = np.asarray(b.per_row) * ((1 - eps) if b.block < a.block else 1.0)
            diff = lb - la
            ok = np.isfinite(diff)
            d, w = np.where(ok, diff, 0.0)[resample], ok[resample]
            means = d.sum(axis=1) / np.maximum(w.sum(axis=1), 1)
            low, high = np.quantile(means, [1 - config.bootstrap_confidence, config.bootstrap_confidence])
            if low > 0:
                wins[a.uid] += 1
            elif high < 0:
                wins[b.uid] += 1
    return {uid: w / (len(contenders) - 1) for uid, w in wins.items()}


def test_vectorised_bootstrap_equals_the_pair_by_pair_formula():
    """30 miners of close quality with NaN rows, epsilon decay and ties in commit blocks: the matrix form gives
    every pair the same verdict as indexing each pair's resamples."""
    rng = np.random.default_rng(3)
    base = rng.uniform(1.5, 2.5, 120)
    contenders = []
    for uid in range(30):
        per_row = base + rng.normal(-0.004 * uid, 0.05, 120)
        per_row[rng.integers(0, 120, 3)] = np.nan
        contenders.append(_C(uid, float(np.nanmean(per_row)), int(rng.integers(0, 5)) * 100, tuple(per_row)))
    config = _Config(epsilon=0.01, epsilon_decay_blocks=1000, significance="bootstrap", bootstrap_samples=400)
    rates = _rates(contenders, config, now_block=700)
    assert rates == _pairwise_bootstrap_reference(contenders, config, 700)
    assert 0 < sum(1 for r in rates.values() if 0 < r < 1)  # the comparison is not trivially all-or-nothing


def test_bootstrap_requires_per_row_losses():
    with pytest.raises(ValueError, match="per-row"):
        _rates([_C(1, 2.0, 1), _C(2, 2.1, 2)], _Config(significance="bootstrap"))


def test_no_improvement_over_base_earns_nothing():
    scores, weights = _score([_C(1, 2.0, 1), _C(2, 2.6, 2), _C(3, 2.2, 3)], {}, _Config(), base_loss=2.5)
    assert weights[2] == 0.0 and scores[2] == 0.0
    assert scores[3] == 0.0 and weights == {1: 1.0, 2: 0.0, 3: 0.0}  # uid 3 lost its only comparison
    _, reference = _score([_C(1, 2.0, 1), _C(2, 2.6, 2), _C(3, 2.2, 3)], {}, _Config(require_a_win=False),
                          base_loss=2.5)
    assert reference[1] > reference[3] > 0 and reference[2] == 0 and sum(reference.values()) == pytest.approx(1.0)
    _, none = _score([_C(1, 2.6, 1)], {}, _Config(), base_loss=2.5)
    assert none == {1: 0.0}


@pytest.mark.parametrize("mode", ["curve", "top_k"])
def test_modes_give_valid_weights(mode):
    cs = [_C(1, 2.45, 1), _C(2, 2.55, 2), _C(3, 2.9, 3)]
    scores, weights = _score(cs, {}, _Config(mode=mode, top_fraction=0.5))
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights[3] == 0.0
    if mode == "top_k":
        assert weights == {1: 1.0, 2: 0.0, 3: 0.0}
    else:
        assert weights[1] > weights[2] > 0


@pytest.mark.parametrize("kwargs", [dict(mode="x"), dict(significance="t"), dict(bootstrap_confidence=0.3),
                                    dict(curve_mid=2.9), dict(top_fraction=0), dict(epsilon_decay_blocks=-1)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        _Config(**kwargs)
