"""explain_scores: each miner's weight in words, with the numbers score_epoch used (comparisons, the earlier
commitment's advantage, the softmax, the blend, the curve, the top-k rule)."""

import re

import pytest

from flock_pipeline.core.scoring import (Contender, ScoringConfig, compute_win_rates, explain_scores,
                                         softmax_weights, score_epoch)

MINERS = [Contender(1, 1.00, 10, (1.0, 1.1, 0.9, 1.0)), Contender(2, 0.97, 20, (0.9, 1.0, 1.0, 0.98)),
          Contender(3, 1.20, 15, (1.2, 1.3, 1.1, 1.2)), Contender(4, 2.60, 5, (2.6,) * 4)]


def _explain(config, previous=None, base=2.5):
    previous = previous or {}
    scores, weights = score_epoch(MINERS, previous, config, base_loss=base)
    return scores, weights, explain_scores(MINERS, previous, config, scores, weights, base_loss=base)


def test_win_rate_mode_spells_out_every_comparison_and_the_blend():
    config = ScoringConfig()
    previous = {1: 0.7, 2: 0.3}
    scores, weights, text = _explain(config, previous)
    # uid 2 has the lowest loss, but uid 1 committed earlier: 1.00 x 0.96 = 0.96 < 0.97
    assert "lost to uid 1 (0.9700 against its 1.0000 x 0.96 = 0.9600 for committing earlier)" in text[2]
    assert "beat uid 2 (1.0000 x 0.96 = 0.9600 for committing earlier against its 0.9700)" in text[1]
    assert text[4] == "eval loss 2.6000 is not below the base model's 2.5000: weight 0"
    assert scores == {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.0}
    fresh = softmax_weights({u: scores[u] for u in (1, 2)}, config.temperature)  # uid 3 won nothing: not paid
    for uid in (1, 2, 3):
        assert f"win rate {scores[uid]:.3f} = {round(scores[uid] * 2)} of 2 comparisons won" in text[uid]
    for uid in (1, 2):
        assert f"temperature 0.08 (over the miners that won a comparison): {fresh[uid]:.6f}" in text[uid]
        blend = f"(0.8 x {previous.get(uid, 0.0):.6f} + 0.2 x {fresh[uid]:.6f}, renormalised"
        assert blend in text[uid] and text[uid].endswith(f"weight {weights[uid]:.6f}")
    assert weights[3] == 0 and text[3].endswith("it won no comparison, so it earns nothing (only improvement is paid): "
                                             "weight 0.000000")


def test_without_earlier_weights_there_is_no_blend():
    _, weights, text = _explain(ScoringConfig())
    assert text[1].endswith(f"no earlier weights to blend with: weight {weights[1]:.6f}")


def test_bootstrap_verdicts_match_the_win_rates():
    config = ScoringConfig(significance="bootstrap", bootstrap_samples=200)
    scores, _, text = _explain(config)
    assert compute_win_rates(MINERS[:3], config) == {u: scores[u] for u in (1, 2, 3)}
    for uid in (1, 2, 3):
        won = len(re.findall(r"(?:^|; |: )beat uid", text[uid]))
        assert f"= {won} of 2 comparisons won (a win needs the lower bound" in text[uid]
        assert won / 2 == scores[uid]


@pytest.mark.parametrize("mode, phrase", [("curve", "curve score 1.0000 (1 at 2.4 or below"),
                                          ("top_k", "among the 1 lowest eval losses; the earliest commitment")])
def test_curve_and_top_k_modes(mode, phrase):
    _, weights, text = _explain(ScoringConfig(mode=mode))
    best = max(weights, key=weights.get)
    assert phrase in text[best] and text[best].endswith(f"weight {weights[best]:.6f}")
