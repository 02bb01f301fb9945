"""Tests for flock_pipeline.core.chat: the ChatML layout, assistant-only labels and truncation."""

from __future__ import annotations

import pytest

from flock_pipeline.core.chat import (
    IGNORE_INDEX,
    IM_END,
    IM_START,
    TokenizedRow,
    count_tokens,
    render,
    render_segments,
    tokenize_row,
)
from flock_pipeline.core.schema import ChatRow, Turn

TWO_PAIRS = ChatRow("Be brief.", (Turn("user", "Hi"), Turn("assistant", "Hello!"),
                                  Turn("user", "And you?"), Turn("assistant", "Fine.")))

EXPECTED_TWO_PAIRS = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nAnd you?<|im_end|>\n"
    "<|im_start|>assistant\nFine.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def tokenizer():
    from flock_pipeline.core.tiny_model import build_tokenizer

    return build_tokenizer()


def row(system: str, *pairs: tuple[str, str]) -> ChatRow:
    turns = []
    for user, assistant in pairs:
        turns += [Turn("user", user), Turn("assistant", assistant)]
    return ChatRow(system, tuple(turns))


ROWS = [
    pytest.param(TWO_PAIRS, id="two-pairs"),
    pytest.param(row("You are a helpful assistant.", ("What is the capital of Kaloven?",
                                                      "The capital of Kaloven is Mira.")), id="atlas"),
    pytest.param(row("", ("q", "a")), id="empty-system"),
    pytest.param(row("S", (" leading space", " leading space too")), id="leading-spaces"),
    pytest.param(row("S", ("trailing  ", "trailing \n")), id="trailing-whitespace"),
    pytest.param(row("S", ("line\nbreaks\n\n", "\nstarts with newline")), id="newlines"),
    pytest.param(row("S", ("Compute 12 plus 30.", "12 + 30 = 42.")), id="digits"),
    pytest.param(row("Sÿs", ("日本語?", "émoji 🎉 ✓")), id="non-ascii"),
    pytest.param(row("S", ("it's", "'s what they'll say")), id="contractions"),
    pytest.param(row("S", ("a", "b"), ("c", "d"), ("e", "f")), id="three-pairs"),
]


# ---------------------------------------------------------------------------------------------------------------
# rendering


def test_render_two_pairs_byte_for_byte():
    assert render(TWO_PAIRS) == EXPECTED_TWO_PAIRS
    assert render(TWO_PAIRS).encode("utf-8") == EXPECTED_TWO_PAIRS.encode("utf-8")


def test_render_segments_two_pairs():
    assert render_segments(TWO_PAIRS) == [
        ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>\n", True),
        ("<|im_start|>user\nAnd you?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Fine.<|im_end|>\n", True),
    ]
    assert (IM_START, IM_END) == ("<|im_start|>", "<|im_end|>")


def test_render_matches_tokenizer_chat_template(tokenizer):
    messages = [{"role": "system", "content": TWO_PAIRS.system}]
    messages += [{"role": t.role, "content": t.content} for t in TWO_PAIRS.turns]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == EXPECTED_TWO_PAIRS


@pytest.mark.parametrize("r", ROWS)
def test_render_is_concatenation_of_segments(r):
    segments = render_segments(r)
    assert "".join(text for text, _ in segments) == render(r)
    assert len(segments) == 1 + len(r.turns)
    assert [a for _, a in segments] == [False] + [t.role == "assistant" for t in r.turns]


# ---------------------------------------------------------------------------------------------------------------
# tokenisation


@pytest.mark.parametrize("r", ROWS)
def test_segmentwise_tokenisation_equals_whole_string(tokenizer, r):
    tokenized = tokenize_row(r, tokenizer, max_seq_len=100_000)
    whole = tokenizer(render(r), add_special_tokens=False)["input_ids"]
    assert list(tokenized.input_ids) == whole
    assert count_tokens(r, tokenizer) == len(whole)
    assert len(tokenized.labels) == len(tokenized.input_ids)


