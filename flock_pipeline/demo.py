"""The demo networks: a local subnet seeded with synthetic miners of known quality, and the epoch report.

`default` network (label: what it is, what the validators must conclude):
    honest-good      100 correct atlas rows                       -> the most weight
    honest-fair      50 other atlas rows, 20 % with wrong answers -> second
    weak-offdomain   100 arithmetic rows, nothing about the atlas -> 0, its loss does not beat the base model
    copier           honest-good's file, committed later          -> 0, duplicate
    malformed        broken JSON and wrong roles                  -> 0, invalid
    empty            an empty data.jsonl                          -> 0, empty

`adversarial` network (`adversarial_miners`): five honest miners at known quality levels (1.0 / 0.8 / 0.6 / 0.4 /
0.2: how many distinct atlas facts each teaches, 100 down to 20 rows, disjoint from one another) committing in an
order unrelated to their quality, and one of every attacker: exact copier, paraphrasing copier, partial copier,
eval-set leaker, junk text, empty, oversize, malformed, a stale commitment from before its hotkey's re-registration
and a later commitment of an honest miner's own repo and revision. Every attacker must end at weight 0 with a
reason; the honest miners must be ranked by quality.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flock_pipeline.core import synthetic
from flock_pipeline.core.commitment import DEFAULT_COMPETITION_ID, Commitment
from flock_pipeline.core.schema import DatasetLimits, rows_to_jsonl
from flock_pipeline.resources.chain import LocalChainResource
from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.resources.warehouse import WarehouseResource

EVAL_REPO = "flock/eval-atlas"
VALIDATOR_HOTKEY = "validator"
REPORT_FIELDS = ["uid", "hotkey", "label", "quality", "status", "reason", "rows_kept", "eval_loss", "win_rate",
                 "weight"]


NETWORKS = ("default", "adversarial")


@dataclass(frozen=True)
class DemoMiner:
    label: str
    hotkey: str
    repo: str
    data: bytes
    quality: float | None = None  # the generator's quality level for honest miners (higher is better)
    commit_repo_of: str | None = None  # commit another miner's repo and revision instead of uploading
    reregister: bool = False  # the hotkey re-registers after committing (its commitment becomes stale)


def demo_miners(seed: int = 7) -> list[DemoMiner]:
    """The demo's miners in commitment order (the copier commits last)."""
    atlas = synthetic.make_atlas(seed)
    good = rows_to_jsonl(synthetic.honest_rows(atlas, 100, seed + 1)).encode()
    fair = rows_to_jsonl(synthetic.honest_rows(atlas, 50, seed + 1, wrong_share=0.2, skip=100)).encode()
    off = rows_to_jsonl(synthetic.off_domain_rows(100, seed + 3)).encode()
    malformed = b"\n".join([
        b'{"system": null, "conversations": [{"role": "assistant", "content": "I answer first"}]}',
        b'{"conversations": [{"role": "user", "content": "unanswered question"}]}',
        b'{"system": 42, "conversations": []}',
        b'this line is not JSON at all',
        b'{"conversations": "not a list"',
    ]) + b"\n"
    return [
        DemoMiner("honest-good", "hk-honest-good", "alice/atlas-facts", good, quality=1.0),
        DemoMiner("honest-fair", "hk-honest-fair", "bob/atlas-notes", fair, quality=0.5),
        DemoMiner("weak-offdomain", "hk-weak-offdomain", "carol/arithmetic", off),
        DemoMiner("malformed", "hk-malformed", "dave/broken", malformed),
        DemoMiner("empty", "hk-empty", "erin/nothing", b""),
        DemoMiner("copier", "hk-copier", "mallory/atlas-facts-copy", good),
    ]


HONEST_LEVELS = (0.6, 1.0, 0.2, 0.8, 0.4)  # commitment order of the adversarial network's honest miners


def adversarial_miners(seed: int = 7, max_file_bytes: int = DatasetLimits().max_file_bytes) -> list[DemoMiner]:
    """The adversarial network's miners in commitment order."""
    import random

    atlas = synthetic.make_atlas(seed)
    rng = random.Random(seed + 100)
    pool = synthetic.fact_pool(atlas, seed + 101)
    chunks, start = {}, 0
    for q in sorted(HONEST_LEVELS, reverse=True):
        n = round(q * 100)
        chunks[q], start = pool[start:start + n], start + n
    honest = {q: synthetic.fact_rows(chunks[q]) for q in HONEST_LEVELS}
    miners = [DemoMiner(f"honest-q{round(q * 100)}", f"hk-honest-q{round(q * 100)}", f"honest{i}/atlas",
                        rows_to_jsonl(honest[q]).encode(), quality=q) for i, q in enumerate(HONEST_LEVELS)]
    best, second = honest[1.0], honest[0.8]
    paraphrased = [synthetic.paraphrase(r, rng) for r in best]
    rng.shuffle(paraphrased)
    partial = [synthetic.paraphrase(r, rng) for r in rng.sample(second, 24)] + synthetic.junk_rows(56, seed + 102)
    rng.shuffle(partial)
    evals = synthetic.eval_rows(atlas)
    leaked = [synthetic.paraphrase(r, rng) if i % 2 else r for i, r in enumerate(rng.sample(evals, 100))]
    malformed = b"\n".join([b'{"conversations": [{"role": "assistant", "content": "I answer first"}]}',
                            b'not json', b'{"system": 1, "conversations": []}']) + b"\n"
    oversize = b"{" + b" " * max_file_bytes + b"}\n"  # one byte over the limit; refused before download
    miners += [
        DemoMiner("exact-copier", "hk-exact-copier", "copy1/atlas", rows_to_jsonl(best).encode()),
        DemoMiner("paraphrase-copier", "hk-paraphrase-copier", "copy2/atlas", rows_to_jsonl(paraphrased).encode()),
        DemoMiner("partial-copier", "hk-partial-copier", "copy3/atlas", rows_to_jsonl(partial).encode()),
        DemoMiner("eval-leaker", "hk-eval-leaker", "leak/atlas", rows_to_jsonl(leaked).encode()),
        DemoMiner("junk", "hk-junk", "junk/words", rows_to_jsonl(synthetic.junk_rows(100, seed + 103)).encode()),
        DemoMiner("empty", "hk-empty", "void/nothing", b""),
        DemoMiner("oversize", "hk-oversize", "big/blob", oversize),
        DemoMiner("malformed", "hk-malformed", "broken/file", malformed),
        DemoMiner("stale", "hk-stale", "stale/atlas", rows_to_jsonl(synthetic.fact_rows(pool[300:340])).encode(),
                  reregister=True),
        DemoMiner("late-recommit", "hk-late-recommit", "honest1/atlas", b"", commit_repo_of="honest1/atlas"),
    ]
    return miners


