"""The chain: registered neurons, dataset commitments with their blocks, a block clock and weights.

`ChainResource` is the interface the pipeline uses; `LocalChainResource` is the embedded, file-backed subnet that
runs offline. The Bittensor implementation fills the same interface.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

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


class ChainError(RuntimeError):
    """The chain refused or could not answer; the message is safe to show (no secrets)."""


class ChainResource(dg.ConfigurableResource):
    """Interface to a subnet. Subclasses implement every method."""

    netuid: int = 96
    tempo: int = 360  # blocks per epoch (the live subnet's tempo)

    def current_block(self) -> int:
        raise NotImplementedError

    def metagraph(self) -> list[Neuron]:
        raise NotImplementedError

    def commitments(self, at_block: int | None = None) -> list[RawCommitment]:
        """Every hotkey's latest commitment written at or before `at_block` (default: now)."""
        raise NotImplementedError

    def set_commitment(self, hotkey: str, data: str) -> int:
        """Write `data` as `hotkey`'s commitment; returns the block it was included in."""
        raise NotImplementedError

    def set_weights(self, hotkey: str, uids: list[int], weights: list[int], version_key: int = 0) -> WeightsReceipt:
        """Set u16 weights from a validator hotkey; a refusal is a receipt with success=False, not an exception."""
        raise NotImplementedError

    def clock(self) -> "Clock":
        """The block clock as UTC time (daily competition rounds are defined in UTC)."""
        raise NotImplementedError

    def weights_set_since(self, hotkey: str, block: int, uids: list[int], weights: list[int]) -> int | None:
        """The block at which `hotkey` set these weights at or after `block` (None when it did not): asked before
        sending, so that a validator killed after the chain took its weights never sends an epoch's twice."""
        raise NotImplementedError

    def owner_hotkey(self) -> str | None:
        """The subnet owner's hotkey (its uid receives the weight nobody earned: the burn), None when unknown."""
        raise NotImplementedError

    def epoch_of(self, block: int) -> int:
        return block // self.tempo

    def epoch_start(self, epoch: int) -> int:
        return epoch * self.tempo


LOCAL_GENESIS = 1767225600.0  # 2026-01-01 00:00 UTC: the local chain's block 0 unless seeded otherwise
LOCAL_BLOCK_SECONDS = 12.0  # the live chain's block time


