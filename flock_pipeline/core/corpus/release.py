"""The corpus release: its configs and columns, the records with provenance, and its files (a folder per release, staged
and renamed into place; `latest` replaced as a whole)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flock_pipeline.core.schema import ChatRow, PreferenceRow
from flock_pipeline.errors import FlockError

SFT, DPO = "sft", "dpo"
CONFIGS = (SFT, DPO)
PROVENANCE_COLUMNS = ["hotkey", "uid", "repo", "revision", "commit_block", "row_hash", "competition", "epoch",
                      "miner_weight", "eval_loss", "base_model", "base_revision", "eval_repo", "eval_revision"]
COLUMNS = {SFT: ["system", "conversations", *PROVENANCE_COLUMNS],
           DPO: ["system", "prompt", "chosen", "rejected", *PROVENANCE_COLUMNS, "derived"]}
_MESSAGES = "messages"  # a list of {"role": string, "content": string}
TYPES = {"system": "string", "conversations": _MESSAGES, "prompt": _MESSAGES, "chosen": _MESSAGES,
         "rejected": _MESSAGES, "hotkey": "string", "uid": "int64", "repo": "string", "revision": "string",
         "commit_block": "int64", "row_hash": "string", "competition": "string", "epoch": "int64",
         "miner_weight": "float64", "eval_loss": "float64", "base_model": "string", "base_revision": "string",
         "eval_repo": "string", "eval_revision": "string", "derived": "bool"}
FILES = {SFT: "sft.parquet", DPO: "dpo.parquet"}  # the names of releases written before data files were named by
# their content (`parquet_name`)


def parquet_name(config: str, rows: list[dict]) -> str:
    """A config's Parquet file name, named by its content (`sft-<12 hex>.parquet`): a dataset loader that caches a
    local folder by its name and its data files' names (`datasets` does) never serves an earlier release's rows
    from a folder that now holds another."""
    return f"{config}-{hashlib.sha256(jsonl_text(rows).encode('utf-8')).hexdigest()[:12]}.parquet"
JSONL_FILES = {SFT: "jsonl/sft.jsonl", DPO: "jsonl/dpo.jsonl"}
CARD_FILE = "README.md"
FILE_MODE, DIR_MODE = 0o644, 0o755
DEFAULT_LICENSE = "cc-by-4.0"


# -- records -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusShard:
    """One selected miner's rows of one epoch and competition, with what the rows' provenance says."""

    hotkey: str
    uid: int
    repo: str
    revision: str
    commit_block: int
    miner_weight: float  # the miner's weight in the epoch
    eval_loss: float | None
    rows: tuple[tuple[str, ChatRow | PreferenceRow], ...]  # (row hash, row), in the miner's file order
    competition: str = ""
    epoch: int = 0
    base_model: str = ""
    base_revision: str = ""
    eval_repo: str = ""
    eval_revision: str = ""
    derived: bool = False  # pairs made from this miner's SFT rows and the base model's answers


def build_release_records(shards: list[CorpusShard]) -> dict[str, list[dict]]:
    """config -> records: chat rows go to `sft`, preference pairs to `dpo`; shards by miner weight (desc), then
    commitment (block, uid), each in file order; a row already in its config (same row hash) is not repeated."""
    ordered = sorted(shards, key=lambda s: (-s.miner_weight, s.commit_block, s.uid, s.derived, s.competition))
    out: dict[str, list[dict]] = {SFT: [], DPO: []}
    seen: set[tuple[str, str]] = set()
    for shard in ordered:
        provenance = {"hotkey": shard.hotkey, "uid": int(shard.uid), "repo": shard.repo, "revision": shard.revision,
                      "commit_block": int(shard.commit_block), "competition": shard.competition,
                      "epoch": int(shard.epoch), "miner_weight": float(shard.miner_weight),
                      "eval_loss": _finite(shard.eval_loss), "base_model": shard.base_model,
                      "base_revision": shard.base_revision, "eval_repo": shard.eval_repo,
                      "eval_revision": shard.eval_revision}
        for row_hash, row in shard.rows:
            config = DPO if isinstance(row, PreferenceRow) else SFT
            if (config, row_hash) in seen:
                continue
            seen.add((config, row_hash))
            record = {**row.to_json_obj(), **provenance, "row_hash": row_hash}
            if config == DPO:
                record["derived"] = bool(shard.derived)
            out[config].append(record)
    return out


def merge_releases(releases: Iterable[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """The cumulative corpus: every (config, row hash) once, with its best provenance (the highest miner weight;
    tie: the latest epoch), ordered by that weight (desc), then epoch (latest first), commitment, file order."""
    best: dict[str, dict[str, tuple]] = {SFT: {}, DPO: {}}
    for release in releases:
        for config in CONFIGS:
            for i, record in enumerate(release.get(config, [])):
                key = (float(record["miner_weight"]), int(record["epoch"]))
                held = best[config].get(record["row_hash"])
                if held is None or key > held[0]:
                    best[config][record["row_hash"]] = (key, i, record)
    out = {}
    for config in CONFIGS:
        entries = sorted(best[config].values(), key=lambda e: (-e[0][0], -e[0][1], e[2]["commit_block"],
                                                                 e[2]["uid"], e[1]))
        out[config] = [record for _, _, record in entries]
    return out


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def jsonl_text(records: list[dict]) -> str:
    """A config's JSONL text: one sorted-key JSON object per row, UTF-8 (not \\u escapes)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def release_sha256(records: dict[str, list[dict]]) -> str:
    """The release's identity: sha256 of the JSON object {config: sha256 of its JSONL text} (sorted keys)."""
    digests = {c: hashlib.sha256(jsonl_text(records.get(c, [])).encode("utf-8")).hexdigest() for c in CONFIGS}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


