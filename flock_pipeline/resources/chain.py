"""The chain: registered neurons, dataset commitments with their blocks, a block clock and weights.

`ChainResource` is the interface the pipeline uses; `LocalChainResource` is the embedded, file-backed subnet that
runs offline. The Bittensor implementation fills the same interface.

Epochs are the chain's own epoch index (the subnet's `SubnetEpochIndex` counter, which the runtime's stateful
scheduler moves on when `tempo` blocks have passed since `LastEpochBlock`). A tempo change (subnet owners may set
360 to 50,400) changes when the next epoch starts, never the numbering: an epoch is never re-opened and none is
skipped, where `block // tempo` would jump back after a tempo increase.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from flock_pipeline.core.weights import U16_MAX, WeightRules, WeightsPlan, plan_weights, runtime_error
from flock_pipeline.errors import FlockError
from datetime import UTC

if TYPE_CHECKING:
    from flock_pipeline.core.competitions import Clock


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    coldkey: str
    stake: float  # TAO
    validator_permit: bool
    registration_block: int
    incentive: float = 0.0  # the chain's incentive for the uid, a fraction of the subnet's (sums to 1)


@dataclass(frozen=True)
class RawCommitment:
    """A hotkey's raw commitment field as the chain returns it (untrusted text) and the block it was written in."""

    hotkey: str
    block: int
    data: str


@dataclass(frozen=True)
class WeightsReceipt:
    success: bool
    block: int  # the block the answer refers to (inclusion block, or current block on refusal)
    message: str
    retry_after_block: int | None = None  # when refused by the rate limit: the first block it is allowed again
    committed: bool = False  # a commit-reveal commit: the weights apply only when the chain reveals it
    reveal_round: int | None = None  # the drand round the commit is sealed to


@dataclass(frozen=True)
class PendingCommit:
    """A timelocked weight commit of this hotkey the chain has not revealed yet."""

    epoch: int  # the chain epoch it was committed in; it is revealed when epoch + RevealPeriodEpochs starts
    block: int
    reveal_round: int


@dataclass(frozen=True)
class ValidatorWeight:
    """One validator's weight on a uid, as the chain stores it."""

    hotkey: str
    uid: int
    stake: float
    value: int  # the u16 value for the uid
    share: float  # value / the sum of the validator's row


def advance_epochs(epochs: list[list[int]], tempo_changes: list[list[int]], default_tempo: int,
                   block: int) -> list[list[int]]:
    """The runtime's stateful epoch scheduler: epoch i + 1 starts at the first block b after epoch i's start with
    b - start >= tempo(b), the tempo in force at b (`tempo_changes`: [block, tempo] pairs, else `default_tempo`).
    `epochs` ([index, start block] pairs, oldest first) is extended in place up to `block` and returned."""
    changes = sorted((int(b), int(t)) for b, t in tempo_changes)
    while True:
        index, start = epochs[-1]
        segments = [(0, default_tempo)] + changes
        fire = None
        for k, (seg_from, tempo) in enumerate(segments):
            seg_to = segments[k + 1][0] - 1 if k + 1 < len(segments) else None
            lo = max(seg_from, start + 1)
            if tempo <= 0 or (seg_to is not None and lo > seg_to):
                continue
            candidate = max(lo, start + tempo)
            if seg_to is None or candidate <= seg_to:
                fire = candidate
                break
        if fire is None or fire > block:
            return epochs
        epochs.append([index + 1, fire])


def epoch_containing(epochs: list[list[int]], block: int) -> tuple[int, int]:
    """(index, start block) of the epoch `block` falls in, from a scheduler history (starts ascending)."""
    found = epochs[max(0, bisect.bisect_right(epochs, block, key=lambda entry: entry[1]) - 1)]
    return int(found[0]), int(found[1])


