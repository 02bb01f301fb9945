"""An in-memory subnet behind bittensor 11.3's chain-access seam, for tests: ``Subtensor(substrate=FakeSubstrate())``.

bittensor 11 has no mock chain. Its ``Client`` / ``Subtensor`` take any object implementing the ``bittensor.Substrate``
protocol; this class implements the part of that protocol the SDK uses for what the pipeline does, answering from one
subnet's state and applying extrinsics to it.

Protocol methods answered -- exactly what Subtensor 11.3.0 calls for the pipeline's operations (connect, block,
block time, tempo, metagraph, commitments, set_commitment, SetWeights on both paths):

- ``connect``, ``close`` (and the ``token_symbols`` attribute ``Client.connect`` fills in)
- ``block_number``, ``block_hash`` (block-pinned views), ``block_time``
- ``query`` -- SubtensorModule: Tempo, Uids, SubnetworkN, ValidatorPermit, LastUpdate, WeightsSetRateLimit,
  CommitRevealWeightsEnabled, MinAllowedWeights, MaxWeightsLimit, SubnetEpochConsensus and, for the timelocked
  commit, RevealPeriodEpochs, LastEpochBlock, PendingEpochAt, SubnetEpochIndex, BlocksSinceLastStep;
  Commitments: CommitmentOf.
- ``query_map`` -- Commitments.CommitmentOf of the subnet. SubtensorModule.TokenSymbol (read by ``Client.connect``)
  is refused with a ``ChainError`` on purpose: the client then skips the display-only token symbols instead of
  caching them under ``~/.bittensor``.
- ``runtime_call("SubnetInfoRuntimeApi", "get_metagraph", [netuid])`` -- what ``subnets.metagraph()`` reads.
- ``compose``, ``estimate_fee`` (the plan of an intent) and ``submit`` for ``Commitments.set_commitment``,
  ``SubtensorModule.set_mechanism_weights`` and ``SubtensorModule.commit_timelocked_mechanism_weights`` (the two
  paths of the SDK's ``SetWeights`` intent). ``submit`` checks the signer's signature, includes the extrinsic in the
  next block and returns the ``ExtrinsicResult`` a real node would produce; a refused extrinsic is included too,
  with the chain's error name (e.g. ``AccountNotAllowedCommit``, ``SettingWeightsTooFast``).

Anything else raises, so a new SDK dependency shows up as a clear failure rather than a silent default. Queries pinned
to an older block see that block's commitments (the history is kept); every other item is answered from the head.
A new uid's LastUpdate starts at 0 (never set weights), so a fresh validator is not rate-limited.

Test knobs: ``register``, ``advance``, ``put_commitment`` (any raw field value, malformed ones included),
``fail_next(call_name, error_name)``, ``drop_connections(n)`` (the next n protocol calls raise
``RpcConnectionError``), ``stall(n, seconds)``, ``prune_state_before(block)``, ``lose_next_receipt()`` (the next
extrinsic is applied but its caller sees a dropped connection) and the attributes ``weights_rate_limit``,
``commit_reveal``, ``min_allowed_weights``, ``weights_version``. Inspection: ``block``, ``commitments``, ``weights``,
``weight_commits``, ``last_update``, ``extrinsics``, ``connect_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

import bittensor as bt
import bittensor_core
from bittensor._generated.errors import ERRORS

_ERROR_DOCS = {info.name: info.docs for info in ERRORS.values()}
_CALL_ALIASES = {
    "set_weights": "set_mechanism_weights",
    "commit_weights": "commit_timelocked_mechanism_weights",
}
_U16_MAX = 65535
_SUPPORTED_CALLS = {
    ("Commitments", "set_commitment"),
    ("SubtensorModule", "set_mechanism_weights"),
    ("SubtensorModule", "commit_timelocked_mechanism_weights"),
}


@dataclass(frozen=True)
class FakeCall:
    """A composed call: what ``compose`` hands back to the SDK and ``submit`` receives."""

    module: str
    function: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Neuron:
    uid: int
    hotkey: str
    coldkey: str
    stake_rao: int
    validator_permit: bool
    registration_block: int


class _Refused(Exception):
    """An extrinsic the fake chain includes but fails, with the chain's error name."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _block_hash(block: int) -> str:
    return f"0x{block:064x}"