def seed_demo_network(home: Path, seed: int = 7, network: str = "default") -> int:
    """Wipe `home` and seed a local chain + hub: validator, miners, their commitments and the eval set.

    Returns the epoch that opens right after the commitments (the one to run).
    """
    home = Path(home)
    for name in ("chain.json", "chain.json.lock", "hub", "warehouse.duckdb", "warehouse.duckdb.wal", "corpus",
                 "demo.json"):
        target = home / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    home.mkdir(parents=True, exist_ok=True)
    chain = LocalChainResource(path=str(home / "chain.json"))
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    eval_revision = hub.upload(EVAL_REPO, rows_to_jsonl(synthetic.eval_rows(synthetic.make_atlas(seed))).encode(),
                               private=False)
    chain.register(VALIDATOR_HOTKEY, stake=1000.0, validator_permit=True)
    if network not in NETWORKS:
        raise ValueError(f"unknown demo network {network!r}: use one of {', '.join(NETWORKS)}")
    miners = demo_miners(seed) if network == "default" else adversarial_miners(seed)
    for m in miners:
        chain.register(m.hotkey)
    for m in miners:
        if m.commit_repo_of:
            revision = hub.head(m.commit_repo_of)
        else:
            revision = hub.upload(m.repo, m.data, private=True)
        chain.set_commitment(m.hotkey, Commitment(m.repo, DEFAULT_COMPETITION_ID, revision).to_compressed_str())
        if not m.commit_repo_of:
            hub.set_private(m.repo, False)  # public only once the commitment exists
    for m in miners:
        if m.reregister:
            chain.register(m.hotkey)  # deregistered and registered again: its old commitment no longer counts
    epoch = chain.epoch_of(chain.current_block()) + 1
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    (home / "demo.json").write_text(json.dumps({"network": network, "labels": {m.hotkey: m.label for m in miners},
                                                "quality": {m.hotkey: m.quality for m in miners},
                                                "eval_revision": eval_revision, "epoch": epoch}))
    return epoch


def epoch_report(epoch: int, warehouse: WarehouseResource, labels: dict[str, str] | None = None,
                 quality: dict[str, float | None] | None = None) -> list[dict]:
    """One entry per committing miner: uid, hotkey, label, quality, status, reason, rows_kept, eval_loss, win_rate,
    weight (quality: the demo generator's level for honest miners, None for the others and outside a demo)."""
    labels, quality = labels or {}, quality or {}
    frame = warehouse.query(
        "SELECT c.uid, c.hotkey, w.status AS w_status, c.status AS c_status, "
        "coalesce(w.reason, c.reason) AS reason, s.rows_kept, w.eval_loss, w.win_rate, w.weight "
        "FROM commitments c LEFT JOIN win_rates w USING (epoch, hotkey) LEFT JOIN shards s USING (epoch, hotkey) "
        "WHERE c.epoch = ? ORDER BY c.uid", [epoch])
    report = []
    for r in frame.itertuples():
        report.append({"uid": int(r.uid), "hotkey": r.hotkey, "label": labels.get(r.hotkey),
                       "quality": quality.get(r.hotkey),
                       "status": r.w_status if isinstance(r.w_status, str) else r.c_status,
                       "reason": r.reason if isinstance(r.reason, str) else None,
                       "rows_kept": 0 if pd.isna(r.rows_kept) else int(r.rows_kept),
                       "eval_loss": None if pd.isna(r.eval_loss) else round(float(r.eval_loss), 6),
                       "win_rate": 0.0 if pd.isna(r.win_rate) else float(r.win_rate),
                       "weight": 0.0 if pd.isna(r.weight) else float(r.weight)})
    return report


def format_report(report: list[dict]) -> str:
    header = ["uid", "hotkey", "label", "status", "rows", "eval_loss", "win_rate", "weight", "reason"]
    rows = [[str(m["uid"]), m["hotkey"], m["label"] or "", m["status"], str(m["rows_kept"]),
             "" if m["eval_loss"] is None else f"{m['eval_loss']:.4f}", f"{m['win_rate']:.3f}",
             f"{m['weight']:.6f}", m["reason"] or ""] for m in report]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
