"""The final SFT corpus: the eligible miners' deduplicated shards, best miner first, with provenance.

Each row keeps the chat fields of the protocol (`system`, `conversations`) plus where it came from: the miner's
hotkey and uid, the dataset repo and revision, the commitment block, the row's hash, and the miner's score (its
weight in the epoch) and eval loss. Written as JSONL and Parquet, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flock_pipeline.core.schema import ChatRow

PROVENANCE_COLUMNS = ["hotkey", "uid", "repo", "revision", "commit_block", "row_hash", "miner_score", "eval_loss"]


@dataclass(frozen=True)
class CorpusShard:
    hotkey: str
    uid: int
    repo: str
    revision: str
    commit_block: int
    miner_score: float  # the miner's weight in the epoch
    eval_loss: float
    rows: tuple[tuple[str, ChatRow], ...]  # (row hash, row), in the miner's file order


def build_corpus_records(shards: list[CorpusShard]) -> list[dict]:
    """Rows of every shard, ordered by miner score (desc), then commitment (block, uid), then file order."""
    ordered = sorted(shards, key=lambda s: (-s.miner_score, s.commit_block, s.uid))
    records = []
    for shard in ordered:
        for row_hash, row in shard.rows:
            obj = row.to_json_obj()
            records.append({**obj, "hotkey": shard.hotkey, "uid": shard.uid, "repo": shard.repo,
                            "revision": shard.revision, "commit_block": shard.commit_block, "row_hash": row_hash,
                            "miner_score": shard.miner_score, "eval_loss": shard.eval_loss})
    return records


def corpus_text(records: list[dict]) -> str:
    """The release's JSONL text (one sorted-key JSON object per row): its identity."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def corpus_sha256(records: list[dict]) -> str:
    return hashlib.sha256(corpus_text(records).encode()).hexdigest()


def write_corpus(records: list[dict], out_dir: Path, name: str = "sft") -> dict[str, str]:
    """Write `{name}.jsonl`, `{name}.parquet` and `{name}_dataset/` (a Hugging Face `datasets` dataset, for
    `datasets.load_from_disk`) into out_dir; returns {"jsonl", "parquet", "dataset", "sha256"}."""
    import shutil

    import datasets
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = corpus_text(records)
    jsonl = out_dir / f"{name}.jsonl"
    _atomic_write(jsonl, text.encode("utf-8"))
    parquet = out_dir / f"{name}.parquet"
    frame = pd.DataFrame(records, columns=["system", "conversations", *PROVENANCE_COLUMNS])
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".parquet", dir=out_dir)
    os.close(fd)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, parquet)
    dataset_dir = out_dir / f"{name}_dataset"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}_dataset-", dir=out_dir))
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(staging))
    shutil.rmtree(dataset_dir, ignore_errors=True)
    os.replace(staging, dataset_dir)
    return {"jsonl": str(jsonl), "parquet": str(parquet), "dataset": str(dataset_dir),
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename; the file is readable by everyone (a corpus is for other users)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
