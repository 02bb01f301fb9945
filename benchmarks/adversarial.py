"""Rank stability on the adversarial network: the same network scored under two training seeds.

Runs `flock demo --network adversarial --json` once per seed (FLOCK_RECIPE='{"seed": N}', a fresh home each), then
reports, per seed, the honest miners' Spearman correlation between the generator's quality level and the validator's
weight (and eval loss), whether every attacker ended at weight 0, and Kendall's tau between the two seeds' rankings
of the honest miners (by weight, ties broken by loss).

    python benchmarks/adversarial.py [--seeds 42 43] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orderings of the same items."""
    pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}
    pairs = list(combinations(a, 2))
    concordant = sum(1 for x, y in pairs if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0)
    return (2 * concordant - len(pairs)) / len(pairs)


def run(seed: int, models: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as home:
        if models is not None and models.exists():
            os.symlink(models, Path(home) / "models")
        env = {**os.environ, "FLOCK_RECIPE": json.dumps({"seed": seed}), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "flock_pipeline.cli", "demo", "--network", "adversarial",
                              "--json", "--home", home], env=env, cwd=ROOT, capture_output=True, text=True,
                             check=True)
    return json.loads(out.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=[42, 43])
    parser.add_argument("--models", default=".flock/models", help="a model cache to reuse (the tiny model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    models = (ROOT / args.models).resolve()
    report, rankings = {"seeds": args.seeds}, []
    for seed in args.seeds:
        doc = run(seed, models)
        honest = [m for m in doc["miners"] if m["quality"] is not None]
        attackers = [m for m in doc["miners"] if m["quality"] is None]
        q = [m["quality"] for m in honest]
        ranking = [m["label"] for m in sorted(honest, key=lambda m: (-m["weight"], m["eval_loss"]))]
        rankings.append(ranking)
        report[f"seed_{seed}"] = {
            "spearman_weight": round(spearman(q, [m["weight"] for m in honest]), 4),
            "spearman_loss": round(spearman(q, [-m["eval_loss"] for m in honest]), 4),
            "ranking": ranking,
            "losses": {m["label"]: m["eval_loss"] for m in honest},
            "attackers_at_zero": sum(1 for m in attackers if m["weight"] == 0.0), "attackers": len(attackers),
            "wall_s": doc["wall_s"],
        }
    report["kendall_tau"] = round(kendall_tau(*rankings), 4)
    print(json.dumps(report, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
