"""Disguised and repackaged copies (text folding, exchange- and answer-level matching, shared affixes) and monotone
outcomes: a later commitment never changes what an earlier miner keeps."""

from __future__ import annotations

import random

import pytest

from flock_pipeline.core import synthetic
from flock_pipeline.core.dedup import DedupConfig, MinerRows, deduplicate
from flock_pipeline.core.neardup import row_text
from flock_pipeline.core.textnorm import fold, invisible_characters, mixed_script_words

ATLAS = synthetic.make_atlas(7, n=60)


@pytest.mark.parametrize("a, b", [
    ("Pa\u200bris is the cap\u00adital", "paris is the capital"),  # zero-width space, soft hyphen: removed
    ("\u0420\u0430ris \u0456s th\u0435 capital", "paris is the capital"),  # Cyrillic look-alikes
    ("\uff26\uff55\uff4c\uff4c width \U0001d41b\U0001d428\U0001d425\U0001d41d", "full width bold"),  # NFKC
    ("There are twenty-one states", "there are 21 states"),
    ("one hundred and five, then 67 million", "105 then 67000000"),
    ("sixty-seven million", "67000000"),
    ("one two three", "1 2 3"),  # three numbers, not one
    ("Hello\ufe0f wor\u2060ld", "hello world"),  # variation selector, word joiner
    ("\u00c9T\u00c9\u2014\u00e9t\u00e9", "ete ete"),  # the skeleton: accents and other marks dropped
    ("Mitor r\u0331iver", "mitor river"),  # a combining macron below inside a word
    ("Ve\u03b7to, the \u03bao\u03c4a", "vento the kota"),  # Greek eta, kappa, tau inside Latin words
    ("small \u1d1b and \u1d0b", "small t and k"),  # Latin small capitals
])
def test_fold(a, b):
    assert fold(a) == b


def test_what_a_miner_is_warned_about():
    assert invisible_characters("Pa\u200bris\u200b and caf\u00ade") == ["ZERO WIDTH SPACE", "SOFT HYPHEN"]
    assert mixed_script_words("The \u0441apital of Fr\u0430nce is Paris") == ["\u0441apital", "Fr\u0430nce"]
    assert invisible_characters("plain text") == []
    assert mixed_script_words("plain \u041c\u043e\u0441\u043a\u0432\u0430") == []


def _miner(uid: int, rows, block: int | None = None) -> MinerRows:
    return MinerRows(f"hk{uid}", uid, block if block is not None else 100 + uid, tuple(r.row_hash for r in rows),
                     None, tuple(row_text(r) for r in rows), tuple(r.system for r in rows))


def _honest(part: int, n: int = 60):
    """Honest rows: `part` k of one shuffled pool of the atlas's 600 training rows (parts never share a row)."""
    return synthetic.honest_rows(ATLAS, n, seed=1, skip=60 * part)


COPIES = {kind: (lambda rows, rng, kind=kind: [synthetic.disguise(r, kind, rng) for r in rows])
          for kind in synthetic.DISGUISES}
COPIES["paraphrase"] = lambda rows, rng: [synthetic.paraphrase(r, rng) for r in rows]
COPIES["packed"] = lambda rows, rng: synthetic.pack(rows)
COPIES["new question, copied answer"] = lambda rows, rng: [
    synthetic._row(f"Here is something I learned about geography, number {i}.", r.turns[1].content)
    for i, r in enumerate(rows)]
COPIES["numbered boilerplate around each row"] = lambda rows, rng: [
    synthetic._row(f"Quick one, friend {i}: {r.turns[0].content}",
                   f"Sure thing {i}. {r.turns[1].content} Noted as entry {i * 7}.") for i, r in enumerate(rows)]
COPIES["text of its own around each row"] = lambda rows, rng: [
    synthetic._row(r.turns[0].content, f"{j.turns[1].content} {r.turns[1].content}")
    for r, j in zip(rows, synthetic.junk_rows(len(rows), 11))]
COPIES["new question, a different word inserted into each answer"] = synthetic.new_question_inserted_word
COPIES["rows merged into one exchange, answers joined with ;"] = lambda rows, rng: synthetic.merge_into_one(rows)
COPIES["rows merged into one exchange, answers joined with ,"] = lambda rows, rng: synthetic.merge_into_one(
    rows, separator=", ")


