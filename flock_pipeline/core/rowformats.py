"""Row formats: what one line of a game's data.jsonl is, as a strategy object the game owns.

A `RowFormat` parses and validates a decoded JSON line (a reason for every refusal), rebuilds a row stored before,
names the texts that copy detection compares, counts a row's tokens and says which corpus config its rows go to.
The pipeline asks the competition's format and never branches on a format's name; a new game with a new row shape
brings its own `RowFormat` subclass.

A row (whatever the format) offers `system`, `turns` (its conversation as `Turn`s: what is rendered and trained
on), `row_hash` (its identity for duplicates), `canonical_json()` and `to_json_obj()` (what is stored).

Pure code: no dagster, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from flock_pipeline.core.schema import (ChatRow, DatasetLimits, PreferenceRow, RowError, iter_lines, parse_chat_row,
                                        parse_preference_row)
from flock_pipeline.core.strategy import Stateless


class RowFormat(Stateless, ABC):
    """One shape of rows. Subclasses are stateless; `name` goes into the key a dataset's verdict is recorded under
    (a new format never reuses another format's verdicts)."""

    name: ClassVar[str]
    corpus_config: ClassVar[str | None] = None  # the release config its rows go to ("sft", "dpo"); None: none
    empty_file_ok: ClassVar[bool] = False  # a file without rows is still a dataset (the game's rules judge it)

    def lines(self, data: bytes, limits: DatasetLimits):
        """(line number, line bytes or None, reason) of a file's non-blank lines. Default: split at `\\n`, ASCII
        blank lines skipped, lines over `max_line_bytes` refused."""
        return iter_lines(data, limits)

    def file_facts(self, data: bytes) -> dict:
        """What the game's rules need to know of the file as a whole, beyond its rows (recorded with the verdict)."""
        return {}

    @abstractmethod
    def parse(self, obj: object, limits: DatasetLimits) -> Any:
        """Validate one decoded JSON value as a row of this format, or raise RowError with the reason."""

    @abstractmethod
    def from_json_obj(self, obj: dict) -> Any:
        """Rebuild a row validated before (its `to_json_obj()`, read back from the store)."""

    def verdict_spec(self) -> dict:
        """What the format adds to a dataset verdict's key (the rules' identity besides the limits)."""
        return {"format": self.name}

    def text(self, row) -> str:
        """The row's turn contents, for near-duplicate matching."""
        from flock_pipeline.core.neardup import row_text

        return row_text(row)

    def full_text(self, row) -> str:
        """Every text of the row a reader sees (the system prompt included), for the miner's warnings."""
        return "\n".join([row.system] + [t.content for t in row.turns])

    def system_text(self, row) -> str:
        """The row's system prompt ("" when none): copy detection matches one that carries a row of its own."""
        system = getattr(row, "system", None)
        return system if isinstance(system, str) else ""

    def contrast_text(self, row) -> str | None:
        """A second text the game's eligibility rules look at (a preference pair's rejected answer); None: none."""
        return None

    def training_identity(self, row_hash: str, raw_hash: str | None) -> str:
        """What identifies a kept row in the shard hash (what it trains on). Default: its row hash."""
        return row_hash

    def eval_problem(self, row) -> str | None:
        """Why a row of the validator's own eval set cannot be evaluated on (its fault, never a miner's), or None."""
        return None

    def count_tokens(self, row, tokenizer) -> int:
        """The rendered row's token count with the base model's tokenizer (no truncation)."""
        from flock_pipeline.core.chat import count_tokens

        return count_tokens(row, tokenizer)


class ChatFormat(RowFormat):
    """`{"system": str | null, "conversations": [user, assistant, ...]}`: the SFT games' rows."""

    name = "chat"
    corpus_config = "sft"

    def parse(self, obj: object, limits: DatasetLimits) -> ChatRow:
        return parse_chat_row(obj, limits)

    def from_json_obj(self, obj: dict) -> ChatRow:
        return ChatRow.from_json_obj(obj)

    def verdict_spec(self) -> dict:
        return {}  # chat verdicts keep the keys they were first recorded under


_UNLIMITED = DatasetLimits(max_file_bytes=2**62, max_line_bytes=2**62, max_rows_used=2**62, max_turns_per_row=2**20,
                           max_chars_per_turn=2**62, max_system_chars=2**62)


@dataclass(frozen=True, eq=False)
class RawRow:
    """One JSON value of a selection submission, identified as the live validator identifies it: its JSON with keys
    sorted (`json.dumps(row, sort_keys=True)`), whatever it holds. `chat` is the row read as a chat row (what is
    trained on; pool rows always are one), or None with `problem` saying why it is not one."""

    obj: Any
    chat: ChatRow | None
    problem: str | None = None

    def to_json_obj(self) -> Any:
        return self.obj

    def canonical_json(self) -> str:
        return json.dumps(self.obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @property
    def row_hash(self) -> str:
        """sha256 hex of the row's JSON as Python's `json.dumps(row, sort_keys=True)` writes it (`raw_row_key`)."""
        return hashlib.sha256(json.dumps(self.obj, sort_keys=True).encode("utf-8")).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawRow) and other.row_hash == self.row_hash

    def __hash__(self) -> int:
        return hash(self.row_hash)

    def _trained(self) -> ChatRow:
        if self.chat is None:
            raise ValueError(f"not a chat row, nothing to train on: {self.problem}")
        return self.chat

    @property
    def system(self) -> str:
        return self._trained().system

    @property
    def turns(self):
        return self._trained().turns

    def stripped(self) -> ChatRow:
        return self._trained().stripped()


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def physical_lines(data: bytes) -> list[bytes]:
    """A file's lines as Python's text files split them (universal newlines: `\\n`, `\\r\\n` and a bare `\\r`;
    nothing else breaks a line), without their line breaks; a final line break ends the last line."""
    if not data:
        return []
    parts = _LINE_BREAK.split(data)
    return parts[:-1] if parts[-1] == b"" else parts


def trainer_problem(raw: bytes) -> str | None:
    """Why the live selection trainer (FLock-subnet 492c7bb, its `SFTDataset`) cannot read one physical line as a
    training row, or None: it parses the line as it is (JSON allows only spaces, tabs and line breaks around a value),
    then needs a `system` string (a row without one fails: the loader has no default) and `conversations` whose
    pairs are user then assistant with text contents."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "a blank line" if not text.strip() else "not JSON as written (characters around the row)"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not a row"
    if not isinstance(obj.get("system"), str):
        return "no system prompt text"
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        return "no conversations list"
    for i in range(0, len(turns) - 1, 2):
        pair = turns[i:i + 2]
        if not all(isinstance(t, dict) for t in pair) or [t.get("role") for t in pair] != ["user", "assistant"]:
            return "turns out of user/assistant order"
        if not all(isinstance(t.get("content"), str) for t in pair):
            return "a turn's content is not text"
    return None


class RawJsonFormat(RowFormat):
    """The selection game's rows: any JSON value, identified by its JSON with keys sorted (the live identity), so a
    submission whose rows our chat schema would refuse still counts as loaded (an earlier submission's rows are
    copies for the rules whatever their keys). What is trained on is each row read as a chat row.

    A file is read as the live loader reads it: universal newlines, a line that is blank after `str.strip()` (any
    Unicode whitespace) skipped, the rest parsed after that strip, no cap on a line's length (the file's size cap
    still holds). An empty file is a dataset: the game's rules decide what it is worth."""

    name = "raw-json"
    empty_file_ok = True

    def verdict_spec(self) -> dict:
        return {"format": self.name, "reading": 2}  # 2: the live loader's reading (universal newlines, str.strip)

    def lines(self, data: bytes, limits: DatasetLimits):
        for number, raw in enumerate(physical_lines(data), start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not valid UTF-8 at byte {exc.start}"
                continue
            if text.strip():
                yield number, text.strip().encode("utf-8"), None

    def file_facts(self, data: bytes) -> dict:
        """The file as the live trainer reads it: its physical lines and the first it cannot train on."""
        lines = physical_lines(data)
        first = next(([n, why] for n, why in ((n, trainer_problem(raw)) for n, raw in enumerate(lines, start=1))
                      if why is not None), None)
        return {"physical_lines": len(lines), "untrainable": first}

    def parse(self, obj: object, limits: DatasetLimits) -> RawRow:
        if not isinstance(obj, dict):
            return RawRow(obj, None, f"row is a JSON {type(obj).__name__}, not an object")
        try:
            return RawRow(obj, parse_chat_row(obj, limits))
        except RowError as exc:
            return RawRow(obj, None, str(exc))

    def from_json_obj(self, obj: Any) -> RawRow:
        return self.parse(obj, _UNLIMITED)  # validated under the configured limits when it was recorded

    def text(self, row: RawRow) -> str:
        return super().text(row) if row.chat is not None else row.canonical_json()

    def count_tokens(self, row: RawRow, tokenizer) -> int:
        return super().count_tokens(row, tokenizer) if row.chat is not None else 0

    def system_text(self, row: RawRow) -> str:
        return super().system_text(row.chat) if row.chat is not None else ""

    def full_text(self, row: RawRow) -> str:
        return super().full_text(row) if row.chat is not None else row.canonical_json()

    def eval_problem(self, row: RawRow) -> str | None:
        return None if row.chat is not None else f"not a chat row ({row.problem})"


class PreferenceFormat(RowFormat):
    """TRL's conversational preference pairs `{"prompt", "chosen", "rejected"}`: the DPO game's rows. A pair's
    identity leaves its rejected answer out; what it trains on does not."""

    name = "preference"
    corpus_config = "dpo"

    def parse(self, obj: object, limits: DatasetLimits) -> PreferenceRow:
        return parse_preference_row(obj, limits)

    def from_json_obj(self, obj: dict) -> PreferenceRow:
        return PreferenceRow.from_json_obj(obj)

    def contrast_text(self, row: PreferenceRow) -> str:
        return row.rejected

    def full_text(self, row: PreferenceRow) -> str:
        return super().full_text(row) + "\n" + row.rejected

    def training_identity(self, row_hash: str, raw_hash: str | None) -> str:
        return f"{row_hash}:{raw_hash}"


CHAT = ChatFormat()
PREFERENCE = PreferenceFormat()
RAW_JSON = RawJsonFormat()
FORMATS = {f.name: f for f in (CHAT, PREFERENCE, RAW_JSON)}  # by name: what a published report names