def sdk_conform(uids: list[int], weights: list[float], rules: WeightRules) -> tuple[list[int], list[int]]:
    """The u16 vector the bittensor SDK sends for these relative weights under these rules: its own conform step
    (`bittensor.intents.weights._conform`, the one `SetWeights` runs; private in SDK 11.x, so it is reached here,
    behind the chain resource, and nowhere else), not a copy of it. ValueError: it refuses."""
    from bittensor import BittensorError
    from bittensor.intents.weights import _conform, _Preflight

    preflight = _Preflight(uid=int(rules.uid if rules.uid is not None else -1), commit_reveal=rules.commit_reveal,
                           min_allowed_weights=int(rules.min_allowed_weights),
                           max_weight_limit=int(rules.max_weight_limit))
    try:
        out_uids, out_values = _conform(list(uids), list(weights), preflight, 0)
    except BittensorError as exc:  # ChainError is a BittensorError too
        raise ValueError(getattr(exc, "message", None) or str(exc)) from None
    return [int(u) for u in out_uids], [int(v) for v in out_values]


class ChainError(FlockError, RuntimeError):
    """The chain refused or could not answer; the message is safe to show (no secrets)."""

    hint = "check FLOCK_NETWORK and the chain endpoint (FLOCK_CHAIN_ENDPOINT), then try again"


class ChainResource(dg.ConfigurableResource):
    """Interface to a subnet. Subclasses implement every method."""

    netuid: int = 96
    tempo: int = 360  # blocks per epoch (the live subnet's tempo)

    def current_block(self) -> int:
        raise NotImplementedError

    def network_id(self) -> str:
        """A short name of this chain and subnet that differs between two chains whose block and epoch numbers may
        repeat (a re-seeded local chain): the sensors' run keys and cursors are scoped by it, so they never take
        one network's runs for another's."""
        raise NotImplementedError

    def metagraph(self) -> list[Neuron]:
        raise NotImplementedError

    def commitments(self, at_block: int | None = None) -> list[RawCommitment]:
        """Every hotkey's latest commitment written at or before `at_block` (default: now)."""
        raise NotImplementedError

    def set_commitment(self, hotkey: str, data: str) -> int:
        """Write `data` as `hotkey`'s commitment; returns the block it was included in."""
        raise NotImplementedError

    def weight_rules(self, hotkey: str) -> WeightRules:
        """The chain parameters `hotkey`'s weights must satisfy, read at one block (see core/weights.py)."""
        raise NotImplementedError

    def submit_weights(self, hotkey: str, plan: WeightsPlan) -> WeightsReceipt:
        """Send a sendable plan: the chain receives exactly `plan.uids` / `plan.values` with `plan.version_key`."""
        raise NotImplementedError

    def plan_weights(self, hotkey: str, weights: Mapping[int, float], version_key: int = 0) -> WeightsPlan:
        """The submission of `weights` (uid -> relative weight) over every uid, checked against the chain's rules."""
        return plan_weights(self.weight_rules(hotkey), weights, version_key=version_key, conform=sdk_conform)

    def set_weights(self, hotkey: str, uids: list[int], weights: list[int], version_key: int = 0) -> WeightsReceipt:
        """Plan and send relative weights from a validator hotkey; a refusal (before sending or by the chain) is a
        receipt with success=False, not an exception."""
        uids, weights = [int(u) for u in uids], [int(w) for w in weights]
        if (not uids or len(uids) != len(weights) or len(set(uids)) != len(uids)
                or any(not 0 <= w <= U16_MAX for w in weights) or any(not 0 <= u <= U16_MAX for u in uids)):
            return WeightsReceipt(False, self.current_block(),
                                  "weights must be u16, match uids in length and name each uid once")
        plan = self.plan_weights(hotkey, dict(zip(uids, map(float, weights))), version_key)
        if not plan.sendable:
            return WeightsReceipt(False, plan.rules.block, plan.refusal, retry_after_block=plan.retry_after_block)
        return self.submit_weights(hotkey, plan)

    def stored_weights(self, hotkey: str) -> dict[int, int] | None:
        """The weights the chain holds for `hotkey`'s uid (uid -> u16), None when it holds none."""
        raise NotImplementedError

    def pending_commits(self, hotkey: str) -> list[PendingCommit]:
        """`hotkey`'s timelocked weight commits the chain has not revealed (always empty without commit-reveal)."""
        raise NotImplementedError

    def validator_weights(self, uid: int) -> list[ValidatorWeight]:
        """Every validator's (permit or subnet owner) stored weight on `uid`, for miners who have no store."""
        raise NotImplementedError

    def clock(self) -> Clock:
        """The block clock as UTC time (daily competition rounds are defined in UTC)."""
        raise NotImplementedError

    def weights_set_since(self, hotkey: str, block: int) -> int | None:
        """The block at which `hotkey` last set weights (or committed them), when that is at or after `block`; None
        when it did not: asked before sending, so that a validator killed after the chain took its weights never
        sends an epoch's twice."""
        raise NotImplementedError

    def owner_hotkey(self) -> str | None:
        """The subnet owner's hotkey (its uid receives the weight nobody earned: the burn), None when unknown."""
        raise NotImplementedError

    def effective_tempo(self) -> int:
        """The subnet's tempo now."""
        return self.tempo

    def epoch_of(self, block: int) -> int:
        """The chain epoch `block` falls in."""
        raise NotImplementedError

    def epoch_start(self, epoch: int) -> int:
        """The first block of `epoch` (a future epoch's is estimated at the current tempo)."""
        raise NotImplementedError