# -- files ---------------------------------------------------------------------------------------------------------


def arrow_schema(config: str):
    """The Parquet schema of a config (what the card's `dataset_info` features describe)."""
    import pyarrow as pa

    scalar = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema([(name, messages if TYPES[name] == _MESSAGES else scalar[TYPES[name]])
                      for name in COLUMNS[config]])


def features_yaml(config: str) -> list[dict]:
    """A config's features in the form of the card's `dataset_info` (that `datasets` reads)."""
    out = []
    for name in COLUMNS[config]:
        if TYPES[name] == _MESSAGES:
            out.append({"name": name, "list": [{"name": "role", "dtype": "string"},
                                               {"name": "content", "dtype": "string"}]})
        else:
            out.append({"name": name, "dtype": TYPES[name]})
    return out


def write_release(records: dict[str, list[dict]], target: Path, card: str) -> dict[str, str]:
    """Write a release folder at `target` (which must not exist): staged beside it, then renamed. Returns the paths
    {"dir", "sft_parquet", "dpo_parquet", "sft_jsonl", "dpo_jsonl", "card"} and "sha256"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(target)
    make_dir(target.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}-stage-", dir=target.parent))
    try:
        os.chmod(stage, DIR_MODE)
        (stage / "jsonl").mkdir(mode=DIR_MODE)
        os.chmod(stage / "jsonl", DIR_MODE)
        for config in CONFIGS:
            rows = records.get(config, [])
            schema = arrow_schema(config)
            with pq.ParquetWriter(stage / parquet_name(config, rows), schema) as writer:  # no rows: the schema
                if rows:
                    writer.write_table(pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS[config]} for r in rows],
                                                            schema=schema))
            (stage / JSONL_FILES[config]).write_bytes(jsonl_text(rows).encode("utf-8"))
        (stage / CARD_FILE).write_bytes(card.encode("utf-8"))
        for path in stage.rglob("*"):
            os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
        os.rename(stage, target)  # atomic; fails when target exists (releases are immutable)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"dir": str(target), "sft_parquet": str(target / parquet_name(SFT, records.get(SFT, []))),
            "dpo_parquet": str(target / parquet_name(DPO, records.get(DPO, []))),
            "sft_jsonl": str(target / JSONL_FILES[SFT]), "dpo_jsonl": str(target / JSONL_FILES[DPO]),
            "card": str(target / CARD_FILE), "sha256": release_sha256(records)}


def make_dir(path: Path) -> None:
    """Create `path` (and its missing parents) as 0755 folders whatever the umask; an existing one is left as is."""
    path = Path(path)
    if path.is_dir():
        return
    make_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


class ReleaseError(FlockError, ValueError):
    """A release folder or file on disk is not what the corpus step wrote; the message names it."""


def read_release(folder: Path) -> dict[str, list[dict]] | None:
    """A release folder's records (from its JSONL files); None when it is not a complete release. A file that does
    not read as JSONL is a ReleaseError naming the file and the line."""
    folder = Path(folder)
    out = {}
    for config in CONFIGS:
        path = folder / JSONL_FILES[config]
        if not path.is_file():
            return None
        out[config] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReleaseError(f"{path}: cannot be read ({exc})") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    out[config].append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ReleaseError(f"{path}, line {number}: not JSON ({exc.msg})") from None
    return out


def release_files(folder: Path) -> dict[str, bytes]:
    """The files of a release folder by their path in it (what a dataset repo receives)."""
    folder = Path(folder)
    names = [CARD_FILE, *sorted(p.name for p in folder.glob("*.parquet")), *JSONL_FILES.values()]
    return {name: (folder / name).read_bytes() for name in names}


LATEST, LATEST_STORE = "latest", ".latest"


def replace_latest(records: dict[str, list[dict]], corpus_dir: Path, card: str) -> tuple[Path, bool]:
    """Make `corpus_dir/latest` the release of `records`: (its path, whether it changed).

    `latest` is a symbolic link to `.latest/<sha256[:16]>/`, swapped by one rename (atomic: a reader sees the old
    release or the new one, never a mix); the release it replaced is kept until the next swap (for readers still
    on it), older ones are removed. A `latest` that is a plain folder (a copied home) with other rows is moved
    into `.latest/` first."""
    corpus_dir = Path(corpus_dir)
    sha = release_sha256(records)
    link, store = corpus_dir / LATEST, corpus_dir / LATEST_STORE
    name = sha[:16]
    _check_own(corpus_dir, link, store)
    if link.is_symlink():
        if os.readlink(link) == f"{LATEST_STORE}/{name}" and (store / name).is_dir():
            return link, False
    elif link.is_dir():
        held = read_release(link)
        if held is not None and release_sha256(held) == sha:
            return link, False
    make_dir(store)
    if not (store / name).is_dir():
        write_release(records, store / name, card)
    previous = os.readlink(link).removeprefix(f"{LATEST_STORE}/") if link.is_symlink() else None
    if link.exists() and not link.is_symlink():
        os.rename(link, store / f"replaced-{os.urandom(4).hex()}")
    temp = corpus_dir / f".latest-link-{os.urandom(6).hex()}"
    os.symlink(f"{LATEST_STORE}/{name}", temp)
    os.replace(temp, link)
    for old in store.iterdir():  # only what this step wrote there: release folders and moved-aside copies
        if old.name not in (name, previous) and old.is_dir() and not old.is_symlink() and _OURS.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return link, True


_OURS = re.compile(r"[0-9a-f]{16}|replaced-[0-9a-f]{8}")  # the names of the folders `replace_latest` writes


def _check_own(corpus_dir: Path, link: Path, store: Path) -> None:
    """`latest` and `.latest` are what the corpus step writes, or absent: a `.latest` that is not a folder inside
    `corpus_dir` (a symbolic link elsewhere), a `latest` link that points out of `.latest`, or a plain-folder
    `latest` that holds no release (someone's files) are refused (ReleaseError naming it), never followed or
    deleted."""
    if store.is_symlink() or (store.exists() and not store.is_dir()):
        raise ReleaseError(f"{store} is not a folder the corpus step wrote (a link or a file): move it away")
    if link.is_symlink():
        target = os.readlink(link)
        if not re.fullmatch(rf"{re.escape(LATEST_STORE)}/{_OURS.pattern}", target):
            raise ReleaseError(f"{link} points to {target!r}, not to a release the corpus step wrote: move it away")
    elif link.exists() and (not link.is_dir() or read_release(link) is None):
        raise ReleaseError(f"{link} is not a release the corpus step wrote (no release in it): move it away")