COPIES["the row in the system prompt, under a stock question"] = lambda rows, rng: [
    synthetic.ChatRow(system=f"{r.turns[0].content} {r.turns[1].content}",
                      turns=(synthetic.Turn("user", f"Tell me fact {i}."), synthetic.Turn("assistant", "Here it is.")))
    for i, r in enumerate(rows)]
COPIES["two common words of every turn swapped for synonyms"] = lambda rows, rng: [
    synthetic.reword(r, rng) for r in rows]
COPIES["every disguise at once"] = lambda rows, rng: synthetic.pack(
    [synthetic.disguise(synthetic.disguise(synthetic.disguise(r, "homoglyph", rng), "invisible", rng), "signature",
                        rng) for r in rows])


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_a_disguised_copy_is_ineligible_and_names_the_original(kind):
    rng = random.Random(3)
    original, other = _honest(0), _honest(1)
    copier = COPIES[kind](original, rng)
    plans = deduplicate([_miner(1, original), _miner(2, other), _miner(3, copier)], config=DedupConfig())
    assert plans["hk1"].eligible and plans["hk1"].rows_kept == 60
    assert plans["hk2"].eligible and plans["hk2"].rows_kept == 60  # a different honest miner keeps every row
    assert not plans["hk3"].eligible and "uid 1:" in plans["hk3"].reason and "uid 2" not in plans["hk3"].reason
    # every class down to a tenth at most: a word inserted inside a number ("4120 indeed thousand") changes the
    # number as matching reads it, the rest are found whole, and a short answer behind a sentence of the copier's
    # own is found from its rarest words
    assert plans["hk3"].rows_kept <= len(copier) // 10


def test_a_merge_of_two_miners_is_ineligible_naming_both():
    rng = random.Random(4)
    a, b = _honest(0), _honest(1)
    merged = [synthetic.disguise(r, "homoglyph", rng) for r in a[:30]] + [synthetic.paraphrase(r, rng) for r in b[:30]]
    plans = deduplicate([_miner(1, a), _miner(2, b), _miner(3, merged)], config=DedupConfig())
    assert not plans["hk3"].eligible and "uid 1: " in plans["hk3"].reason and "uid 2: " in plans["hk3"].reason
    assert plans["hk3"].rows_kept <= 3


def test_eval_rows_behind_a_new_question_and_an_inserted_word_are_leaks():
    rng = random.Random(5)
    eval_rows = synthetic.eval_rows(ATLAS)[:60]
    leaker = synthetic.new_question_inserted_word(eval_rows, rng)
    plans = deduplicate([_miner(1, _honest(0)), _miner(2, leaker)], config=DedupConfig(),
                        eval_texts=tuple(row_text(r) for r in eval_rows))
    assert plans["hk1"].eligible and plans["hk1"].eval_leaks == 0
    # all but the rows whose inserted word split a number ("4120 indeed thousand" reads as other numbers)
    assert not plans["hk2"].eligible and plans["hk2"].reason.startswith("eval leakage")
    assert plans["hk2"].eval_leaks >= 56


def test_an_honest_miner_about_other_places_on_the_same_templates_keeps_every_row():
    """Rows about different countries in the same wordings, some sharing a value (the same river, capital or
    export): in a small network template words count as rare, but each row's name differs."""
    first, second = ATLAS[:30], ATLAS[30:]
    shared = [synthetic.Country(c.name, first[i].capital, first[i].river, first[i].export, c.founded, c.population)
              for i, c in enumerate(second)]  # every value of the other miner's country, another name
    rows_a = [synthetic._fact_row(c, fact, 2) for c in first for fact in ("river", "capital", "export")]
    rows_b = [synthetic._fact_row(c, fact, 2) for c in shared for fact in ("river", "capital", "export")]
    plans = deduplicate([_miner(1, rows_a[:60]), _miner(2, rows_b[:60])], config=DedupConfig())
    assert plans["hk2"].eligible and plans["hk2"].rows_kept == 60, plans["hk2"]


