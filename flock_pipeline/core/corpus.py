"""The final corpus: the selected miners' rows as a Hugging Face dataset with two configs, with provenance.

Configs: `sft` (chat rows: `system`, `conversations`) and `dpo` (preference pairs: `system`, `prompt`, `chosen`,
`rejected`, and `derived`). Every row carries where it came from (`PROVENANCE_COLUMNS`): the miner's hotkey and uid,
the dataset repo and revision, the commitment block, the row's hash, the competition and epoch, the miner's weight in
the epoch and its eval loss, the base model (name, revision) and the eval set (repo, revision) it was scored with.

A release is a folder::

    sft.parquet  dpo.parquet          the configs (dpo.parquet is written even when empty, with its schema)
    jsonl/sft.jsonl  jsonl/dpo.jsonl  the same rows as JSONL (sorted keys, UTF-8)
    README.md                         the dataset card: the Hub's YAML front matter (configs, features, license,
                                      size category, task) and a generated summary

It is staged in a hidden folder beside its target and renamed into place; files are 0644 and folders 0755 whatever
the umask. Its identity (`release_sha256`) covers both configs' rows, not the card.

Which miners' rows enter is the `CorpusPolicy` (per competition, by weight). Derived pairs (opt-in) contrast a
selected miner's single-turn answer (chosen) with the base model's own greedy answer to the same prompt (rejected);
the base model's answers are cached in a JSONL file (`BaseAnswerCache`) so that they are generated once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from flock_pipeline.core.schema import ChatRow, PreferenceRow

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
FILES = {SFT: "sft.parquet", DPO: "dpo.parquet"}
JSONL_FILES = {SFT: "jsonl/sft.jsonl", DPO: "jsonl/dpo.jsonl"}
CARD_FILE = "README.md"
FILE_MODE, DIR_MODE = 0o644, 0o755
DEFAULT_LICENSE = "cc-by-4.0"


# -- the selection policy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusPolicy:
    """Which miners' rows enter the corpus, and how the release is labelled. Per competition (that puts rows in the
    corpus): the miners whose status is one of `statuses`, best weight first (ties: the earlier commitment, then
    the lower uid), taken until they hold `weight_coverage` of the weight those miners have together; a miner with
    weight 0 or below `min_weight` never enters; at most `max_miners` of them (0: no cap).

    weight_coverage: in (0, 1]; 0.95 keeps the miners who hold 95 % of the weight (a near-zero tail stays out).
    statuses: "scored" = eligible, evaluated and (where the game requires it) beating the base model.
    license: the dataset card's license id (Hub form); the default, cc-by-4.0, lets anyone reuse the corpus with
        attribution.
    derive_dpo: also make `dpo` pairs from single-turn SFT rows: chosen = the miner's answer, rejected = the base
        model's greedy answer (at most `derive_max_new_tokens` tokens); generated once per row, base model revision
        and token budget, and cached.
    """

    weight_coverage: float = 0.95
    min_weight: float = 0.0
    max_miners: int = 0
    statuses: tuple[str, ...] = ("scored",)
    license: str = DEFAULT_LICENSE
    derive_dpo: bool = False
    derive_max_new_tokens: int = 256

    def __post_init__(self) -> None:
        coverage = _number(self.weight_coverage, "weight_coverage")
        if not 0 < coverage <= 1:
            raise ValueError(f"corpus_policy.weight_coverage must be in (0, 1], got {self.weight_coverage!r}")
        if _number(self.min_weight, "min_weight") < 0:
            raise ValueError(f"corpus_policy.min_weight must be 0 or more, got {self.min_weight!r}")
        if _whole(self.max_miners, "max_miners") < 0:
            raise ValueError(f"corpus_policy.max_miners must be 0 (no cap) or more, got {self.max_miners!r}")
        statuses = self.statuses
        if isinstance(statuses, str) or not isinstance(statuses, (list, tuple)) or not statuses \
                or not all(isinstance(s, str) and s for s in statuses):
            raise ValueError(f"corpus_policy.statuses must be a non-empty list of statuses, got {statuses!r}")
        object.__setattr__(self, "statuses", tuple(statuses))
        if not isinstance(self.license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", self.license):
            raise ValueError(f"corpus_policy.license must be a Hub license id such as 'cc-by-4.0', "
                             f"got {self.license!r}")
        if not isinstance(self.derive_dpo, bool):
            raise ValueError(f"corpus_policy.derive_dpo must be true or false, got {self.derive_dpo!r}")
        if not 1 <= _whole(self.derive_max_new_tokens, "derive_max_new_tokens") <= 4096:
            raise ValueError(f"corpus_policy.derive_max_new_tokens must be 1 to 4096, "
                             f"got {self.derive_max_new_tokens!r}")

    @classmethod
    def from_json(cls, text: str) -> CorpusPolicy:
        """The policy a JSON object of its fields describes ("{}": the defaults); ValueError naming the field."""
        try:
            value = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"corpus_policy is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("corpus_policy must be a JSON object of policy fields")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"corpus_policy: unknown field(s) {', '.join(unknown)}")
        return cls(**value)

    def to_dict(self) -> dict:
        return {**asdict(self), "statuses": list(self.statuses)}


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"corpus_policy.{name} must be a number, got {value!r}")
    return float(value)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"corpus_policy.{name} must be a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class Candidate:
    """A miner of one competition, as the policy sees it."""

    competition: str
    hotkey: str
    uid: int
    status: str
    weight: float  # its weight within the competition
    commit_block: int = 0


def select_miners(candidates: Iterable[Candidate], policy: CorpusPolicy) -> list[Candidate]:
    """The candidates whose rows enter, per competition in the policy's order (best weight first)."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.status in policy.statuses and math.isfinite(c.weight) and c.weight > 0:
            groups.setdefault(c.competition, []).append(c)
    chosen = []
    for name in sorted(groups):
        ranked = sorted(groups[name], key=lambda c: (-c.weight, c.commit_block, c.uid, c.hotkey))
        target = policy.weight_coverage * sum(c.weight for c in ranked) * (1 - 1e-9)
        covered, taken = 0.0, 0
        for c in ranked:
            if covered >= target or c.weight < policy.min_weight or (policy.max_miners and taken >= policy.max_miners):
                break
            chosen.append(c)
            covered += c.weight
            taken += 1
    return chosen


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
            with pq.ParquetWriter(stage / FILES[config], schema) as writer:  # no rows: no row group, the schema
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
    return {"dir": str(target), "sft_parquet": str(target / FILES[SFT]), "dpo_parquet": str(target / FILES[DPO]),
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


def read_release(folder: Path) -> dict[str, list[dict]] | None:
    """A release folder's records (from its JSONL files); None when it is not a complete release."""
    folder = Path(folder)
    out = {}
    for config in CONFIGS:
        path = folder / JSONL_FILES[config]
        if not path.is_file():
            return None
        out[config] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


def release_files(folder: Path) -> dict[str, bytes]:
    """The files of a release folder by their path in it (what a dataset repo receives)."""
    folder = Path(folder)
    names = [CARD_FILE, *FILES.values(), *JSONL_FILES.values()]
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
    for old in store.iterdir():
        if old.name not in (name, previous) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return link, True


# -- the dataset card ----------------------------------------------------------------------------------------------

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1B")


def dataset_card(records: dict[str, list[dict]], *, title: str, policy: CorpusPolicy, where: str = "",
                 note: str = "") -> str:
    """The release's README.md: YAML front matter the Hub and `datasets` read (configs -> Parquet files, features,
    license, size category, task) and a summary generated from the rows (rows per config, miners, epochs, the
    scores of the miners per competition, the policy, the base model). Deterministic: no timestamps."""
    import yaml

    counts = {c: len(records.get(c, [])) for c in CONFIGS}
    everything = [r for c in CONFIGS for r in records.get(c, [])]
    front = {
        "license": policy.license,
        "pretty_name": title,
        "task_categories": ["text-generation"],
        "tags": ["sft", "dpo", "conversational", "bittensor", "flock"],
        "size_categories": [size_category(sum(counts.values()))],
        "configs": [{"config_name": SFT, "data_files": [{"split": "train", "path": FILES[SFT]}], "default": True},
                    {"config_name": DPO, "data_files": [{"split": "train", "path": FILES[DPO]}]}],
        "dataset_info": [{"config_name": c, "features": features_yaml(c)} for c in CONFIGS],
    }
    miners = sorted({r["hotkey"] for r in everything})
    epochs = sorted({int(r["epoch"]) for r in everything})
    bases = sorted({(r["base_model"], r["base_revision"]) for r in everything if r.get("base_model")})
    derived = sum(bool(r.get("derived")) for r in records.get(DPO, []))
    where = where or "path/to/this/folder"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {title}", "",
        "Chat data from the miners of Bittensor subnet 96 (FLock OFF). A validator scores each miner's dataset by "
        "how much a LoRA fine-tune on it lowers a base model's loss on a held-out eval set; the rows of the "
        "miners that hold most of the weight are kept, with where every row came from.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "| config | rows | Parquet | JSONL |", "|---|---|---|---|",
        *(f"| `{c}` | {counts[c]} | `{FILES[c]}` | `{JSONL_FILES[c]}` |" for c in CONFIGS), "",
        f"- Miners: {len(miners)}",
        f"- Epochs: {_ranges(epochs) if epochs else 'none'}",
        "- Base model: " + (", ".join(f"`{m}` at `{r}`" for m, r in bases) if bases else "none recorded"),
        f"- Derived pairs (the base model's answer as `rejected`): {derived}",
        "",
        "## Load", "",
        "```python", "from datasets import load_dataset", "",
        f'sft = load_dataset("{where}", "sft", split="train")',
        f'dpo = load_dataset("{where}", "dpo", split="train")', "```", "",
        "## Fields", "",
        "- `sft`: `system`, `conversations` (alternating `user` / `assistant` turns).",
        "- `dpo`: `system`, `prompt` (turns ending with a `user` turn), `chosen` and `rejected` (one `assistant` "
        "message each), `derived` (true: `chosen` is a miner's SFT answer and `rejected` the base model's greedy "
        "answer to the same prompt).",
        "- Provenance (both): `hotkey`, `uid`, `repo`, `revision` (the miner's dataset commit), `commit_block`, "
        "`row_hash` (the row's identity), `competition`, `epoch`, `miner_weight` (the miner's weight in the epoch), "
        "`eval_loss`, `base_model`, `base_revision`, `eval_repo`, `eval_revision`.",
        "",
        "## Selection policy", "",
        f"Per competition, miners with status {', '.join(f'`{s}`' for s in policy.statuses)}, best weight first, "
        f"until they hold {policy.weight_coverage:.0%} of the competition's weight"
        + (f"; weight at least {policy.min_weight:g}" if policy.min_weight else "")
        + (f"; at most {policy.max_miners} miners" if policy.max_miners else "")
        + ". A row is kept once per config (its best-weighted copy)."
        + (f" Derived pairs: on, at most {policy.derive_max_new_tokens} new tokens per base-model answer."
           if policy.derive_dpo else ""),
        "", "```json", json.dumps(policy.to_dict(), sort_keys=True), "```", "",
        "## Scores", "",
    ]
    lines += _score_tables(everything) or ["No miner was selected."]
    return "\n".join(lines).rstrip() + "\n"


