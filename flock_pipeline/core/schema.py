"""Dataset schema and validation for miner submissions.

A submission is JSONL, one object per line. Chat rows (the SFT competitions)::

    {"system": str | null, "conversations": [{"role": "user", "content": str},
                                             {"role": "assistant", "content": str}, ...]}

Preference rows (the DPO competition), TRL's conversational preference form::

    {"system": str | null, "prompt": [{"role": "user", "content": str}, ...],   # alternating, ends with user
     "chosen": [{"role": "assistant", "content": str}], "rejected": [{"role": "assistant", "content": str}]}

(a leading `{"role": "system", ...}` turn of `prompt` is taken as the system prompt, as TRL writes it).

Every rejected row and every rejected dataset carries a human-readable reason. Validation never raises on bad
input: the input is untrusted, so anything malformed becomes a reason, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from flock_pipeline.errors import DataError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SCHEMA_VERSION = 2  # raise whenever a validation rule changes: recorded dataset verdicts are then re-decided
ROLES = ("user", "assistant")
ALLOWED_ROW_KEYS = frozenset({"system", "conversations"})
ALLOWED_TURN_KEYS = frozenset({"role", "content"})
# ChatML control tokens: inside content they would be tokenised as real turn boundaries (a miner could inject fake
# turns and get them labelled), so a row containing one is rejected.
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _check_text(text: str, where: str) -> None:
    for token in CONTROL_TOKENS:
        if token in text:
            raise RowError(f"{where} contains the chat control token {token}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{where} contains an unpaired UTF-16 surrogate (not valid Unicode text)") from None


@dataclass(frozen=True)
class DatasetLimits:
    """Limits applied to every submission before anything is trained on it."""

    max_file_bytes: int = 64 * 2**20  # bytes; checked before download where the hub reports sizes
    max_line_bytes: int = 1 * 2**20  # bytes; one JSONL line (a row)
    max_rows_used: int = 100  # rows; the reference validator's size cap: only the first N valid rows are used
    max_turns_per_row: int = 64  # turns (user + assistant messages) per row
    max_chars_per_turn: int = 16_000  # characters of one turn's content
    max_system_chars: int = 4_000  # characters of the system prompt

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_line_bytes", "max_rows_used", "max_turns_per_row",
                     "max_chars_per_turn", "max_system_chars"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_turns_per_row % 2:
            raise ValueError("max_turns_per_row must be even: turns come in user/assistant pairs")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRow:
    """One validated conversation; `system` is already defaulted."""

    system: str
    turns: tuple[Turn, ...]

    def to_json_obj(self) -> dict:
        return {"system": self.system,
                "conversations": [{"role": t.role, "content": t.content} for t in self.turns]}

    def canonical_json(self) -> str:
        """The row as canonical JSON: the identity used for exact duplicate detection."""
        return json.dumps(self.to_json_obj(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def row_hash(self) -> str:
        """sha256 hex of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def stripped(self) -> ChatRow:
        """Contents and system prompt without surrounding whitespace (how the live selection game renders rows)."""
        return ChatRow(system=self.system.strip(), turns=tuple(Turn(t.role, t.content.strip()) for t in self.turns))

    @classmethod
    def from_json_obj(cls, obj: dict) -> ChatRow:
        """Rebuild a row that was validated before (e.g. read back from the store)."""
        return cls(system=obj["system"],
                   turns=tuple(Turn(t["role"], t["content"]) for t in obj["conversations"]))


class RowError(DataError):
    """A row failed validation; the message is the recorded reason."""


def parse_row(obj: object, limits: DatasetLimits = DatasetLimits()) -> ChatRow:
    """Validate one decoded JSON value as a chat row, or raise RowError with the reason."""
    if not isinstance(obj, dict):
        raise RowError(f"row is a JSON {type(obj).__name__}, not an object")
    unknown = sorted(set(obj) - ALLOWED_ROW_KEYS)
    if unknown:
        raise RowError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    system = _system_of(obj.get("system"), limits)
    conv = obj.get("conversations")
    if conv is None:
        raise RowError("missing 'conversations'")
    if not isinstance(conv, list):
        raise RowError(f"'conversations' must be a list, got {type(conv).__name__}")
    if not conv:
        raise RowError("'conversations' is empty")
    if len(conv) > limits.max_turns_per_row:
        raise RowError(f"{len(conv)} turns, limit {limits.max_turns_per_row}")
    turns = [_turn_of(turn, f"turn {i}", limits, ROLES[i % 2], ALTERNATE) for i, turn in enumerate(conv)]
    if len(turns) % 2:
        # The reference validator silently drops this turn; we reject the row so the miner learns why.
        raise RowError("trailing user turn without an assistant answer")
    return ChatRow(system=system, turns=tuple(turns))


