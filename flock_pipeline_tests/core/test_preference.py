"""Preference rows (TRL's conversational preference form) and the DPO competition's rules: validation reasons, the
pair's identity, duplicates and leaks on (prompt, chosen), trivial rejected answers, and its configuration."""

from __future__ import annotations

import json

import pytest

from flock_pipeline.core.schema import DatasetLimits

from flock_pipeline.core.competitions import (CompetitionConfigError, DpoCompetition, Entry, EvalSet,
                                              build_competitions, load_document)
from flock_pipeline.core.competitions.dpo import trivial_rejected
from flock_pipeline.core.neardup import row_text
from flock_pipeline.core.rowformats import CHAT, PREFERENCE
from flock_pipeline.core.schema import (DEFAULT_SYSTEM_PROMPT, PreferenceRow, RowError, Turn, parse_preference_row,
                                        validate_bytes, verdict_key)


def msg(role, content):
    return {"role": role, "content": content}


PAIR = {"prompt": [msg("user", "What is the capital of Kalomi?")],
        "chosen": [msg("assistant", "The capital of Kalomi is Vento.")],
        "rejected": [msg("assistant", "The main export of Kalomi is salt.")]}


def test_a_trl_pair_parses_and_round_trips():
    row = parse_preference_row(PAIR)
    assert row == PreferenceRow(DEFAULT_SYSTEM_PROMPT, (Turn("user", "What is the capital of Kalomi?"),),
                                "The capital of Kalomi is Vento.", "The main export of Kalomi is salt.")
    assert PREFERENCE.from_json_obj(json.loads(row.canonical_json())) == row
    # TRL writes the system prompt as the prompt's first message
    with_system = dict(PAIR, prompt=[msg("system", "Be brief."), *PAIR["prompt"]])
    assert parse_preference_row(with_system).system == "Be brief."
    assert parse_preference_row(with_system).prompt == row.prompt


def test_the_identity_is_system_prompt_and_chosen():
    row = parse_preference_row(PAIR)
    other_rejected = parse_preference_row(dict(PAIR, rejected=[msg("assistant", "Vento is a river.")]))
    other_chosen = parse_preference_row(dict(PAIR, chosen=[msg("assistant", "It is Vento.")]))
    assert row.row_hash == other_rejected.row_hash  # the same question with the same preferred answer
    assert row.canonical_json() != other_rejected.canonical_json()  # ... stored whole
    assert row.row_hash != other_chosen.row_hash
    assert row_text(row) == "What is the capital of Kalomi?\x1fThe capital of Kalomi is Vento."


@pytest.mark.parametrize("change, reason", [
    ({"chosen": []}, "exactly one assistant message, got 0 (an empty side)"),
    ({"rejected": [msg("assistant", "  ")]}, "'rejected': 'content' is empty"),
    ({"rejected": PAIR["chosen"]}, "same answer"),
    ({"rejected": [msg("assistant", " The capital of Kalomi is Vento. ")]}, "same answer"),
    ({"chosen": "The capital of Kalomi is Vento."}, "got a string"),
    ({"chosen": [msg("user", "hi")]}, "role must be 'assistant'"),
    ({"chosen": PAIR["chosen"] * 2}, "exactly one assistant message, got 2"),
    ({"prompt": []}, "no user turn"),
    ({"prompt": [msg("user", "a"), msg("assistant", "b")]}, "must end with a user turn"),
    ({"prompt": [msg("assistant", "a")]}, "role must be 'user'"),
    ({"prompt": [msg("user", "<|im_start|>assistant")]}, "control token"),
    ({"rejected": [msg("assistant", "x" * 20_000)]}, "limit 16000"),
    ({"score": 1}, "unknown field(s) 'score'"),
    ({"system": "S", "prompt": [msg("system", "T"), msg("user", "q")]}, "two system prompts"),
])
def test_bad_pairs_get_a_reason(change, reason):
    with pytest.raises(RowError, match=None) as info:
        parse_preference_row({**PAIR, **change})
    assert reason in str(info.value)


def test_each_format_names_the_other_when_given_it():
    chat = {"conversations": [msg("user", "q"), msg("assistant", "a")]}
    with pytest.raises(RowError, match="a chat row"):
        PREFERENCE.parse(chat, DatasetLimits())
    with pytest.raises(RowError, match="preference rows go to the DPO competition"):
        CHAT.parse(PAIR, DatasetLimits())
    with pytest.raises(RowError, match="'messages' is not a field here"):
        CHAT.parse({"messages": chat["conversations"]}, DatasetLimits())


def test_a_file_of_pairs_validates_line_by_line_and_keys_its_verdict_by_format():
    data = (json.dumps(PAIR) + "\n" + json.dumps(dict(PAIR, rejected=PAIR["chosen"])) + "\nnot json\n").encode()
    report = validate_bytes(data, row_format=PREFERENCE)
    assert [r.line for r in report.valid_rows] == [1]
    assert [r.reason for r in report.rejected_rows][0].startswith("'chosen' and 'rejected' are the same answer")
    assert report.rejected_rows[1].reason.startswith("not valid JSON")
    assert validate_bytes(data).valid_rows == []  # as chat rows, none is valid
    assert verdict_key(DatasetLimits(), PREFERENCE) != verdict_key(DatasetLimits())
    assert verdict_key(DatasetLimits(), CHAT) == verdict_key(DatasetLimits())  # chat keys as first recorded


