"""Tests for flock_pipeline.core.corpus: record order, provenance columns, JSONL and Parquet output."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from flock_pipeline.core.corpus import PROVENANCE_COLUMNS, CorpusShard, build_corpus_records, write_corpus
from flock_pipeline.core.schema import ChatRow, Turn


def chat(tag: str) -> ChatRow:
    return ChatRow(system=f"sys {tag}", turns=(Turn("user", f"question {tag}"), Turn("assistant", f"answer {tag} ✓")))


def shard(uid: int, score: float, block: int, tags: str, loss: float = 1.5) -> CorpusShard:
    rows = tuple((chat(f"{uid}{t}").row_hash, chat(f"{uid}{t}")) for t in tags)
    return CorpusShard(hotkey=f"5Hot{uid}", uid=uid, repo=f"miner{uid}/data", revision=f"{uid:040x}",
                       commit_block=block, miner_score=score, eval_loss=loss, rows=rows)


@pytest.mark.parametrize(
    "shards, expected_uid_order",
    [
        pytest.param([shard(1, 0.2, 10, "a"), shard(2, 0.7, 20, "a"), shard(3, 0.1, 5, "a")], [2, 1, 3],
                     id="score-descending"),
        pytest.param([shard(1, 0.5, 30, "a"), shard(2, 0.5, 20, "a"), shard(3, 0.5, 25, "a")], [2, 3, 1],
                     id="tie-broken-by-block"),
        pytest.param([shard(9, 0.5, 20, "a"), shard(4, 0.5, 20, "a"), shard(6, 0.5, 20, "a")], [4, 6, 9],
                     id="tie-broken-by-uid"),
        pytest.param([shard(5, 0.1, 1, "a"), shard(2, 0.4, 9, "a"), shard(3, 0.4, 8, "a"), shard(1, 0.4, 8, "a")],
                     [1, 3, 2, 5], id="all-keys"),
        pytest.param([], [], id="empty"),
    ],
)
def test_record_order_by_shard(shards, expected_uid_order):
    records = build_corpus_records(shards)
    assert [r["uid"] for r in records] == expected_uid_order


def test_rows_keep_file_order_within_shard():
    s = shard(1, 0.5, 10, "cab")
    records = build_corpus_records([shard(2, 0.9, 10, "zy"), s])
    assert [r["conversations"][0]["content"] for r in records] == [
        "question 2z", "question 2y", "question 1c", "question 1a", "question 1b"]
    assert [r["row_hash"] for r in records[2:]] == [h for h, _ in s.rows]


def test_record_has_chat_fields_and_provenance():
    s = shard(3, 0.25, 1234, "a", loss=2.5)
    [record] = build_corpus_records([s])
    row_hash, row = s.rows[0]
    assert record == {
        "system": "sys 3a",
        "conversations": [{"role": "user", "content": "question 3a"},
                          {"role": "assistant", "content": "answer 3a ✓"}],
        "hotkey": "5Hot3", "uid": 3, "repo": "miner3/data", "revision": f"{3:040x}", "commit_block": 1234,
        "row_hash": row_hash, "miner_score": 0.25, "eval_loss": 2.5,
    }
    assert set(record) == {"system", "conversations", *PROVENANCE_COLUMNS}
    assert ChatRow.from_json_obj(record) == row
    assert record["row_hash"] == row.row_hash


def test_input_list_not_reordered():
    shards = [shard(1, 0.1, 10, "a"), shard(2, 0.9, 10, "a")]
    build_corpus_records(shards)
    assert [s.uid for s in shards] == [1, 2]


def _normalise_parquet(frame: pd.DataFrame) -> list[dict]:
    out = []
    for rec in frame.to_dict(orient="records"):
        rec["conversations"] = [dict(t) for t in rec["conversations"]]
        for key in ("uid", "commit_block"):
            rec[key] = int(rec[key])
        for key in ("miner_score", "eval_loss"):
            rec[key] = float(rec[key])
        out.append(rec)
    return out


def test_write_corpus_round_trip(tmp_path):
    records = build_corpus_records([shard(1, 0.3, 10, "ab", loss=1.25), shard(2, 0.7, 20, "c", loss=0.75)])
    out = write_corpus(records, tmp_path / "nested" / "out", name="epoch7")
    jsonl_path = tmp_path / "nested" / "out" / "epoch7.jsonl"
    parquet_path = tmp_path / "nested" / "out" / "epoch7.parquet"
    assert out["jsonl"] == str(jsonl_path)
    assert out["parquet"] == str(parquet_path)

    raw = jsonl_path.read_bytes()
    assert out["sha256"] == hashlib.sha256(raw).hexdigest()
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == records
    assert "✓" in lines[0]  # ensure_ascii=False: text is stored as UTF-8, not \u escapes
    assert list(json.loads(lines[0])) == sorted(json.loads(lines[0]))  # keys sorted

    frame = pd.read_parquet(parquet_path)
    assert list(frame.columns) == ["system", "conversations", *PROVENANCE_COLUMNS]
    assert _normalise_parquet(frame) == records

    import datasets

    loaded = datasets.load_from_disk(out["dataset"])
    assert loaded.num_rows == 3 and loaded.column_names == ["system", "conversations", *PROVENANCE_COLUMNS]
    assert loaded[0]["row_hash"] == records[0]["row_hash"] and loaded[0]["uid"] == records[0]["uid"]

    # no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "nested" / "out").iterdir()) == [
        "epoch7.jsonl", "epoch7.parquet", "epoch7_dataset"]


def test_write_corpus_is_deterministic_and_overwrites(tmp_path):
    first = build_corpus_records([shard(1, 0.5, 10, "ab")])
    a = write_corpus(first, tmp_path)
    again = write_corpus(first, tmp_path)
    assert a["sha256"] == again["sha256"]
    second = build_corpus_records([shard(2, 0.5, 10, "c")])
    b = write_corpus(second, tmp_path)
    assert b["sha256"] != a["sha256"]
    assert pd.read_parquet(b["parquet"])["uid"].tolist() == [2]
    assert [json.loads(x)["uid"] for x in open(b["jsonl"], encoding="utf-8")] == [2]
    assert (tmp_path / "sft.jsonl").exists() and (tmp_path / "sft.parquet").exists()


def test_write_empty_corpus(tmp_path):
    out = write_corpus([], tmp_path)
    assert open(out["jsonl"], "rb").read() == b""
    assert out["sha256"] == hashlib.sha256(b"").hexdigest()
    frame = pd.read_parquet(out["parquet"])
    assert len(frame) == 0
    assert list(frame.columns) == ["system", "conversations", *PROVENANCE_COLUMNS]
