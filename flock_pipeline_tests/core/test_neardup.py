"""Near-duplicate matching (MinHash + LSH) and its use in dedup."""

import random

import numpy as np
import pytest

from flock_pipeline.core import synthetic
from flock_pipeline.core.dedup import DedupConfig, MinerRows, deduplicate
from flock_pipeline.core.neardup import (
    NearDupConfig,
    Shingles,
    earliest_near_duplicates,
    jaccard,
    normalize,
    row_text,
    signatures,
    similarity,
)
from flock_pipeline.core.schema import ChatRow, Turn

ATLAS = synthetic.make_atlas(7)


@pytest.mark.parametrize("a, b", [("Hello,  World!", "hello world"), ("ÉTÉ—été", "ete ete"), ("a_b-c", "a b c")])
def test_normalize(a, b):
    assert normalize(a) == b


def _sig(texts):
    return signatures(Shingles.of(texts))


def test_shingles_are_words_and_neighbour_pairs():
    sh = Shingles.of(["a b c", "", "b", "A, b!  c"])
    assert len(sh) == 4 and sh.offsets.tolist() == [0, 3, 3, 4, 7]
    assert len(sh.row_set(0)) == 5 and sh.row_set(1) == set() and len(sh.row_set(2)) == 1
    assert sh.row_set(0) == sh.row_set(3)
    assert jaccard(sh.row_set(0), sh.row_set(2)) == pytest.approx(1 / 5)


def test_signature_matches_the_exact_minimum_per_row():
    texts = ["one two three", "", "solo", "two three four five", "one two three"]
    sh = Shingles.of(texts)
    sig = signatures(sh, NearDupConfig(num_perm=8, bands=2))
    assert np.array_equal(sig[0], sig[4])
    assert np.all(sig[1] == np.iinfo(np.uint32).max)  # no words: matches nothing but another empty row
    from flock_pipeline.core.neardup import _hash_family

    mult, xor = _hash_family(NearDupConfig(num_perm=8, bands=2))
    with np.errstate(over="ignore"):
        for i in (0, 2, 3):
            values = np.array(sorted(sh.row_set(i)), dtype=np.uint64)
            expected = (((values[:, None] ^ xor) * mult) >> np.uint64(32)).astype(np.uint32).min(axis=0)
            assert np.array_equal(sig[i], expected)


def test_signature_similarity_tracks_jaccard():
    base = "the capital of kalomi is venra and the main river is the torsa river"
    sig = _sig([base, base.upper() + "!!", base.replace("main", "principal"), "compute 12 plus 30"])
    assert similarity(sig[0], sig[1]) == 1.0  # case and punctuation are normalised away
    assert 0.6 < similarity(sig[0], sig[2]) < 1.0
    assert similarity(sig[0], sig[3]) < 0.2


def test_paraphrases_found_and_distinct_rows_not():
    rng = random.Random(3)
    # 200 distinct fact rows of 20 countries. A near copy must keep the earlier row's two rarest words (its name and
    # value); in a network of 100 rows about 10 countries a word of one wording ("roughly") can be rarer than a
    # name, and a synonym swapped for it then hides the copy (81 of 100 found there)
    rows = synthetic.fact_rows(synthetic.fact_pool(ATLAS[:20], 1))
    copies = [synthetic.paraphrase(r, rng) for r in rows]
    texts = [row_text(r) for r in rows + copies]
    shingles = Shingles.of(texts)
    sig = signatures(shingles)
    rank = np.arange(len(texts))
    group = np.array([0] * len(rows) + [1] * len(copies))
    source = earliest_near_duplicates(sig, rank, group, shingles=shingles)
    found = source[len(rows):]
    assert (found == np.arange(len(rows))).mean() >= 0.95  # recall: each copy traced to its own original
    assert np.all(source[:len(rows)] == -1)  # originals are earliest: nothing to trace


def test_same_group_and_later_rows_are_never_sources():
    texts = ["the capital of a is b", "the capital of a is b", "the capital of a is b"]
    sig = _sig(texts)
    source = earliest_near_duplicates(sig, np.array([2, 0, 1]), np.array([0, 0, 1]))
    # row 0 (group 0, latest) may only trace to row 2 (group 1); row 2 traces to row 1 (group 0, earliest)
    assert source.tolist() == [2, -1, 1]


def test_near_dup_config_validation():
    with pytest.raises(ValueError):
        NearDupConfig(num_perm=10, bands=3)
    with pytest.raises(ValueError):
        NearDupConfig(threshold=0)
    with pytest.raises(ValueError):
        NearDupConfig(exact_margin=1.0)


def test_same_template_rows_of_different_countries_are_not_copies():
    """600 rows in 15 templates: only rows that differ by nothing but the country's name (two countries with the
    same capital, river or export) are similar enough to count, and every match really is above the threshold."""
    rows = [synthetic._fact_row(c, fact, t) for c in ATLAS for fact in synthetic._FACTS for t in (0, 1, 2)]
    texts = [row_text(r) for r in rows]
    shingles = Shingles.of(texts)
    group = np.arange(len(texts))  # every row its own miner
    source = earliest_near_duplicates(signatures(shingles), np.arange(len(texts)), group, shingles=shingles)
    matched = np.nonzero(source >= 0)[0]
    assert len(matched) <= 5
    for i in matched:
        assert jaccard(shingles.row_set(i), shingles.row_set(int(source[i]))) >= NearDupConfig().threshold


def _miner(uid, block, rows):
    texts = tuple(row_text(r) for r in rows)
    return MinerRows(f"hk{uid}", uid, block, tuple(r.row_hash for r in rows), None, texts)


def test_dedup_drops_paraphrased_copies_and_eval_leaks():
    rng = random.Random(5)
    honest = synthetic.fact_rows(synthetic.fact_pool(ATLAS[:10], 2))
    copier = [synthetic.paraphrase(r, rng) for r in honest]
    evals = synthetic.eval_rows(ATLAS)
    leaker = [synthetic.paraphrase(r, rng) for r in evals[:50]]
    miners = [_miner(1, 10, honest), _miner(2, 20, copier), _miner(3, 30, leaker)]
    plans = deduplicate(miners, frozenset(r.row_hash for r in evals), DedupConfig(),
                        tuple(row_text(r) for r in evals))
    assert plans["hk1"].eligible and plans["hk1"].rows_kept == len(honest)  # teaching eval facts is not leakage
    assert not plans["hk2"].eligible and plans["hk2"].duplicates_earlier >= 95
    assert plans["hk2"].near_duplicates == plans["hk2"].duplicates_earlier
    assert not plans["hk3"].eligible and "eval leakage" in plans["hk3"].reason
    exact_only = deduplicate(miners, frozenset(r.row_hash for r in evals), DedupConfig(near=None),
                             tuple(row_text(r) for r in evals))
    assert exact_only["hk2"].eligible  # what exact matching alone lets through


def test_row_text_leaves_out_the_system_prompt():
    row = ChatRow("You are X.", (Turn("user", "Hi"), Turn("assistant", "Hello")))
    assert row_text(row) == "Hi\x1fHello" and normalize(row_text(row)) == "hi hello"