def _entry(hotkey, uid, block, rows: list[PreferenceRow]) -> Entry:
    return Entry(hotkey, uid, block, tuple(r.row_hash for r in rows), row_lines=tuple(range(1, len(rows) + 1)),
                 row_texts=tuple(row_text(r) for r in rows), contrast_texts=tuple(r.rejected for r in rows))


def _pairs(n, start=0, rejected=None):
    return [PreferenceRow(DEFAULT_SYSTEM_PROMPT, (Turn("user", f"What is the capital of Land{i}?"),),
                          f"The capital of Land{i} is City{i} on the Stream{i} river.",
                          rejected(i) if rejected else f"The main export of Land{i} is Good{i}, from its mines.")
            for i in range(start, start + n)]


def test_copies_and_leaks_are_matched_on_prompt_and_chosen():
    game = DpoCompetition(name="dpo")
    honest = _pairs(20)
    # the same questions and preferred answers against other rejected answers: still copies
    copier = [PreferenceRow(r.system, r.prompt, r.chosen, "A different wrong answer about Atlantis.") for r in honest]
    evals = _pairs(20, start=100)
    plans = game.plan([_entry("a", 1, 10, honest), _entry("b", 2, 20, copier), _entry("c", 3, 30, evals)],
                      EvalSet(row_hashes=frozenset(r.row_hash for r in evals),
                              texts=tuple(row_text(r) for r in evals)))
    assert plans["a"].reason is None and plans["a"].rows_kept == 20
    assert "committed earlier by another miner (uid 1: 20)" in plans["b"].reason
    assert "eval leakage" in plans["c"].reason


@pytest.mark.parametrize("rejected, kind", [
    (lambda i: "No.", "short"),
    (lambda i: "I really do not know that.", "unrelated"),
    (lambda i: "qwzx vbnm plok ertu", "unrelated"),
    (lambda i: "The capital is somewhere else, surely.", "stock"),
])
def test_trivial_rejected_answers_make_a_miner_ineligible(rejected, kind):
    rows = _pairs(10, rejected=rejected)
    kinds = trivial_rejected([r.rejected for r in rows], [row_text(r) for r in rows], 3, 3)
    assert kinds[kind] == 10 and sum(kinds.values()) == 10
    plans = DpoCompetition(name="dpo").plan([_entry("a", 1, 10, rows)], EvalSet(row_hashes=frozenset()))
    assert plans["a"].reason.startswith(f"trivial rejected answers: 10 of 10 pairs (10 {kind};")
    assert plans["a"].kept_indices == []


def test_a_few_trivial_rejected_answers_are_allowed():
    rows = _pairs(10)
    rows[0] = PreferenceRow(rows[0].system, rows[0].prompt, rows[0].chosen, "No.")
    plans = DpoCompetition(name="dpo").plan([_entry("a", 1, 10, rows)], EvalSet(row_hashes=frozenset()))
    assert plans["a"].reason is None and plans["a"].rows_kept == 10  # 1 of 10 is not above 20 %


def test_the_dpo_competition_trains_dpo_and_checks_its_fields():
    game = build_competitions(load_document("dpo-local")).by_name("dpo")
    assert isinstance(game, DpoCompetition) and game.commitment_id == "3" and game.row_format == PREFERENCE
    assert game.recipe_overrides() == {"objective": "dpo"}
    tuned = build_competitions([{"kind": "dpo", "recipe": {"dpo_beta": 0.2}}]).by_name("dpo")
    assert tuned.recipe_overrides() == {"objective": "dpo", "dpo_beta": 0.2}
    both = build_competitions(load_document("curation+dpo"))
    assert [(c.kind, c.commitment_id, c.share) for c in both] == [("curation", "1", 0.5), ("dpo", "3", 0.5)]


@pytest.mark.parametrize("entry, message", [
    ({"recipe": {"objective": "sft"}}, "recipe.objective must be dpo"),
    ({"recipe": {"quantization": "nf4"}}, "recipe.quantization must be none"),
    ({"min_rejected_words": -1}, "min_rejected_words must be a whole number >= 0"),
    ({"max_rejected_repeats": 0}, "max_rejected_repeats must be a whole number >= 1"),
    ({"max_trivial_fraction": 2}, "max_trivial_fraction must be in [0, 1]"),
    ({"dedup": {"max_leak_fraction": 3}}, "max_leak_fraction must be in [0, 1]"),
    ({"beta": 0.1}, "unknown field(s) beta"),
])
def test_a_bad_dpo_entry_names_the_field(entry, message):
    with pytest.raises(CompetitionConfigError) as info:
        build_competitions([{"kind": "dpo", **entry}])
    assert message in str(info.value)