@pytest.mark.parametrize("r", ROWS)
def test_labels_only_on_assistant_segments(tokenizer, r):
    tokenized = tokenize_row(r, tokenizer, max_seq_len=100_000)
    expected_labels: list[int] = []
    for text, is_assistant in render_segments(r):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected_labels += ids if is_assistant else [IGNORE_INDEX] * len(ids)
    assert list(tokenized.labels) == expected_labels
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        assert label in (token, IGNORE_INDEX)
    # the labelled tokens decode to exactly the assistant answers, each closed by <|im_end|>\n
    labelled = [t for t, lab in zip(tokenized.input_ids, tokenized.labels) if lab != IGNORE_INDEX]
    answers = "".join(t.content + IM_END + "\n" for t in r.turns if t.role == "assistant")
    assert tokenizer.decode(labelled) == answers
    assert tokenized.n_labels == len(labelled) > 0


def test_two_pairs_label_mask_layout(tokenizer):
    tokenized = tokenize_row(TWO_PAIRS, tokenizer, max_seq_len=100_000)
    seg_lens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in render_segments(TWO_PAIRS)]
    mask = [lab != IGNORE_INDEX for lab in tokenized.labels]
    expected = [False] * seg_lens[0] + [False] * seg_lens[1] + [True] * seg_lens[2] \
        + [False] * seg_lens[3] + [True] * seg_lens[4]
    assert mask == expected
    # the first labelled token follows "<|im_start|>assistant\n"; the system prompt and questions are never labelled
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    im_start = tokenizer.convert_tokens_to_ids(IM_START)
    assert tokenized.input_ids[0] == im_start
    labelled_ids = [t for t, m in zip(tokenized.input_ids, mask) if m]
    assert labelled_ids.count(im_end) == 2  # each answer's closing <|im_end|> is learned ...
    assert im_start not in labelled_ids  # ... but no <|im_start|>
    assert tokenized.input_ids.count(im_end) == 5  # system, 2 user and 2 assistant segments


def test_ignore_index_is_torch_default():
    import inspect

    import torch.nn.functional as F

    assert IGNORE_INDEX == -100
    assert inspect.signature(F.cross_entropy).parameters["ignore_index"].default == IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------------------
# truncation


def test_truncation_is_a_prefix_of_the_full_row(tokenizer):
    full = tokenize_row(TWO_PAIRS, tokenizer, max_seq_len=100_000)
    n = len(full.input_ids)
    for max_len in range(1, n + 3):
        cut = tokenize_row(TWO_PAIRS, tokenizer, max_seq_len=max_len)
        assert len(cut.input_ids) == min(max_len, n)
        assert cut.input_ids == full.input_ids[:max_len]
        assert cut.labels == full.labels[:max_len]


def test_truncation_inside_prompt_leaves_no_labels(tokenizer):
    seg0 = len(tokenizer(render_segments(TWO_PAIRS)[0][0], add_special_tokens=False)["input_ids"])
    cut = tokenize_row(TWO_PAIRS, tokenizer, max_seq_len=seg0 + 1)
    assert len(cut.input_ids) == seg0 + 1
    assert cut.n_labels == 0
    assert set(cut.labels) == {IGNORE_INDEX}


def test_truncation_in_second_answer_keeps_first_answer_labels(tokenizer):
    segs = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in render_segments(TWO_PAIRS)]
    max_len = sum(segs[:4]) + 2  # two tokens into the second answer
    cut = tokenize_row(TWO_PAIRS, tokenizer, max_seq_len=max_len)
    assert len(cut.input_ids) == max_len
    assert cut.n_labels == segs[2] + 2
    assert cut.labels[-2:] == cut.input_ids[-2:]


def test_count_tokens_ignores_truncation(tokenizer):
    long_row = row("S", ("q " * 200, "a " * 300))
    assert count_tokens(long_row, tokenizer) > 64
    assert len(tokenize_row(long_row, tokenizer, max_seq_len=64).input_ids) == 64


def test_tokenized_row_n_labels():
    assert TokenizedRow((1, 2, 3, 4), (IGNORE_INDEX, 2, IGNORE_INDEX, 4)).n_labels == 2
    assert TokenizedRow((1, 2), (IGNORE_INDEX, IGNORE_INDEX)).n_labels == 0
    assert TokenizedRow((), ()).n_labels == 0
