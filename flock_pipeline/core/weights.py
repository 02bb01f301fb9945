"""What a weight submission will be on the chain, decided before anything is signed.

A subnet's runtime checks a validator's weights in one place (`internal_set_weights` in opentensor/subtensor's
`pallets/subtensor/src/subnets/weights.rs`), in this order: registered, stake weight >= `StakeThreshold` (the subnet
owner's hotkey is exempt), version key >= `WeightsVersionKey` (when that is not 0), the rate limit
(`WeightsSetRateLimit`, plaintext weights only), a validator permit (the owner's hotkey and a single self-weight are
exempt), no duplicate or unknown uids, at least min(`MinAllowedWeights`, uids on the subnet) weights, and the largest
weight at most `MaxWeightsLimit` / 65535 of their sum. Under commit-reveal the commit is accepted without these
checks; they run when the chain reveals it, and a failure there is only a trace log on the node. So every one of
them is checked here first, and a submission the chain would drop is refused before sending, with the reason.

The vector is over every uid of the metagraph (zeros included), and it is turned into u16 values by the bittensor
SDK's own conform step (max-weight clip, max-upscale and quantise, zeros dropped): the plan records exactly the
vector the SDK will send. When fewer than `MinAllowedWeights` uids would carry weight, every uid without weight is
given the smallest value the chain stores (u16 1), as bittensor's earlier `process_weights_for_netuid` did, so the
limit holds without taking weight from the miners that earned it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

U16_MAX = 65535


@dataclass(frozen=True)
class WeightRules:
    """The chain parameters a weight submission must satisfy, read at one block for one validator hotkey."""

    block: int
    hotkey: str
    uid: int | None  # the hotkey's uid on the subnet; None: not registered
    subnet_n: int  # uids on the subnet
    permit: bool  # ValidatorPermit of that uid
    owner: bool  # the hotkey is SubnetOwnerHotkey (exempt from the stake threshold and the permit)
    stake: float  # the hotkey's stake weight on the subnet, in alpha (the unit StakeThreshold counts in, / 1e9)
    stake_threshold: float  # StakeThreshold, same unit
    version_key: int  # WeightsVersionKey: the lowest version key the subnet accepts (0: any)
    min_allowed_weights: int  # MinAllowedWeights
    max_weight_limit: int  # MaxWeightsLimit as u16 (65535: no limit)
    rate_limit: int  # WeightsSetRateLimit in blocks
    last_update: int  # LastUpdate of the uid: the block of its last weights or commit (0: never)
    commit_reveal: bool  # CommitRevealWeightsEnabled
    reveal_period: int = 1  # RevealPeriodEpochs: a commit made in epoch E is revealed when epoch E + this starts
    epoch: int = 0  # the chain's epoch index (SubnetEpochIndex) at `block`

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class WeightsPlan:
    """What will be sent: `inputs` (relative weights over every uid) and, after the SDK's conform step, `uids` /
    `values` -- the exact u16 vector the chain receives. `refusal` set: nothing may be sent, and why."""

    rules: WeightRules
    version_key: int
    inputs: tuple[tuple[int, float], ...] = ()
    uids: tuple[int, ...] = ()
    values: tuple[int, ...] = ()
    refusal: str | None = None
    retry_after_block: int | None = None  # refused by the rate limit: the first block it is allowed again
    notes: tuple[str, ...] = field(default=())  # what the chain's limits did to the vector

    @property
    def sendable(self) -> bool:
        return self.refusal is None


Conform = Callable[[list[int], list[float], WeightRules], tuple[list[int], list[int]]]


def plan_weights(rules: WeightRules, weights: Mapping[int, float], version_key: int = 0, *,
                 conform: Conform) -> WeightsPlan:
    """The submission of `weights` (uid -> relative weight; uids not named get 0) under `rules`, over every uid of
    the subnet (0 .. subnet_n - 1, read with the rules at one block).

    `version_key` 0 means "the subnet's required one" (`WeightsVersionKey`); a configured key below that is refused.
    `conform` turns relative weights into the u16 vector the chain client sends (the chain resource passes the
    bittensor SDK's own step); ValueError from it is a refusal.
    """
    key = int(version_key) or int(rules.version_key)
    all_uids = list(range(rules.subnet_n))
    unknown = sorted(u for u, w in weights.items() if w and not 0 <= int(u) < rules.subnet_n)
    if unknown:
        return WeightsPlan(rules=rules, version_key=key,
                           refusal=f"weights name uid(s) {unknown[:5]} that are not on the subnet")
    inputs = [(u, float(weights.get(u, 0.0))) for u in all_uids]
    positive = [u for u, w in inputs if w > 0]
    if not positive:
        return WeightsPlan(rules=rules, version_key=key, refusal="no uid has weight: nothing to submit")
    self_weight = positive == [rules.uid]
    notes: list[str] = []
    inputs, problem = _fill_min_allowed(rules, inputs, positive, self_weight, notes)
    uids: list[int] = []
    values: list[int] = []
    if problem is None:
        uids, values, problem = _conformed(conform, inputs, rules)
    if problem is None and rules.max_weight_limit < U16_MAX and not self_weight:
        problem = _max_weight_problem(rules, inputs, values, notes)
    plan = WeightsPlan(rules=rules, version_key=key, inputs=tuple(inputs), uids=tuple(uids), values=tuple(values),
                       notes=tuple(notes))

    def refuse(reason: str, retry_after: int | None = None) -> WeightsPlan:
        return replace(plan, refusal=reason, retry_after_block=retry_after)

    # the runtime's order: registered, stake, version key, rate limit, permit, then the vector itself
    sender = _sender_refusal(rules, key, self_weight)
    if sender is not None:
        return refuse(*sender)
    if problem is not None:
        return refuse(problem)
    if len(uids) > rules.subnet_n:
        return refuse(f"{len(uids)} weights for a subnet of {rules.subnet_n} uids (UidsLengthExceedUidsInSubNet)")
    return plan


def _fill_min_allowed(rules: WeightRules, inputs: list[tuple[int, float]], positive: list[int], self_weight: bool,
                      notes: list[str]) -> tuple[list[tuple[int, float]], str | None]:
    """(inputs with the uids without weight at u16 1 when too few carry weight, why the subnet is too small)."""
    if self_weight or len(positive) >= rules.min_allowed_weights:
        return inputs, None
    if len(inputs) < rules.min_allowed_weights:
        return inputs, (f"the subnet's MinAllowedWeights is {rules.min_allowed_weights} but it has only "
                        f"{len(inputs)} uids: the bittensor SDK cannot send a vector that long")
    top = max(w for _, w in inputs)
    notes.append(f"MinAllowedWeights {rules.min_allowed_weights}: {len(inputs) - len(positive)} uid(s) "
                 "without weight get the smallest u16 value (1)")
    return [(u, w if w > 0 else top / U16_MAX) for u, w in inputs], None


def _conformed(conform: Conform, inputs: list[tuple[int, float]],
               rules: WeightRules) -> tuple[list[int], list[int], str | None]:
    """The u16 vector (uids, values) the SDK's conform step makes of `inputs`, or empty ones and why it refused."""
    try:
        uids, values = conform([u for u, _ in inputs], [w for _, w in inputs], rules)
    except ValueError as exc:
        return [], [], f"the bittensor SDK would not send these weights: {exc}"
    return uids, values, None


def _max_weight_problem(rules: WeightRules, inputs: list[tuple[int, float]], values: list[int],
                        notes: list[str]) -> str | None:
    """Why the vector's largest weight breaks MaxWeightsLimit, else None (noted when the SDK's clip saved it)."""
    share = max(values) / sum(values)
    before = max(w for _, w in inputs) / sum(w for _, w in inputs)
    if share * U16_MAX > rules.max_weight_limit:
        return (f"the largest weight is {share:.4f} of the total, above the subnet's MaxWeightsLimit "
                f"{rules.max_weight_limit / U16_MAX:.4f} (MaxWeightExceeded at reveal)")
    if before * U16_MAX > rules.max_weight_limit:
        notes.append(f"MaxWeightsLimit {rules.max_weight_limit / U16_MAX:.4f}: the largest weight was "
                     f"{before:.4f} of the total and goes out as {share:.4f}")
    return None


def _sender_refusal(rules: WeightRules, key: int, self_weight: bool) -> tuple[str, int | None] | None:
    """(why, retry-after block) when the runtime would stop this sender before looking at the vector, else None."""
    if rules.uid is None:
        return f"hotkey {rules.hotkey} is not registered on the subnet (HotKeyNotRegisteredInSubNet)", None
    if not rules.owner and rules.stake < rules.stake_threshold:
        return (f"the hotkey's stake weight {rules.stake:.4f} is below the subnet's StakeThreshold "
                f"{rules.stake_threshold:.4f} (NotEnoughStakeToSetWeights): add stake to the hotkey"), None
    if rules.version_key and key < rules.version_key:
        return (f"version key {key} is older than the subnet's WeightsVersionKey {rules.version_key} "
                "(IncorrectWeightVersionKey): set weights_version_key to 0 (use the chain's) or to "
                f"{rules.version_key} or later"), None
    if rules.rate_limit and rules.last_update > 0 and rules.block - rules.last_update < rules.rate_limit:
        allowed = rules.last_update + rules.rate_limit
        return (f"rate limited until block {allowed} (weights last set at block {rules.last_update}, "
                f"limit {rules.rate_limit} blocks)"), allowed
    if not (rules.permit or rules.owner or self_weight):
        return (f"hotkey {rules.hotkey} (uid {rules.uid}) has no validator permit and is not the subnet "
                "owner's (NeuronNoValidatorPermit): only validators in the subnet's top stake get a permit"), None
    return None


def u16_shares(weights: Mapping[int, float]) -> dict[int, float]:
    """uid -> its share after the conversion to u16 (max-upscaled so the largest is 65535, rounded): what a computed
    weight becomes on chain before the chain's own limits. A weight under 1 / 131070 of the largest becomes 0."""
    top = max(weights.values(), default=0.0)
    if top <= 0:
        return {int(u): 0.0 for u in weights}
    values = {int(u): math.floor(w / top * U16_MAX + 0.5) for u, w in weights.items()}
    total = sum(values.values())
    return {u: v / total for u, v in values.items()}


def max_upscaled(values: Sequence[int]) -> list[int]:
    """What the chain stores for a u16 vector: max-upscaled and rounded so the largest is 65535
    (`vec_u16_max_upscale_to_u16`; the SDK's vectors already are, so this is the identity for them)."""
    top = max(values) if values else 0
    if top == 0:
        return [int(v) for v in values]
    return [(2 * int(v) * U16_MAX + top) // (2 * top) for v in values]


def runtime_error(rules: WeightRules, uids: Sequence[int], values: Sequence[int], version_key: int) -> str | None:
    """The module error the subnet runtime's `internal_set_weights` ends with for this vector (None: it stores it),
    checked in the runtime's order (a subnet's uids are 0 .. subnet_n - 1). The embedded chain and the
    test chain apply it (at inclusion, or at reveal under commit-reveal); the pipeline never relies on it."""
    uids, values = [int(u) for u in uids], [int(v) for v in values]
    # the sender's checks all come before the vector's in the runtime
    return _runtime_sender_error(rules, uids, values, version_key) or _runtime_vector_error(rules, uids, values)


def _runtime_sender_error(rules: WeightRules, uids: list[int], values: list[int], version_key: int) -> str | None:
    """The runtime's error from its checks up to the rate limit (sizes, registration, stake, version key), or None."""
    if len(uids) != len(values):
        return "WeightVecNotEqualSize"
    if len(uids) > rules.subnet_n:
        return "UidsLengthExceedUidsInSubNet"
    if rules.uid is None:
        return "HotKeyNotRegisteredInSubNet"
    if not rules.owner and rules.stake < rules.stake_threshold:
        return "NotEnoughStakeToSetWeights"
    if rules.version_key and version_key < rules.version_key:
        return "IncorrectWeightVersionKey"
    if (not rules.commit_reveal and rules.rate_limit and rules.last_update > 0
            and rules.block - rules.last_update < rules.rate_limit):
        return "SettingWeightsTooFast"
    return None


def _runtime_vector_error(rules: WeightRules, uids: list[int], values: list[int]) -> str | None:
    """The runtime's error from its checks from the permit on (permit, uids, length, max weight), or None."""
    self_weight = len(values) == 1 and uids[:1] == [rules.uid]
    if not (self_weight or rules.owner or rules.permit):
        return "NeuronNoValidatorPermit"
    if len(set(uids)) != len(uids):
        return "DuplicateUids"
    if any(not 0 <= u < rules.subnet_n for u in uids):
        return "UidVecContainInvalidOne"
    if not self_weight and len(values) < min(rules.subnet_n, rules.min_allowed_weights):
        return "WeightVecLengthIsLow"
    stored = max_upscaled(values)
    if not self_weight and rules.max_weight_limit < U16_MAX and sum(stored) > 0 \
            and max(stored) * U16_MAX > rules.max_weight_limit * sum(stored):
        return "MaxWeightExceeded"
    return None
