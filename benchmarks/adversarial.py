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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    from flock_pipeline.core.ranking import kendall_tau, spearman

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
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