@dataclass(frozen=True)
class RowResult:
    line: int  # 1-based line number in the file
    row: ChatRow | PreferenceRow | None
    reason: str | None  # None when the row is valid


@dataclass
class DatasetReport:
    """The outcome of validating one submission file."""

    rows: list[RowResult] = field(default_factory=list)
    dataset_reason: str | None = None  # set when the dataset as a whole is rejected
    size_bytes: int = 0
    sha256: str = ""
    empty_ok: bool = False  # a file without rows is the game's to judge (its row format's `empty_file_ok`)
    facts: dict = field(default_factory=dict)  # what the row format's `file_facts` says of the whole file

    @property
    def valid_rows(self) -> list[RowResult]:
        return [r for r in self.rows if r.row is not None]

    @property
    def rejected_rows(self) -> list[RowResult]:
        return [r for r in self.rows if r.row is None]

    def used_rows(self, limits: DatasetLimits) -> list[RowResult]:
        """The rows validators train on: the first `max_rows_used` valid rows (the size cap)."""
        return self.valid_rows[: limits.max_rows_used]

    @property
    def ok(self) -> bool:
        return self.reason() is None

    def reason(self) -> str | None:
        """Why the dataset as a whole cannot be used, or None."""
        if self.dataset_reason:
            return self.dataset_reason
        if not self.rows:
            return None if self.empty_ok else "empty dataset: no rows"
        if not self.valid_rows:
            first = self.rejected_rows[0]
            return f"no valid rows ({len(self.rows)} rejected; line {first.line}: {first.reason})"
        return None


def iter_lines(data: bytes, limits: DatasetLimits) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Split raw bytes into (line number, line bytes or None, reason) skipping blank lines."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(raw) > limits.max_line_bytes:
            yield number, None, f"line is {len(raw)} bytes, limit {limits.max_line_bytes}"
            continue
        yield number, raw, None


def _lines(data: bytes, limits: DatasetLimits, row_format) -> Iterator[tuple[int, bytes | None, str | None]]:
    """A file's lines as `row_format` reads them (None: chat rows, `iter_lines`)."""
    return row_format.lines(data, limits) if row_format is not None else iter_lines(data, limits)


def validate_bytes(data: bytes, limits: DatasetLimits = DatasetLimits(), row_format=None) -> DatasetReport:
    """Validate a whole submission held in memory, rows of `row_format` (a `RowFormat` of core/rowformats.py; None:
    chat rows). Never raises on bad content."""
    report = DatasetReport(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           empty_ok=bool(getattr(row_format, "empty_file_ok", False)))
    if len(data) > limits.max_file_bytes:
        report.dataset_reason = f"file is {len(data)} bytes, limit {limits.max_file_bytes}"
        return report
    if b"\x00" in data[:8192]:
        report.dataset_reason = "file is binary (NUL bytes), not JSONL text"
        return report
    if row_format is not None:
        report.facts = row_format.file_facts(data)
    for number, raw, reason in _lines(data, limits, row_format):
        if raw is None:
            report.rows.append(RowResult(number, None, reason))
            continue
        report.rows.append(validate_line(number, raw, limits, row_format))
    return report


