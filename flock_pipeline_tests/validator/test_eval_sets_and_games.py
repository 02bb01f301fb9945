"""Eval sets read as their game's row format (and refused as the validator's own fault when unusable), and the
lookups from a recorded commitment or shard to its competition."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flock_pipeline.core.rowformats import CHAT, PREFERENCE, RAW_JSON
from flock_pipeline.errors import ValidatorFault
from flock_pipeline.resources import LocalHubResource, ValidatorSettingsResource
from flock_pipeline.validator.eval_sets import EvalSetError, load_eval_rows, load_eval_set
from flock_pipeline.validator.games import UNCONFIGURED, competition_of, competition_recipe, shard_competition

CHAT_ROW = {"conversations": [{"role": "user", "content": "What is the capital of Kalomi?"},
                              {"role": "assistant", "content": "Vento."}]}
PAIR = {"prompt": [{"role": "user", "content": "What is the capital of Kalomi?"}],
        "chosen": [{"role": "assistant", "content": "Vento."}],
        "rejected": [{"role": "assistant", "content": "Salt is its main export."}]}


@pytest.fixture
def hub(tmp_path):
    return LocalHubResource(root=str(tmp_path / "hub"), as_owner=True)


def _upload(hub, repo, *rows) -> str:
    return hub.upload(repo, "".join(json.dumps(r) + "\n" for r in rows).encode(), private=False)


def test_an_eval_set_is_read_as_its_games_row_format(hub):
    chat = _upload(hub, "flock/chat-eval", CHAT_ROW)
    pairs = _upload(hub, "flock/pair-eval", PAIR)
    assert [r.turns[1].content for r in load_eval_rows(hub, "flock/chat-eval", chat, CHAT)] == ["Vento."]
    [pair] = load_eval_rows(hub, "flock/pair-eval", pairs, PREFERENCE)
    assert pair.rejected == "Salt is its main export."
    eval_set = load_eval_set(hub, "flock/pair-eval", pairs, PREFERENCE)
    assert eval_set.row_hashes == {pair.row_hash} and len(eval_set.raw_keys) == 1
    assert eval_set.texts == (PREFERENCE.text(pair),)


@pytest.mark.parametrize("rows, fmt, reason", [
    pytest.param([CHAT_ROW], PREFERENCE, "line 1: a chat row", id="the other game's rows"),
    pytest.param([CHAT_ROW, {"conversations": []}], CHAT, "line 2: 'conversations' is empty", id="a bad row"),
    pytest.param([], CHAT, "(empty)", id="no rows"),
    pytest.param([CHAT_ROW, {**CHAT_ROW, "id": 2}], RAW_JSON, "line 2: not a chat row (unknown field(s) 'id')",
                 id="a pool row nothing can be trained on"),
])
def test_an_unusable_eval_set_is_the_validators_fault(hub, rows, fmt, reason):
    revision = _upload(hub, f"flock/bad-{len(rows)}-{fmt.name}", *rows)
    with pytest.raises(EvalSetError, match=None) as info:
        load_eval_rows(hub, f"flock/bad-{len(rows)}-{fmt.name}", revision, fmt)
    assert isinstance(info.value, ValidatorFault) and reason in str(info.value)


def test_a_shard_of_no_configured_competition_is_evaluated_as_plain_chat_sft():
    settings = ValidatorSettingsResource(competitions="curation+dpo")
    assert shard_competition(settings, "dpo").row_format == PREFERENCE
    assert competition_recipe(settings, "dpo") == {"objective": "dpo"}
    for name in (None, "a-game-no-longer-configured"):
        assert shard_competition(settings, name) is UNCONFIGURED
        assert competition_recipe(settings, name) == {"objective": "sft"}


@pytest.mark.parametrize("recorded, competition_id, expected", [
    pytest.param("dpo", "3", "dpo", id="the recorded competition"),
    pytest.param(None, "3", "dpo", id="before competitions were recorded: by commitment id"),
    pytest.param("gone", "1", "curation", id="a competition no longer configured: by commitment id"),
    pytest.param(None, None, "curation", id="nothing to go by: the first competition"),
])
def test_the_competition_of_a_recorded_commitment(recorded, competition_id, expected):
    competitions = ValidatorSettingsResource(competitions="curation+dpo").competition_set()
    commitment = SimpleNamespace(competition=recorded, competition_id=competition_id)
    assert competition_of(commitment, competitions) == expected
