"""Scoring: eval losses -> win rates -> weights, as pure functions.

Modes (`ScoringConfig.mode`):
- "win_rate" (the reference subnet's rule, the default): for each pair of eligible miners, the one whose commitment
  is in an earlier block has its loss multiplied by (1 - epsilon) before the comparison, so a later miner must be
  clearly better to beat an earlier one (copying and re-committing does not pay). win_rate = wins / (n - 1);
  weights = softmax(win_rate / temperature). Two hardenings, both off by default so the reference rule is
  unchanged: epsilon can decay linearly with the age of the earlier commitment (`epsilon_decay_blocks`), so an old
  incumbent cannot sit on its head start forever; and with `significance="bootstrap"` a miner beats another only
  when its per-eval-row advantage is significant (a paired bootstrap over eval rows with a fixed seed), so noise
  decides nothing.
- "curve": the later subnet's benchmark curve: score 1 at or below `curve_full`, `curve_mid_score` at `curve_mid`,
  0 at or above `curve_zero`, power-`curve_power` shaped in between; weights proportional to scores.
- "top_k": the later subnet's daily winner-take-all: among the best `top_fraction` of miners by loss (at least
  one), the earliest commitment takes all.

With `require_improvement`, a miner whose loss is not below the base model's own eval loss earns nothing: data
that does not help is not rewarded however the others did. Every mode's result is blended with the previous
epoch's weights, w = alpha * w_old + (1 - alpha) * w_new. Ineligible miners get exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MODES = ("win_rate", "curve", "top_k")


@dataclass(frozen=True)
class ScoringConfig:
    epsilon: float = 0.04  # relative loss advantage of the earlier commitment
    temperature: float = 0.08  # softmax temperature over win rates
    alpha: float = 0.8  # weight of the previous epoch's weights in the blend
    mode: str = "win_rate"  # win_rate | curve | top_k
    epsilon_decay_blocks: int = 0  # epsilon falls linearly to 0 over this many blocks of the earlier one's age
    significance: str = "none"  # none | bootstrap: a win needs a significant per-row advantage
    bootstrap_samples: int = 1000
    bootstrap_confidence: float = 0.95  # one-sided: the advantage's lower bound must be above 0
    bootstrap_seed: int = 0
    require_improvement: bool = True  # a loss not below the base model's earns nothing
    require_a_win: bool = True  # win_rate mode: a miner that wins no comparison earns nothing (pay for improvement)
    curve_full: float = 2.40  # curve mode: score 1 at or below this loss
    curve_mid: float = 2.60
    curve_mid_score: float = 0.05
    curve_zero: float = 2.80  # score 0 at or above this loss
    curve_power: float = 2.0
    top_fraction: float = 0.05  # top_k mode: the best share of miners by loss among which the earliest wins

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.significance not in ("none", "bootstrap"):
            raise ValueError(f"significance must be none or bootstrap, got {self.significance!r}")
        if self.epsilon_decay_blocks < 0 or self.bootstrap_samples <= 0:
            raise ValueError("epsilon_decay_blocks must be >= 0 and bootstrap_samples positive")
        if not 0.5 <= self.bootstrap_confidence < 1.0:
            raise ValueError(f"bootstrap_confidence must be in [0.5, 1), got {self.bootstrap_confidence}")
        if not self.curve_full < self.curve_mid < self.curve_zero or not 0 <= self.curve_mid_score <= 1:
            raise ValueError("the curve needs curve_full < curve_mid < curve_zero and curve_mid_score in [0, 1]")
        if self.curve_power <= 0 or not 0 < self.top_fraction <= 1:
            raise ValueError("curve_power must be positive and top_fraction in (0, 1]")


@dataclass(frozen=True)
class Contender:
    uid: int
    loss: float
    block: int
    per_row: tuple[float, ...] = field(default=(), compare=False)  # eval loss of each eval row (bootstrap)


def epsilon_at(config: ScoringConfig, earlier_block: int, now_block: int | None) -> float:
    """The earlier commitment's advantage, decayed linearly with its age (blocks) when decay is on."""
    if config.epsilon_decay_blocks == 0 or now_block is None:
        return config.epsilon
    age = max(0, now_block - earlier_block)
    return config.epsilon * max(0.0, 1.0 - age / config.epsilon_decay_blocks)