def validate_line(number: int, raw: bytes, limits: DatasetLimits = DatasetLimits(), row_format=None) -> RowResult:
    """One line as a row of `row_format` (None: chat rows), or the reason it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowResult(number, None, f"not valid UTF-8 at byte {exc.start}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limits, too deep nesting
        if isinstance(exc, json.JSONDecodeError):
            msg = exc.msg
        elif isinstance(exc, RecursionError):
            msg = "nested too deeply"
        else:
            msg = str(exc).split(";")[0]
        return RowResult(number, None, f"not valid JSON: {msg}")
    try:
        row = row_format.parse(obj, limits) if row_format is not None else parse_chat_row(obj, limits)
        return RowResult(number, row, None)
    except RowError as exc:
        return RowResult(number, None, str(exc))


def verdict_key(limits: DatasetLimits, row_format=None) -> str:
    """What a dataset's verdict depends on besides its bytes: the limits, the row format (its `verdict_spec`; chat
    verdicts keep the keys they were first recorded under) and the rules' version."""
    from dataclasses import asdict

    spec = {"schema": SCHEMA_VERSION, "limits": asdict(limits)}
    if row_format is not None:
        spec.update(row_format.verdict_spec())
    doc = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def raw_row_key(raw: bytes) -> str:
    """sha256 hex of a line's JSON as written, re-serialised with sorted keys (Python's `json.dumps(obj,
    sort_keys=True)`): the live selection game's identity of a row, which tells `{"system": null, ...}` and a row
    without `system` apart. Only for lines that validated (they decode)."""
    obj = json.loads(raw.decode("utf-8"))
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def raw_row_keys(data: bytes, lines: Iterable[int], limits: DatasetLimits, row_format=None) -> dict[int, str]:
    """line number -> `raw_row_key` for the given (valid) lines of a file, read as `row_format` reads it."""
    wanted = set(lines)
    return {number: raw_row_key(raw) for number, raw, _ in _lines(data, limits, row_format)
            if number in wanted and raw is not None}


def parse_chat_row(obj: object, limits: DatasetLimits = DatasetLimits()) -> ChatRow:
    """`parse_row`, with a hint when the object is another game's row (a preference pair, `messages`)."""
    if isinstance(obj, dict) and "conversations" not in obj:
        if {"prompt", "chosen", "rejected"} & set(obj):
            raise RowError("a preference row (prompt/chosen/rejected): this competition takes chat rows "
                           "{\"system\", \"conversations\": [...]}; preference rows go to the DPO competition")
        if "messages" in obj:
            raise RowError("'messages' is not a field here: write the turns as \"conversations\": [{\"role\": "
                           "\"user\", \"content\": ...}, {\"role\": \"assistant\", ...}] and the system prompt "
                           "as \"system\"")
    return parse_row(obj, limits)