def _score_tables(records: list[dict]) -> list[str]:
    groups: dict[str, dict[tuple, dict]] = {}
    for r in records:
        key = (int(r["epoch"]), r["hotkey"], int(r["uid"]))
        entry = groups.setdefault(r["competition"], {}).setdefault(key, {
            "weight": r["miner_weight"], "loss": r["eval_loss"], "sft": 0, "dpo": 0,
            "eval": (r.get("eval_repo") or "", r.get("eval_revision") or "")})
        entry["dpo" if "prompt" in r else "sft"] += 1
    lines = []
    for competition in sorted(groups):
        entries = sorted(groups[competition].items(), key=lambda kv: (-kv[0][0], -kv[1]["weight"], kv[0][2]))
        evals = sorted({e["eval"] for _, e in entries if e["eval"][0]})
        lines += [f"### {competition}", ""]
        if evals:
            lines += ["Eval set: " + ", ".join(f"`{repo}` at `{rev}`" for repo, rev in evals), ""]
        lines += ["| epoch | uid | miner | weight | eval loss | sft rows | dpo pairs |",
                  "|---|---|---|---|---|---|---|"]
        for (epoch, hotkey, uid), e in entries:
            loss = f"{e['loss']:.4f}" if e["loss"] is not None else ""
            lines.append(f"| {epoch} | {uid} | `{hotkey}` | {e['weight']:.6f} | {loss} | {e['sft']} | {e['dpo']} |")
        lines.append("")
    return lines


