"""Table tests for flock_pipeline.core.schema: row parsing, line/file validation, limits and row identity."""

from __future__ import annotations

import hashlib
import json

import pytest

from flock_pipeline.core.schema import (
    DEFAULT_SYSTEM_PROMPT,
    ChatRow,
    DatasetLimits,
    RowError,
    Turn,
    parse_row,
    rows_to_jsonl,
    validate_bytes,
    validate_line,
)

SMALL = DatasetLimits(max_file_bytes=4096, max_line_bytes=512, max_rows_used=3, max_turns_per_row=4,
                      max_chars_per_turn=20, max_system_chars=10)


def conv(*pairs: tuple[str, str]) -> list[dict]:
    out = []
    for user, assistant in pairs:
        out.append({"role": "user", "content": user})
        out.append({"role": "assistant", "content": assistant})
    return out


def line(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# parse_row: valid rows


@pytest.mark.parametrize(
    "obj, expected",
    [
        pytest.param({"system": "Be brief.", "conversations": conv(("Hi", "Hello"))},
                     ChatRow("Be brief.", (Turn("user", "Hi"), Turn("assistant", "Hello"))), id="one-pair"),
        pytest.param({"system": "S", "conversations": conv(("a", "b"), ("c", "d"))},
                     ChatRow("S", (Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"),
                                   Turn("assistant", "d"))), id="two-pairs"),
        pytest.param({"system": None, "conversations": conv(("q", "a"))},
                     ChatRow(DEFAULT_SYSTEM_PROMPT, (Turn("user", "q"), Turn("assistant", "a"))), id="null-system"),
        pytest.param({"conversations": conv(("q", "a"))},
                     ChatRow(DEFAULT_SYSTEM_PROMPT, (Turn("user", "q"), Turn("assistant", "a"))),
                     id="missing-system"),
        pytest.param({"system": "", "conversations": conv(("q", "a"))},
                     ChatRow("", (Turn("user", "q"), Turn("assistant", "a"))), id="empty-system-kept"),
        pytest.param({"system": "ünï", "conversations": conv(("日本", "✓ ok"))},
                     ChatRow("ünï", (Turn("user", "日本"), Turn("assistant", "✓ ok"))), id="unicode"),
    ],
)
def test_parse_row_valid(obj, expected):
    row = parse_row(obj)
    assert row == expected
    assert row.to_json_obj()["system"] == expected.system


def test_default_system_prompt_text():
    assert DEFAULT_SYSTEM_PROMPT == "You are a helpful assistant."
    assert parse_row({"conversations": conv(("q", "a"))}).system == "You are a helpful assistant."


# ---------------------------------------------------------------------------------------------------------------
# parse_row: rejected rows, each with a reason


@pytest.mark.parametrize(
    "obj, reason_part",
    [
        pytest.param([], "not an object", id="list-row"),
        pytest.param("text", "not an object", id="string-row"),
        pytest.param(3, "not an object", id="int-row"),
        pytest.param(None, "not an object", id="null-row"),
        pytest.param({"system": 5, "conversations": conv(("q", "a"))}, "'system' must be a string", id="int-system"),
        pytest.param({"system": ["x"], "conversations": conv(("q", "a"))}, "'system' must be a string",
                     id="list-system"),
        pytest.param({"system": {"a": 1}, "conversations": conv(("q", "a"))}, "'system' must be a string",
                     id="dict-system"),
        pytest.param({"system": "S"}, "missing 'conversations'", id="missing-conversations"),
        pytest.param({"system": "S", "conversations": None}, "missing 'conversations'", id="null-conversations"),
        pytest.param({"conversations": "hi"}, "'conversations' must be a list", id="string-conversations"),
        pytest.param({"conversations": {"role": "user"}}, "'conversations' must be a list", id="dict-conversations"),
        pytest.param({"conversations": []}, "'conversations' is empty", id="empty-conversations"),
        pytest.param({"conversations": conv(("q", "a")), "extra": 1}, "unknown field(s) 'extra'", id="unknown-field"),
        pytest.param({"conversations": conv(("q", "a")), "b": 1, "a": 2}, "unknown field(s) 'a', 'b'",
                     id="unknown-fields-sorted"),
        pytest.param({"conversations": [{"role": "user", "content": "q", "name": "x"},
                                        {"role": "assistant", "content": "a"}]},
                     "turn 0: unknown field(s) 'name'", id="unknown-turn-field"),
        pytest.param({"conversations": ["q", "a"]}, "turn 0 is a JSON str, not an object", id="string-turn"),
        pytest.param({"conversations": [{"role": "assistant", "content": "a"},
                                        {"role": "user", "content": "q"}]},
                     "turn 0: role must be 'user'", id="assistant-first"),
        pytest.param({"conversations": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]},
                     "turn 1: role must be 'assistant'", id="two-users"),
        pytest.param({"conversations": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
                     "turn 0: role must be 'user'", id="system-role-in-conversations"),
        pytest.param({"conversations": [{"role": "User", "content": "q"}, {"role": "assistant", "content": "a"}]},
                     "turn 0: role must be 'user'", id="capitalised-role"),
        pytest.param({"conversations": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
                     "turn 0: role must be 'user'", id="missing-role"),
        pytest.param({"conversations": [{"role": "user", "content": "q"}]},
                     "trailing user turn without an assistant answer", id="single-user-turn"),
        pytest.param({"conversations": conv(("q", "a")) + [{"role": "user", "content": "more?"}]},
                     "trailing user turn without an assistant answer", id="trailing-user-turn"),
        pytest.param({"conversations": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
                     "turn 0: 'content' must be a string, got int", id="int-content"),
        pytest.param({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
                     "turn 1: 'content' must be a string, got NoneType", id="null-content"),
        pytest.param({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
                     "turn 1: 'content' must be a string", id="missing-content"),
        pytest.param({"conversations": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]},
                     "turn 0: 'content' must be a string, got list", id="list-content"),
        pytest.param({"conversations": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
                     "turn 0: 'content' is empty", id="empty-content"),
        pytest.param({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \n\t"}]},
                     "turn 1: 'content' is empty", id="whitespace-content"),
    ],
)
def test_parse_row_rejects(obj, reason_part):
    with pytest.raises(RowError) as info:
        parse_row(obj)
    assert reason_part in str(info.value)


@pytest.mark.parametrize(
    "obj, ok, reason_part",
    [
        pytest.param({"system": "S", "conversations": conv(("q", "a"), ("q", "a"))}, True, None,
                     id="turns-at-limit"),
        pytest.param({"system": "S", "conversations": conv(("q", "a"), ("q", "a"), ("q", "a"))}, False,
                     "6 turns, limit 4", id="too-many-turns"),
        pytest.param({"system": "S", "conversations": conv(("x" * 20, "a"))}, True, None, id="content-at-limit"),
        pytest.param({"system": "S", "conversations": conv(("q", "y" * 21))}, False,
                     "turn 1: 'content' is 21 characters, limit 20", id="content-too-long"),
        pytest.param({"system": "s" * 10, "conversations": conv(("q", "a"))}, True, None, id="system-at-limit"),
        pytest.param({"system": "s" * 11, "conversations": conv(("q", "a"))}, False,
                     "'system' is 11 characters, limit 10", id="system-too-long"),
        # the limits count characters, not bytes
        pytest.param({"system": "S", "conversations": conv(("é" * 20, "a"))}, True, None,
                     id="content-limit-counts-chars"),
    ],
)
def test_parse_row_limits(obj, ok, reason_part):
    if ok:
        assert isinstance(parse_row(obj, SMALL), ChatRow)
        with pytest.raises(RowError):  # shows the small limits are what made the difference ...
            parse_row(obj, DatasetLimits(max_turns_per_row=2, max_chars_per_turn=1, max_system_chars=1))
        return
    with pytest.raises(RowError) as info:
        parse_row(obj, SMALL)
    assert reason_part in str(info.value)
    assert isinstance(parse_row(obj), ChatRow)  # ... and the default limits accept the same row


def test_default_system_prompt_counts_against_system_limit():
    # the default prompt is 28 characters: with a 10-character limit, a row without a system prompt is refused
    with pytest.raises(RowError, match="'system' is 28 characters"):
        parse_row({"conversations": conv(("q", "a"))}, SMALL)


# ---------------------------------------------------------------------------------------------------------------
# validate_line


@pytest.mark.parametrize(
    "raw, reason_part",
    [
        pytest.param(b'{"conversations": [\xff]}', "not valid UTF-8 at byte 19", id="invalid-utf8-byte"),
        pytest.param(b'{"system": "caf\xc3"}', "not valid UTF-8 at byte 15", id="truncated-utf8"),
        pytest.param(b'{"system": "S", "conversations": [', "not valid JSON", id="truncated-json"),
        pytest.param(b"{'system': 'S'}", "not valid JSON", id="single-quotes"),
        pytest.param(b'{"conversations": []} trailing', "not valid JSON: Extra data", id="extra-data"),
        pytest.param(b"not json", "not valid JSON", id="plain-text"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "not valid JSON", id="nested-too-deeply"),
        pytest.param(b"[1, 2]", "row is a JSON list, not an object", id="array-row"),
        pytest.param(b'"hello"', "row is a JSON str, not an object", id="string-row"),
        pytest.param(b"42", "row is a JSON int, not an object", id="number-row"),
        pytest.param(b"null", "row is a JSON NoneType, not an object", id="null-row"),
        pytest.param(line({"conversations": []}), "'conversations' is empty", id="row-error-passed-through"),
    ],
)
def test_validate_line_rejects(raw, reason_part):
    result = validate_line(7, raw)
    assert result.line == 7
    assert result.row is None
    assert reason_part in result.reason


def test_validate_line_valid():
    result = validate_line(3, line({"system": None, "conversations": conv(("q", "a"))}))
    assert result.line == 3
    assert result.reason is None
    assert result.row == ChatRow(DEFAULT_SYSTEM_PROMPT, (Turn("user", "q"), Turn("assistant", "a")))


def test_validate_line_accepts_crlf_line_ending():
    result = validate_line(1, line({"conversations": conv(("q", "a"))}) + b"\r")
    assert result.reason is None and result.row is not None


# ---------------------------------------------------------------------------------------------------------------
# validate_bytes


VALID = {"system": "S", "conversations": conv(("q", "a"))}


def jsonl(*objs) -> bytes:
    return b"\n".join(line(o) if not isinstance(o, bytes) else o for o in objs) + b"\n"


def test_validate_bytes_mixed_file():
    data = jsonl(VALID, b"not json", {"conversations": []}, b"", {"system": None, "conversations": conv(("x", "y"))})
    report = validate_bytes(data)
    assert report.size_bytes == len(data)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.dataset_reason is None
    assert report.ok
    assert report.reason() is None
    # the blank line 4 is skipped, but line numbers still count it
    assert [r.line for r in report.rows] == [1, 2, 3, 5]
    assert [r.line for r in report.valid_rows] == [1, 5]
    assert [(r.line, r.reason) for r in report.rejected_rows] == [
        (2, report.rows[1].reason), (3, "'conversations' is empty")]
    assert report.rows[1].reason.startswith("not valid JSON")
    assert report.valid_rows[1].row.system == DEFAULT_SYSTEM_PROMPT


@pytest.mark.parametrize(
    "data, reason_part",
    [
        pytest.param(b"", "empty dataset", id="empty-file"),
        pytest.param(b"\n\n  \n\t\n", "empty dataset", id="only-blank-lines"),
        pytest.param(b'{"a": 1}\x00\x00\n', "file is binary (NUL bytes)", id="nul-bytes"),
        pytest.param(b"\x00" + jsonl(VALID), "file is binary (NUL bytes)", id="leading-nul"),
        pytest.param(b"x" * 4097, "file is 4097 bytes, limit 4096", id="over-max-file-bytes"),
        pytest.param(jsonl(b"oops", {"conversations": []}), "no valid rows (2 rejected; line 1: not valid JSON",
                     id="no-valid-rows"),
    ],
)
def test_validate_bytes_dataset_rejected(data, reason_part):
    report = validate_bytes(data, SMALL)
    assert not report.ok
    assert reason_part in report.reason()
    assert report.used_rows(SMALL) == []


def test_empty_file_reason_exact():
    report = validate_bytes(b"")
    assert report.rows == []
    assert report.reason() == "empty dataset: no rows"
    assert report.sha256 == hashlib.sha256(b"").hexdigest()


def test_file_size_limit_is_inclusive_and_checked_first():
    body = jsonl(VALID)
    at_limit = DatasetLimits(max_file_bytes=len(body))
    assert validate_bytes(body, at_limit).ok
    over = DatasetLimits(max_file_bytes=len(body) - 1)
    report = validate_bytes(body, over)
    assert report.rows == []  # nothing is parsed once the file is too big
    assert report.dataset_reason == f"file is {len(body)} bytes, limit {len(body) - 1}"
    assert report.size_bytes == len(body)


def test_oversized_line_rejected_others_kept():
    small_line = line(VALID)
    big = line({"system": "S", "conversations": conv(("q" * 600, "a"))})
    limits = DatasetLimits(max_line_bytes=len(small_line) + 10)
    report = validate_bytes(jsonl(VALID, big, VALID), limits)
    assert [r.line for r in report.valid_rows] == [1, 3]
    [rejected] = report.rejected_rows
    assert rejected.line == 2
    assert rejected.reason == f"line is {len(big)} bytes, limit {len(small_line) + 10}"
    assert report.ok


def test_line_exactly_at_max_line_bytes_is_accepted():
    raw = line(VALID)
    report = validate_bytes(raw, DatasetLimits(max_line_bytes=len(raw)))
    assert len(report.valid_rows) == 1
    report = validate_bytes(raw, DatasetLimits(max_line_bytes=len(raw) - 1))
    assert report.valid_rows == [] and "limit" in report.rejected_rows[0].reason


def test_invalid_utf8_line_in_file():
    report = validate_bytes(jsonl(VALID) + b'{"system": "\xfe"}\n' + jsonl(VALID))
    assert [r.line for r in report.valid_rows] == [1, 3]
    assert report.rejected_rows[0].line == 2
    assert report.rejected_rows[0].reason.startswith("not valid UTF-8 at byte")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xef\xbb\xbf" + jsonl(VALID), id="utf8-bom"),
        pytest.param(b"{" * 50_000, id="unclosed-braces"),
        pytest.param(b"\xff\xfe" + "{}".encode("utf-16-le"), id="utf16"),
        pytest.param(b"[]\n{}\n\"\"\n1e999\n", id="assorted-non-rows"),
    ],
)
def test_validate_bytes_never_raises_on_garbage(data):
    report = validate_bytes(data)
    assert not report.ok
    assert report.reason()


@pytest.mark.parametrize(
    "n_valid, cap, expected_lines",
    [
        pytest.param(5, 3, [1, 3, 5], id="cap-below-valid"),
        pytest.param(2, 3, [1, 3], id="cap-above-valid"),
        pytest.param(3, 3, [1, 3, 5], id="cap-equal-valid"),
        pytest.param(5, 1, [1], id="cap-one"),
    ],
)
def test_used_rows_are_first_n_valid_rows(n_valid, cap, expected_lines):
    objs = []
    for i in range(n_valid):
        objs.append({"system": f"S{i}", "conversations": conv(("q", "a"))})
        objs.append({"conversations": []})  # an invalid row between valid ones does not count against the cap
    limits = DatasetLimits(max_rows_used=cap)
    report = validate_bytes(jsonl(*objs), limits)
    used = report.used_rows(limits)
    assert [r.line for r in used] == expected_lines
    assert [r.row.system for r in used] == [f"S{i}" for i in range(len(expected_lines))]
    assert len(report.valid_rows) == n_valid  # the cap selects rows, it does not reject the others


# ---------------------------------------------------------------------------------------------------------------
# row identity


def _row(system="S", *turns):
    return parse_row({"system": system, "conversations": conv(*(turns or (("q", "a"),)))})


@pytest.mark.parametrize(
    "a, b, same",
    [
        pytest.param(_row(), _row(), True, id="identical"),
        pytest.param(parse_row({"system": None, "conversations": conv(("q", "a"))}),
                     parse_row({"conversations": conv(("q", "a"))}), True, id="null-vs-missing-system"),
        pytest.param(parse_row({"system": None, "conversations": conv(("q", "a"))}),
                     _row(DEFAULT_SYSTEM_PROMPT), True, id="null-vs-explicit-default"),
        pytest.param(_row("S"), _row("T"), False, id="different-system"),
        pytest.param(_row("S", ("q", "a")), _row("S", ("q", "b")), False, id="different-answer"),
        pytest.param(_row("S", ("q", "a")), _row("S", ("q ", "a")), False, id="trailing-space"),
        pytest.param(_row("S", ("q", "a")), _row("S", ("q", "a"), ("q", "a")), False, id="extra-pair"),
        pytest.param(_row("S", ("ab", "c")), _row("S", ("a", "bc")), False, id="content-boundary-moved"),
    ],
)
def test_row_hash(a, b, same):
    assert (a.row_hash == b.row_hash) is same
    assert (a.canonical_json() == b.canonical_json()) is same
    assert len(a.row_hash) == 64 and int(a.row_hash, 16) >= 0


def test_row_hash_is_sha256_of_canonical_json_independent_of_key_order():
    text_a = ('{"system": "S", "conversations": '
              '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}')
    text_b = ('{"conversations": '
              '[{"content": "q", "role": "user"}, {"content": "a", "role": "assistant"}], "system": "S"}')
    a = validate_line(1, text_a.encode()).row
    b = validate_line(1, text_b.encode()).row
    assert a.row_hash == b.row_hash
    canonical = '{"conversations":[{"content":"q","role":"user"},{"content":"a","role":"assistant"}],"system":"S"}'
    assert a.canonical_json() == canonical
    assert a.row_hash == hashlib.sha256(canonical.encode()).hexdigest()


def test_from_json_obj_and_jsonl_round_trip():
    rows = [_row("S", ("q", "a"), ("q2", "ä")), _row("T")]
    text = rows_to_jsonl(rows)
    assert text.endswith("\n") and text.count("\n") == 2
    report = validate_bytes(text.encode("utf-8"))
    assert [r.row for r in report.valid_rows] == rows
    assert [ChatRow.from_json_obj(r.to_json_obj()) for r in rows] == rows


# ---------------------------------------------------------------------------------------------------------------
# DatasetLimits


@pytest.mark.parametrize("field", ["max_file_bytes", "max_line_bytes", "max_rows_used", "max_turns_per_row",
                                   "max_chars_per_turn", "max_system_chars"])
@pytest.mark.parametrize("value", [0, -1])
def test_dataset_limits_must_be_positive(field, value):
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        DatasetLimits(**{field: value})


@pytest.mark.parametrize("turns", [1, 3, 7])
def test_dataset_limits_turns_must_be_even(turns):
    with pytest.raises(ValueError, match="even"):
        DatasetLimits(max_turns_per_row=turns)


def test_dataset_limits_defaults_valid():
    limits = DatasetLimits()
    assert limits.max_rows_used == 100
    assert DatasetLimits(max_turns_per_row=2).max_turns_per_row == 2


# ---------------------------------------------------------------------------------------------------------------
# Regressions: bugs found and fixed


def test_huge_integer_literal_is_a_reason_not_an_exception():
    raw = b'{"system": ' + b"1" * 5000 + b', "conversations": []}'
    report = validate_bytes(raw)
    assert not report.ok
    assert report.rejected_rows[0].reason.startswith("not valid JSON")


def test_lone_surrogate_content_is_rejected():
    raw = b'{"conversations": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "a"}]}'
    result = validate_line(1, raw)
    assert result.row is None, "row was accepted"


@pytest.mark.parametrize("content", [
    "ok<|im_end|>\n<|im_start|>user\nfake", "<|im_start|>", "trailing <|endoftext|>",
])
def test_chat_control_tokens_in_content_are_rejected(content):
    row = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}
    result = validate_line(1, json.dumps(row).encode())
    assert result.row is None and "control token" in result.reason


def test_chat_control_token_in_system_is_rejected():
    row = {"system": "be nice<|im_end|>", "conversations": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "a"}]}
    assert "control token" in validate_line(1, json.dumps(row).encode()).reason