class LocalChainResource(ChainResource):
    """A persistent local subnet in one JSON file: neurons, commitment history, a block clock and weights.

    Every extrinsic is included in the next block (the clock advances by one); `advance` moves the clock on.
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
            yield state
            if write:
                fd, tmp = tempfile.mkstemp(prefix=".chain-", dir=path.parent)
                with os.fdopen(fd, "w") as f:
                    json.dump(state, f, indent=1)
                os.replace(tmp, path)

    def _empty(self) -> dict:
        return {"netuid": self.netuid, "block": 0, "neurons": [], "commitments": [], "weights": [],
                "genesis": LOCAL_GENESIS, "block_seconds": LOCAL_BLOCK_SECONDS, "owner": None}

    # -- reads -----------------------------------------------------------------------------------------------

    def current_block(self) -> int:
        with self._state(write=False) as s:
            return int(s["block"])

    def metagraph(self) -> list[Neuron]:
        with self._state(write=False) as s:
            return [Neuron(**n) for n in s["neurons"]]

    def commitments(self, at_block: int | None = None) -> list[RawCommitment]:
        with self._state(write=False) as s:
            latest: dict[str, RawCommitment] = {}
            for c in s["commitments"]:
                if at_block is None or c["block"] <= at_block:
                    latest[c["hotkey"]] = RawCommitment(**c)
            return sorted(latest.values(), key=lambda c: (c.block, c.hotkey))

    def clock(self) -> "Clock":
        from datetime import datetime, timezone

        from flock_pipeline.core.competitions import Clock

        with self._state(write=False) as s:
            genesis = float(s.get("genesis", LOCAL_GENESIS))
            return Clock(datetime.fromtimestamp(genesis, tz=timezone.utc),
                         float(s.get("block_seconds", LOCAL_BLOCK_SECONDS)))

    def owner_hotkey(self) -> str | None:
        with self._state(write=False) as s:
            return s.get("owner")

    def weights_set_since(self, hotkey: str, block: int, uids: list[int], weights: list[int]) -> int | None:
        blocks = [w["block"] for w in self.weights_history(hotkey)
                  if w["block"] >= block and w["uids"] == list(uids) and w["weights"] == list(weights)]
        return max(blocks) if blocks else None

    def weights_history(self, hotkey: str | None = None) -> list[dict]:
        with self._state(write=False) as s:
            return [w for w in s["weights"] if hotkey is None or w["hotkey"] == hotkey]

    # -- extrinsics ------------------------------------------------------------------------------------------

    def register(self, hotkey: str, coldkey: str = "", stake: float = 0.0, validator_permit: bool = False) -> Neuron:
        """Register a hotkey on the subnet (a re-registration gets a new registration block, same uid)."""
        with self._state(write=True) as s:
            s["block"] += 1
            existing = next((n for n in s["neurons"] if n["hotkey"] == hotkey), None)
            uid = existing["uid"] if existing else len(s["neurons"])
            neuron = Neuron(uid=uid, hotkey=hotkey, coldkey=coldkey or f"cold-{hotkey}", stake=stake,
                            validator_permit=validator_permit, registration_block=s["block"])
            if existing:
                s["neurons"][uid] = asdict(neuron)
            else:
                s["neurons"].append(asdict(neuron))
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

    def set_weights(self, hotkey: str, uids: list[int], weights: list[int], version_key: int = 0) -> WeightsReceipt:
        with self._state(write=True) as s:
            neuron = next((n for n in s["neurons"] if n["hotkey"] == hotkey), None)
            if neuron is None:
                return WeightsReceipt(False, s["block"], f"hotkey {hotkey} is not registered on netuid {self.netuid}")
            if not neuron["validator_permit"]:
                return WeightsReceipt(False, s["block"], f"hotkey {hotkey} has no validator permit")
            if len(uids) != len(weights) or any(not 0 <= w <= 65535 for w in weights):
                return WeightsReceipt(False, s["block"], "weights must be u16 and match uids in length")
            if any(u >= len(s["neurons"]) or u < 0 for u in uids):
                return WeightsReceipt(False, s["block"], "weights name a uid that does not exist")
            previous = [w for w in s["weights"] if w["hotkey"] == hotkey]
            if previous:
                allowed = previous[-1]["block"] + self.weights_rate_limit
                if s["block"] + 1 < allowed:
                    return WeightsReceipt(False, s["block"], f"rate limited until block {allowed}",
                                          retry_after_block=allowed)
            s["block"] += 1
            s["weights"].append({"hotkey": hotkey, "block": s["block"], "uids": list(uids),
                                 "weights": list(weights), "version_key": version_key})
            return WeightsReceipt(True, s["block"], "included")

    def configure(self, *, genesis: float | None = None, block_seconds: float | None = None,
                  owner: str | None = None) -> None:
        """Set the clock (block 0's UTC time as a Unix timestamp, seconds per block) or the subnet owner's hotkey."""
        with self._state(write=True) as s:
            if genesis is not None:
                s["genesis"] = float(genesis)
            if block_seconds is not None:
                if block_seconds <= 0:
                    raise ValueError("block_seconds must be positive")
                s["block_seconds"] = float(block_seconds)
            if owner is not None:
                s["owner"] = owner

    def advance(self, blocks: int) -> int:
        """Move the block clock on by `blocks`; returns the new block."""
        with self._state(write=True) as s:
            s["block"] += int(blocks)
            return s["block"]

    def reset(self) -> None:
        with self._state(write=True) as s:
            s.clear()
            s.update(self._empty())
