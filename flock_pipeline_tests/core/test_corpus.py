"""Tests for flock_pipeline.core.corpus: record order and provenance, the selection policy, the release folder
(Parquet, JSONL, dataset card) and its loading with `datasets`, `latest`, the base-answer cache, greedy answers."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import replace

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from flock_pipeline.core.corpus import (COLUMNS, DPO, PROVENANCE_COLUMNS, SFT, BaseAnswerCache, Candidate, parquet_name,
                                        CorpusPolicy, CorpusShard, arrow_schema, build_release_records,
                                        dataset_card, merge_releases, read_release, release_files, release_sha256,
                                        jsonl_text, replace_latest, select_miners, size_category, write_release)
from flock_pipeline.core.schema import ChatRow, PreferenceRow, Turn


def chat(tag: str) -> ChatRow:
    return ChatRow(system=f"sys {tag}", turns=(Turn("user", f"question {tag}"), Turn("assistant", f"answer {tag} ✓")))


def pair(tag: str) -> PreferenceRow:
    return PreferenceRow(system=f"sys {tag}", prompt=(Turn("user", f"question {tag}"),), chosen=f"good {tag}",
                         rejected=f"bad {tag}")


def shard(uid: int, weight: float, block: int, tags: str, loss: float = 1.5, epoch: int = 7,
          pairs: bool = False) -> CorpusShard:
    make = pair if pairs else chat
    rows = tuple((make(f"{uid}{t}").row_hash, make(f"{uid}{t}")) for t in tags)
    return CorpusShard(hotkey=f"5Hot{uid}", uid=uid, repo=f"miner{uid}/data", revision=f"{uid:040x}",
                       commit_block=block, miner_weight=weight, eval_loss=loss, rows=rows,
                       competition="dpo" if pairs else "curation", epoch=epoch, base_model="flock/tiny-qwen2",
                       base_revision="b" * 40, eval_repo="flock/eval-atlas", eval_revision="e" * 40)


# -- records -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shards, expected_uid_order",
    [
        pytest.param([shard(1, 0.2, 10, "a"), shard(2, 0.7, 20, "a"), shard(3, 0.1, 5, "a")], [2, 1, 3],
                     id="weight-descending"),
        pytest.param([shard(1, 0.5, 30, "a"), shard(2, 0.5, 20, "a"), shard(3, 0.5, 25, "a")], [2, 3, 1],
                     id="tie-broken-by-block"),
        pytest.param([shard(9, 0.5, 20, "a"), shard(4, 0.5, 20, "a"), shard(6, 0.5, 20, "a")], [4, 6, 9],
                     id="tie-broken-by-uid"),
        pytest.param([], [], id="empty"),
    ],
)
def test_record_order_by_shard(shards, expected_uid_order):
    records = build_release_records(shards)
    assert [r["uid"] for r in records[SFT]] == expected_uid_order and records[DPO] == []


def test_rows_keep_file_order_within_shard():
    s = shard(1, 0.5, 10, "cab")
    records = build_release_records([shard(2, 0.9, 10, "zy"), s])[SFT]
    assert [r["conversations"][0]["content"] for r in records] == [
        "question 2z", "question 2y", "question 1c", "question 1a", "question 1b"]
    assert [r["row_hash"] for r in records[2:]] == [h for h, _ in s.rows]


def test_sft_record_has_chat_fields_and_provenance():
    s = shard(3, 0.25, 1234, "a", loss=2.5)
    [record] = build_release_records([s])[SFT]
    row_hash, row = s.rows[0]
    assert record == {
        "system": "sys 3a",
        "conversations": [{"role": "user", "content": "question 3a"},
                          {"role": "assistant", "content": "answer 3a ✓"}],
        "hotkey": "5Hot3", "uid": 3, "repo": "miner3/data", "revision": f"{3:040x}", "commit_block": 1234,
        "row_hash": row_hash, "competition": "curation", "epoch": 7, "miner_weight": 0.25, "eval_loss": 2.5,
        "base_model": "flock/tiny-qwen2", "base_revision": "b" * 40, "eval_repo": "flock/eval-atlas",
        "eval_revision": "e" * 40,
    }
    assert set(record) == set(COLUMNS[SFT])
    assert set(PROVENANCE_COLUMNS) < set(record) and ChatRow.from_json_obj(record) == row


def test_preference_pairs_go_to_dpo_and_a_row_is_kept_once_per_config():
    dpo = shard(4, 0.6, 5, "ab", pairs=True)
    records = build_release_records([shard(1, 0.4, 1, "a"), dpo, shard(2, 0.1, 9, "a")])
    assert [r["uid"] for r in records[SFT]] == [1, 2]
    assert [r["row_hash"] for r in records[DPO]] == [h for h, _ in dpo.rows]
    first = records[DPO][0]
    assert set(first) == set(COLUMNS[DPO]) and first["derived"] is False and first["competition"] == "dpo"
    assert PreferenceRow.from_json_obj(first) == dpo.rows[0][1]
    copy = replace(shard(5, 0.05, 50, "a"), rows=shard(1, 0.4, 1, "a").rows)  # uid 1's row, in another game
    assert [r["uid"] for r in build_release_records([copy, shard(1, 0.4, 1, "a")])[SFT]] == [1]


def test_nan_eval_loss_is_null():
    [record] = build_release_records([shard(1, 0.5, 1, "a", loss=float("nan"))])[SFT]
    assert record["eval_loss"] is None


# -- policy --------------------------------------------------------------------------------------------------------


def test_policy_defaults_and_json():
    policy = CorpusPolicy.from_json("{}")
    assert policy == CorpusPolicy() and policy.weight_coverage == 0.95 and policy.statuses == ("scored",)
    assert policy.license == "cc-by-4.0" and policy.derive_dpo is False
    custom = CorpusPolicy.from_json('{"max_miners": 3, "statuses": ["scored", "reward"], "derive_dpo": true}')
    assert custom.max_miners == 3 and custom.statuses == ("scored", "reward") and custom.derive_dpo
    assert CorpusPolicy.from_json(json.dumps(custom.to_dict())) == custom


@pytest.mark.parametrize("text, field", [
    ('{"weight_coverage": 0}', "weight_coverage"), ('{"weight_coverage": 1.5}', "weight_coverage"),
    ('{"weight_coverage": "all"}', "weight_coverage"), ('{"min_weight": -1}', "min_weight"),
    ('{"max_miners": -1}', "max_miners"), ('{"max_miners": 2.5}', "max_miners"), ('{"statuses": []}', "statuses"),
    ('{"statuses": "scored"}', "statuses"), ('{"license": "CC BY"}', "license"), ('{"derive_dpo": 1}', "derive_dpo"),
    ('{"derive_max_new_tokens": 0}', "derive_max_new_tokens"), ('{"coverage": 0.9}', "unknown field"),
    ('[1]', "JSON object"), ('{', "not valid JSON"),
])
def test_policy_rejects_bad_values_naming_the_field(text, field):
    with pytest.raises(ValueError, match=field):
        CorpusPolicy.from_json(text)


def cand(uid: int, weight: float, status: str = "scored", competition: str = "curation", block: int = 0):
    return Candidate(competition, f"hk{uid}", uid, status, weight, block)


def test_a_near_zero_tail_stays_out():
    chosen = select_miners([cand(1, 0.999996), cand(2, 0.000004)], CorpusPolicy())
    assert [c.uid for c in chosen] == [1]


@pytest.mark.parametrize("policy, candidates, expected", [
    pytest.param(CorpusPolicy(), [cand(1, 0.5), cand(2, 0.3), cand(3, 0.15), cand(4, 0.05)], [1, 2, 3],
                 id="95-percent"),
    pytest.param(CorpusPolicy(weight_coverage=1.0), [cand(1, 0.5), cand(2, 0.5), cand(3, 0.0)], [1, 2],
                 id="zero-weight-never"),
    pytest.param(CorpusPolicy(min_weight=0.2), [cand(1, 0.5), cand(2, 0.3), cand(3, 0.15)], [1, 2], id="min-weight"),
    pytest.param(CorpusPolicy(max_miners=1), [cand(1, 0.5), cand(2, 0.5, block=-1)], [2], id="max-miners+tie"),
    pytest.param(CorpusPolicy(), [cand(1, 0.9, "no_improvement"), cand(2, 0.1)], [2], id="status"),
    pytest.param(CorpusPolicy(), [cand(1, 0.96), cand(2, 0.04), cand(3, 0.6, competition="dpo"),
                                  cand(4, 0.4, competition="dpo")], [1, 3, 4], id="per-competition"),
])
def test_selection(policy, candidates, expected):
    assert sorted(c.uid for c in select_miners(candidates, policy)) == sorted(expected)


# -- releases ------------------------------------------------------------------------------------------------------


def _card(records):
    return dataset_card(records, title="t", policy=CorpusPolicy())


def test_release_folder_layout_modes_and_contents(tmp_path):
    records = build_release_records([shard(1, 0.3, 10, "ab"), shard(2, 0.7, 20, "c", pairs=True)])
    old = os.umask(0o077)
    try:
        out = write_release(records, tmp_path / "rel", _card(records))
    finally:
        os.umask(old)
    rel = tmp_path / "rel"
    names = sorted(str(p.relative_to(rel)) for p in rel.rglob("*"))
    files = {c: parquet_name(c, records[c]) for c in (SFT, DPO)}
    assert names == sorted(["README.md", files[DPO], "jsonl", "jsonl/dpo.jsonl", "jsonl/sft.jsonl", files[SFT]])
    assert all(re.fullmatch(rf"{c}-[0-9a-f]{{12}}\.parquet", files[c]) for c in files)  # named by content
    for p in [rel, *rel.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    assert [p.name for p in tmp_path.iterdir()] == ["rel"]  # no staging folder left behind
    lines = (rel / "jsonl" / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == records[SFT] and "✓" in lines[0]
    assert list(json.loads(lines[0])) == sorted(json.loads(lines[0]))
    frame = pd.read_parquet(rel / files[SFT])
    assert list(frame.columns) == COLUMNS[SFT] and frame["uid"].tolist() == [1, 1]
    assert pq.read_schema(rel / files[DPO]).equals(arrow_schema(DPO), check_metadata=False)
    assert read_release(rel) == records and out["sha256"] == release_sha256(records)
    assert out["sft_parquet"] == str(rel / files[SFT])
    assert set(release_files(rel)) == {"README.md", files[SFT], files[DPO], "jsonl/sft.jsonl", "jsonl/dpo.jsonl"}
    with pytest.raises(OSError):  # releases are immutable
        write_release(records, rel, _card(records))


def test_identity_covers_both_configs():
    a = build_release_records([shard(1, 0.3, 10, "ab")])
    b = build_release_records([shard(1, 0.3, 10, "ab"), shard(2, 0.1, 10, "a", pairs=True)])
    assert release_sha256(a) != release_sha256(b)
    assert release_sha256(a) == release_sha256(build_release_records([shard(1, 0.3, 10, "ab")]))


def test_card_front_matter():
    records = build_release_records([shard(1, 0.3, 10, "ab"), shard(2, 0.7, 20, "c", pairs=True)])
    card = dataset_card(records, title="FLock OFF corpus", policy=CorpusPolicy(license="mit"), where="me/corpus")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "mit" and meta["size_categories"] == ["n<1K"] and meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"] and meta["source_datasets"] == ["original"]
    assert meta["configs"] == [
        {"config_name": "sft", "data_files": [{"split": "train", "path": parquet_name(SFT, records[SFT])}],
         "default": True},
        {"config_name": "dpo", "data_files": [{"split": "train", "path": parquet_name(DPO, records[DPO])}]}]
    assert [(c["config_name"], c["splits"]) for c in meta["dataset_info"]] == [
        ("sft", [{"name": "train", "num_bytes": len(jsonl_text(records[SFT]).encode()), "num_examples": 2}]),
        ("dpo", [{"name": "train", "num_bytes": len(jsonl_text(records[DPO]).encode()), "num_examples": 1}])]
    for section in ("## How it was made", "## Intended use and limitations", "## License and contributors",
                    "## Citation"):
        assert section in body
    assert "each miner offers its rows under this license" in body
    assert "| `sft` | 2 |" in body and "| `dpo` | 1 |" in body and "- Miners: 2" in body
    assert "| 7 | 2 | `5Hot2` | 0.700000 | 1.5000 | 0 | 1 |" in body and 'load_dataset("me/corpus", "dpo"' in body
    assert size_category(999) == "n<1K" and size_category(1000) == "1K<n<10K"


def test_both_configs_load_with_datasets_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    records = build_release_records([shard(1, 0.3, 10, "ab"), shard(2, 0.7, 20, "cd", pairs=True)])
    write_release(records, tmp_path / "rel", _card(records))
    folder, cache = str(tmp_path / "rel"), str(tmp_path / "cache")
    for config in (SFT, DPO):
        expected = datasets.Features.from_arrow_schema(arrow_schema(config))
        by_card = datasets.load_dataset(folder, config, split="train", cache_dir=cache)
        by_files = datasets.load_dataset("parquet", data_files=str(tmp_path / "rel" / parquet_name(config,
                                                                                                    records[config])),
                                         split="train", cache_dir=cache)
        for loaded in (by_card, by_files):
            assert loaded.features == expected and loaded.num_rows == len(records[config])
            assert loaded.to_list() == records[config]
    default = datasets.load_dataset(folder, split="train", cache_dir=cache)
    assert default.column_names == COLUMNS[SFT]


def test_an_empty_config_keeps_its_schema_and_is_not_declared(tmp_path):
    import datasets

    records = build_release_records([shard(1, 0.3, 10, "ab")])
    write_release(records, tmp_path / "rel", _card(records))
    empty = tmp_path / "rel" / parquet_name(DPO, [])
    assert pq.read_schema(empty).equals(arrow_schema(DPO), check_metadata=False)
    assert list(pd.read_parquet(empty).columns) == COLUMNS[DPO]
    # `datasets` builds no split without rows, so the card declares only the configs that hold some: every config
    # it names (and its own load snippet) loads
    card = (tmp_path / "rel" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert [c["config_name"] for c in meta["configs"]] == ["sft"] and '"dpo"' not in card.split("## Load")[1][:400]
    loaded = datasets.load_dataset(str(tmp_path / "rel"), SFT, split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 2


def test_merge_keeps_each_row_once_with_its_best_provenance():
    e1 = build_release_records([shard(1, 0.6, 10, "ab", epoch=1), shard(2, 0.4, 11, "c", epoch=1)])
    e2 = build_release_records([shard(1, 0.2, 10, "ab", epoch=2), shard(2, 0.4, 11, "c", epoch=2),
                                shard(3, 0.4, 12, "x", epoch=2)])
    merged = merge_releases([e1, e2])
    rows = {r["row_hash"]: r for r in merged[SFT]}
    assert len(rows) == len(merged[SFT]) == 4
    assert {r["epoch"] for r in merged[SFT] if r["uid"] == 1} == {1}  # the higher weight
    assert {r["epoch"] for r in merged[SFT] if r["uid"] == 2} == {2}  # a tie: the latest epoch
    assert [r["miner_weight"] for r in merged[SFT]] == sorted((r["miner_weight"] for r in merged[SFT]), reverse=True)
    assert merge_releases([e2, e1]) == merged


def test_a_moved_latest_loads_its_own_rows_through_the_default_datasets_cache(tmp_path, monkeypatch):
    """`datasets` caches a local folder by its name, its config and its data files' names (neither the files' content
    nor where a link points): `latest` moved to a release of as many rows would load the old ones, were the files
    not named by their content."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "default-cache"))  # the default cache, in the test's tmp
    first, second = (build_release_records([shard(uid, 0.3, 10, "ab")]) for uid in (1, 2))
    assert len(first[SFT]) == len(second[SFT]) and first[SFT] != second[SFT]
    loaded = []
    for records in (first, second):
        link, _ = replace_latest(records, tmp_path / "corpus", _card(records))
        loaded.append(datasets.load_dataset(str(tmp_path / "corpus" / "latest"), SFT, split="train").to_list())
    assert loaded == [first[SFT], second[SFT]]