def test_the_same_facts_in_other_wordings_are_neither_copies_nor_leaks():
    """Every fact of 40 countries in each wording by another miner, the eval set in the first: the same names and
    values, but each wording moves and changes half of its words or more, where a light rewording changes two per
    turn."""
    countries = ATLAS[:40]
    by_template = [[synthetic._fact_row(c, fact, t) for c in countries for fact in synthetic._FACTS]
                   for t in range(3)]
    plans = deduplicate([_miner(1, by_template[1]), _miner(2, by_template[2])], config=DedupConfig(),
                        eval_texts=tuple(row_text(r) for r in by_template[0]))
    for hotkey in ("hk1", "hk2"):
        assert plans[hotkey].eligible and plans[hotkey].rows_kept == 200 and plans[hotkey].eval_leaks == 0, \
            plans[hotkey]


def test_eval_rows_lightly_reworded_are_leaks():
    rng = random.Random(6)
    eval_rows = synthetic.eval_rows(ATLAS)[:60]
    leaker = [synthetic.reword(r, rng) for r in eval_rows]
    plans = deduplicate([_miner(1, _honest(0)), _miner(2, leaker)], config=DedupConfig(),
                        eval_texts=tuple(row_text(r) for r in eval_rows))
    assert plans["hk1"].eligible and plans["hk1"].eval_leaks == 0
    assert not plans["hk2"].eligible and plans["hk2"].eval_leaks >= 54, plans["hk2"]


def test_honest_miners_on_the_same_template_are_not_copies():
    """Different facts in the same wordings, and short common answers, are not copies of each other."""
    miners = [_miner(u, _honest(u)) for u in range(1, 4)]
    miners.append(_miner(4, [synthetic._row(f"Is fact {i} about geography?", "Yes, it is.") for i in range(20)]))
    miners.append(_miner(5, [synthetic._row(f"Is claim {i} true?", "Yes, it is.") for i in range(20)]))
    plans = deduplicate(miners, config=DedupConfig())
    assert all(p.eligible and p.duplicates_earlier == 0 for p in plans.values()), plans


def _later(rng: random.Random, earlier: dict[int, list], first_uid: int) -> dict[int, list]:
    """A random set of later commitments: honest miners, disguised copies of an earlier miner, and miners that mix
    an earlier miner's rows (or ones near them) into their own."""
    out: dict[int, list] = {}
    for uid in range(first_uid, first_uid + rng.randint(1, 6)):
        kind = rng.choice(["honest", "copy", "mix", "near-twin"])
        own = _honest(rng.randrange(2, 10), n=40)
        source = earlier[rng.choice(sorted(earlier))]
        if kind == "copy":
            own = COPIES[rng.choice(sorted(COPIES))](source, rng)
        elif kind == "mix":
            own = own[:20] + rng.sample(source, 20)
        elif kind == "near-twin":  # rows in the same template as the earlier ones: shares their common words
            own = own + [synthetic._fact_row(c, fact, 1) for c in ATLAS[:10] for fact in ("capital", "river")]
        out[uid] = own
    return out


@pytest.mark.parametrize("seed", range(12))
def test_later_commitments_never_change_an_earlier_miners_outcome(seed):
    rng = random.Random(seed)
    earlier = {1: _honest(0), 2: _honest(1), 3: COPIES["homoglyph"](_honest(0), rng),
               4: _honest(0, n=30) + _honest(2, n=30)}  # 3 copies 1; 4 shares half of 1's rows
    eval_rows = synthetic.eval_rows(ATLAS)
    eval_hashes = frozenset(r.row_hash for r in eval_rows)
    eval_texts = tuple(row_text(r) for r in eval_rows)

    def plans(rows_by_uid):
        return deduplicate([_miner(uid, rows) for uid, rows in rows_by_uid.items()], eval_hashes, DedupConfig(),
                           eval_texts)

    before = plans(earlier)
    after = plans({**earlier, **_later(rng, earlier, first_uid=10)})
    for uid in earlier:
        b, a = before[f"hk{uid}"], after[f"hk{uid}"]
        assert (a.kept_indices, a.reason, a.copied_rows) == (b.kept_indices, b.reason, b.copied_rows), uid
