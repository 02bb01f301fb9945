"""Scoring: eval losses -> win rates -> weights (DESIGN §2, the reference subnet's rule).

For each pair of eligible miners, the one whose commitment is in an earlier block has its loss multiplied by
(1 - epsilon) before the comparison, so a later miner must be clearly better to beat an earlier one (copying and
re-committing does not pay). win_rate = wins / (n - 1); weights = softmax(win_rate / temperature); the result is
blended with the previous epoch's weights, w = alpha * w_old + (1 - alpha) * w_new. Ineligible miners get exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringConfig:
    epsilon: float = 0.04  # relative loss advantage of the earlier commitment
    temperature: float = 0.08  # softmax temperature over win rates
    alpha: float = 0.8  # weight of the previous epoch's weights in the blend

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")


@dataclass(frozen=True)
class Contender:
    uid: int
    loss: float
    block: int


def beats(a: Contender, b: Contender, epsilon: float) -> bool:
    """Does `a` win against `b`? The earlier commitment gets the (1 - epsilon) advantage."""
    loss_a = a.loss * (1 - epsilon) if a.block < b.block else a.loss
    loss_b = b.loss * (1 - epsilon) if b.block < a.block else b.loss
    return loss_a < loss_b


def compute_win_rates(contenders: list[Contender], epsilon: float) -> dict[int, float]:
    """uid -> win rate in [0, 1]. A lone contender wins by default (1.0)."""
    for c in contenders:
        if not math.isfinite(c.loss):
            raise ValueError(f"uid {c.uid} has a non-finite loss {c.loss}; failed miners are not contenders")
    n = len(contenders)
    if n == 1:
        return {contenders[0].uid: 1.0}
    rates = {}
    for a in contenders:
        wins = sum(1 for b in contenders if b.uid != a.uid and beats(a, b, epsilon))
        rates[a.uid] = wins / (n - 1)
    return rates


def softmax_weights(win_rates: Mapping[int, float], temperature: float) -> dict[int, float]:
    if not win_rates:
        return {}
    top = max(win_rates.values())
    exps = {uid: math.exp((r - top) / temperature) for uid, r in win_rates.items()}
    total = sum(exps.values())
    return {uid: e / total for uid, e in exps.items()}


def blend_weights(new: Mapping[int, float], previous: Mapping[int, float], alpha: float,
                  eligible: set[int]) -> dict[int, float]:
    """alpha * previous + (1 - alpha) * new over eligible uids, then zero elsewhere and renormalised.

    With no previous weights (first epoch) the new weights are used as they are.
    """
    prev = {uid: w for uid, w in previous.items() if uid in eligible and w > 0}
    if not prev:
        blended = {uid: new.get(uid, 0.0) for uid in eligible}
    else:
        blended = {uid: alpha * prev.get(uid, 0.0) + (1 - alpha) * new.get(uid, 0.0) for uid in eligible}
    total = sum(blended.values())
    if total <= 0:
        return {uid: 0.0 for uid in eligible}
    return {uid: w / total for uid, w in blended.items()}


def score_epoch(contenders: list[Contender], previous: Mapping[int, float],
                config: ScoringConfig = ScoringConfig()) -> tuple[dict[int, float], dict[int, float]]:
    """(win rates, final weights) for the eligible contenders of an epoch."""
    rates = compute_win_rates(contenders, config.epsilon) if contenders else {}
    fresh = softmax_weights(rates, config.temperature)
    weights = blend_weights(fresh, previous, config.alpha, {c.uid for c in contenders})
    return rates, weights


def to_u16(weights: Mapping[int, float]) -> tuple[list[int], list[int]]:
    """Validated float weights -> (uids, u16 weights) as the chain stores them (max weight -> 65535)."""
    validate_weights(weights)
    uids = sorted(uid for uid, w in weights.items() if w > 0)
    if not uids:
        return [], []
    top = max(weights[u] for u in uids)
    return uids, [max(1, round(weights[u] / top * 65535)) for u in uids]


def validate_weights(weights: Mapping[int, float], eligible: set[int] | None = None) -> None:
    """Raise ValueError unless weights are finite, non-negative, sum to 1 and go only to eligible uids."""
    for uid, w in weights.items():
        if not isinstance(uid, int) or uid < 0:
            raise ValueError(f"invalid uid {uid!r}")
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"uid {uid} has invalid weight {w}")
        if eligible is not None and w > 0 and uid not in eligible:
            raise ValueError(f"uid {uid} is not eligible but has weight {w}")
    total = sum(weights.values())
    if weights and abs(total - 1.0) > 1e-6:
        raise ValueError(f"weights sum to {total}, not 1")