@dataclass(frozen=True)
class PreferenceRow:
    """One validated preference pair: a prompt (alternating turns ending with a user turn) and two answers.

    Its identity (`row_hash`, what duplicate detection compares) is the system prompt, the prompt and the chosen
    answer: the same question with the same preferred answer is the same pair whatever it is contrasted with.
    `turns` is the conversation with the chosen answer, the pair's SFT view (and its text for near-duplicates)."""

    system: str
    prompt: tuple[Turn, ...]
    chosen: str
    rejected: str

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self.prompt + (Turn("assistant", self.chosen),)

    def to_json_obj(self) -> dict:
        return {"system": self.system, "prompt": [{"role": t.role, "content": t.content} for t in self.prompt],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def canonical_json(self) -> str:
        """The whole pair as canonical JSON (what is stored; `row_hash` covers the identity part only)."""
        return json.dumps(self.to_json_obj(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def row_hash(self) -> str:
        """sha256 hex of the canonical JSON of (system, prompt, chosen)."""
        obj = self.to_json_obj()
        del obj["rejected"]
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def stripped(self) -> PreferenceRow:
        return PreferenceRow(self.system.strip(), tuple(Turn(t.role, t.content.strip()) for t in self.prompt),
                             self.chosen.strip(), self.rejected.strip())

    def as_chat(self) -> ChatRow:
        """The prompt with the chosen answer, as a chat row (the pair's SFT view)."""
        return ChatRow(system=self.system, turns=self.turns)

    @classmethod
    def from_json_obj(cls, obj: dict) -> PreferenceRow:
        return cls(system=obj["system"], prompt=tuple(Turn(t["role"], t["content"]) for t in obj["prompt"]),
                   chosen=obj["chosen"][0]["content"], rejected=obj["rejected"][0]["content"])


ALLOWED_PREFERENCE_KEYS = frozenset({"system", "prompt", "chosen", "rejected"})


def _system_of(value: object, limits: DatasetLimits) -> str:
    """The row's system prompt (the default one when null or absent), checked against the limits."""
    if value is None:
        value = DEFAULT_SYSTEM_PROMPT
    if not isinstance(value, str):
        raise RowError(f"'system' must be a string or null, got {type(value).__name__}")
    if len(value) > limits.max_system_chars:
        raise RowError(f"'system' is {len(value)} characters, limit {limits.max_system_chars}")
    _check_text(value, "'system'")
    return value


ALTERNATE = " (roles alternate user, assistant)"


def _turn_of(turn: object, where: str, limits: DatasetLimits, role: str | None, hint: str = "") -> Turn:
    """One message object, checked: its fields, its role (when `role` is given: the one expected here), its
    content."""
    if not isinstance(turn, dict):
        raise RowError(f"{where} is a JSON {type(turn).__name__}, not an object")
    unknown = sorted(set(turn) - ALLOWED_TURN_KEYS)
    if unknown:
        raise RowError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    found, content = turn.get("role"), turn.get("content")
    if role is not None and found != role:
        raise RowError(f"{where}: role must be {role!r}{hint}, got {found!r}")
    if not isinstance(content, str):
        raise RowError(f"{where}: 'content' must be a string, got {type(content).__name__}")
    if not content.strip():
        raise RowError(f"{where}: 'content' is empty")
    if len(content) > limits.max_chars_per_turn:
        raise RowError(f"{where}: 'content' is {len(content)} characters, limit {limits.max_chars_per_turn}")
    _check_text(content, f"{where}: 'content'")
    return Turn(found, content)


def _answer_of(value: object, side: str, limits: DatasetLimits) -> str:
    if value is None:
        raise RowError(f"missing '{side}'")
    if isinstance(value, str):
        raise RowError(f"'{side}' must be a list with one assistant message "
                       f"([{{\"role\": \"assistant\", \"content\": ...}}]), got a string")
    if not isinstance(value, list):
        raise RowError(f"'{side}' must be a list with one assistant message, got {type(value).__name__}")
    if len(value) != 1:
        raise RowError(f"'{side}' must hold exactly one assistant message, got {len(value)}"
                       + (" (an empty side)" if not value else ""))
    return _turn_of(value[0], f"'{side}'", limits, "assistant").content


def parse_preference_row(obj: object, limits: DatasetLimits = DatasetLimits()) -> PreferenceRow:
    """Validate one decoded JSON value as a preference pair, or raise RowError with the reason."""
    if not isinstance(obj, dict):
        raise RowError(f"row is a JSON {type(obj).__name__}, not an object")
    if "conversations" in obj or "messages" in obj:
        raise RowError("a chat row: this competition takes preference rows {\"prompt\": [...], \"chosen\": [...], "
                       "\"rejected\": [...]} (TRL's conversational preference form)")
    unknown = sorted(set(obj) - ALLOWED_PREFERENCE_KEYS)
    if unknown:
        raise RowError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    prompt = obj.get("prompt")
    if prompt is None:
        raise RowError("missing 'prompt'")
    if not isinstance(prompt, list):
        raise RowError(f"'prompt' must be a list of messages, got {type(prompt).__name__}")
    system = obj.get("system")
    if prompt and isinstance(prompt[0], dict) and prompt[0].get("role") == "system":
        if system is not None:
            raise RowError("two system prompts: 'system' and a system message at the start of 'prompt'")
        system = _turn_of(prompt[0], "prompt turn 0", limits, "system").content
        prompt = prompt[1:]
    system = _system_of(system, limits)
    if not prompt:
        raise RowError("'prompt' has no user turn")
    if len(prompt) + 1 > limits.max_turns_per_row:
        raise RowError(f"{len(prompt) + 1} turns, limit {limits.max_turns_per_row}")
    turns = [_turn_of(turn, f"prompt turn {i}", limits, ROLES[i % 2], ALTERNATE) for i, turn in enumerate(prompt)]
    if turns[-1].role != "user":
        raise RowError("'prompt' must end with a user turn (the answers are the next assistant turn)")
    chosen = _answer_of(obj.get("chosen"), "chosen", limits)
    rejected = _answer_of(obj.get("rejected"), "rejected", limits)
    if chosen.strip() == rejected.strip():
        raise RowError("'chosen' and 'rejected' are the same answer (nothing to prefer)")
    return PreferenceRow(system=system, prompt=tuple(turns), chosen=chosen, rejected=rejected)


def rows_to_jsonl(rows: Iterable[ChatRow | PreferenceRow]) -> str:
    return "".join(json.dumps(r.to_json_obj(), ensure_ascii=False) + "\n" for r in rows)