def beats(a: Contender, b: Contender, epsilon: float) -> bool:
    """Does `a` win against `b`? The earlier commitment gets the (1 - epsilon) advantage."""
    loss_a = a.loss * (1 - epsilon) if a.block < b.block else a.loss
    loss_b = b.loss * (1 - epsilon) if b.block < a.block else b.loss
    return loss_a < loss_b


def compute_win_rates(contenders: list[Contender], epsilon: float | ScoringConfig,
                      now_block: int | None = None) -> dict[int, float]:
    """uid -> win rate in [0, 1]. A lone contender wins by default (1.0).

    `epsilon` is the reference's constant advantage, or a ScoringConfig (decay and significance as configured)."""
    config = epsilon if isinstance(epsilon, ScoringConfig) else ScoringConfig(epsilon=epsilon)
    for c in contenders:
        if not math.isfinite(c.loss):
            raise ValueError(f"uid {c.uid} has a non-finite loss {c.loss}; failed miners are not contenders")
    n = len(contenders)
    if n == 1:
        return {contenders[0].uid: 1.0}
    wins = {c.uid: 0 for c in contenders}
    for (a, b), verdict in pairwise_verdicts(contenders, config, now_block).items():
        if verdict:
            wins[a if verdict > 0 else b] += 1
    return {uid: w / (n - 1) for uid, w in wins.items()}


def pairwise_verdicts(contenders: list[Contender], config: ScoringConfig,
                      now_block: int | None = None) -> dict[tuple[int, int], int]:
    """(uid a, uid b) -> 1 when a wins, -1 when b wins, 0 when neither does, for every pair (a before b in the
    given order): the comparisons the win rates count."""
    if config.significance == "bootstrap":
        return _bootstrap_verdicts(contenders, config, now_block)
    out = {}
    for i, a in enumerate(contenders):
        for b in contenders[i + 1:]:
            eps = epsilon_at(config, min(a.block, b.block), now_block)
            out[(a.uid, b.uid)] = 1 if beats(a, b, eps) else -1 if beats(b, a, eps) else 0
    return out


def _bootstrap_indices(contenders: list[Contender], config: ScoringConfig) -> np.ndarray:
    lengths = {len(c.per_row) for c in contenders}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("bootstrap significance needs every contender's per-row eval losses, all of one length")
    rows = lengths.pop()
    rng = np.random.Generator(np.random.PCG64(config.bootstrap_seed))
    return rng.integers(0, rows, size=(config.bootstrap_samples, rows))


def _bootstrap_verdicts(contenders: list[Contender], config: ScoringConfig,
                        now_block: int | None) -> dict[tuple[int, int], int]:
    """Pairwise verdicts under a paired bootstrap over eval rows: a beats b when the lower `bootstrap_confidence`
    quantile of the resampled mean advantage is above 0 (b beats a when the upper one is below 0).

    Per row, the difference of the two (epsilon-adjusted) losses; rows whose loss is NaN in either are left out of
    the mean (each resample draws row positions, so they are masked, not dropped). A resample's sum over its drawn
    rows is the row-count matrix (resamples x rows) times the per-row differences, so each contender is compared
    with all later ones in one matrix product instead of indexing every pair's resamples: the same verdicts, and
    256 miners x 200 eval rows x 1000 resamples take 4.6 s on one CPU core instead of 23 s."""
    resample = _bootstrap_indices(contenders, config)
    samples, rows = resample.shape
    counts = np.zeros((samples, rows))
    np.add.at(counts, (np.repeat(np.arange(samples), rows), resample.ravel()), 1.0)
    losses = np.array([c.per_row for c in contenders], dtype=np.float64)
    finite = np.isfinite(losses)
    losses = np.where(finite, losses, 0.0)
    blocks = np.array([c.block for c in contenders])
    verdicts: dict[tuple[int, int], int] = {}
    low_q, high_q = 1 - config.bootstrap_confidence, config.bootstrap_confidence
    for i, a in enumerate(contenders[:-1]):
        later = slice(i + 1, len(contenders))
        eps = np.array([epsilon_at(config, min(a.block, int(b)), now_block) for b in blocks[later]])
        scale_a = np.where(a.block < blocks[later], 1 - eps, 1.0)  # the earlier commitment's advantage
        scale_b = np.where(blocks[later] < a.block, 1 - eps, 1.0)
        valid = finite[later] & finite[i]
        diff = np.where(valid, scale_b[:, None] * losses[later] - scale_a[:, None] * losses[i], 0.0)  # > 0: a
        means = (diff @ counts.T) / np.maximum(valid.astype(np.float64) @ counts.T, 1.0)
        low, high = np.quantile(means, [low_q, high_q], axis=1)
        for j, b in enumerate(contenders[i + 1:]):
            verdicts[(a.uid, b.uid)] = 1 if low[j] > 0 else -1 if high[j] < 0 else 0
    return verdicts


def curve_score(loss: float, config: ScoringConfig) -> float:
    """The benchmark curve: 1 up to curve_full, down to curve_mid_score at curve_mid, 0 from curve_zero on;
    each segment shaped by power curve_power (steep near the better end)."""
    if loss <= config.curve_full:
        return 1.0
    if loss >= config.curve_zero:
        return 0.0
    if loss <= config.curve_mid:
        t = (config.curve_mid - loss) / (config.curve_mid - config.curve_full)
        return config.curve_mid_score + (1 - config.curve_mid_score) * t ** config.curve_power
    t = (config.curve_zero - loss) / (config.curve_zero - config.curve_mid)
    return config.curve_mid_score * t ** config.curve_power


def top_k_winner(contenders: list[Contender], top_fraction: float) -> int | None:
    """The earliest commitment (block, then uid) among the best `top_fraction` by loss (at least one miner)."""
    if not contenders:
        return None
    k = max(1, math.floor(len(contenders) * top_fraction))
    best = sorted(contenders, key=lambda c: (c.loss, c.block, c.uid))[:k]
    return min(best, key=lambda c: (c.block, c.uid)).uid


def paid_win_rates(rates: Mapping[int, float], config: ScoringConfig) -> dict[int, float]:
    """The win rates the softmax shares the weight over: with `require_a_win`, only miners that won a comparison (a
    copy that loses to its original and to everyone else is not paid the softmax's small change); when nobody won
    one (every comparison a tie), all of them alike."""
    paid = {uid: r for uid, r in rates.items() if r > 0 or not config.require_a_win}
    return paid or dict(rates)


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
                config: ScoringConfig = ScoringConfig(), *, base_loss: float | None = None,
                now_block: int | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """(scores, final weights) for the eligible contenders of an epoch. The score is the win rate in win_rate
    mode, the curve score in curve mode, 1 for the winner (0 otherwise) in top_k mode.

    With `require_improvement` and a `base_loss`, contenders whose loss is not below it score 0 and get weight 0."""
    if config.require_improvement and base_loss is not None:
        improving = [c for c in contenders if c.loss < base_loss]
    else:
        improving = list(contenders)
    scores = {c.uid: 0.0 for c in contenders}
    if config.mode == "win_rate":
        rates = compute_win_rates(improving, config, now_block) if improving else {}
        scores.update(rates)
        fresh = softmax_weights(paid_win_rates(rates, config), config.temperature)
    elif config.mode == "curve":
        curve = {c.uid: curve_score(c.loss, config) for c in improving}
        scores.update(curve)
        total = sum(curve.values())
        fresh = {uid: v / total for uid, v in curve.items()} if total > 0 else {}
    else:
        winner = top_k_winner(improving, config.top_fraction)
        fresh = {winner: 1.0} if winner is not None else {}
        scores.update(fresh)
    eligible = {uid for uid, w in fresh.items() if w > 0}
    weights = blend_weights(fresh, previous, config.alpha, eligible)
    weights.update({c.uid: 0.0 for c in contenders if c.uid not in eligible})
    return scores, weights


def explain_scores(contenders: list[Contender], previous: Mapping[int, float], config: ScoringConfig,
                   scores: Mapping[int, float], weights: Mapping[int, float], *, base_loss: float | None = None,
                   now_block: int | None = None) -> dict[int, str]:
    """uid -> how its score and weight came about, in words, with the numbers `score_epoch` used: the base model's
    bar; in win_rate mode every comparison (whom it beat, lost to or tied with, each loss as compared, the earlier
    commitment's advantage spelled out; above LISTED_COMPARISONS they are counted and the closest named), the
    softmax and the blend with the previous epoch; the curve score; or the top-k rule."""
    return explain_scores_in_detail(contenders, previous, config, scores, weights, base_loss=base_loss,
                                    now_block=now_block)[0]


