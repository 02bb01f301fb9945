"""Which miners' rows enter the corpus: the `CorpusPolicy` (per competition, by weight) and the selection."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from flock_pipeline.core.corpus.release import DEFAULT_LICENSE


# -- the selection policy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusPolicy:
    """Which miners' rows enter the corpus, and how the release is labelled. Per competition (that puts rows in the
    corpus): the miners whose status is one of `statuses`, best weight first (ties: the earlier commitment, then
    the lower uid), taken until they hold `weight_coverage` of the weight those miners have together; a miner with
    weight 0 or below `min_weight` never enters; at most `max_miners` of them (0: no cap).

    weight_coverage: in (0, 1]; 0.95 keeps the miners who hold 95 % of the weight (a near-zero tail stays out).
    statuses: "scored" = eligible, evaluated and (where the game requires it) beating the base model.
    license: the dataset card's license id (Hub form); the default, cc-by-4.0, lets anyone reuse the corpus with
        attribution.
    derive_dpo: also make `dpo` pairs from single-turn SFT rows: chosen = the miner's answer, rejected = the base
        model's greedy answer (at most `derive_max_new_tokens` tokens); generated once per row, base model revision
        and token budget, and cached.
    """

    weight_coverage: float = 0.95
    min_weight: float = 0.0
    max_miners: int = 0
    statuses: tuple[str, ...] = ("scored",)
    license: str = DEFAULT_LICENSE
    derive_dpo: bool = False
    derive_max_new_tokens: int = 256

    def __post_init__(self) -> None:
        coverage = _number(self.weight_coverage, "weight_coverage")
        if not 0 < coverage <= 1:
            raise ValueError(f"corpus_policy.weight_coverage must be in (0, 1], got {self.weight_coverage!r}")
        if _number(self.min_weight, "min_weight") < 0:
            raise ValueError(f"corpus_policy.min_weight must be 0 or more, got {self.min_weight!r}")
        if _whole(self.max_miners, "max_miners") < 0:
            raise ValueError(f"corpus_policy.max_miners must be 0 (no cap) or more, got {self.max_miners!r}")
        statuses = self.statuses
        if isinstance(statuses, str) or not isinstance(statuses, (list, tuple)) or not statuses \
                or not all(isinstance(s, str) and s for s in statuses):
            raise ValueError(f"corpus_policy.statuses must be a non-empty list of statuses, got {statuses!r}")
        object.__setattr__(self, "statuses", tuple(statuses))
        if not isinstance(self.license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", self.license):
            raise ValueError(f"corpus_policy.license must be a Hub license id such as 'cc-by-4.0', "
                             f"got {self.license!r}")
        if not isinstance(self.derive_dpo, bool):
            raise ValueError(f"corpus_policy.derive_dpo must be true or false, got {self.derive_dpo!r}")
        if not 1 <= _whole(self.derive_max_new_tokens, "derive_max_new_tokens") <= 4096:
            raise ValueError(f"corpus_policy.derive_max_new_tokens must be 1 to 4096, "
                             f"got {self.derive_max_new_tokens!r}")

    @classmethod
    def from_json(cls, text: str) -> CorpusPolicy:
        """The policy a JSON object of its fields describes ("{}": the defaults); ValueError naming the field."""
        try:
            value = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"corpus_policy is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("corpus_policy must be a JSON object of policy fields")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"corpus_policy: unknown field(s) {', '.join(unknown)}")
        return cls(**value)

    def to_dict(self) -> dict:
        return {**asdict(self), "statuses": list(self.statuses)}


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"corpus_policy.{name} must be a number, got {value!r}")
    return float(value)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"corpus_policy.{name} must be a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class Candidate:
    """A miner of one competition, as the policy sees it."""

    competition: str
    hotkey: str
    uid: int
    status: str
    weight: float  # its weight within the competition
    commit_block: int = 0


def select_miners(candidates: Iterable[Candidate], policy: CorpusPolicy) -> list[Candidate]:
    """The candidates whose rows enter, per competition in the policy's order (best weight first)."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.status in policy.statuses and math.isfinite(c.weight) and c.weight > 0:
            groups.setdefault(c.competition, []).append(c)
    chosen = []
    for name in sorted(groups):
        ranked = sorted(groups[name], key=lambda c: (-c.weight, c.commit_block, c.uid, c.hotkey))
        target = policy.weight_coverage * sum(c.weight for c in ranked) * (1 - 1e-9)
        covered, taken = 0.0, 0
        for c in ranked:
            if covered >= target or c.weight < policy.min_weight or (policy.max_miners and taken >= policy.max_miners):
                break
            chosen.append(c)
            covered += c.weight
            taken += 1
    return chosen
