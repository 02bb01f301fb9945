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
and a later commitment of an honest miner's own repo and revision; and copies disguised at no cost: invisible
characters inside words, Cyrillic look-alike letters, the same preamble before every question, the same signature
after every answer, numbers spelled out, rows packed two to a row, a merge of two honest miners' rows, and two
common words of every turn swapped for synonyms (an honest miner's rows, and eval rows); and sybils: three hotkeys
of one coldkey, each committing a disjoint third of honest-q80's rows merged three to an exchange. Every attacker
must end at weight 0 with a reason (a copier's names the miner it copied); the honest miners must be ranked by
quality.

`selection` network (`selection_miners`): the live SN96 game on the local chain's clock (one block a minute, block 0
at 11:00 UTC on day 0). A pool repo of 600 rows (200 atlas facts in three wordings) is the eval set; 40 uids are
registered (k = 2: the earliest of the two lowest losses wins). Miners select 100 pool rows during day 0's
submission window (12:00-12:30 UTC), in this order:
    random-selector   100 random pool rows                           -> the winner when among the 2 best (earliest)
    strong-selector   100 distinct facts, every country              -> the lowest loss
    weak-selector     34 facts in all three wordings                 -> not among the 2 best
    outside-the-pool  99 pool rows and one reworded row              -> ineligible, not from the pool
    shares-40         40 of strong-selector's rows + 60 others       -> ineligible, duplicate of strong-selector
    exact-copy        strong-selector's file                         -> ineligible, duplicate
    late              100 pool rows, committed after the window      -> rejected, late
The game runs the `live-492c7bb` rule set (what the live validators do), with the game as its rules read
(`intended`) shown beside it where the two decide otherwise. The demo runs the daily cycle: day 0 12:00 (fresh
start: nobody scored, all weight to the owner's uid), 12:40 (validation: the submissions are evaluated, the burn
stays), day 1 11:40 (rewarding: weight 1 to the winner; the report), day 1 12:40 (the pool did not change: the winner
keeps the reward, nothing is evaluated); then a day where the rule sets differ: at day 2 12:00 the pool gets a new
revision (every row's system prompt reworded, so no earlier selection is made of pool rows any more) and one miner
selects from it:
    day2-selector     100 rows of day 2's pool                       -> intended: the winner (the one real loss);
                                                                        live: the validators keep day 0's winner
day 2 12:40 (validation) and day 3 11:40 (rewarding): with k = 2 and one real loss, the live reward step meets uid 0
(no submission, no commitment block) beside it, fails, and the live validators keep the weights they had.

`mixed` network: the default network's miners in the curation game (commitment id "1", share 0.5) beside the
selection network's in the selection game (commitment id "2", share 0.5): one weight vector from both.

`dpo` network (`dpo_miners`): the DPO game alone (commitment id "3"). The eval pairs `flock/eval-atlas-pairs` are
120 of 150 questions about 10 atlas countries no miner is given (every fact, three wordings; the other 30 are the
held-out pairs `flock/heldout-atlas-pairs`, never scored against); chosen: the answer, rejected: a true statement
about the same country that answers another question. What a miner can teach is that preference
(answer what was asked), so its quality is the share of its 80 pairs labelled the right way round:
    honest-q85        15 % of its pairs labelled the wrong way round -> second
    honest-q100       every pair labelled right                      -> the most weight
    honest-q70        30 % labelled the wrong way round              -> third
    swapped-labels    every pair the wrong way round                 -> 0, its DPO loss is above the base's ln 2
    trivial-rejected  empty rejected answers (invalid rows), the rest "I don't know." -> 0, trivial rejected answers
    copier            honest-q100's file, committed later            -> 0, duplicate
    leaker            80 of the eval pairs                           -> 0, eval-set leak
    marks-copier      honest-q100's pairs with Greek look-alikes and combining marks in the prompt and on both
                      sides                                          -> 0, duplicate
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


from flock_pipeline.core import synthetic
from flock_pipeline.errors import UsageError
from flock_pipeline.core.commitment import DEFAULT_COMPETITION_ID, Commitment
from flock_pipeline.core.schema import ChatRow, DatasetLimits, PreferenceRow, Turn, rows_to_jsonl
from flock_pipeline.resources.chain import LocalChainResource
from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.validator.report_table import epoch_report, format_report  # noqa: F401 - the demo's tables
from datetime import UTC

EVAL_REPO = "flock/eval-atlas"
HELDOUT_REPO = "flock/heldout-atlas"  # never scored against: what training on a corpus is worth (`corpus_value`)
HELDOUT_PAIRS_REPO = "flock/heldout-atlas-pairs"
VALIDATOR_HOTKEY = "validator"
REPORT_FIELDS = ["uid", "hotkey", "label", "quality", "competition", "status", "reason", "rows_kept", "eval_loss",
                 "score", "win_rate", "weight"]
POOL_REPO = "flock/selection-pool"
OWNER_HOTKEY = "owner"  # the subnet owner (the burn uid of the selection game)
SELECTION_GENESIS = 1770030000.0  # block 0 of the daily networks: 2026-02-02 11:00 UTC
SELECTION_BLOCK_SECONDS = 60.0  # one block a minute: the 30-minute submission window is 30 blocks
SELECTION_UIDS = 40  # registered uids of the daily networks: k = max(floor(0.05 x 40), 1) = 2
# The daily cycle the demo runs (epochs of 20 blocks): day 0 12:00 (submission window open: fresh start, burn), 12:40
# (validation), day 1 11:40 (rewarding: the report's epoch), day 1 12:40 (pool unchanged: the winner keeps it).
SELECTION_CYCLE = (3, 6, 74, 77)
SELECTION_REPORT_EPOCH = 74
# The selection network's day where the rule sets differ: day 2 12:00 (the new pool and day2-selector's commitment
# just before it opens), 12:40 (validation), day 3 11:40 (rewarding: live keeps day 0's winner, intended rewards it).
SELECTION_DAY2 = (147, 149, 218)
SELECTION_DAY2_EPOCH = 147
SELECTION_COMPETITIONS = [{"kind": "selection", "name": "selection", "eval_repo": POOL_REPO,
                           "rules": "live-492c7bb", "recipe": {"strip_whitespace": True}}]
MIXED_COMPETITIONS = [{"kind": "curation", "name": "curation", "share": 0.5, "commitment_id": "1"},
                      {"kind": "selection", "name": "selection", "share": 0.5, "commitment_id": "2",
                       "eval_repo": POOL_REPO, "recipe": {"strip_whitespace": True}}]


DPO_EVAL_REPO = "flock/eval-atlas-pairs"
DPO_COMPETITION_ID = "3"
DPO_COMPETITIONS = [{"kind": "dpo", "name": "dpo", "commitment_id": DPO_COMPETITION_ID, "eval_repo": DPO_EVAL_REPO,
                    "heldout_repo": HELDOUT_PAIRS_REPO}]
DPO_LEVELS = (0.85, 1.0, 0.7)  # commitment order of the DPO network's honest miners (quality: share labelled right)

NETWORKS = ("default", "adversarial", "selection", "mixed", "dpo")


@dataclass(frozen=True)
class DemoMiner:
    label: str
    hotkey: str
    repo: str
    data: bytes
    quality: float | None = None  # the generator's quality level for honest miners (higher is better)
    commit_repo_of: str | None = None  # commit another miner's repo and revision instead of uploading
    reregister: bool = False  # the hotkey re-registers after committing (its commitment becomes stale)
    competition_id: str = DEFAULT_COMPETITION_ID  # the competition field of its commitment
    late: bool = False  # daily networks: commits after the submission window closed
    day: int = 0  # daily networks: the day it commits on (the selection network's day-2 miner: 2)
    coldkey: str = ""  # the coldkey it registers under ("": one of its own)


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
    evals = eval_split(seed)[0]
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
    disguised = {"invisible-copier": (1.0, "invisible"), "homoglyph-copier": (0.8, "homoglyph"),
                 "preamble-copier": (0.6, "preamble"), "signature-copier": (0.4, "signature"),
                 "numbers-copier": (1.0, "numbers"), "marks-copier": (0.6, "marks")}
    for label, (q, kind) in disguised.items():
        rows = [synthetic.disguise(r, kind, rng) for r in honest[q]]
        miners.append(DemoMiner(label, f"hk-{label}", f"{label.split('-')[0]}/atlas", rows_to_jsonl(rows).encode()))
    merged = [synthetic.disguise(r, "homoglyph", rng) for r in best[:50]] + [synthetic.paraphrase(r, rng)
                                                                              for r in second[:50]]
    rng.shuffle(merged)
    miners += [DemoMiner("packer", "hk-packer", "packer/atlas", rows_to_jsonl(synthetic.pack(best)).encode()),
               DemoMiner("merger", "hk-merger", "merger/atlas", rows_to_jsonl(merged).encode())]
    return miners + _answer_attackers(honest, evals, rng, seed) + _sybils(honest[0.8])


def _answer_attackers(honest: dict, evals: list[ChatRow], rng, seed: int) -> list[DemoMiner]:
    """Copies that keep what the trainer learns from and change the rest: a stock question with a different word
    inserted into each answer (of an honest miner, and of eval rows), answers merged three to an exchange, the
    row moved into the system prompt under a stock question and answer, and two common words of every turn swapped
    for synonyms (of an honest miner, and of eval rows)."""
    in_prompt = [synthetic._row(j.turns[0].content, "Here it is.", f"{r.turns[0].content} {r.turns[1].content}")
                 for r, j in zip(honest[0.6], synthetic.junk_rows(len(honest[0.6]), seed + 104))]
    attackers = {"new-question-copier": synthetic.new_question_inserted_word(honest[0.8], rng),
                 "answer-merger": synthetic.merge_into_one(honest[1.0]),
                 "system-prompt-copier": in_prompt,
                 "disguised-eval-leaker": synthetic.new_question_inserted_word(rng.sample(evals, 100), rng),
                 "reword-copier": [synthetic.reword(r, rng) for r in honest[0.4]],
                 "reword-eval-leaker": [synthetic.reword(r, rng) for r in rng.sample(evals, 100)]}
    return [DemoMiner(label, f"hk-{label}", f"{label.split('-')[0]}2/atlas", rows_to_jsonl(rows).encode())
            for label, rows in attackers.items()]


SYBIL_COLDKEY = "cold-sybil"


def _sybils(rows: list[ChatRow], parts: int = 3) -> list[DemoMiner]:
    """Hotkeys of one coldkey, each committing a disjoint part of an honest miner's rows merged three to an
    exchange: together the whole copy, each alone a small file."""
    size = -(-len(rows) // parts)
    return [DemoMiner(f"sybil-{i + 1}", f"hk-sybil-{i + 1}", f"sybil{i + 1}/atlas",
                      rows_to_jsonl(synthetic.merge_into_one(rows[i * size:(i + 1) * size])).encode(),
                      coldkey=SYBIL_COLDKEY) for i in range(parts)]


def eval_split(seed: int = 7) -> tuple[list[ChatRow], list[ChatRow]]:
    """(the eval set, the held-out set) of the curation networks: the atlas's 200 eval rows, a seeded fifth of them
    held out (never scored against; `flock corpus value` measures the corpus there)."""
    return synthetic.split_heldout(synthetic.eval_rows(synthetic.make_atlas(seed)))


def dpo_eval_pairs(seed: int = 7) -> list[PreferenceRow]:
    """The DPO network's eval pairs before the held-out fifth is split off: every fact of the first 10 atlas
    countries in all three wordings (150 pairs)."""
    return synthetic.eval_pairs(synthetic.make_atlas(seed), seed + 300)


def dpo_miners(seed: int = 7) -> list[DemoMiner]:
    """The DPO network's miners in commitment order (the copier commits after the miner it copies).

    A rejected answer is a true statement about the same country, so a pair labelled the wrong way round has another
    question's right answer as its chosen one: the swapped-labels miner gets whole (country, wording) groups, so
    its chosen answers are answers to its own questions, never another miner's."""
    import random

    atlas = synthetic.make_atlas(seed)
    groups = synthetic.answer_groups(atlas, seed + 301)
    swapped_entries = [e for g in groups[:16] for e in g]
    rest = [e for g in groups[16:] for e in g]
    random.Random(seed + 302).shuffle(rest)
    slices = {name: rest[i * 80:(i + 1) * 80] for i, name in enumerate((1.0, 0.85, 0.7, "trivial"))}

    def miner(label, rows, **kw):
        return DemoMiner(label, f"hk-{label}", f"{label.split('-')[0]}/pairs", rows_to_jsonl(rows).encode(),
                         competition_id=DPO_COMPETITION_ID, **kw)

    honest = {q: synthetic.pairs_of(slices[q], seed + 310 + i, swapped_share=round(1 - q, 2))
              for i, q in enumerate(sorted(DPO_LEVELS, reverse=True))}
    trivial = [PreferenceRow(r.system, r.prompt, r.chosen, "I don't know.")
               for r in synthetic.pairs_of(slices["trivial"], seed + 320)]
    trivial_lines = [json.dumps({**r.to_json_obj(), "rejected": [{"role": "assistant", "content": ""}]})
                     if i % 2 else json.dumps(r.to_json_obj()) for i, r in enumerate(trivial)]
    miners = [miner(f"honest-q{round(q * 100)}", honest[q], quality=q) for q in DPO_LEVELS]
    marks_rng = random.Random(seed + 330)
    return miners + [
        miner("swapped-labels", synthetic.pairs_of(swapped_entries, seed + 321, swapped_share=1.0)),
        DemoMiner("trivial-rejected", "hk-trivial-rejected", "trivial/pairs",
                  "".join(line + "\n" for line in trivial_lines).encode(), competition_id=DPO_COMPETITION_ID),
        DemoMiner("copier", "hk-copier", "copier/pairs", rows_to_jsonl(honest[1.0]).encode(),
                  competition_id=DPO_COMPETITION_ID),
        miner("leaker", synthetic.split_heldout(dpo_eval_pairs(seed))[0][:80]),  # what it could see: the eval set
        miner("marks-copier", [synthetic.marks_pair(r, marks_rng) for r in honest[1.0]]),
    ]


def selection_pool(seed: int = 7) -> list[ChatRow]:
    """The selection network's pool: every atlas fact in three wordings (600 rows; 200 facts)."""
    return [row for _, _, row in synthetic.fact_grid(synthetic.make_atlas(seed))]


def day2_pool(seed: int = 7) -> list[ChatRow]:
    """The selection network's pool from day 2: day 0's rows with their system prompt reworded (none of them is a
    pool row any more, as the live rules compare rows as written)."""
    return [ChatRow(system=f"{row.system} Answer from the atlas.", turns=row.turns) for row in selection_pool(seed)]


def day2_miner(seed: int = 7) -> DemoMiner:
    """The selection network's day-2 miner: 100 rows of day 2's pool."""
    import random

    pool = day2_pool(seed)
    picked = random.Random(seed + 202).sample(range(len(pool)), 100)
    return DemoMiner("day2-selector", "hk-day2-selector", "day2/selection",
                     rows_to_jsonl([pool[i] for i in picked]).encode(), day=2)


def selection_miners(seed: int = 7, competition_id: str = DEFAULT_COMPETITION_ID) -> list[DemoMiner]:
    """The selection network's miners in commitment order (the late one commits after the window).

    Quality is how many distinct facts a selection covers (rows of one fact teach its other wordings) and whether it
    teaches every wording: the strong selector takes 100 distinct facts in rotating wordings, the weak one 34 facts
    in all three wordings, the random one whatever 100 rows it drew. Each selector prefers rows the earlier ones
    left, so only the intended copies share more than 33 rows."""
    import random

    grid = synthetic.fact_grid(synthetic.make_atlas(seed))
    pool = [row for _, _, row in grid]
    rng = random.Random(seed + 200)
    picked_random = rng.sample(range(len(pool)), 100)
    taken = set(picked_random)
    by_fact: dict[tuple[int, str], list[int]] = {}
    for i, (country, fact, _) in enumerate(grid):
        by_fact.setdefault((country, fact), []).append(i)
    facts = sorted(by_fact)
    # 100 distinct facts (every country), their wordings rotated so that all three are taught
    strong_idx = [sorted(by_fact[f], key=lambda i: (i in taken, (by_fact[f].index(i) - n) % 3))[0]
                  for n, f in enumerate(facts[::2])]
    taken |= set(strong_idx)
    weak_facts = sorted(facts, key=lambda f: sum(i in taken for i in by_fact[f]))[:34]
    weak_idx = [i for f in weak_facts for i in by_fact[f]][:100]
    taken |= set(weak_idx)
    free = [i for i in range(len(pool)) if i not in taken]
    base = pool[free[0]]
    outside_row = ChatRow(system=base.system, turns=(base.turns[0], Turn(
        "assistant", base.turns[1].content.replace(".", ", as the atlas says."))))
    shares = [pool[i] for i in rng.sample(strong_idx, 40) + free[1:61]]
    rng.shuffle(shares)

    def miner(label, rows, **kw):
        return DemoMiner(label, f"hk-{label}", f"{label.split('-')[0]}/selection", rows_to_jsonl(rows).encode(),
                         competition_id=competition_id, **kw)

    strong = [pool[i] for i in strong_idx]
    return [
        miner("random-selector", [pool[i] for i in picked_random]),
        miner("strong-selector", strong),
        miner("weak-selector", [pool[i] for i in weak_idx]),
        miner("outside-the-pool", [pool[i] for i in free[61:160]] + [outside_row]),
        miner("shares-40", shares),
        DemoMiner("exact-copy", "hk-exact-copy", "copy/selection", rows_to_jsonl(strong).encode(),
                  competition_id=competition_id),
        miner("late", [pool[i] for i in random.Random(seed + 201).sample(range(len(pool)), 100)], late=True),
    ]


DEMO_MARKER = ".flock-demo"  # written into every home the demo seeds: only such a home is ever wiped
DEMO_FILES = ("chain.json", "chain.json.lock", "hub", "warehouse.duckdb", "warehouse.duckdb.wal", "corpus",
              "demo.json", "competitions.json")


class DemoHomeError(UsageError, ValueError):
    """The home holds a network the demo did not create; nothing was deleted."""


def check_demo_home(home: Path, force: bool = False) -> None:
    """Refuse (DemoHomeError) a home that holds a chain, hub, store or corpus without the demo's marker (a
    validator's home, say), unless `force`."""
    home = Path(home)
    found = [n for n in DEMO_FILES if os.path.lexists(home / n)]
    if found and not (home / DEMO_MARKER).is_file() and not force:
        raise DemoHomeError(f"{home} holds {', '.join(found)} that the demo did not create (a validator's home?); "
                            "nothing was deleted: use another --home, or --force to wipe it")


def seed_demo_network(home: Path, seed: int = 7, network: str = "default", force: bool = False) -> int:
    """Wipe `home` (a home the demo created, or any with `force`) and seed a local chain + hub: validator, miners,
    their commitments and the eval set.

    Returns the epoch to run: the one that opens right after the commitments (the daily networks: the rewarding
    epoch; demo.json lists the cycle of epochs to run before it and after it).
    """
    home = Path(home)
    check_demo_home(home, force)
    if network not in NETWORKS:
        raise ValueError(f"unknown demo network {network!r}: use one of {', '.join(NETWORKS)}")
    _wipe(home)
    chain = LocalChainResource(path=str(home / "chain.json"))
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    scoring, heldout = eval_split(seed)
    eval_revision = hub.upload(EVAL_REPO, rows_to_jsonl(scoring).encode(), private=False)
    hub.upload(HELDOUT_REPO, rows_to_jsonl(heldout).encode(), private=False)
    daily = network in ("selection", "mixed")
    if daily:
        chain.configure(genesis=SELECTION_GENESIS, block_seconds=SELECTION_BLOCK_SECONDS, owner=OWNER_HOTKEY)
        chain.register(OWNER_HOTKEY)
        hub.upload(POOL_REPO, rows_to_jsonl(selection_pool(seed)).encode(), private=False)
    if network == "dpo":
        pairs, heldout_pairs = synthetic.split_heldout(dpo_eval_pairs(seed))
        hub.upload(DPO_EVAL_REPO, rows_to_jsonl(pairs).encode(), private=False)
        hub.upload(HELDOUT_PAIRS_REPO, rows_to_jsonl(heldout_pairs).encode(), private=False)
    chain.register(VALIDATOR_HOTKEY, stake=1000.0, validator_permit=True)
    miners = _network_miners(network, seed)
    for m in miners:
        chain.register(m.hotkey, coldkey=m.coldkey)
    if daily:
        epoch, cycle = _commit_daily(chain, hub, miners, network, home)
    else:
        epoch, cycle = _commit_per_epoch(chain, hub, miners, network, home)
    (home / "demo.json").write_text(json.dumps({"network": network, "labels": {m.hotkey: m.label for m in miners},
                                                "quality": {m.hotkey: m.quality for m in miners},
                                                "eval_revision": eval_revision, "epoch": epoch, "cycle": cycle,
                                                "seed": seed}))
    return epoch


def _wipe(home: Path) -> None:
    """Remove what an earlier demo left in `home` (only the demo's own files) and mark the home as the demo's."""
    for name in DEMO_FILES:
        target = home / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("seeded by flock demo: `flock demo` may wipe this home\n")


def _network_miners(network: str, seed: int) -> list[DemoMiner]:
    """The miners of a demo network, in commitment order."""
    if network == "mixed":
        return demo_miners(seed) + selection_miners(seed, competition_id="2")
    if network == "selection":
        return selection_miners(seed) + [day2_miner(seed)]
    return {"default": demo_miners, "dpo": dpo_miners, "adversarial": adversarial_miners}[network](seed)


def _commit_per_epoch(chain: LocalChainResource, hub: LocalHubResource, miners: list[DemoMiner], network: str,
                      home: Path) -> tuple[int, list[int]]:
    """Commit every miner (re-registering those meant to), then move the chain to the next epoch's first block:
    (that epoch, the cycle [that epoch])."""
    for m in miners:
        if not m.late:
            _commit(chain, hub, m)
    _reregister(chain, miners)
    epoch = chain.epoch_of(chain.current_block()) + 1
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    if network == "dpo":
        (home / "competitions.json").write_text(json.dumps(DPO_COMPETITIONS, indent=1) + "\n")
    return epoch, [epoch]


def _commit_daily(chain: LocalChainResource, hub: LocalHubResource, miners: list[DemoMiner], network: str,
                  home: Path) -> tuple[int, list[int]]:
    """The daily networks: idle uids (they count in k), the commitments inside the 12:00-12:30 UTC window and the
    late ones after it: (the report epoch, the cycle of epochs to run)."""
    for i in range(SELECTION_UIDS - len(chain.metagraph())):
        chain.register(f"hk-idle-{i}")  # registered, never committing: they count in k
    opens = chain.clock().last_block_before(_day0(12, 0)) + 1
    chain.advance(opens - chain.current_block())
    for m in miners:
        if not m.late and m.day == 0:
            _commit(chain, hub, m)
    closes = chain.clock().last_block_before(_day0(12, 30))
    chain.advance(closes + 3 - chain.current_block())
    for m in miners:
        if m.late and m.day == 0:
            _commit(chain, hub, m)
    _reregister(chain, miners)
    competitions = SELECTION_COMPETITIONS if network == "selection" else MIXED_COMPETITIONS
    (home / "competitions.json").write_text(json.dumps(competitions, indent=1) + "\n")
    cycle = list(SELECTION_CYCLE) + (list(SELECTION_DAY2) if network == "selection" else [])
    return SELECTION_REPORT_EPOCH, cycle


def _reregister(chain: LocalChainResource, miners: list[DemoMiner]) -> None:
    for m in miners:
        if m.reregister:
            chain.register(m.hotkey, coldkey=m.coldkey)  # registered again: its old commitment no longer counts


def _day0(hour: int, minute: int):
    from datetime import datetime, timedelta

    day = datetime.fromtimestamp(SELECTION_GENESIS, tz=UTC).replace(hour=0, minute=0)
    return day + timedelta(hours=hour, minutes=minute)


def _commit(chain: LocalChainResource, hub: LocalHubResource, m: DemoMiner) -> None:
    if m.commit_repo_of:
        revision = hub.head(m.commit_repo_of)
    else:
        revision = hub.upload(m.repo, m.data, private=True)
    chain.set_commitment(m.hotkey, Commitment(m.repo, m.competition_id, revision).to_compressed_str())
    if not m.commit_repo_of:
        hub.set_private(m.repo, False)  # public only once the commitment exists


def run_cycle(home: Path, resources: dict, instance, run_epoch, progress=lambda msg: None) -> list[dict]:
    """Run the epochs of demo.json's cycle in order, moving the local chain's clock to each one first; returns a
    summary per epoch (round, phase, the weight vector and why)."""
    demo = json.loads((Path(home) / "demo.json").read_text())
    chain, store = resources["chain"], resources["store"]
    summary = []
    for epoch in demo.get("cycle", [demo["epoch"]]):
        start = chain.epoch_start(epoch)
        if chain.current_block() < start:
            chain.advance(start - chain.current_block())
        if demo.get("network") == "selection" and epoch == SELECTION_DAY2_EPOCH:
            _day2(Path(home), chain, int(demo.get("seed", 7)))
        run_epoch(epoch, resources, instance, progress=progress)
        summary.append(cycle_entry(epoch, store, chain))
    return summary


def _day2(home: Path, chain: LocalChainResource, seed: int) -> None:
    """Day 2 of the selection network, as its submission window opens: the pool's new revision, and the day-2
    miner's commitment (once: a rerun of the cycle finds them done)."""
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    pool = rows_to_jsonl(day2_pool(seed)).encode()
    if hub.download(POOL_REPO, hub.head(POOL_REPO)) != pool:
        hub.upload(POOL_REPO, pool, private=False)
    miner = day2_miner(seed)
    if not any(c.hotkey == miner.hotkey for c in chain.commitments()):
        _commit(chain, hub, miner)


def cycle_entry(epoch: int, store: StoreResource, chain: LocalChainResource) -> dict:
    """One epoch of a daily cycle: when it is, each competition's round and phase, and the weights with reasons."""
    block = chain.epoch_start(epoch)
    games = store.epoch_competitions(epoch)
    weighted = [r for r in store.scores(epoch) if r.weight > 0]
    return {"epoch": epoch, "block": block, "time": f"{chain.clock().time_of(block):%Y-%m-%d %H:%M} UTC",
            "rounds": {r.competition: {"round": r.round_id, "phase": r.phase} for r in games},
            "weights": {str(int(r.uid)): round(float(r.weight), 6) for r in weighted},
            "why": {str(int(r.uid)): f"{r.hotkey}: {r.status}" + (f" ({r.reason})" if r.reason is not None
                                                                   else "") for r in weighted}}


def quality_spearman(report: list[dict]) -> float | None:
    """Spearman's rank correlation between the honest miners' generator quality and the validator's ranking of them
    (by weight, ties broken by the lower eval loss; a miner without a loss last); None with fewer than two."""
    from flock_pipeline.core.ranking import spearman

    honest = [m for m in report if m.get("quality") is not None]
    if len(honest) < 2:
        return None
    ranked = sorted(honest, key=lambda m: (-m["weight"], m["eval_loss"] if m["eval_loss"] is not None
                                           else float("inf")))
    return round(spearman([m["quality"] for m in ranked], list(range(len(ranked), 0, -1))), 6)