def test_latest_is_swapped_atomically_and_kept_when_unchanged(tmp_path):
    first = build_release_records([shard(1, 0.3, 10, "ab")])
    link, changed = replace_latest(first, tmp_path, _card(first))
    assert changed and link.is_symlink() and read_release(link) == first
    assert replace_latest(first, tmp_path, _card(first)) == (link, False)
    second = build_release_records([shard(1, 0.3, 10, "abc")])
    _, changed = replace_latest(second, tmp_path, _card(second))
    assert changed and read_release(link) == second and len(list((tmp_path / ".latest").iterdir())) == 2
    third = build_release_records([shard(2, 0.3, 10, "z")])
    replace_latest(third, tmp_path, _card(third))
    assert len(list((tmp_path / ".latest").iterdir())) == 2  # the current one and the one it replaced
    assert stat.S_IMODE(os.stat(link / parquet_name(SFT, third[SFT])).st_mode) == 0o644


def test_a_plain_latest_folder_is_replaced(tmp_path):
    records = build_release_records([shard(1, 0.3, 10, "ab")])
    write_release(records, tmp_path / "latest", _card(records))  # e.g. a copied home (the link followed)
    assert replace_latest(records, tmp_path, _card(records))[1] is False
    more = build_release_records([shard(1, 0.3, 10, "abc")])
    link, changed = replace_latest(more, tmp_path, _card(more))
    assert changed and link.is_symlink() and read_release(link) == more


# -- derived pairs -------------------------------------------------------------------------------------------------


def test_base_answer_cache_round_trip_and_torn_lines(tmp_path):
    cache = BaseAnswerCache(tmp_path / "corpus" / "base-answers.jsonl")
    assert cache.load() == {}
    k1, k2 = cache.key("h1", "m", "r", 32), cache.key("h2", "m", "r", 32)
    cache.add({k1: "an answer ✓", k2: None})
    with open(cache.path, "a") as f:
        f.write('{"row_hash": "h3", "base')  # a torn write
    cache.add({cache.key("h1", "m", "r", 64): "longer"})
    assert cache.load() == {k1: "an answer ✓", k2: None, cache.key("h1", "m", "r", 64): "longer"}
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o644


def test_greedy_answers_with_the_tiny_model(tiny_model_dir):
    from flock_pipeline.core.corpus import greedy_answers
    from flock_pipeline.core.evaluator import load_base_model

    base = load_base_model(str(tiny_model_dir), device="cpu")
    prompts = [ChatRow("You are a helpful assistant.", (Turn("user", q),))
               for q in ("What is the capital of Orzugan?", "How populous is Kavifen?", "word " * 3000)]
    answers = greedy_answers(base, prompts, max_new_tokens=16, batch_size=2)
    assert all(isinstance(a, str) for a in answers[:2]) and answers[2] is None  # too long for the context
    assert greedy_answers(base, prompts[:1], max_new_tokens=16) == answers[:1]  # greedy: the same answer alone
    assert "<|im_end|>" not in answers[0]