def _field_hex(variant: str, value: Any) -> str:
    """A ``Raw{n}`` payload as the node's decoder returns it (0x-hex), checking n against its length."""
    if isinstance(value, str):
        data = bytes.fromhex(value.removeprefix("0x")) if value.startswith("0x") else value.encode()
    elif isinstance(value, (bytes, bytearray, list, tuple)):
        data = bytes(value)
    else:
        raise bt.ChainError(f"cannot encode {variant} from {type(value).__name__}")
    if not variant.startswith("Raw") or not variant[3:].isdigit() or int(variant[3:]) != len(data) or len(data) > 128:
        raise bt.ChainError(f"cannot encode {len(data)} bytes as the Data variant {variant!r}")
    return "0x" + data.hex()


class FakeSubstrate:
    """One subnet (``netuid``) behind the ``bittensor.Substrate`` protocol; see the module docstring."""

    def __init__(self, netuid: int = 96, tempo: int = 20, *, weights_rate_limit: int = 10,
                 commit_reveal: bool = False, block: int = 0, block_time: float = 12.0) -> None:
        self.netuid = netuid
        self.tempo = tempo
        self.weights_rate_limit = weights_rate_limit
        self.commit_reveal = commit_reveal
        self.min_allowed_weights = 0
        self.weights_version = 0  # the subnet's required minimum version key
        self.block_time_s = block_time
        self.genesis_ms = 1_767_225_600_000  # Timestamp.Now of block 0 (2026-01-01 00:00 UTC)
        self.owner_hotkey: str | None = None  # SubtensorModule.SubnetOwnerHotkey
        self.token_symbols: dict[int, str] = {}
        self.weights: list[dict] = []  # plaintext weights that were set, oldest first
        self.weight_commits: list[dict] = []  # timelocked (commit-reveal) weight commits, oldest first
        self.extrinsics: list[dict] = []  # every submitted extrinsic, included or refused
        self.connect_attempts = 0
        self.connected = False
        self._block = block
        self._neurons: list[_Neuron] = []
        self._last_update: list[int] = []
        self._commitment_history: dict[str, list[tuple[int, list]]] = {}  # hotkey -> [(block, fields)]
        self._fail_next: dict[str, str] = {}
        self._drops = 0
        self._lose_receipts = 0
        self._pruned_before = 0
        self._stalls = 0
        self._stall_s = 0.0
        self._lock = threading.RLock()

    # -- test knobs -----------------------------------------------------------------------------------------

    @property
    def block(self) -> int:
        return self._block

    def advance(self, blocks: int = 1) -> int:
        with self._lock:
            self._block += int(blocks)
            return self._block

    def register(self, hotkey: str, coldkey: str = "", stake: float = 0.0, validator_permit: bool = False) -> int:
        """Register (or re-register) a hotkey in the next block; returns its uid."""
        with self._lock:
            self._block += 1
            existing = self._uid_of(hotkey)
            uid = existing if existing is not None else len(self._neurons)
            neuron = _Neuron(uid, hotkey, coldkey or f"cold-{hotkey}", round(stake * 1e9), validator_permit,
                             self._block)
            if existing is None:
                self._neurons.append(neuron)
                self._last_update.append(0)
            else:
                self._neurons[uid] = neuron
            return uid

    def put_commitment(self, hotkey: str, data: str | bytes | list, block: int | None = None) -> int:
        """Store a commitment directly (no extrinsic): text/bytes as one ``Raw{n}`` field, or a list of decoded
        field variants verbatim (e.g. ``[{"Raw4": "0xzz"}]``) to plant malformed data. Returns its block."""
        with self._lock:
            if isinstance(data, list):
                fields = data
            else:
                raw = data.encode() if isinstance(data, str) else bytes(data)
                fields = [{f"Raw{len(raw)}": "0x" + raw.hex()}]
            at = self._block if block is None else int(block)
            history = self._commitment_history.setdefault(hotkey, [])
            history.append((at, fields))
            history.sort(key=lambda entry: entry[0])
            return at

    def fail_next(self, call_name: str, error_name: str) -> None:
        """The next extrinsic calling `call_name` (e.g. "set_commitment", "set_weights", "commit_weights" or the
        chain's function name) is included but fails with the module error `error_name`."""
        self._fail_next[_CALL_ALIASES.get(call_name, call_name)] = error_name

    def drop_connections(self, n: int) -> None:
        """The next `n` protocol calls (connect included) fail with ``RpcConnectionError`` and change nothing."""
        self._drops += int(n)

    def stall(self, n: int, seconds: float) -> None:
        """The next `n` protocol calls (connect excluded) take `seconds` before answering."""
        self._stalls, self._stall_s = int(n), float(seconds)

    def lose_next_receipt(self) -> None:
        """The next extrinsic is applied on chain, but its submitter gets a connection error instead of a receipt."""
        self._lose_receipts += 1

    def prune_state_before(self, block: int) -> None:
        """Reads pinned to a block before `block` fail as on a pruned node without an archive fallback."""
        self._pruned_before = int(block)

    @property
    def commitments(self) -> dict[str, dict]:
        """hotkey -> {"block", "fields", "data"} of each hotkey's current commitment (data: the Raw bytes as text,
        or None when they are not UTF-8)."""
        out = {}
        for hotkey, history in self._commitment_history.items():
            block, fields = history[-1]
            raw = b""
            for entry in fields:
                for variant, value in (entry.items() if isinstance(entry, dict) else []):
                    if variant.startswith("Raw") and isinstance(value, str) and value.startswith("0x"):
                        with contextlib.suppress(ValueError):
                            raw += bytes.fromhex(value[2:])
            try:
                text: str | None = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            out[hotkey] = {"block": block, "fields": fields, "data": text}
        return out

    @property
    def last_update(self) -> list[int]:
        return list(self._last_update)

    # -- connection -----------------------------------------------------------------------------------------

    async def _io(self) -> None:
        if self._stalls > 0:
            self._stalls -= 1
            await asyncio.sleep(self._stall_s)
        if self._drops > 0:
            self._drops -= 1
            self.connected = False
            raise bt.RpcConnectionError("connection to the fake chain dropped")
        if not self.connected:
            raise bt.ConnectionNotReady("the fake chain connection is not open")

    async def connect(self) -> None:
        self.connect_attempts += 1
        if self._drops > 0:
            self._drops -= 1
            raise bt.RpcConnectionError("the fake chain refused the connection")
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    # -- reads ------------------------------------------------------------------------------------------------

    def _at(self, block_hash: str | None) -> int:
        if block_hash is None:
            return self._block
        block = int(block_hash, 16)
        if block < self._pruned_before:
            raise bt.ChainError(f"State already discarded for block {block}", "StateDiscarded")
        return block

    async def block_number(self) -> int:
        await self._io()
        return self._block

    async def block_hash(self, block: int | None = None) -> str | None:
        await self._io()
        if block is None:
            return _block_hash(self._block)
        return _block_hash(int(block)) if 0 <= int(block) <= self._block else None

    async def block_time(self) -> float:
        await self._io()
        return self.block_time_s

    def _uid_of(self, hotkey: str) -> int | None:
        return next((n.uid for n in self._neurons if n.hotkey == hotkey), None)

    def _commitment_at(self, hotkey: str, block: int) -> dict | None:
        entries = [entry for entry in self._commitment_history.get(hotkey, []) if entry[0] <= block]
        if not entries:
            return None
        at, fields = entries[-1]
        return {"block": at, "deposit": 0, "info": {"fields": list(fields)}}

    def _subnet_item(self, name: str, block: int) -> Any:
        epoch_start = block - block % self.tempo if self.tempo else 0
        items = {
            "Tempo": self.tempo,
            "SubnetworkN": len(self._neurons),
            "ValidatorPermit": [n.validator_permit for n in self._neurons],
            "WeightsSetRateLimit": self.weights_rate_limit,
            "CommitRevealWeightsEnabled": self.commit_reveal,
            "MinAllowedWeights": self.min_allowed_weights,
            "MaxWeightsLimit": _U16_MAX,
            "SubnetEpochConsensus": "Yuma",
            "RevealPeriodEpochs": 1,
            "LastEpochBlock": epoch_start,
            "PendingEpochAt": 0,
            "SubnetEpochIndex": block // self.tempo if self.tempo else 0,
            "BlocksSinceLastStep": block - epoch_start,
        }
        if name not in items:
            raise KeyError(name)
        return items[name]

    async def query(self, module: str, storage_function: str, params: list | None = None,
                    block_hash: str | None = None) -> Any:
        await self._io()
        with self._lock:
            return self._query(module, storage_function, list(params or []), self._at(block_hash))

    def _query(self, module: str, name: str, params: list, block: int) -> Any:
        if module == "Timestamp" and name == "Now":
            return self.genesis_ms + int(block * self.block_time_s * 1000)
        if module == "SubtensorModule" and name == "SubnetOwnerHotkey":
            return self.owner_hotkey if params and params[0] == self.netuid else None
        if module == "Commitments" and name == "CommitmentOf":
            netuid, hotkey = params
            return self._commitment_at(hotkey, block) if netuid == self.netuid else None
        if module == "SubtensorModule":
            if not params or params[0] != self.netuid:
                return None
            if name == "LastUpdate":
                return list(self._last_update)
            if name == "Uids":
                return self._uid_of(params[1])
            try:
                return self._subnet_item(name, block)
            except KeyError:
                pass
        raise bt.ChainError(f"the fake chain does not serve {module}.{name}")

    async def query_map(self, module: str, storage_function: str, params: list | None = None,
                        block_hash: str | None = None) -> list[tuple[Any, Any]]:
        await self._io()
        params = list(params or [])
        with self._lock:
            at = self._at(block_hash)
            if (module, storage_function) == ("Commitments", "CommitmentOf") and params == [self.netuid]:
                rows = [(hotkey, self._commitment_at(hotkey, at)) for hotkey in self._commitment_history]
                return [(hotkey, record) for hotkey, record in rows if record is not None]
        raise bt.ChainError(f"the fake chain does not serve the map {module}.{storage_function}")

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        await self._io()
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph"):
            raise bt.ChainError(f"the fake chain does not serve the runtime API {api}.{method}")
        if list(params) != [self.netuid]:
            return None
        with self._lock:
            block = self._at(block_hash)
            neurons = self._neurons
            owner = neurons[0] if neurons else None
            epoch_start = block - block % self.tempo if self.tempo else 0
            return {
                "netuid": self.netuid, "name": "flock", "symbol": "", "block": block, "tempo": self.tempo,
                "last_step": epoch_start, "blocks_since_last_step": block - epoch_start,
                "owner_hotkey": owner.hotkey if owner else "", "owner_coldkey": owner.coldkey if owner else "",
                "network_registered_at": 0, "num_uids": len(neurons), "max_uids": 256,
                "hotkeys": [n.hotkey for n in neurons],
                "coldkeys": [n.coldkey for n in neurons],
                "active": [True for _ in neurons],
                "validator_permit": [n.validator_permit for n in neurons],
                "last_update": list(self._last_update),
                "block_at_registration": [n.registration_block for n in neurons],
                "alpha_stake": [n.stake_rao for n in neurons],
                "tao_stake": [0 for _ in neurons],
                "total_stake": [n.stake_rao for n in neurons],
                "emission": [0 for _ in neurons],
            }

    # -- writes -----------------------------------------------------------------------------------------------

    async def compose(self, call: Any) -> FakeCall:
        await self._io()
        module, function, params = call
        params = dict(params)
        if (module, function) == ("Commitments", "set_commitment"):
            info = params.get("info")
            fields = info.get("fields") if isinstance(info, dict) else None
            if not isinstance(fields, list) or not all(isinstance(f, dict) and len(f) == 1 for f in fields):
                raise bt.ChainError("cannot encode CommitmentInfo: expected {'fields': [{variant: value}, ...]}")
            params["info"] = {"fields": [{variant: _field_hex(variant, value) for variant, value in f.items()}
                                         for f in fields]}
        return FakeCall(module, function, params)

    async def estimate_fee(self, call: Any, keypair: Any) -> bt.Balance:
        await self._io()
        return bt.Balance.from_rao(0)

    async def submit(self, call: FakeCall, keypair: Any, *, nonce: int | None = None, period: int | None = None,
                     wait_for_inclusion: bool = True, wait_for_finalization: bool = True) -> bt.ExtrinsicResult:
        await self._io()
        if (call.module, call.function) not in _SUPPORTED_CALLS:
            raise bt.ChainError(f"the fake chain does not implement {call.module}.{call.function}")
        signer = keypair.ss58_address
        payload = repr((call.module, call.function, sorted(call.params.items(), key=lambda kv: kv[0]))).encode()
        signature = keypair.sign(payload)
        if inspect.isawaitable(signature):
            signature = await signature
        if not bittensor_core.Keypair(ss58_address=signer, crypto_type=keypair.crypto_type).verify(payload,
                                                                                                   signature):
            return bt.ExtrinsicResult(False, "Transaction has a bad signature",
                                      error=bt.ChainError("Transaction has a bad signature", "BadProof"))
        with self._lock:
            self._block += 1
            record = {"block": self._block, "module": call.module, "function": call.function, "signer": signer,
                      "params": call.params, "success": True, "error": None}
            self.extrinsics.append(record)
            try:
                forced = self._fail_next.pop(call.function, None)
                if forced:
                    raise _Refused(forced)
                self._apply(call, signer)
            except _Refused as refused:
                record.update(success=False, error=refused.name)
            lost = self._lose_receipts > 0
            if lost:
                self._lose_receipts -= 1
        if lost:
            self.connected = False
            raise bt.RpcConnectionError("connection to the fake chain dropped while waiting for inclusion")
        extrinsic_id = f"{self._block}-0001"
        if record["success"]:
            return bt.ExtrinsicResult(True, "Success", block_hash=_block_hash(self._block),
                                      extrinsic_id=extrinsic_id, fee=bt.Balance.from_rao(0))
        name = record["error"]
        text = _ERROR_DOCS.get(name, name)
        return bt.ExtrinsicResult(False, text, block_hash=_block_hash(self._block), extrinsic_id=extrinsic_id,
                                  error=bt.ChainError(text, name))

    def _apply(self, call: FakeCall, signer: str) -> None:
        params = call.params
        if (call.module, call.function) == ("Commitments", "set_commitment"):
            if params["netuid"] != self.netuid or self._uid_of(signer) is None:
                raise _Refused("AccountNotAllowedCommit")
            self._commitment_history.setdefault(signer, []).append((self._block, params["info"]["fields"]))
            return
        if call.module == "SubtensorModule":
            uid = self._uid_of(signer) if params["netuid"] == self.netuid else None
            if uid is None:
                raise _Refused("HotKeyNotRegisteredInSubNet")
            committing = call.function == "commit_timelocked_mechanism_weights"
            if committing and not self.commit_reveal:
                raise _Refused("CommitRevealDisabled")
            if not committing and self.commit_reveal:
                raise _Refused("CommitRevealEnabled")
            last = self._last_update[uid]
            if self.weights_rate_limit and last > 0 and self._block - last < self.weights_rate_limit:
                raise _Refused("CommittingWeightsTooFast" if committing else "SettingWeightsTooFast")
            entry = {"hotkey": signer, "uid": uid, "block": self._block, "mechid": params.get("mecid", 0)}
            if committing:
                entry.update(commit=bytes(params["commit"]), reveal_round=int(params["reveal_round"]),
                             commit_reveal_version=int(params["commit_reveal_version"]))
                self.weight_commits.append(entry)
            else:
                dests, values = list(params["dests"]), list(params["weights"])
                if len(dests) != len(values):
                    raise _Refused("WeightVecNotEqualSize")
                if any(not 0 <= d < len(self._neurons) for d in dests):
                    raise _Refused("UidVecContainInvalidOne")
                if not self._neurons[uid].validator_permit and dests != [uid]:
                    raise _Refused("NeuronNoValidatorPermit")
                if int(params["version_key"]) < self.weights_version:
                    raise _Refused("IncorrectWeightVersionKey")
                entry.update(uids=dests, weights=[int(v) for v in values], version_key=int(params["version_key"]))
                self.weights.append(entry)
            self._last_update[uid] = self._block
