"""The demo network: a local subnet seeded with synthetic miners of known quality, and the epoch report.

Miners (label: what it is, what the validators must conclude):
    honest-good      100 correct atlas rows                       -> the most weight
    honest-fair      50 atlas rows, 20 % with wrong answers       -> second
    weak-offdomain   100 arithmetic rows, nothing about the atlas -> least weight among the scored
    copier           honest-good's file, committed later          -> 0, duplicate
    malformed        broken JSON and wrong roles                  -> 0, invalid
    empty            an empty data.jsonl                          -> 0, empty
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from flock_pipeline.core import synthetic
from flock_pipeline.core.commitment import DEFAULT_COMPETITION_ID, Commitment
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.resources.chain import LocalChainResource
from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.resources.warehouse import WarehouseResource

EVAL_REPO = "flock/eval-atlas"
VALIDATOR_HOTKEY = "validator"
REPORT_FIELDS = ["uid", "hotkey", "label", "status", "reason", "rows_kept", "eval_loss", "win_rate", "weight"]


@dataclass(frozen=True)
class DemoMiner:
    label: str
    hotkey: str
    repo: str
    data: bytes


def demo_miners(seed: int = 7) -> list[DemoMiner]:
    """The demo's miners in commitment order (the copier commits last)."""
    atlas = synthetic.make_atlas(seed)
    good = rows_to_jsonl(synthetic.honest_rows(atlas, 100, seed + 1)).encode()
    fair = rows_to_jsonl(synthetic.honest_rows(atlas, 50, seed + 2, wrong_share=0.2)).encode()
    off = rows_to_jsonl(synthetic.off_domain_rows(100, seed + 3)).encode()
    malformed = b"\n".join([
        b'{"system": null, "conversations": [{"role": "assistant", "content": "I answer first"}]}',
        b'{"conversations": [{"role": "user", "content": "unanswered question"}]}',
        b'{"system": 42, "conversations": []}',
        b'this line is not JSON at all',
        b'{"conversations": "not a list"',
    ]) + b"\n"
    return [
        DemoMiner("honest-good", "hk-honest-good", "alice/atlas-facts", good),
        DemoMiner("honest-fair", "hk-honest-fair", "bob/atlas-notes", fair),
        DemoMiner("weak-offdomain", "hk-weak-offdomain", "carol/arithmetic", off),
        DemoMiner("malformed", "hk-malformed", "dave/broken", malformed),
        DemoMiner("empty", "hk-empty", "erin/nothing", b""),
        DemoMiner("copier", "hk-copier", "mallory/atlas-facts-copy", good),
    ]


def seed_demo_network(home: Path, seed: int = 7) -> int:
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
    miners = demo_miners(seed)
    for m in miners:
        chain.register(m.hotkey)
    for m in miners:
        revision = hub.upload(m.repo, m.data, private=True)
        chain.set_commitment(m.hotkey, Commitment(m.repo, DEFAULT_COMPETITION_ID, revision).to_compressed_str())
        hub.set_private(m.repo, False)  # public only once the commitment exists
    epoch = chain.epoch_of(chain.current_block()) + 1
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    (home / "demo.json").write_text(json.dumps({"labels": {m.hotkey: m.label for m in miners},
                                                "eval_revision": eval_revision, "epoch": epoch}))
    return epoch


def epoch_report(epoch: int, warehouse: WarehouseResource, labels: dict[str, str] | None = None) -> list[dict]:
    """One entry per committing miner: uid, hotkey, label, status, reason, rows_kept, eval_loss, win_rate, weight."""
    labels = labels or {}
    frame = warehouse.query(
        "SELECT c.uid, c.hotkey, w.status AS w_status, c.status AS c_status, "
        "coalesce(w.reason, c.reason) AS reason, s.rows_kept, w.eval_loss, w.win_rate, w.weight "
        "FROM commitments c LEFT JOIN win_rates w USING (epoch, hotkey) LEFT JOIN shards s USING (epoch, hotkey) "
        "WHERE c.epoch = ? ORDER BY c.uid", [epoch])
    report = []
    for r in frame.itertuples():
        loss = None if r.eval_loss is None or math.isnan(r.eval_loss) else round(float(r.eval_loss), 6)
        report.append({"uid": int(r.uid), "hotkey": r.hotkey, "label": labels.get(r.hotkey),
                       "status": r.w_status if isinstance(r.w_status, str) else r.c_status,
                       "reason": r.reason if isinstance(r.reason, str) else None,
                       "rows_kept": 0 if r.rows_kept is None or r.rows_kept != r.rows_kept else int(r.rows_kept),
                       "eval_loss": loss,
                       "win_rate": 0.0 if r.win_rate is None or r.win_rate != r.win_rate else float(r.win_rate),
                       "weight": 0.0 if r.weight is None or r.weight != r.weight else float(r.weight)})
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
