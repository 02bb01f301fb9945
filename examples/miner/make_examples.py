#!/usr/bin/env python
"""Write (or, with --check, compare) the example miner files of the three games from the product's own generators.

    examples/miner/curation/data.jsonl    100 atlas facts in chat rows (the curation game; the demo's eval domain)
    examples/miner/curation/bad.jsonl     written by hand: rows the validators reject, each for its own reason
    examples/miner/selection/data.jsonl   100 distinct rows of the selection demo's pool
    examples/miner/dpo/pairs.jsonl        80 preference pairs about atlas countries the DPO eval set does not cover

    python examples/miner/make_examples.py           # rewrite the generated files
    python examples/miner/make_examples.py --check   # exit 1 when a file differs from what the generators make
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from flock_pipeline.core import synthetic
from flock_pipeline.core.schema import rows_to_jsonl
from flock_pipeline.demo import selection_pool

HERE = Path(__file__).resolve().parent
SEED = 7  # the demo networks' seed: the files fit the networks `flock demo --no-run` seeds


def curation_rows() -> str:
    return rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(SEED), 100, SEED + 1, skip=150))


def selection_rows() -> str:
    """100 distinct pool rows drawn from its training wordings (the back half of the pool), so the demo's own
    selectors rarely share more than a few of them."""
    pool = selection_pool(SEED)
    picked = random.Random(SEED + 501).sample(range(len(pool) // 2, len(pool)), 100)
    return rows_to_jsonl([pool[i] for i in sorted(picked)])


def dpo_pairs() -> str:
    groups = synthetic.answer_groups(synthetic.make_atlas(SEED), SEED + 502)
    entries = [entry for group in groups[-16:] for entry in group]
    return rows_to_jsonl(synthetic.pairs_of(entries, SEED + 503))


FILES = {"curation/data.jsonl": curation_rows, "selection/data.jsonl": selection_rows, "dpo/pairs.jsonl": dpo_pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, make in FILES.items():
        path, text = HERE / name, make()
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"stale example files (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    print("example files " + ("differ: " + ", ".join(stale) if stale and args.check else
                              "rewritten: " + ", ".join(stale) if stale else "unchanged"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