def explain_scores_in_detail(contenders: list[Contender], previous: Mapping[int, float], config: ScoringConfig,
                             scores: Mapping[int, float], weights: Mapping[int, float], *,
                             base_loss: float | None = None, now_block: int | None = None
                             ) -> tuple[dict[int, str], dict[int, str]]:
    """(`explain_scores`'s explanations, uid -> every comparison of a contender whose explanation summarises them,
    "; "-separated: the detail kept beside it; none in the other modes or when every comparison is listed)."""
    improving = [c for c in contenders if not (config.require_improvement and base_loss is not None
                                               and c.loss >= base_loss)]
    out = {c.uid: f"eval loss {c.loss:.4f} is not below the base model's {base_loss:.4f}: weight 0"
           for c in contenders if c not in improving}
    bar = f" (below the base model's {base_loss:.4f})" if config.require_improvement and base_loss is not None else ""
    details: dict[int, str] = {}
    if config.mode == "win_rate":
        texts, details = _explain_win_rate(improving, previous, config, scores, weights, bar, now_block)
        out.update(texts)
    elif config.mode == "curve":
        out.update(_explain_curve(improving, previous, config, scores, weights, bar))
    else:
        out.update(_explain_top_k(improving, previous, config, scores, weights, bar))
    return out, details


LISTED_COMPARISONS = 8  # a miner with at most this many comparisons has every one in its explanation; above, they
# are counted and the closest named (the full list is the miner's detail: `explain_scores_in_detail`)
CLOSEST = 3  # the comparisons a summarised explanation names: the smallest margins


def _explain_win_rate(improving: list[Contender], previous: Mapping[int, float], config: ScoringConfig,
                      scores: Mapping[int, float], weights: Mapping[int, float], bar: str,
                      now_block: int | None) -> tuple[dict[int, str], dict[int, str]]:
    """(uid -> the win_rate explanation: the comparisons (every one, or counted with the closest named when there
    are more than LISTED_COMPARISONS), the win rate, the softmax and the blend; uid -> every comparison, for the
    summarised ones)."""
    verdicts = pairwise_verdicts(improving, config, now_block) if len(improving) > 1 else {}
    paid = paid_win_rates({c.uid: scores.get(c.uid, 0.0) for c in improving}, config)
    fresh = softmax_weights(paid, config.temperature)
    out, details = {}, {}
    for c in improving:
        compared = _comparisons(c, improving, verdicts, config, now_block)
        if len(compared) > LISTED_COMPARISONS:
            details[c.uid] = "; ".join(phrase for _, phrase, _ in compared)
        text = _win_rate_text(c, compared, config, scores, bar)
        if c.uid not in paid:
            out[c.uid] = text + ("; it won no comparison, so it earns nothing (only improvement is paid): "
                                 "weight 0.000000")
            continue
        out[c.uid] = text + f"; softmax of the win rates at temperature {config.temperature:g}" + \
            (" (over the miners that won a comparison)" if len(paid) < len(improving) else "") + \
            f": {fresh.get(c.uid, 0.0):.6f}" + _blend_text(c.uid, fresh, previous, config, weights)
    return out, details


def _comparisons(c: Contender, improving: list[Contender], verdicts: Mapping[tuple[int, int], int],
                 config: ScoringConfig, now_block: int | None) -> list[tuple[int, str, float]]:
    """One (verdict, phrase, margin) per other contender: whether `c` beat (1), lost to (-1) or tied with (0) it, in
    words with each loss as compared, and the margin (its loss as compared minus `c`'s: above 0, `c` was lower)."""
    out = []
    for o in improving:
        if o.uid == c.uid:
            continue
        verdict = verdicts.get((c.uid, o.uid), -verdicts.get((o.uid, c.uid), 0))
        verb = "beat" if verdict > 0 else "lost to" if verdict < 0 else "tied with"
        eps = epsilon_at(config, min(c.block, o.block), now_block)
        margin = _compared_loss(o, c, eps) - _compared_loss(c, o, eps)
        phrase = f"{verb} uid {o.uid} ({_as_compared(c, o, eps)} against its {_as_compared(o, c, eps)})"
        out.append((verdict, phrase, margin))
    return out


