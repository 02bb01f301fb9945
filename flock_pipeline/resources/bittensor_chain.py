"""The real subnet behind `ChainResource`, through the bittensor 11 SDK (`bittensor.Subtensor`).

Reads: `Client.block()`, `Client.block_time()`, `Client.query(SubtensorModule.Tempo)`, `subnets.metagraph()` (one
`SubnetInfoRuntimeApi.get_metagraph` call) and `Client.query_map(Commitments.CommitmentOf, [netuid])`, decoded here
entry by entry (the SDK's `subnets.commitments()` aborts the whole read on one malformed entry).
Writes are signed by the hotkey: `submit_call(Commitments.set_commitment, signer="hotkey")` and
`execute(SetWeights)`, which picks plaintext `set_mechanism_weights` or the timelocked commit-reveal path from the
subnet's `CommitRevealWeightsEnabled`.

Connection handling: one private event-loop thread per endpoint list holds a connected async client (shared by every
resource instance with that configuration in the process). Every call has a timeout; connection errors and timeouts
are retried `max_retries` times with exponential backoff, reconnecting through `network` then `fallback_endpoints`
in order. Chain refusals are never retried. A write whose answer was lost is not blindly resent: the retry first
checks whether it already landed (the hotkey's commitment / its `LastUpdate`).

The wallet (name, hotkey, path, hotkey password) is read from environment variables named by the config at call time;
their values never appear in config, logs or error messages, with one exception: a hotkey file that is not there is a
configuration error naming the path where it was looked for (the password never appears anywhere).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import bittensor as bt
from bittensor.keyfiles import resolve_key_password
from bittensor.settings import resolve_endpoint
from pydantic import PrivateAttr

from flock_pipeline.core.commitment import MAX_COMMITMENT_BYTES
from flock_pipeline.core.weights import U16_MAX, WeightRules, WeightsPlan
from flock_pipeline.errors import ConfigError
from flock_pipeline.resources.chain import (ChainError, ChainResource, Neuron, PendingCommit, RawCommitment,
                                            ValidatorWeight, WeightsReceipt)
from datetime import UTC

log = logging.getLogger(__name__)

T = TypeVar("T")
SubstrateFactory = Callable[[str], Any]  # endpoint URL -> a `bittensor.Substrate` implementation
Operation = Callable[[Any, int], Awaitable[T]]  # (connected async client, attempt number) -> result

# Connection-level failures: retried with backoff (after reconnecting). Everything else is an answer.
_TRANSIENT = (bt.RpcConnectionError, bt.ConnectionNotReady, ConnectionError, TimeoutError, OSError)
_SUBTENSOR = bt.storage.SubtensorModule
_COMMITMENTS = bt.storage.Commitments


@dataclass(frozen=True)
class _Injected:
    factory: SubstrateFactory
    signers: tuple[Any, ...]


_REGISTRY_LOCK = threading.Lock()
_INJECTED: dict[str, _Injected] = {}
_SESSIONS: dict[tuple[tuple[str, ...], str], _Session] = {}
_HANDLES = itertools.count(1)


class _Session:
    """A private event loop on a daemon thread, holding one connected async client (opened lazily, reopened after a
    connection failure, trying the endpoints in order)."""

    def __init__(self, endpoints: list[str], factory: SubstrateFactory | None) -> None:
        self._endpoints = endpoints
        self._factory = factory
        self._client: Any = None
        self._lock: asyncio.Lock | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flock-bittensor", daemon=True)
        self._thread.start()
        self.closed = False

    def run(self, op: Callable[[Any], Awaitable[T]], timeout: float, connect_timeout: float) -> T:
        if self.closed:
            raise ConnectionError("the chain session is closed")
        future = asyncio.run_coroutine_threadsafe(self._run(op, timeout, connect_timeout), self._loop)
        try:
            return future.result(timeout + connect_timeout * len(self._endpoints) + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the chain did not answer in time") from None

    async def _run(self, op: Callable[[Any], Awaitable[T]], timeout: float, connect_timeout: float) -> T:
        client = await self._connected(connect_timeout)
        try:
            return await asyncio.wait_for(op(client), timeout)
        except _TRANSIENT:
            await self._disconnect(client)
            raise

    async def _connected(self, timeout: float) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is not None:
                return self._client
            failure: BaseException | None = None
            for endpoint in self._endpoints:
                if self._factory is not None:
                    subtensor = bt.Subtensor(endpoint, substrate=self._factory(endpoint))
                else:  # we rotate endpoints ourselves, so the SDK's client stays pinned to one
                    subtensor = bt.Subtensor(endpoint, fallback_endpoints=[])
                try:
                    self._client = await asyncio.wait_for(_open(subtensor), timeout)
                    return self._client
                except _TRANSIENT as exc:
                    failure = exc
                    fallback = "; trying the next endpoint" if endpoint != self._endpoints[-1] else ""
                    log.warning("could not connect to %s (%s)%s", _safe_endpoint(endpoint), type(exc).__name__,
                                fallback)
            raise failure if failure is not None else ConnectionError("no chain endpoint configured")

    async def _disconnect(self, client: Any) -> None:
        if client is not None and client is self._client:
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._disconnect(self._client), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _open(subtensor: bt.Subtensor) -> Any:
    return await subtensor  # awaiting a Subtensor connects it and yields the async client


def _safe_endpoint(url: str) -> str:
    """scheme://host[:port] only: user info, a path or a query string may carry an API key."""
    match = re.match(r"^(wss?://)(?:[^@/?#\s]*@)?([^@/?#\s]+)", url)
    return match.group(1) + match.group(2) if match else "<endpoint>"


