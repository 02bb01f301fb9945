"""ChatML rendering and tokenisation with assistant-only labels.

Layout, byte for byte::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n
    {assistant}<|im_end|>\\n
    ...

Each segment is tokenised on its own so that the label mask is exact: only the tokens of assistant segments carry
labels, every other position is IGNORE_INDEX. For the embedded tokenizer this gives the same ids as tokenising the
whole rendered string (a test pins it); with a tokenizer whose pre-tokenizer would merge across a segment boundary
(e.g. a newline that ends "assistant\n" followed by content starting with a newline), the segment-wise ids are the
definition: they keep the prompt/answer boundary exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from flock_pipeline.core.schema import ChatRow, PreferenceRow

IGNORE_INDEX = -100  # the label value that cross-entropy skips (torch's default ignore_index)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def render_segments(row: ChatRow) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) segments, in order."""
    segments = [(f"{IM_START}system\n{row.system}{IM_END}\n", False)]
    for turn in row.turns:
        if turn.role == "user":
            segments.append((f"{IM_START}user\n{turn.content}{IM_END}\n{IM_START}assistant\n", False))
        else:
            segments.append((f"{turn.content}{IM_END}\n", True))
    return segments


def render(row: ChatRow) -> str:
    """The full ChatML text of a row."""
    return "".join(text for text, _ in render_segments(row))


@dataclass(frozen=True)
class TokenizedRow:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX except at assistant tokens

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def tokenize_row(row: ChatRow, tokenizer, max_seq_len: int) -> TokenizedRow:
    """Tokenise a row with assistant-only labels, truncated to `max_seq_len` tokens."""
    ids: list[int] = []
    labels: list[int] = []
    for text, is_assistant in render_segments(row):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        labels.extend(seg if is_assistant else [IGNORE_INDEX] * len(seg))
        if len(ids) >= max_seq_len:
            break
    return TokenizedRow(tuple(ids[:max_seq_len]), tuple(labels[:max_seq_len]))


def count_tokens(row: ChatRow | PreferenceRow, tokenizer) -> int:
    """Token count of the rendered row with the given tokenizer (no truncation); a preference pair counts its
    prompt once and both answers."""
    segments = render_segments(row)
    if isinstance(row, PreferenceRow):
        segments.append(_answer_segment(row.rejected))
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in segments)


def _answer_segment(content: str) -> tuple[str, bool]:
    return f"{content}{IM_END}\n", True


def tokenize_pair(row: PreferenceRow, tokenizer, max_seq_len: int) -> tuple[TokenizedRow, TokenizedRow]:
    """(chosen, rejected) sequences of a preference pair: the prompt rendered as ChatML (its assistant turns
    unlabelled), then the answer; only the answer's tokens carry labels. Each is truncated to `max_seq_len`."""
    prompt_ids: list[int] = []
    for text, _ in render_segments(ChatRow(system=row.system, turns=row.prompt)):
        prompt_ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    out = []
    for answer in (row.chosen, row.rejected):
        seg = tokenizer(_answer_segment(answer)[0], add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + seg)[:max_seq_len]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + seg)[:max_seq_len]
        out.append(TokenizedRow(tuple(ids), tuple(labels)))
    return out[0], out[1]