def _win_rate_text(c: Contender, compared: list[tuple[int, str, float]], config: ScoringConfig,
                   scores: Mapping[int, float], bar: str) -> str:
    """The loss, the win rate and the comparisons behind it (or that `c` was the only contender): every one up to
    LISTED_COMPARISONS; above, how many were won, lost and tied, and the CLOSEST by margin."""
    if not compared:
        return f"eval loss {c.loss:.4f}{bar}; the only contender: win rate 1.000"
    wins = sum(v > 0 for v, _, _ in compared)
    rule = ("a win needs the lower bound of the paired bootstrap's per-row advantage above 0"
            if config.significance == "bootstrap" else "lower loss wins")
    head = (f"eval loss {c.loss:.4f}{bar}; win rate {scores.get(c.uid, 0.0):.3f} = {wins} of {len(compared)} "
            f"comparisons won")
    how = (f"({rule}; the earlier commitment's loss counts x (1 - epsilon), epsilon {config.epsilon:g}"
           + (" decaying with its age" if config.epsilon_decay_blocks else "") + ")")
    if len(compared) <= LISTED_COMPARISONS:
        return f"{head} {how}: " + "; ".join(phrase for _, phrase, _ in compared)
    lost = sum(v < 0 for v, _, _ in compared)
    tied = len(compared) - wins - lost
    closest = sorted(compared, key=lambda x: abs(x[2]))[:CLOSEST]
    return (f"{head}, {lost} lost" + (f", {tied} tied" if tied else "") + f" {how}; the {len(closest)} closest: "
            + "; ".join(f"{phrase[:-1]}, by {abs(margin):.4f})" for _, phrase, margin in closest))


def _explain_curve(improving: list[Contender], previous: Mapping[int, float], config: ScoringConfig,
                   scores: Mapping[int, float], weights: Mapping[int, float], bar: str) -> dict[int, str]:
    """uid -> the curve explanation: the curve score, its share of them all and the blend."""
    total = sum(scores.get(c.uid, 0.0) for c in improving)
    out = {}
    for c in improving:
        score = scores.get(c.uid, 0.0)
        out[c.uid] = (f"eval loss {c.loss:.4f}{bar}; curve score {score:.4f} (1 at {config.curve_full:g} or "
                      f"below, {config.curve_mid_score:g} at {config.curve_mid:g}, 0 at {config.curve_zero:g} or "
                      f"above); its share of the curve scores: {score / total if total else 0.0:.6f}"
                      + _blend_text(c.uid, {u.uid: scores.get(u.uid, 0.0) / total for u in improving}
                                    if total else {}, previous, config, weights))
    return out


def _explain_top_k(improving: list[Contender], previous: Mapping[int, float], config: ScoringConfig,
                   scores: Mapping[int, float], weights: Mapping[int, float], bar: str) -> dict[int, str]:
    """uid -> the top_k explanation: whether it was among the k lowest losses, the winner, and the blend."""
    k = max(1, math.floor(len(improving) * config.top_fraction)) if improving else 0
    best = sorted(improving, key=lambda x: (x.loss, x.block, x.uid))[:k]
    out = {}
    for c in improving:
        where = (f"among the {k} lowest eval losses" if c in best else f"not among the {k} lowest eval losses")
        won = scores.get(c.uid, 0.0) > 0
        out[c.uid] = (f"eval loss {c.loss:.4f}{bar}; {where}" + ("; the earliest commitment of them: the winner"
                                                                  if won else "")
                      + _blend_text(c.uid, {u: 1.0 for u, v in scores.items() if v > 0}, previous, config,
                                    weights))
    return out


def _compared_loss(c: Contender, other: Contender, eps: float) -> float:
    """A contender's loss as the comparison with `other` counts it (x (1 - eps) when `c` committed earlier)."""
    return c.loss * (1 - eps) if c.block < other.block else c.loss


def _as_compared(c: Contender, other: Contender, eps: float) -> str:
    """A contender's loss as the comparison with `other` saw it."""
    if c.block < other.block and eps > 0:
        return f"{c.loss:.4f} x {1 - eps:g} = {_compared_loss(c, other, eps):.4f} for committing earlier"
    return f"{c.loss:.4f}"


def _blend_text(uid: int, fresh: Mapping[int, float], previous: Mapping[int, float], config: ScoringConfig,
                weights: Mapping[int, float]) -> str:
    eligible = {u for u, w in fresh.items() if w > 0}
    prev = {u: w for u, w in previous.items() if u in eligible and w > 0}
    final = weights.get(uid, 0.0)
    if uid not in eligible:
        return f"; weight {final:.6f}"
    if not prev:
        return f"; no earlier weights to blend with: weight {final:.6f}"
    return (f"; blended with the previous epoch's weights ({config.alpha:g} x {prev.get(uid, 0.0):.6f} + "
            f"{1 - config.alpha:g} x {fresh.get(uid, 0.0):.6f}, renormalised over this epoch's miners): "
            f"weight {final:.6f}")


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
