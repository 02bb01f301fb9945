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

What the runtime does with weights is modelled after opentensor/subtensor (`internal_set_weights`,
`internal_commit_timelocked_weights`, `reveal_crv3_commits_for_subnet`, the stateful epoch scheduler):

- ``compose`` checks each call's parameters against its declared types (u16 uids and values, u64 version key and
  reveal round, u16 commit-reveal version, a commit of at most 5,000 bytes), as encoding would.
- A plaintext ``set_mechanism_weights`` is checked by the runtime's rules at inclusion
  (`flock_pipeline.core.weights.runtime_error`: stake threshold, version key, rate limit, permit with the owner and
  self-weight exemptions, duplicates, unknown uids, MinAllowedWeights, MaxWeightsLimit) and stored in ``Weights``.
- A timelocked commit is accepted with only the commit checks (enabled, version, registered, rate limit, at most
  10 unrevealed); it is kept under the epoch it was made in and revealed when epoch + ``reveal_period`` starts: the
  same rules then apply and a failure only lands in ``reveal_log`` (the node's trace log), as on the real chain.
  Decrypting needs the drand round's pulse, which is not reachable offline: the fake looks up the payload the SDK
  sealed (the SDK's ``get_encrypted_commit_v2`` is wrapped to remember what it encrypted; its output is unchanged).
  ``withhold_pulses`` makes the pulses missing (the commit waits, then expires).
- Epochs follow the stateful scheduler: epoch i + 1 starts when ``tempo`` blocks have passed since
  ``LastEpochBlock``; ``set_tempo`` changes the tempo from the next block on; ``SubnetEpochIndex`` counts epochs.
- ``incentives`` of the metagraph: the stake-weighted mean of the validators' normalised weights (no clipping).

Anything else raises, so a new SDK dependency shows up as a clear failure rather than a silent default. Queries pinned
to an older block see that block's commitments and epoch position (the history is kept); every other item is
answered from the head. A new uid's LastUpdate starts at 0 (never set weights), so a fresh validator is not
rate-limited.

Test knobs: ``register``, ``advance``, ``put_commitment`` (any raw field value, malformed ones included),
``fail_next(call_name, error_name)``, ``drop_connections(n)`` (the next n protocol calls raise
``RpcConnectionError``), ``stall(n, seconds)``, ``prune_state_before(block)``, ``lose_next_receipt()`` (the next
extrinsic is applied but its caller sees a dropped connection), ``set_tempo``, ``set_stake`` and the attributes
``weights_rate_limit``, ``commit_reveal``, ``min_allowed_weights``, ``max_weight_limit``, ``weights_version``,
``stake_threshold`` (TAO units), ``reveal_period``, ``withhold_pulses``, ``owner_hotkey``. Inspection: ``block``,
``commitments``, ``weights`` (every vector stored, oldest first, with ``via``: extrinsic or reveal), ``stored``
(uid -> the ``Weights`` row), ``weight_commits``, ``reveal_log``, ``last_update``, ``extrinsics``, ``epochs``,
``connect_attempts``.
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

from flock_pipeline.core.weights import WeightRules, max_upscaled, runtime_error
from flock_pipeline.resources.chain import advance_epochs, epoch_containing

_SEALED: dict[bytes, dict] = {}  # commit bytes -> the payload the SDK sealed in them (our stand-in for drand)


def _remember_sealed(encrypt):
    def sealed(**kwargs):
        commit, reveal_round = encrypt(**kwargs)
        _SEALED[bytes(commit)] = {"uids": list(kwargs["uids"]), "values": list(kwargs["weights"]),
                                  "version_key": int(kwargs["version_key"]), "hotkey": bytes(kwargs["hotkey"])}
        return commit, reveal_round

    sealed.flock_remembers = True
    return sealed


if not getattr(bittensor_core.get_encrypted_commit_v2, "flock_remembers", False):
    bittensor_core.get_encrypted_commit_v2 = _remember_sealed(bittensor_core.get_encrypted_commit_v2)

_ERROR_DOCS = {info.name: info.docs for info in ERRORS.values()}
_CALL_ALIASES = {
    "set_weights": "set_mechanism_weights",
    "commit_weights": "commit_timelocked_mechanism_weights",
}
_U16_MAX = 65535
_U64_MAX = 2**64 - 1
_MAX_COMMIT_BYTES = 5000  # MAX_CRV3_COMMIT_SIZE_BYTES
_COMMIT_REVEAL_VERSION = 4  # CommitRevealWeightsVersion
_CALL_TYPES = {  # declared parameter types of the calls the fake composes: name -> (bits, is a list)
    "set_mechanism_weights": {"netuid": (16, False), "mecid": (8, False), "dests": (16, True),
                              "weights": (16, True), "version_key": (64, False)},
    "commit_timelocked_mechanism_weights": {"netuid": (16, False), "mecid": (8, False), "reveal_round": (64, False),
                                            "commit_reveal_version": (16, False)},
}
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
        self._initial_tempo = tempo
        self.weights_rate_limit = weights_rate_limit
        self.commit_reveal = commit_reveal
        self.min_allowed_weights = 0
        self.max_weight_limit = _U16_MAX
        self.weights_version = 0  # the subnet's required minimum version key (WeightsVersionKey)
        self.stake_threshold = 0.0  # StakeThreshold in TAO units (the chain holds rao)
        self.reveal_period = 1  # RevealPeriodEpochs
        self.withhold_pulses = False
        self.stored: dict[int, list[tuple[int, int]]] = {}  # Weights: validator uid -> [(uid, value)]
        self.reveal_log: list[str] = []  # why a reveal was dropped (the node's trace log)
        self.epochs: list[list[int]] = [[0, 0]]  # [SubnetEpochIndex, LastEpochBlock] history
        self._tempo_changes: list[list[int]] = []
        self._pending: dict[int, list[dict]] = {}  # TimelockedWeightCommits: epoch -> commits
        self.block_time_s = block_time
        self.genesis_ms = 1_767_225_600_000  # Timestamp.Now of block 0 (2026-01-01 00:00 UTC)
        self.owner_hotkey: str | None = None  # SubtensorModule.SubnetOwnerHotkey
        self.token_symbols: dict[int, str] = {}
        self.weights: list[dict] = []  # every vector stored in Weights (plaintext or revealed), oldest first
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
            self._move(self._block + int(blocks))
            return self._block

    def set_tempo(self, tempo: int) -> None:
        """The owner's tempo change: from the next block on (the scheduler counts from LastEpochBlock)."""
        with self._lock:
            self._tempo_changes.append([self._block + 1, int(tempo)])
            self.tempo = int(tempo)

    def release_pulses(self) -> None:
        """The drand pulses arrive: commits waiting in their reveal epoch are revealed now."""
        with self._lock:
            self.withhold_pulses = False
            self._reveal(epoch_containing(self.epochs, self._block)[0])

    def set_stake(self, hotkey: str, stake: float) -> None:
        with self._lock:
            uid = self._uid_of(hotkey)
            old = self._neurons[uid]
            self._neurons[uid] = _Neuron(old.uid, old.hotkey, old.coldkey, round(stake * 1e9), old.validator_permit,
                                         old.registration_block)

    def _move(self, block: int) -> None:
        """Produce the blocks up to `block`: an epoch that fires first reveals the commits due (block_step runs
        `reveal_crv3_commits` before the coinbase moves the epoch counter on)."""
        while True:
            fired = len(self.epochs)
            advance_epochs(self.epochs, self._tempo_changes, self._initial_tempo, block)
            if len(self.epochs) == fired:
                break
            del self.epochs[fired + 1:]  # one epoch at a time: its reveal sees the chain as it is then
            index, start = self.epochs[-1]
            self._block = start
            self._reveal(index)
        self._block = block

    def register(self, hotkey: str, coldkey: str = "", stake: float = 0.0, validator_permit: bool = False) -> int:
        """Register (or re-register) a hotkey in the next block; returns its uid."""
        with self._lock:
            self._move(self._block + 1)
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
        index, epoch_start = epoch_containing(self.epochs, block)
        items = {
            "Tempo": self.tempo,
            "SubnetworkN": len(self._neurons),
            "ValidatorPermit": [n.validator_permit for n in self._neurons],
            "WeightsSetRateLimit": self.weights_rate_limit,
            "CommitRevealWeightsEnabled": self.commit_reveal,
            "MinAllowedWeights": self.min_allowed_weights,
            "MaxWeightsLimit": self.max_weight_limit,
            "WeightsVersionKey": self.weights_version,
            "SubnetEpochConsensus": "Yuma",
            "RevealPeriodEpochs": self.reveal_period,
            "LastEpochBlock": epoch_start,
            "PendingEpochAt": 0,
            "SubnetEpochIndex": index,
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
        if module == "SubtensorModule" and name == "StakeThreshold":
            return round(self.stake_threshold * 1e9)
        if module == "SubtensorModule" and name == "CommitRevealWeightsVersion":
            return _COMMIT_REVEAL_VERSION
        if module == "SubtensorModule" and name == "Weights":
            return list(self.stored.get(int(params[1]), [])) if params[0] == self.netuid else []
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
            if (module, storage_function) == ("SubtensorModule", "TimelockedWeightCommits") and params == [self.netuid]:
                return [(epoch, [(c["hotkey"], c["block"], c["commit"], c["reveal_round"]) for c in commits])
                        for epoch, commits in sorted(self._pending.items()) if commits]
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
                "incentives": [round(self._incentives().get(n.uid, 0.0) * _U16_MAX) for n in neurons],
            }

    def _incentives(self) -> dict[int, float]:
        total: dict[int, float] = {}
        for v_uid, row in self.stored.items():
            validator = self._neurons[v_uid]
            row_sum = sum(value for _, value in row)
            if not row_sum or not (validator.validator_permit or validator.hotkey == self.owner_hotkey):
                continue
            for uid, value in row:
                total[uid] = total.get(uid, 0.0) + max(validator.stake_rao, 1) * value / row_sum
        norm = sum(total.values())
        return {uid: x / norm for uid, x in total.items()} if norm else {}

    # -- writes -----------------------------------------------------------------------------------------------

    async def compose(self, call: Any) -> FakeCall:
        await self._io()
        module, function, params = call
        params = dict(params)
        for name, (bits, is_list) in _CALL_TYPES.get(function, {}).items():
            values = params.get(name)
            values = values if is_list else [values]
            if not isinstance(values, (list, tuple)) or any(
                    isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**bits for v in values):
                raise bt.ChainError(f"cannot encode {function}.{name}={params.get(name)!r} as "
                                    f"{'Vec<' if is_list else ''}u{bits}{'>' if is_list else ''}")
        if function == "commit_timelocked_mechanism_weights":
            commit = params.get("commit")
            if not isinstance(commit, (bytes, bytearray)) or len(commit) > _MAX_COMMIT_BYTES:
                raise bt.ChainError("cannot encode the commit as BoundedVec<u8, 5000>")
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
            self._move(self._block + 1)
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
            committing = call.function == "commit_timelocked_mechanism_weights"
            if committing and not self.commit_reveal:
                raise _Refused("CommitRevealDisabled")
            if not committing and self.commit_reveal:
                raise _Refused("CommitRevealEnabled")
            if committing:
                if int(params["commit_reveal_version"]) != _COMMIT_REVEAL_VERSION:
                    raise _Refused("IncorrectCommitRevealVersion")
                if uid is None:
                    raise _Refused("HotKeyNotRegisteredInSubNet")
                last = self._last_update[uid]
                if self.weights_rate_limit and last > 0 and self._block - last < self.weights_rate_limit:
                    raise _Refused("CommittingWeightsTooFast")
                epoch = epoch_containing(self.epochs, self._block)[0]
                mine = [c for c in self._pending.get(epoch, []) if c["hotkey"] == signer]
                if len(mine) >= 10:
                    raise _Refused("TooManyUnrevealedCommits")
                entry = {"hotkey": signer, "uid": uid, "block": self._block, "mechid": params.get("mecid", 0),
                         "epoch": epoch, "commit": bytes(params["commit"]), "reveal_round": int(params["reveal_round"]),
                         "commit_reveal_version": int(params["commit_reveal_version"])}
                self.weight_commits.append(entry)
                self._pending.setdefault(epoch, []).append(entry)
                self._last_update[uid] = self._block
                return
            dests, values = list(params["dests"]), [int(v) for v in params["weights"]]
            error = runtime_error(self._rules(signer), dests, values, int(params["version_key"]))
            if error is not None:
                raise _Refused(error)
            self._store(signer, uid, dests, values, int(params["version_key"]), via="extrinsic",
                        mechid=params.get("mecid", 0))
            self._last_update[uid] = self._block

    def _rules(self, hotkey: str) -> WeightRules:
        """The runtime's view of `hotkey` at the current block, for its weight checks."""
        uid = self._uid_of(hotkey)
        neuron = self._neurons[uid] if uid is not None else None
        return WeightRules(block=self._block, hotkey=hotkey, uid=uid, subnet_n=len(self._neurons),
                           permit=bool(neuron and neuron.validator_permit), owner=hotkey == self.owner_hotkey,
                           stake=neuron.stake_rao / 1e9 if neuron else 0.0, stake_threshold=self.stake_threshold,
                           version_key=self.weights_version, min_allowed_weights=self.min_allowed_weights,
                           max_weight_limit=self.max_weight_limit, rate_limit=self.weights_rate_limit,
                           last_update=self._last_update[uid] if uid is not None else 0,
                           commit_reveal=self.commit_reveal, reveal_period=self.reveal_period,
                           epoch=epoch_containing(self.epochs, self._block)[0])

    def _store(self, hotkey: str, uid: int, dests: list[int], values: list[int], version_key: int, *, via: str,
               mechid: int = 0) -> None:
        stored = max_upscaled(values)
        self.stored[uid] = list(zip(dests, stored))
        self.weights.append({"hotkey": hotkey, "uid": uid, "block": self._block, "mechid": mechid, "uids": dests,
                             "weights": stored, "version_key": version_key, **({"via": via} if via != "extrinsic"
                                                                                 else {})})

    def _reveal(self, epoch: int) -> None:
        """`reveal_crv3_commits_for_subnet` at the first block of `epoch`: commits made in epoch - reveal_period
        are decrypted (their drand pulse permitting) and applied by the runtime's rules; older ones expire."""
        due = epoch - self.reveal_period
        for old in [e for e in self._pending if e < due]:
            for c in self._pending.pop(old):
                self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']} expired unrevealed")
        if due < 0 or due not in self._pending:
            return
        waiting = []
        for c in self._pending.pop(due):
            if self.withhold_pulses:
                waiting.append(c)
                self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']}: drand round "
                                       f"{c['reveal_round']} not on chain yet")
                continue
            payload = _SEALED.get(c["commit"])
            if payload is None:
                self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']}: cannot decrypt")
                continue
            if payload["hotkey"] != bittensor_core.Keypair(ss58_address=c["hotkey"]).public_key:
                self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']}: hotkey mismatch in payload")
                continue
            uid = self._uid_of(c["hotkey"])
            rules = self._rules(c["hotkey"])
            error = runtime_error(rules, payload["uids"], payload["values"], payload["version_key"])
            if error is not None:
                self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']}: do_set_mechanism_weights "
                                       f"failed: {error}")
                continue
            self._store(c["hotkey"], uid, payload["uids"], payload["values"], payload["version_key"], via="reveal")
            self.reveal_log.append(f"commit of {c['hotkey']} at block {c['block']}: TimelockedWeightsRevealed")
        if waiting:
            self._pending[due] = waiting