LOCAL_GENESIS = 1767225600.0  # 2026-01-01 00:00 UTC: the local chain's block 0 unless seeded otherwise
LOCAL_BLOCK_SECONDS = 12.0  # the live chain's block time


class LocalChainResource(ChainResource):
    """A persistent local subnet in one JSON file: neurons, commitment history, a block clock, epochs and weights.

    Every extrinsic is included in the next block (the clock advances by one); `advance` moves the clock on. Weights
    are plaintext (no commit-reveal) and the runtime's rules apply at inclusion: stake threshold, version key, rate
    limit, permit (the owner is exempt), min / max weight limits. `configure` sets those parameters and the tempo.
    A uid's incentive is the stake-weighted mean of the validators' normalised weights on it (Yuma consensus without
    its clipping), computed when read.
    """

    path: str
    tempo: int = 20
    weights_rate_limit: int = 10  # blocks between two weight settings of one hotkey

    # -- storage ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _state(self, write: bool):
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(path) + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            state = json.loads(path.read_text()) if path.exists() else self._empty()
            for key, value in self._empty().items():  # a file written by an older release
                state.setdefault(key, value)
            yield state
            if write:
                # epochs fire on the blocks between (a tempo change only applies from its block on)
                advance_epochs(state["epochs"], state["tempo_changes"], self.tempo, int(state["block"]))
                fd, tmp = tempfile.mkstemp(prefix=".chain-", dir=path.parent)
                with os.fdopen(fd, "w") as f:
                    json.dump(state, f, indent=1)
                os.replace(tmp, path)

    def _empty(self) -> dict:
        return {"netuid": self.netuid, "block": 0, "neurons": [], "commitments": [], "weights": [],
                "genesis": LOCAL_GENESIS, "block_seconds": LOCAL_BLOCK_SECONDS, "owner": None,
                "epochs": [[0, 0]], "tempo_changes": [],
                "params": {"weights_version_key": 0, "stake_threshold": 0.0, "min_allowed_weights": 0,
                           "max_weight_limit": U16_MAX}}

    def _epochs(self, s: dict, upto: int | None = None) -> list[list[int]]:
        """The epoch history up to the head (or to `upto` beyond it: placed by the current tempo)."""
        return advance_epochs([list(e) for e in s["epochs"]], s["tempo_changes"], self.tempo,
                              max(int(s["block"]), upto or 0))

    def effective_tempo(self) -> int:
        with self._state(write=False) as s:
            return self._tempo_now(s)

    def _tempo_now(self, s: dict) -> int:
        changes = sorted(s["tempo_changes"])
        return int(changes[-1][1]) if changes else self.tempo

    # -- reads -----------------------------------------------------------------------------------------------

    def network_id(self) -> str:
        """`local-<id>`: a random id written into the chain file when it is first asked (a new file, as `flock demo`
        seeds one, gets a new id)."""
        with self._state(write=False) as s:
            found = s.get("network_id")
        if not found:
            with self._state(write=True) as s:
                found = s.setdefault("network_id", uuid.uuid4().hex[:8])
        return f"local-{found}"

    def current_block(self) -> int:
        with self._state(write=False) as s:
            return int(s["block"])

    def metagraph(self) -> list[Neuron]:
        with self._state(write=False) as s:
            incentive = self._incentives(s)
            return [Neuron(**{**n, "incentive": incentive.get(n["uid"], 0.0)}) for n in s["neurons"]]

    def _incentives(self, s: dict) -> dict[int, float]:
        owner = s.get("owner")
        total: dict[int, float] = {}
        for v, row in self._latest_weights(s).items():
            neuron = next((n for n in s["neurons"] if n["hotkey"] == v), None)
            if neuron is None or not (neuron["validator_permit"] or v == owner) or not sum(row.values()):
                continue
            stake = max(float(neuron["stake"]), 1e-9)
            for uid, value in row.items():
                total[uid] = total.get(uid, 0.0) + stake * value / sum(row.values())
        norm = sum(total.values())
        return {uid: x / norm for uid, x in total.items()} if norm else {}

    @staticmethod
    def _latest_weights(s: dict) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for w in s["weights"]:
            out[w["hotkey"]] = dict(zip(w["uids"], w["weights"]))
        return out

    def commitments(self, at_block: int | None = None) -> list[RawCommitment]:
        with self._state(write=False) as s:
            latest: dict[str, RawCommitment] = {}
            for c in s["commitments"]:
                if at_block is None or c["block"] <= at_block:
                    latest[c["hotkey"]] = RawCommitment(**c)
            return sorted(latest.values(), key=lambda c: (c.block, c.hotkey))

    def clock(self) -> Clock:
        from datetime import datetime

        from flock_pipeline.core.competitions import Clock

        with self._state(write=False) as s:
            genesis = float(s.get("genesis", LOCAL_GENESIS))
            return Clock(datetime.fromtimestamp(genesis, tz=UTC),
                         float(s.get("block_seconds", LOCAL_BLOCK_SECONDS)))

    def owner_hotkey(self) -> str | None:
        with self._state(write=False) as s:
            return s.get("owner")

    def epoch_of(self, block: int) -> int:
        """A block beyond the head is placed by the current tempo."""
        with self._state(write=False) as s:
            return epoch_containing(self._epochs(s, int(block)), int(block))[0]

    def epoch_start(self, epoch: int) -> int:
        with self._state(write=False) as s:
            epochs = self._epochs(s)
            known = {int(i): int(b) for i, b in epochs}
            if epoch in known:
                return known[epoch]
            index, start = epochs[-1]
            if epoch < index:
                raise ValueError(f"epoch {epoch} is not in the local chain's history")
            return start + (epoch - index) * self._tempo_now(s)

    def weights_set_since(self, hotkey: str, block: int) -> int | None:
        blocks = [w["block"] for w in self.weights_history(hotkey) if w["block"] >= block]
        return max(blocks) if blocks else None

    def weights_history(self, hotkey: str | None = None) -> list[dict]:
        with self._state(write=False) as s:
            return [w for w in s["weights"] if hotkey is None or w["hotkey"] == hotkey]

    def stored_weights(self, hotkey: str) -> dict[int, int] | None:
        with self._state(write=False) as s:
            return self._latest_weights(s).get(hotkey)

    def pending_commits(self, hotkey: str) -> list[PendingCommit]:
        return []  # the local chain takes weights in plaintext

    def validator_weights(self, uid: int) -> list[ValidatorWeight]:
        with self._state(write=False) as s:
            owner = s.get("owner")
            out = []
            for v, row in self._latest_weights(s).items():
                neuron = next((n for n in s["neurons"] if n["hotkey"] == v), None)
                if neuron is None or not (neuron["validator_permit"] or v == owner):
                    continue
                value = int(row.get(uid, 0))
                out.append(ValidatorWeight(hotkey=v, uid=neuron["uid"], stake=float(neuron["stake"]), value=value,
                                           share=value / sum(row.values()) if sum(row.values()) else 0.0))
            return out

    def _rules(self, s: dict, hotkey: str) -> WeightRules:
        neuron = next((n for n in s["neurons"] if n["hotkey"] == hotkey), None)
        last = max((w["block"] for w in s["weights"] if w["hotkey"] == hotkey), default=0)
        p = s["params"]
        return WeightRules(block=int(s["block"]), hotkey=hotkey, uid=neuron["uid"] if neuron else None,
                           subnet_n=len(s["neurons"]), permit=bool(neuron and neuron["validator_permit"]),
                           owner=hotkey == s.get("owner"), stake=float(neuron["stake"]) if neuron else 0.0,
                           stake_threshold=float(p["stake_threshold"]), version_key=int(p["weights_version_key"]),
                           min_allowed_weights=int(p["min_allowed_weights"]),
                           max_weight_limit=int(p["max_weight_limit"]), rate_limit=self.weights_rate_limit,
                           last_update=int(last), commit_reveal=False,
                           epoch=epoch_containing(self._epochs(s), int(s["block"]))[0])

    def weight_rules(self, hotkey: str) -> WeightRules:
        with self._state(write=False) as s:
            return self._rules(s, hotkey)

    # -- extrinsics ------------------------------------------------------------------------------------------

    def register(self, hotkey: str, coldkey: str = "", stake: float = 0.0, validator_permit: bool = False) -> Neuron:
        """Register a hotkey on the subnet (a re-registration gets a new registration block, same uid)."""
        with self._state(write=True) as s:
            s["block"] += 1
            existing = next((n for n in s["neurons"] if n["hotkey"] == hotkey), None)
            uid = existing["uid"] if existing else len(s["neurons"])
            neuron = Neuron(uid=uid, hotkey=hotkey, coldkey=coldkey or f"cold-{hotkey}", stake=stake,
                            validator_permit=validator_permit, registration_block=s["block"])
            record = {k: v for k, v in asdict(neuron).items() if k != "incentive"}
            if existing:
                s["neurons"][uid] = record
            else:
                s["neurons"].append(record)
            return neuron

    def set_commitment(self, hotkey: str, data: str) -> int:
        if len(data.encode("utf-8")) > 128:
            raise ChainError("commitment is longer than 128 bytes")
        with self._state(write=True) as s:
            if not any(n["hotkey"] == hotkey for n in s["neurons"]):
                raise ChainError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
            s["block"] += 1
            s["commitments"].append({"hotkey": hotkey, "block": s["block"], "data": data})
            return s["block"]

    def submit_weights(self, hotkey: str, plan: WeightsPlan) -> WeightsReceipt:
        """Included in the next block when the runtime's rules (checked again here, on the chain's own state) allow
        it; a refusal names the runtime's error."""
        with self._state(write=True) as s:
            s["block"] += 1
            rules = self._rules(s, hotkey)
            error = runtime_error(rules, plan.uids, plan.values, plan.version_key)
            if error is not None:
                retry = None
                if error == "SettingWeightsTooFast":
                    retry = rules.last_update + rules.rate_limit
                return WeightsReceipt(False, s["block"], f"{error}: the chain refused the weights",
                                      retry_after_block=retry)
            s["weights"].append({"hotkey": hotkey, "block": s["block"], "uids": list(plan.uids),
                                 "weights": list(plan.values), "version_key": plan.version_key})
            return WeightsReceipt(True, s["block"], "included")

    def configure(self, *, genesis: float | None = None, block_seconds: float | None = None,
                  owner: str | None = None, tempo: int | None = None, weights_version_key: int | None = None,
                  stake_threshold: float | None = None, min_allowed_weights: int | None = None,
                  max_weight_limit: int | None = None) -> None:
        """Set the clock (block 0's UTC time as a Unix timestamp, seconds per block), the subnet owner's hotkey, the
        tempo (from the current block on, as the runtime's `sudo_set_tempo`) or a weights parameter."""
        with self._state(write=True) as s:
            if genesis is not None:
                s["genesis"] = float(genesis)
            if block_seconds is not None:
                if block_seconds <= 0:
                    raise ValueError("block_seconds must be positive")
                s["block_seconds"] = float(block_seconds)
            if owner is not None:
                s["owner"] = owner
            if tempo is not None:
                if tempo <= 0:
                    raise ValueError("tempo must be positive")
                s["epochs"] = self._epochs(s)
                s["tempo_changes"].append([int(s["block"]) + 1, int(tempo)])
            for name, value in (("weights_version_key", weights_version_key), ("stake_threshold", stake_threshold),
                                ("min_allowed_weights", min_allowed_weights), ("max_weight_limit", max_weight_limit)):
                if value is not None:
                    s["params"][name] = value

    def advance(self, blocks: int) -> int:
        """Move the block clock on by `blocks`; returns the new block."""
        with self._state(write=True) as s:
            s["block"] += int(blocks)
            return s["block"]

    def reset(self) -> None:
        with self._state(write=True) as s:
            s.clear()
            s.update(self._empty())