def _ranges(values: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    parts, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None]):
        if cur is None or cur != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)


# -- derived pairs: the base model's answers, cached ---------------------------------------------------------------


class BaseAnswerCache:
    """The base model's greedy answers, one JSON object per line of a file (`corpus_dir/base-answers.jsonl`):
    {"row_hash", "base_model", "base_revision", "max_new_tokens", "answer"}; `answer` null: the prompt did not fit
    the model (not asked again). Appended under an exclusive lock; a torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @staticmethod
    def key(row_hash: str, base_model: str, base_revision: str, max_new_tokens: int) -> tuple:
        return row_hash, base_model, base_revision, int(max_new_tokens)

    def load(self) -> dict[tuple, str | None]:
        out: dict[tuple, str | None] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[self.key(e["row_hash"], e["base_model"], e["base_revision"], e["max_new_tokens"])] = e["answer"]
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def add(self, entries: dict[tuple, str | None]) -> None:
        import fcntl

        if not entries:
            return
        make_dir(self.path.parent)
        text = "".join(json.dumps({"row_hash": k[0], "base_model": k[1], "base_revision": k[2],
                                   "max_new_tokens": k[3], "answer": v}, ensure_ascii=False, sort_keys=True) + "\n"
                       for k, v in entries.items())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size and not _ends_with_newline(fd):
                os.write(fd, b"\n")  # after a torn line
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) == b"\n"


def single_turn(row: ChatRow) -> bool:
    """A row with one user turn and its answer (the rows derived pairs are made from)."""
    return len(row.turns) == 2 and row.turns[0].role == "user" and row.turns[1].role == "assistant"


def greedy_answers(base, prompts: list[ChatRow], max_new_tokens: int, batch_size: int = 8) -> list[str | None]:
    """The model's greedy answer to each prompt (a chat row whose turns end with a user turn), rendered as ChatML
    up to "<|im_start|>assistant\\n" and decoded up to <|im_end|>; None for a prompt that does not fit the model's
    context with `max_new_tokens` more. `base` is a loaded `BaseModel` (.model, .tokenizer, .device)."""
    import torch

    from flock_pipeline.core.chat import IM_END, render_segments

    tokenizer, model = base.tokenizer, base.model
    stop = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = []
    for prompt in prompts:
        ids: list[int] = []
        for text, _ in render_segments(prompt):
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        encoded.append(ids if context is None or len(ids) + max_new_tokens <= context else None)
    answers: list[str | None] = [None] * len(prompts)
    todo = [i for i, ids in enumerate(encoded) if ids]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i], dtype=torch.long)
                mask[j, width - len(encoded[i]):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(base.device), attention_mask=mask.to(base.device),
                                     max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=pad, eos_token_id=stop, temperature=None, top_p=None, top_k=None)
            for j, i in enumerate(chunk):
                new = out[j, width:].tolist()
                if stop in new:
                    new = new[:new.index(stop)]
                answers[i] = tokenizer.decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers
