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

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from flock_pipeline.core.schema import ChatRow, DatasetLimits, PreferenceRow, parse_chat_row, parse_preference_row
from flock_pipeline.core.strategy import Stateless


class RowFormat(Stateless, ABC):
    """One shape of rows. Subclasses are stateless; `name` goes into the key a dataset's verdict is recorded under
    (a new format never reuses another format's verdicts)."""

    name: ClassVar[str]
    corpus_config: ClassVar[str | None] = None  # the release config its rows go to ("sft", "dpo"); None: none

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

    def contrast_text(self, row) -> str | None:
        """A second text the game's eligibility rules look at (a preference pair's rejected answer); None: none."""
        return None

    def training_identity(self, row_hash: str, raw_hash: str | None) -> str:
        """What identifies a kept row in the shard hash (what it trains on). Default: its row hash."""
        return row_hash

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

    def training_identity(self, row_hash: str, raw_hash: str | None) -> str:
        return f"{row_hash}:{raw_hash}"


CHAT = ChatFormat()
PREFERENCE = PreferenceFormat()
