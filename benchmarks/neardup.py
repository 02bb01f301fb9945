"""Near-duplicate dedup at scale: 256 miners x 1,000 rows, timed, with precision / recall on labelled copies.

Every miner teaches its own 100 made-up countries (5 facts x 2 wordings = 1,000 rows); one miner in 8 replaces 300
of its rows with disguised copies of the previous miner's rows, each copier with one disguise in turn: paraphrase
(one word swapped for a synonym, case / whitespace / punctuation changed), invisible characters inside words,
Cyrillic look-alike letters, the same preamble before every question, the same signature after every answer,
numbers spelled out, pairs of rows packed into one two-exchange row, numbered boilerplate around each row ("Sure
thing 12. ... Noted as entry 84."), a sentence of the copier's own before each answer (a short answer roughly
doubled), Greek look-alikes and combining marks inside words (marks), a stock question with a different word
inserted into each answer (new-question), three rows merged into one exchange (merged), the row moved into
the system prompt under a stock question and answer (system), and two common words of every turn swapped for
synonyms, nothing else changed (reworded). The timed call is the
pipeline's own
`deduplicate` over all 256,000 rows plus the 200-row eval set (exact + near-duplicate matching, exchange and answer
level). Precision and recall are measured on the rows `deduplicate` drops as copies: a labelled copy is found when it
is traced to the miner it was copied from; everything else dropped as a copy is a false positive (e.g. two
different countries' rows in the same template). Per disguise: the recall of its copiers.

    python benchmarks/neardup.py [--miners 256] [--rows 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

_SYL = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "qu", "el", "dor", "an", "bri", "zu", "pel", "or", "thi", "mar",
        "gan", "is", "ul", "fen", "ro", "ta", "vi"]


def _unique_name(index: int, parts: int = 4) -> str:
    out = []
    for _ in range(parts):
        index, r = divmod(index, len(_SYL))
        out.append(_SYL[r])
    return "".join(out).capitalize()


DISGUISES = ("paraphrase", "invisible", "homoglyph", "preamble", "signature", "numbers", "packed", "numbered",
             "own-text", "marks", "new-question", "merged", "system", "reworded")


def network(miners: int, rows: int, seed: int = 1):
    """(per-miner rows, labelled copies: (miner, row index) -> source miner, copier miner -> its disguise)."""
    from flock_pipeline.core import synthetic
    from flock_pipeline.core.synthetic import Country

    rng = random.Random(seed)
    countries_per_miner = max(1, rows // 10)
    data, labels, kinds = [], {}, {}
    for m in range(miners):
        countries = [Country(name=_unique_name(m * countries_per_miner + i), capital=_unique_name(rng.randrange(10**5)),
                             river=_unique_name(rng.randrange(10**5), 2) + " river",
                             export=rng.choice(synthetic._EXPORTS), founded=rng.randint(300, 1800),
                             population=rng.randint(50, 9000)) for i in range(countries_per_miner)]
        own = [synthetic._fact_row(c, fact, t) for c in countries for fact in synthetic._FACTS for t in (1, 2)][:rows]
        rng.shuffle(own)
        if m % 8 == 7:
            kind = kinds[m] = DISGUISES[(m // 8) % len(DISGUISES)]
            source = data[m - 1][:300]
            if kind == "paraphrase":
                copies = [synthetic.paraphrase(r, rng) for r in source]
            elif kind == "packed":
                copies = synthetic.pack(source)
            elif kind == "numbered":  # numbered boilerplate around each copied row
                copies = [synthetic._row(f"Quick one, friend {i}: {r.turns[0].content}",
                                         f"Sure thing {i}. {r.turns[1].content} Noted as entry {i * 7}.")
                          for i, r in enumerate(source)]
            elif kind == "new-question":  # a stock question, a different word inserted into each answer
                copies = synthetic.new_question_inserted_word(source, rng)
            elif kind == "merged":  # three rows merged into one exchange, answers joined with "; "
                copies = synthetic.merge_into_one(source)
            elif kind == "system":  # the row in the system prompt, under a stock question and answer
                copies = [synthetic._row(j.turns[0].content, "Here it is.",
                                         f"{r.turns[0].content} {r.turns[1].content}")
                          for r, j in zip(source, synthetic.junk_rows(len(source), m))]
            elif kind == "reworded":  # two common words of every turn swapped for synonyms
                copies = [synthetic.reword(r, rng) for r in source]
            elif kind == "own-text":  # a sentence of the copier's own before each copied answer
                copies = [synthetic._row(r.turns[0].content, f"{j.turns[1].content} {r.turns[1].content}")
                          for r, j in zip(source, synthetic.junk_rows(len(source), m))]
            else:
                copies = [synthetic.disguise(r, kind, rng) for r in source]
            own = copies + own[len(copies):]
            labels.update({(m, i): m - 1 for i in range(len(copies))})
        data.append(own)
    return data, labels, kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from flock_pipeline.core.dedup import DedupConfig, MinerRows, deduplicate
    from flock_pipeline.core.neardup import row_text
    from flock_pipeline.core.synthetic import eval_rows, make_atlas

    data, labels, kinds = network(args.miners, args.rows)
    evals = eval_rows(make_atlas(7))
    texts = [tuple(row_text(r) for r in rows) for rows in data]
    hashes = [tuple(r.row_hash for r in rows) for rows in data]
    miners = [MinerRows(f"hk{m}", m, 10 + m, hashes[m], None, texts[m], tuple(r.system for r in data[m]))
              for m in range(len(data))]
    eval_texts = tuple(row_text(r) for r in evals)
    config = DedupConfig()
    t0 = time.perf_counter()
    plans = deduplicate(miners, frozenset(r.row_hash for r in evals), config, eval_texts)
    dedup_s = time.perf_counter() - t0

    flagged = {(m, i): src for m in range(len(data)) for i, src in plans[f"hk{m}"].copied_rows.items()}
    true_pos = sum(1 for key, src in flagged.items() if labels.get(key) == src)
    precision = true_pos / len(flagged) if flagged else 1.0
    recall = true_pos / len(labels) if labels else 1.0
    per_kind = {}
    for kind in DISGUISES:
        keys = [key for key in labels if kinds[key[0]] == kind]
        if keys:
            per_kind[kind] = round(sum(1 for key in keys if flagged.get(key) == labels[key]) / len(keys), 4)
    copiers = sorted(kinds)
    report = {
        "miners": len(data), "rows": sum(len(r) for r in data), "dedup_s": round(dedup_s, 2),
        "labelled_copies": len(labels), "flagged": len(flagged), "precision": round(precision, 4),
        "recall": round(recall, 4), "recall_by_disguise": per_kind, "threshold": config.near.threshold,
        "num_perm": config.near.num_perm, "bands": config.near.bands,
        "copiers_ineligible": sum(1 for m in copiers if not plans[f"hk{m}"].eligible), "copiers": len(copiers),
        "honest_ineligible": sum(1 for m in range(len(data)) if m not in kinds and not plans[f"hk{m}"].eligible),
    }
    print(json.dumps(report, indent=1) if args.json else "\n".join(f"{k:>20}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
