"""Row formats: the selection game's raw JSON rows (any JSON object, identified as the live validator identifies it)
against the chat rows, and what that changes for the selection game's copy rule."""

from __future__ import annotations

import json

import pytest

from flock_pipeline.core.competitions import Entry, EvalSet, SelectionCompetition
from flock_pipeline.core.rowformats import CHAT, PREFERENCE, RAW_JSON, RawRow
from flock_pipeline.core.schema import DatasetLimits, raw_row_key, raw_row_keys, validate_bytes

LIMITS = DatasetLimits()


def chat(i: int) -> dict:
    return {"system": None, "conversations": [{"role": "user", "content": f"What is the capital of Land{i}?"},
                                              {"role": "assistant", "content": f"City{i}."}]}


def test_a_raw_row_is_any_json_value_identified_by_its_sorted_keys_json():
    with_id = {**chat(1), "id": 7}  # our chat schema refuses the unknown key; the live loader does not care
    row = RAW_JSON.parse(with_id, LIMITS)
    assert row.chat is None and "unknown field(s) 'id'" in row.problem
    assert row.row_hash == raw_row_key(json.dumps(with_id).encode())  # the identity the pool check uses
    assert RAW_JSON.from_json_obj(json.loads(row.canonical_json())) == row
    with pytest.raises(ValueError, match="not a chat row, nothing to train on"):
        row.turns  # noqa: B018 - reading it is the test
    plain = RAW_JSON.parse(chat(1), LIMITS)
    assert plain.chat == CHAT.parse(chat(1), LIMITS) and plain.turns == plain.chat.turns
    assert plain.row_hash != plain.chat.row_hash  # `"system": null` is part of the live identity, not of ours
    for not_an_object in ([1, 2], "text", 3):  # the live loader loads any JSON value; it is no pool row
        loaded = RAW_JSON.parse(not_an_object, LIMITS)
        assert loaded.chat is None and "not an object" in loaded.problem
        assert loaded.row_hash == raw_row_key(json.dumps(not_an_object).encode())


def test_each_format_names_its_rows_and_its_eval_set_rules():
    assert {CHAT.name, PREFERENCE.name, RAW_JSON.name} == {"chat", "preference", "raw-json"}
    assert RAW_JSON.eval_problem(RAW_JSON.parse({"id": 1}, LIMITS)).startswith("not a chat row")
    assert RAW_JSON.eval_problem(RAW_JSON.parse(chat(1), LIMITS)) is None
    assert CHAT.eval_problem(CHAT.parse(chat(1), LIMITS)) is None
    assert RAW_JSON.full_text(RAW_JSON.parse({"id": 1}, LIMITS)) == '{"id":1}'


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _entry(hotkey: str, uid: int, block: int, data: bytes, fmt) -> Entry:
    report = validate_bytes(data, LIMITS, fmt)
    used = report.used_rows(LIMITS)
    keys = raw_row_keys(data, [r.line for r in used], LIMITS)
    return Entry(hotkey, uid, block, tuple(r.row.row_hash for r in used), raw_keys=tuple(keys[r.line] for r in used),
                 row_lines=tuple(r.line for r in used),
                 rejected_lines=tuple((r.line, r.reason or "") for r in report.rejected_rows))


@pytest.mark.parametrize("fmt, later", [
    pytest.param(RAW_JSON, "duplicate: shares 40 rows with the earlier submission of uid 1",
                 id="raw rows: the earlier submission was loaded, so the later copy is a duplicate (the live rule)"),
    pytest.param(CHAT, None, id="chat rows: the earlier submission was skipped and its copier kept its place"),
])
def test_an_earlier_submission_with_rows_our_schema_refuses_still_counts_for_copies(fmt, later):
    pool = [chat(i) for i in range(200)]
    eval_set = EvalSet(row_hashes=frozenset(), raw_keys=frozenset(raw_row_key(json.dumps(r).encode()) for r in pool))
    earlier = pool[:40] + [{**r, "id": i} for i, r in enumerate(pool[100:160])]  # 60 rows with an extra key
    copier = pool[:40] + pool[160:200] + pool[60:80]
    game = SelectionCompetition(name="selection", eval_repo="flock/selection-pool")
    plans = game.plan([_entry("hk-earlier", 1, 10, _jsonl(earlier), fmt),
                       _entry("hk-copier", 2, 20, _jsonl(copier), fmt)], eval_set)
    assert plans["hk-earlier"].reason is not None  # not a submission of pool rows either way
    assert plans["hk-copier"].reason == later or later in plans["hk-copier"].reason


def test_the_selection_game_reads_raw_rows():
    assert SelectionCompetition(name="selection").row_format is RAW_JSON
    assert isinstance(RAW_JSON.parse(chat(1), LIMITS), RawRow)