def decode_commitment_fields(fields: list) -> str | None:
    """The text of a commitment's decoded `Data` fields: its `Raw{n}` bytes (0x-hex, bytes or a list of ints, as a
    node's decoder may hand them over), concatenated and decoded as strict UTF-8; None when there is no Raw field.

    Raises ValueError with the reason when the Raw fields are malformed or not UTF-8.
    """
    raw = bytearray()
    found = False
    for entry in fields:
        if isinstance(entry, str):
            continue  # unit variants (None, ResetBondsFlag) carry no data
        if not isinstance(entry, dict):
            raise ValueError(f"unexpected field of type {type(entry).__name__}")
        for variant, value in entry.items():
            if not str(variant).startswith("Raw"):
                continue  # hashes and timelocked payloads are not plaintext
            if isinstance(value, str):
                try:
                    chunk = bytes.fromhex(value[2:]) if value.startswith("0x") else value.encode("utf-8")
                except (ValueError, UnicodeEncodeError):
                    raise ValueError(f"{variant} payload is not valid hex") from None
            elif isinstance(value, (bytes, bytearray, list, tuple)):
                try:
                    chunk = bytes(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{variant} payload is not a byte list") from None
            else:
                raise ValueError(f"{variant} payload of type {type(value).__name__}")
            size = str(variant)[3:]
            if size.isdigit() and int(size) != len(chunk):
                raise ValueError(f"{variant} payload has {len(chunk)} bytes")
            raw += chunk
            found = True
    if not found:
        return None
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("raw bytes are not UTF-8") from None


def _record_text(record: Any) -> tuple[int, str]:
    """(block, text) of one decoded `CommitmentOf` record; raises ValueError with the reason when unreadable."""
    if not isinstance(record, dict):
        raise ValueError(f"record of type {type(record).__name__}")
    try:
        block = int(record["block"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("record without a block number") from None
    info = record.get("info")
    fields = info.get("fields") if isinstance(info, dict) else None
    if not isinstance(fields, (list, tuple)):
        raise ValueError("record without fields")
    text = decode_commitment_fields(list(fields))
    if text is None:
        raise ValueError("no plaintext (Raw) field; sealed or hashed commitments are not read")
    return block, text


def _inclusion_block(result: bt.ExtrinsicResult) -> int | None:
    if result.extrinsic_id:
        number = result.extrinsic_id.partition("-")[0]
        if number.isdigit():
            return int(number)
    return None


def _refusal(result: bt.ExtrinsicResult) -> str:
    name = result.error.name if result.error is not None else None
    message = (result.message or "").strip()
    return f"{name}: {message}" if name and message and message != name else (name or message or "refused")


class BittensorChainResource(ChainResource):
    """A Bittensor subnet (default: netuid 96 on finney) through the bittensor SDK.

    `network` is "finney", "test" or a ws(s):// URL; `fallback_endpoints` are tried in order when it cannot connect.
    The signing hotkey comes from the wallet named by the environment variables `wallet_name_env` /
    `wallet_hotkey_env` under `wallet_path_env` (default ~/.bittensor/wallets); an encrypted hotkey is unlocked with
    `wallet_password_env` (or the SDK's per-keyfile BT_PW_* variable). `hotkey` arguments are ss58 addresses (the
    wallet's hotkey name is accepted as an alias) and must be the wallet's own hotkey.

    Epochs are the chain's `SubnetEpochIndex`, started at `LastEpochBlock` (read at the block asked about, so a
    tempo change moves the next epoch's start but never the numbering). `tempo` > 0 pins the pipeline's own epochs
    to `block // tempo` instead (a fixed length: a chain tempo change does not reach it).

    Tests inject a `bittensor.Substrate` (and keypairs) with `with_substrate` / `with_substrate_factory`.
    """

    network: str = "finney"
    fallback_endpoints: list[str] = []
    netuid: int = 96
    tempo: int = 0
    wallet_name_env: str = "BT_WALLET_NAME"
    wallet_hotkey_env: str = "BT_WALLET_HOTKEY"
    wallet_path_env: str = "BT_WALLET_PATH"
    wallet_password_env: str = "BT_WALLET_PASSWORD"
    timeout_s: float = 30.0  # per read and per connection attempt
    submit_timeout_s: float = 120.0  # per write, inclusion included
    max_retries: int = 3
    backoff_s: float = 1.0
    version_key: int = 0  # used when set_weights is given version_key=0; 0 here too: the chain's WeightsVersionKey
    injected_handle: str = ""  # in-process handle set by with_substrate*; empty for the real network

    _starts: dict = PrivateAttr(default_factory=dict)  # chain epoch index -> its first block (immutable once past)

    # -- construction for tests -----------------------------------------------------------------------------

    @classmethod
    def with_substrate(cls, substrate: Any, *, signers: Iterable[Any] = (), **config: Any) -> BittensorChainResource:
        """A resource whose chain is `substrate` (any `bittensor.Substrate`, e.g. a test fake) behind the real
        `bittensor.Subtensor`. `signers` are keypairs (`bittensor.Signer`) used instead of the environment's wallet,
        picked by ss58 address. The injection survives Dagster re-instantiating the resource in this process."""
        return cls.with_substrate_factory(lambda _endpoint: substrate, signers=signers, **config)

    @classmethod
    def with_substrate_factory(cls, factory: SubstrateFactory, *, signers: Iterable[Any] = (),
                               **config: Any) -> BittensorChainResource:
        """Like `with_substrate`, with one substrate per endpoint URL (`factory(url)`), to exercise fallbacks."""
        handle = f"injected-{next(_HANDLES)}"
        with _REGISTRY_LOCK:
            _INJECTED[handle] = _Injected(factory, tuple(signers))
        return cls(injected_handle=handle, **config)

    def close(self) -> None:
        """Close this configuration's connection (and forget an injected substrate); the next call reconnects."""
        key = self._session_key()
        with _REGISTRY_LOCK:
            session = _SESSIONS.pop(key, None)
            if self.injected_handle:
                _INJECTED.pop(self.injected_handle, None)
        if session is not None:
            session.close()

    # -- reads ------------------------------------------------------------------------------------------------

    def current_block(self) -> int:
        return int(self._call("current block", lambda client, _attempt: client.block()))

    def network_id(self) -> str:
        """The network as configured (finney, test, or the endpoint without credentials) and the netuid. A
        development chain restarted from genesis on the same endpoint keeps its name: give it a new netuid or
        endpoint, or clear the sensors' cursors."""
        return f"{self._network_label()}-{self.netuid}"

    def seconds_per_block(self) -> float:
        """The chain's block time (12 s on finney), from its `Aura.SlotDuration`."""
        return float(self._call("block time", lambda client, _attempt: client.block_time()))

    def clock(self):
        """The block clock anchored at the head: its `Timestamp.Now` and the chain's block time (blocks are close to
        evenly spaced, so a block's time is the head's minus the blocks in between)."""
        from datetime import datetime

        from flock_pipeline.core.competitions import Clock

        async def op(client: Any, _attempt: int) -> tuple[int, int, float]:
            head = await client.block()
            now_ms = await client.query(bt.storage.Timestamp.Now, [], block=head)
            return head, int(now_ms or 0), await client.block_time()

        head, now_ms, seconds = self._call("block clock", op)
        if now_ms <= 0 or seconds <= 0:
            raise ChainError(f"{self._network_label()} did not give the time of block {head}")
        genesis = now_ms / 1000.0 - head * seconds
        return Clock(datetime.fromtimestamp(genesis, tz=UTC), float(seconds))

    def weights_set_since(self, hotkey: str, block: int) -> int | None:
        """The hotkey's `LastUpdate` (the block of its last weights or weight commit) when it is >= `block`."""
        address = self._signer(hotkey).ss58_address

        async def op(client: Any, _attempt: int) -> int | None:
            uid = await client.query(_SUBTENSOR.Uids, [self.netuid, address])
            if uid is None:
                return None
            return _uid_value(await client.query(_SUBTENSOR.LastUpdate, [self.netuid]), int(uid))

        last = self._call("last weights", op)
        return int(last) if last is not None and int(last) >= block and int(last) > 0 else None

    def owner_hotkey(self) -> str | None:
        """`SubtensorModule.SubnetOwnerHotkey` of the subnet."""
        value = self._call("owner", lambda client, _attempt: client.query(_SUBTENSOR.SubnetOwnerHotkey,
                                                                            [self.netuid]))
        return str(value) if value else None

    def chain_tempo(self) -> int:
        """The subnet's tempo as the chain has it now (`SubtensorModule.Tempo`)."""
        value = self._call("tempo", lambda client, _attempt: client.query(_SUBTENSOR.Tempo, [self.netuid]))
        if not value:
            raise ChainError(f"netuid {self.netuid} has no tempo on {self._network_label()} (does it exist?)")
        return int(value)

    def effective_tempo(self) -> int:
        return self.tempo if self.tempo > 0 else self.chain_tempo()

    def epoch_position(self, block: int | None = None) -> tuple[int, int]:
        """(SubnetEpochIndex, LastEpochBlock) at `block` (default: the head): the epoch that block falls in. For a
        block beyond the head it is estimated at the current tempo."""

        async def op(client: Any, _attempt: int) -> tuple[int, int, int, int]:
            head = int(await client.block())
            at = head if block is None else min(int(block), head)
            index, last, tempo = await asyncio.gather(
                client.query(_SUBTENSOR.SubnetEpochIndex, [self.netuid], block=at),
                client.query(_SUBTENSOR.LastEpochBlock, [self.netuid], block=at),
                client.query(_SUBTENSOR.Tempo, [self.netuid], block=at))
            return at, int(index or 0), int(last or 0), int(tempo or 0)

        at, index, last, tempo = self._call("epoch index", op)
        self._starts[index] = last
        if block is not None and block > at and tempo > 0:
            ahead = (int(block) - last) // tempo
            return index + ahead, last + ahead * tempo
        return index, last

    def epoch_of(self, block: int) -> int:
        if self.tempo > 0:
            return block // self.tempo
        return self.epoch_position(block)[0]

    def epoch_start(self, epoch: int) -> int:
        """A past epoch's first block is read from the chain state of the block before the next one's start
        (walking back one epoch per read, at most 64, each remembered); the current epoch's is `LastEpochBlock`;
        a future one is estimated at the current tempo."""
        if self.tempo > 0:
            return epoch * self.tempo
        if epoch in self._starts:
            return self._starts[epoch]
        index, start = self.epoch_position()
        if epoch > index:
            return start + (epoch - index) * self.chain_tempo()
        for _ in range(64):
            if index == epoch:
                return start
            if start <= 0:
                break
            index, start = self.epoch_position(start - 1)
        raise ChainError(f"epoch {epoch} is too far back in the chain's history to find its first block")

    def metagraph(self) -> list[Neuron]:
        """Every uid of the subnet. `stake` is the neuron's total stake weight on the subnet (alpha units, the
        quantity validator permits are ranked by)."""

        async def op(client: Any, _attempt: int) -> Any:
            return await client.subnets.metagraph(self.netuid, commitments=False)

        graph = self._call("metagraph", op)
        if graph is None:
            raise ChainError(f"netuid {self.netuid} does not exist on {self._network_label()}")
        return [Neuron(uid=n.uid, hotkey=n.hotkey, coldkey=n.coldkey, stake=float(n.total_stake.amount),
                       validator_permit=bool(n.validator_permit), registration_block=int(n.block_at_registration),
                       incentive=float(n.incentive or 0.0))
                for n in graph.neurons]

    def commitments(self, at_block: int | None = None) -> list[RawCommitment]:
        """Every hotkey's latest commitment written at or before `at_block` (default: now).

        The chain keeps one commitment per hotkey. With `at_block` the state of that block is read, which sees a
        commitment overwritten since; when the node no longer holds that state (a pruned node without an archive
        fallback) the head's commitments with block <= `at_block` are returned instead, so a hotkey that re-committed
        after `at_block` is missing (the store keeps the history). Undecodable entries are skipped with a logged
        reason.
        """
        if at_block is not None and at_block < 0:
            return []

        async def op(client: Any, _attempt: int) -> list[tuple[Any, Any]]:
            head = await client.block()
            pinned = head if at_block is None else min(at_block, head)
            try:
                return await client.query_map(_COMMITMENTS.CommitmentOf, [self.netuid], block=pinned)
            except bt.ChainError as exc:
                if pinned == head:
                    raise
                log.warning("the state of block %d is not available (%s); using the latest commitments at block %d "
                            "(any re-committed since block %d are missing)", pinned, exc.name or "ChainError", head,
                            pinned)
                return await client.query_map(_COMMITMENTS.CommitmentOf, [self.netuid], block=head)

        out = []
        for hotkey, record in self._call("commitments", op):
            try:
                block, text = _record_text(record)
            except ValueError as reason:
                log.warning("skipping the commitment of %s: %s", hotkey, reason)
                continue
            if at_block is None or block <= at_block:
                out.append(RawCommitment(hotkey=str(hotkey), block=block, data=text))
        return sorted(out, key=lambda c: (c.block, c.hotkey))

    # -- writes -----------------------------------------------------------------------------------------------

    def set_commitment(self, hotkey: str, data: str) -> int:
        try:
            payload = data.encode("utf-8")
        except UnicodeEncodeError:
            raise ChainError("commitment is not valid Unicode text") from None
        if len(payload) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commitment is longer than {MAX_COMMITMENT_BYTES} bytes")
        signer = self._signer(hotkey)
        address = signer.ss58_address
        # CommitmentInfo with one Data field: the variant Raw{n} carries exactly n bytes (n <= 128)
        info = {"fields": [{f"Raw{len(payload)}": payload}]}
        call = bt.calls.Commitments.set_commitment(netuid=self.netuid, info=info)
        state: dict[str, int] = {}

        async def op(client: Any, _attempt: int) -> int:
            if "head" in state:  # an earlier attempt lost its answer: did it land?
                record = await client.query(_COMMITMENTS.CommitmentOf, [self.netuid, address])
                if _is_commitment(record, payload, after=state["head"]):
                    return int(record["block"])
            else:
                head = await client.block()
                if await client.query(_SUBTENSOR.Uids, [self.netuid, address]) is None:
                    raise ChainError(f"hotkey {address} is not registered on netuid {self.netuid}")
                state["head"] = head
            result = await client.submit_call(call, signer, signer="hotkey", wait_for_finalization=False)
            if not result.success:
                raise ChainError(f"the chain refused the commitment of {address}: {_refusal(result)}")
            block = _inclusion_block(result)
            return block if block is not None else int(await client.block())

        block = self._call("set_commitment", op, timeout=self.submit_timeout_s)
        log.info("commitment of %s included in block %d", address, block)
        return block

    def weight_rules(self, hotkey: str) -> WeightRules:
        """Registration, permit, stake, `SubnetOwnerHotkey`, `StakeThreshold`, `WeightsVersionKey`,
        `MinAllowedWeights`, `MaxWeightsLimit`, `WeightsSetRateLimit`, `LastUpdate`, `CommitRevealWeightsEnabled`,
        `RevealPeriodEpochs` and `SubnetEpochIndex`, all read at one block (the metagraph's stake weight included)."""
        address = self._signer(hotkey).ss58_address

        async def op(client: Any, _attempt: int) -> WeightRules:
            view = await client.at()
            head = int(view.block)
            names = ("Uids", "ValidatorPermit", "WeightsSetRateLimit", "LastUpdate", "SubnetworkN",
                     "CommitRevealWeightsEnabled", "SubnetOwnerHotkey", "WeightsVersionKey", "MinAllowedWeights",
                     "MaxWeightsLimit", "RevealPeriodEpochs", "SubnetEpochIndex")
            values = await asyncio.gather(*(view.query(getattr(_SUBTENSOR, n), [self.netuid, address]
                                                       if n == "Uids" else [self.netuid]) for n in names),
                                          view.query(_SUBTENSOR.StakeThreshold, []),
                                          client.subnets.metagraph(self.netuid, commitments=False, block=head))
            v = dict(zip(names, values))
            threshold, graph = values[-2], values[-1]
            uid = None if v["Uids"] is None else int(v["Uids"])
            permits = v["ValidatorPermit"] if isinstance(v["ValidatorPermit"], (list, tuple)) else []
            stake = 0.0
            if graph is not None and uid is not None:
                stake = next((float(n.total_stake.amount) for n in graph.neurons if n.uid == uid), 0.0)
            max_limit = v["MaxWeightsLimit"]
            return WeightRules(
                block=head, hotkey=address, uid=uid, subnet_n=int(v["SubnetworkN"] or 0),
                permit=bool(uid is not None and uid < len(permits) and permits[uid]),
                owner=bool(v["SubnetOwnerHotkey"]) and str(v["SubnetOwnerHotkey"]) == address,
                stake=stake, stake_threshold=int(threshold or 0) / 1e9, version_key=int(v["WeightsVersionKey"] or 0),
                min_allowed_weights=int(v["MinAllowedWeights"] or 0),
                max_weight_limit=int(max_limit) if max_limit is not None else U16_MAX,
                rate_limit=int(v["WeightsSetRateLimit"] or 0),
                last_update=_uid_value(v["LastUpdate"], uid) if uid is not None else 0,
                commit_reveal=bool(v["CommitRevealWeightsEnabled"]), reveal_period=int(v["RevealPeriodEpochs"] or 1),
                epoch=int(v["SubnetEpochIndex"] or 0))

        return self._call("weight rules", op)

    def plan_weights(self, hotkey: str, weights, version_key: int = 0) -> WeightsPlan:
        """As the base, with this resource's configured `version_key` when none is given (0: the chain's)."""
        return super().plan_weights(hotkey, weights, int(version_key or self.version_key))

    def submit_weights(self, hotkey: str, plan: WeightsPlan) -> WeightsReceipt:
        """Send a plan through the SDK's `SetWeights` intent with the plan's inputs (every uid), so that the SDK's
        conform step yields the plan's vector; it submits plaintext `set_mechanism_weights` or, when the subnet has
        commit-reveal, a timelocked commit (then `committed` is set: the weights apply only at the reveal). A lost
        answer is not resent: the retry first checks the hotkey's `LastUpdate`. Connection failures after all
        retries raise ChainError."""
        if not plan.sendable:
            raise ValueError(f"this plan is refused: {plan.refusal}")
        signer = self._signer(hotkey)
        address = signer.ss58_address
        intent = bt.SetWeights(netuid=self.netuid, uids=[u for u, _ in plan.inputs],
                               weights=[w for _, w in plan.inputs], version_key=plan.version_key)
        uid, last = plan.rules.uid, plan.rules.last_update
        committed = plan.rules.commit_reveal
        success = "committed (commit-reveal)" if committed else "included"
        state: dict[str, Any] = {}

        async def op(client: Any, _attempt: int) -> WeightsReceipt:
            if state:  # an earlier attempt lost its answer: did it land?
                landed = _uid_value(await client.query(_SUBTENSOR.LastUpdate, [self.netuid]), int(uid))
                if landed > last:
                    return WeightsReceipt(True, landed, success, committed=committed)
            state["sent"] = True
            try:
                result = await client.execute(intent, signer, wait_for_finalization=False)
            except _TRANSIENT:
                raise
            except bt.ChainError as exc:  # the SDK's own preflight refused (the chain moved since the plan)
                return WeightsReceipt(False, int(await client.block()), f"{exc.name or exc.code.value}: {exc.message}")
            except bt.BittensorError as exc:
                return WeightsReceipt(False, int(await client.block()), f"weights not submitted: {exc}")
            block = _inclusion_block(result)
            block = block if block is not None else int(await client.block())
            if not result.success:
                return WeightsReceipt(False, block, _refusal(result))
            reveal_round = result.data.get("reveal_round")
            message = f"{success}; reveals at drand round {reveal_round}" if reveal_round is not None else success
            return WeightsReceipt(True, block, message, committed=committed,
                                  reveal_round=int(reveal_round) if reveal_round is not None else None)

        receipt = self._call("set_weights", op, timeout=self.submit_timeout_s)
        log.info("weights of %s on netuid %d: success=%s block=%d (%s)", address, self.netuid, receipt.success,
                 receipt.block, receipt.message)
        return receipt

    def stored_weights(self, hotkey: str) -> dict[int, int] | None:
        """`SubtensorModule.Weights` of the hotkey's uid (mechanism 0: storage index = netuid)."""
        address = self._signer(hotkey).ss58_address

        async def op(client: Any, _attempt: int) -> Any:
            uid = await client.query(_SUBTENSOR.Uids, [self.netuid, address])
            if uid is None:
                return None
            return await client.query(_SUBTENSOR.Weights, [self.netuid, int(uid)])

        return _weight_row(self._call("stored weights", op))

    def pending_commits(self, hotkey: str) -> list[PendingCommit]:
        """The hotkey's entries of `SubtensorModule.TimelockedWeightCommits` (keyed by the epoch they were made in)."""
        address = self._signer(hotkey).ss58_address

        async def op(client: Any, _attempt: int) -> Any:
            return await client.query_map(_SUBTENSOR.TimelockedWeightCommits, [self.netuid])

        out = []
        for epoch, entries in self._call("weight commits", op) or []:
            for entry in entries or []:
                try:
                    who, block, _commit, reveal_round = entry
                except (TypeError, ValueError):
                    continue
                if str(who) == address:
                    out.append(PendingCommit(epoch=int(epoch), block=int(block), reveal_round=int(reveal_round)))
        return sorted(out, key=lambda c: c.block)

    def validator_weights(self, uid: int) -> list[ValidatorWeight]:
        """Each validator's (permit or subnet owner) `Weights` row, and its value for `uid`."""

        async def op(client: Any, _attempt: int) -> tuple[Any, Any, list]:
            view = await client.at()
            graph, owner = await asyncio.gather(client.subnets.metagraph(self.netuid, commitments=False,
                                                                         block=view.block),
                                                view.query(_SUBTENSOR.SubnetOwnerHotkey, [self.netuid]))
            validators = [n for n in (graph.neurons if graph is not None else [])
                          if n.validator_permit or (owner and n.hotkey == str(owner))]
            rows = await asyncio.gather(*(view.query(_SUBTENSOR.Weights, [self.netuid, n.uid]) for n in validators))
            return graph, owner, list(zip(validators, rows))

        _graph, _owner, pairs = self._call("validator weights", op)
        out = []
        for neuron, raw in pairs:
            row = _weight_row(raw)
            if not row:
                continue
            total = sum(row.values())
            out.append(ValidatorWeight(hotkey=neuron.hotkey, uid=int(neuron.uid),
                                       stake=float(neuron.total_stake.amount), value=int(row.get(uid, 0)),
                                       share=row.get(uid, 0) / total if total else 0.0))
        return out

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _network_label(self) -> str:
        return self.network if not self.network.startswith("ws") else _safe_endpoint(self.network)

    def _endpoints(self) -> list[str]:
        try:
            primary = resolve_endpoint(self.network)[1]
        except ValueError:
            raise ChainError(f"unknown network {self.network!r}: use 'finney', 'test' or a ws(s):// URL") from None
        return list(dict.fromkeys([primary, *self.fallback_endpoints]))

    def _session_key(self) -> tuple[tuple[str, ...], str]:
        return tuple(self._endpoints()), self.injected_handle

    def _injected(self) -> _Injected | None:
        if not self.injected_handle:
            return None
        with _REGISTRY_LOCK:
            injected = _INJECTED.get(self.injected_handle)
        if injected is None:
            raise ChainError(f"no substrate is injected under {self.injected_handle!r} in this process")
        return injected

    def _session(self) -> _Session:
        key = self._session_key()
        injected = self._injected()
        with _REGISTRY_LOCK:
            session = _SESSIONS.get(key)
            if session is None or session.closed:
                session = _SESSIONS[key] = _Session(list(key[0]), injected.factory if injected else None)
            return session

    def _call(self, what: str, op: Operation[T], timeout: float | None = None) -> T:
        """Run `op` on the connected client: a timeout per attempt, bounded retries with exponential backoff on
        connection errors and timeouts; SDK chain errors become ChainError."""
        attempts = max(0, self.max_retries) + 1
        for attempt in range(attempts):
            try:
                session = self._session()
                return session.run(lambda client, n=attempt: op(client, n), timeout or self.timeout_s, self.timeout_s)
            except ChainError:
                raise
            except _TRANSIENT as exc:
                reason = self._describe(exc)
                if attempt + 1 >= attempts:
                    raise ChainError(f"{what}: no answer from {self._network_label()} after {attempts} attempts "
                                     f"({reason})") from None
                delay = self.backoff_s * 2**attempt
                log.warning("%s: %s; retry %d of %d in %.1fs", what, reason, attempt + 1, attempts - 1, delay)
                time.sleep(delay)
            except bt.ChainError as exc:
                raise ChainError(f"{what}: {exc.name or exc.code.value}: {self._scrub(exc.message)}") from None
            except bt.BittensorError as exc:
                raise ChainError(f"{what}: {self._scrub(str(exc))}") from None
        raise AssertionError("unreachable")

    def _secrets(self) -> list[str]:
        names = (self.wallet_name_env, self.wallet_hotkey_env, self.wallet_path_env, self.wallet_password_env)
        return [v for v in (os.environ.get(n, "") for n in names) if len(v) >= 3]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return re.sub(r"(wss?://[^/?#\s'\"]+)[^\s'\"]*", r"\1", text)

    def _describe(self, exc: BaseException) -> str:
        detail = self._scrub(str(exc))[:200]
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__

    def _signer(self, hotkey: str) -> Any:
        """The keypair that signs for `hotkey`: an injected one, else the environment's wallet hotkey."""
        injected = self._injected()
        if injected is not None and injected.signers:
            signer = next((s for s in injected.signers if s.ss58_address == hotkey), None)
            if signer is None:
                raise ChainError(f"no signing key for hotkey {hotkey}")
            return signer
        keypair = self._wallet_keypair()
        if hotkey not in (keypair.ss58_address, os.environ.get(self.wallet_hotkey_env, "")):
            raise ChainError(f"hotkey {hotkey} is not the configured wallet's hotkey ({keypair.ss58_address})")
        return keypair

    def wallet_hotkey_file(self) -> str:
        """Where the environment's wallet hotkey file is expected: `$BT_WALLET_PATH/$BT_WALLET_NAME/hotkeys/
        $BT_WALLET_HOTKEY` (the path defaults to ~/.bittensor/wallets). ConfigError when the wallet is not named."""
        name = os.environ.get(self.wallet_name_env, "")
        hotkey_name = os.environ.get(self.wallet_hotkey_env, "")
        if not name or not hotkey_name:
            raise ConfigError(f"no wallet configured: set {self.wallet_name_env} and {self.wallet_hotkey_env} "
                              f"(and {self.wallet_path_env} when the wallet is not under ~/.bittensor/wallets)")
        path = os.environ.get(self.wallet_path_env, "")
        wallet = bt.Wallet(name, hotkey_name, path) if path else bt.Wallet(name, hotkey_name)
        return str(wallet.hotkey_file.path)

    def wallet_address(self) -> str:
        """The ss58 address of the environment's wallet hotkey, unlocked (ConfigError as for signing)."""
        return self._wallet_keypair().ss58_address

    def _wallet_keypair(self) -> Any:
        """The environment's wallet hotkey, unlocked. A wallet that is not named, a hotkey file that is missing or
        unreadable, and an encrypted one without its password are configuration errors (exit 2); a missing file is
        named by its path so the operator sees where it was looked for. No other error names the wallet."""
        hotkey_file = self.wallet_hotkey_file()
        if not os.path.isfile(hotkey_file):
            raise ConfigError(f"no wallet hotkey file at {hotkey_file}",
                              hint=f"create or copy the hotkey there (btcli wallet new-hotkey), or set "
                                   f"{self.wallet_name_env}, {self.wallet_hotkey_env} and {self.wallet_path_env} "
                                   "to the wallet that holds it")
        name, hotkey_name = os.environ[self.wallet_name_env], os.environ[self.wallet_hotkey_env]
        path = os.environ.get(self.wallet_path_env, "")
        where = f"${self.wallet_name_env}/${self.wallet_hotkey_env} under ${self.wallet_path_env}"
        try:
            wallet = bt.Wallet(name, hotkey_name, path) if path else bt.Wallet(name, hotkey_name)
            keyfile = wallet.hotkey_file
            password = os.environ.get(self.wallet_password_env) or None
            if password is None and keyfile.is_encrypted():
                password = resolve_key_password(None, env_var_name=keyfile.env_var_name(), allow_prompt=False)
                if password is None:
                    raise ConfigError(f"the wallet hotkey ({where}) is encrypted: set {self.wallet_password_env}")
            return _unlock_hotkey(wallet, password)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - keyfile errors carry the path: only the kind of failure is kept
            reason = {FileNotFoundError: "no such hotkey file", PermissionError: "the hotkey file is not readable"}
            raise ConfigError(f"could not load the wallet hotkey ({where}): "
                              f"{reason.get(type(exc), type(exc).__name__)}",
                              hint=f"check {self.wallet_password_env} and the hotkey file's permissions") from None


_KEYPAIRS: dict[tuple[str, int, int, str], Any] = {}


def _unlock_hotkey(wallet: bt.Wallet, password: str | None) -> Any:
    """The wallet's hotkey keypair. Unlocking an encrypted keyfile takes seconds, so an unlocked keypair is kept for
    the process, keyed by the file's identity and a digest of the password (a changed file or password unlocks
    again, and a wrong password still fails)."""
    path = os.path.realpath(wallet.hotkey_file.path)
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, hashlib.sha256(password.encode()).hexdigest() if password else "")
    with _REGISTRY_LOCK:
        keypair = _KEYPAIRS.get(key)
    if keypair is None:
        keypair = wallet.get_hotkey(password=password)
        with _REGISTRY_LOCK:
            _KEYPAIRS[key] = keypair
    return keypair


def _weight_row(raw: Any) -> dict[int, int] | None:
    """A decoded `Weights` row ([(uid, value), ...]) as uid -> u16; None when empty or unreadable."""
    if not isinstance(raw, (list, tuple)) or not raw:
        return None
    row = {}
    for pair in raw:
        try:
            uid, value = pair
            row[int(uid)] = int(value)
        except (TypeError, ValueError):
            return None
    return row


def _uid_value(values: Any, uid: int) -> int:
    return int(values[uid] or 0) if isinstance(values, (list, tuple)) and uid < len(values) else 0


def _is_commitment(record: Any, payload: bytes, after: int) -> bool:
    """Whether a `CommitmentOf` record holds exactly `payload`, written after block `after`."""
    try:
        block, text = _record_text(record)
    except ValueError:
        return False
    return block > after and text.encode("utf-8") == payload
