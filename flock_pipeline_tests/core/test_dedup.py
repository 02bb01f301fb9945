"""Table tests for flock_pipeline.core.dedup: cross-miner and eval-set exact deduplication."""

from __future__ import annotations

import itertools

import pytest

from flock_pipeline.core.dedup import DedupConfig, MinerRows, commitment_order, deduplicate


def miner(uid: int, block: int, hashes: str, hotkey: str | None = None) -> MinerRows:
    """A miner whose rows are single-letter hashes, e.g. "abca"."""
    return MinerRows(hotkey=hotkey or f"hk{uid}", uid=uid, commit_block=block, row_hashes=tuple(hashes))


def kept(plan, m: MinerRows) -> str:
    return "".join(m.row_hashes[i] for i in plan.kept_indices)


# ---------------------------------------------------------------------------------------------------------------
# who keeps a shared row


@pytest.mark.parametrize(
    "miners, owner_uid",
    [
        pytest.param([miner(1, 100, "abcd"), miner(2, 200, "abcd")], 1, id="earlier-block-first-in-list"),
        pytest.param([miner(2, 200, "abcd"), miner(1, 100, "abcd")], 1, id="earlier-block-last-in-list"),
        pytest.param([miner(9, 100, "abcd"), miner(1, 200, "abcd")], 9, id="block-beats-lower-uid"),
        pytest.param([miner(5, 100, "abcd"), miner(3, 100, "abcd")], 3, id="same-block-lower-uid"),
        pytest.param([miner(3, 100, "abcd"), miner(5, 100, "abcd")], 3, id="same-block-lower-uid-first"),
    ],
)
def test_earliest_commitment_keeps_rows(miners, owner_uid):
    plans = deduplicate(miners)
    for m in miners:
        plan = plans[m.hotkey]
        if m.uid == owner_uid:
            assert plan.eligible
            assert plan.kept_indices == [0, 1, 2, 3]
            assert plan.duplicates_earlier == 0
            assert plan.duplicated_from == {}
        else:
            assert plan.kept_indices == []
            assert plan.duplicates_earlier == 4
            assert plan.duplicated_from == {owner_uid: 4}
            assert not plan.eligible


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_result_independent_of_input_order(perm):
    miners = [miner(1, 10, "abcdef"), miner(2, 20, "efghij"), miner(3, 20, "ijklmn")]
    plans = deduplicate([miners[i] for i in perm], config=DedupConfig(max_duplicate_fraction=0.5))
    assert {hk: (p.kept_indices, p.duplicates_earlier, p.duplicated_from) for hk, p in plans.items()} == {
        "hk1": ([0, 1, 2, 3, 4, 5], 0, {}),
        "hk2": ([2, 3, 4, 5], 2, {1: 2}),  # e, f belong to uid 1
        "hk3": ([2, 3, 4, 5], 2, {2: 2}),  # i, j belong to uid 2 (same block, lower uid)
    }
    assert all(p.eligible for p in plans.values())


def test_commitment_order_sorts_by_block_then_uid():
    miners = [miner(4, 30, "a"), miner(2, 10, "a"), miner(1, 30, "a"), miner(3, 10, "a")]
    assert [m.uid for m in commitment_order(miners)] == [2, 3, 1, 4]


# ---------------------------------------------------------------------------------------------------------------
# copiers


def test_full_copier_ineligible_reason_names_source():
    honest = miner(7, 100, "abcdefgh")
    copier = miner(12, 150, "abcdefgh")
    plans = deduplicate([copier, honest])
    plan = plans["hk12"]
    assert not plan.eligible
    assert plan.rows_kept == 0
    assert plan.duplicates_earlier == 8
    assert plan.reason.startswith("duplicate: 8/8 rows (100%)")
    assert "uid 7: 8" in plan.reason
    assert plans["hk7"].eligible and plans["hk7"].rows_kept == 8


def test_copier_from_two_sources_lists_both():
    plans = deduplicate([miner(1, 10, "abc"), miner(2, 20, "def"), miner(3, 30, "abdex")])
    plan = plans["hk3"]
    assert plan.duplicated_from == {1: 2, 2: 2}
    assert not plan.eligible  # 4/5 copied
    assert "(uid 1: 2, uid 2: 2)" in plan.reason
    assert kept(plan, miner(3, 30, "abdex")) == "x"


@pytest.mark.parametrize(
    "copier_rows, dup_count, eligible",
    [
        pytest.param("abxyz", 2, False, id="40%-copied"),
        pytest.param("abxyzuvpqr", 2, True, id="20%-copied-at-threshold"),
        pytest.param("abcxyzuv", 3, False, id="38%-copied"),
        pytest.param("abcdxy", 4, False, id="67%-copied"),
        pytest.param("axyzuvw", 1, True, id="14%-copied"),
    ],
)
def test_partial_copier(copier_rows, dup_count, eligible):
    source = miner(1, 10, "abcdefgh")
    copier = miner(2, 20, copier_rows)
    plans = deduplicate([source, copier])
    plan = plans["hk2"]
    assert plan.duplicates_earlier == dup_count
    assert plan.duplicated_from == {1: dup_count}
    assert plan.rows_in == len(copier_rows)
    assert plan.rows_kept == len(copier_rows) - dup_count
    assert kept(plan, copier) == "".join(ch for ch in copier_rows if ch not in "abcdefgh")
    assert plan.eligible is eligible
    if not eligible:
        assert "uid 1" in plan.reason


@pytest.mark.parametrize(
    "threshold, eligible",
    [(0.0, False), (0.2, False), (0.25, True), (0.3, True), (1.0, True)],
)
def test_duplicate_threshold_config(threshold, eligible):
    plans = deduplicate([miner(1, 10, "ab"), miner(2, 20, "axyz")],  # 1/4 copied = 25%
                        config=DedupConfig(max_duplicate_fraction=threshold))
    assert plans["hk2"].eligible is eligible
    assert plans["hk2"].rows_kept == 3  # the threshold decides eligibility, not which rows are kept


def test_rows_of_ineligible_copier_do_not_make_later_miners_copiers():
    # uid 2 copies a..d from uid 1 (ineligible) and adds x; uid 3 shares x with uid 2: x is uid 2's row
    plans = deduplicate([miner(1, 10, "abcd"), miner(2, 20, "abcdx"), miner(3, 30, "xyzw")],
                        config=DedupConfig(max_duplicate_fraction=0.5))
    assert not plans["hk2"].eligible
    assert plans["hk3"].duplicated_from == {2: 1}
    assert plans["hk3"].eligible


# ---------------------------------------------------------------------------------------------------------------
# within-file duplicates


@pytest.mark.parametrize(
    "rows, kept_rows, kept_idx, within",
    [
        pytest.param("aab", "ab", [0, 2], 1, id="adjacent-repeat"),
        pytest.param("abab", "ab", [0, 1], 2, id="repeated-block"),
        pytest.param("aaaa", "a", [0], 3, id="all-same"),
        pytest.param("abc", "abc", [0, 1, 2], 0, id="no-repeats"),
    ],
)
def test_within_file_duplicates_dropped_not_copying(rows, kept_rows, kept_idx, within):
    m = miner(1, 10, rows)
    plan = deduplicate([m])["hk1"]
    assert plan.kept_indices == kept_idx
    assert kept(plan, m) == kept_rows
    assert plan.duplicates_within == within
    assert plan.duplicates_earlier == 0
    assert plan.duplicated_from == {}
    assert plan.eligible  # repeating your own rows is not copying


def test_within_file_repeat_of_earlier_miners_row_counted_once_as_copy():
    plans = deduplicate([miner(1, 10, "a"), miner(2, 20, "aabcd")])
    plan = plans["hk2"]
    assert plan.duplicates_earlier == 1
    assert plan.duplicates_within == 1
    assert plan.kept_indices == [2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------
# eval leakage


@pytest.mark.parametrize(
    "rows, eval_set, leaks, kept_rows, eligible",
    [
        pytest.param("abcd", "xy", 0, "abcd", True, id="no-leak"),
        pytest.param("abcx", "xy", 1, "abc", True, id="one-leak-dropped"),
        pytest.param("abxy", "xy", 2, "ab", True, id="half-leak-at-threshold"),
        pytest.param("axyz", "xyz", 3, "a", False, id="mostly-leak"),
        pytest.param("xyxy", "xy", 4, "", False, id="all-leak-repeated"),
    ],
)
def test_eval_leaks(rows, eval_set, leaks, kept_rows, eligible):
    m = miner(1, 10, rows)
    plan = deduplicate([m], eval_hashes=frozenset(eval_set))["hk1"]
    assert plan.eval_leaks == leaks
    assert kept(plan, m) == kept_rows
    assert plan.duplicates_within == 0  # leaked rows are not counted as repeats
    assert plan.eligible is eligible
    if not eligible:
        assert plan.reason.startswith(f"eval leakage: {leaks}/{len(rows)} rows")


def test_leaked_rows_are_not_owned_by_anyone():
    # uid 1 leaks x; uid 2 also has x: it is a leak for uid 2 too, not a copy from uid 1
    plans = deduplicate([miner(1, 10, "abx"), miner(2, 20, "cdx")], eval_hashes={"x"})
    assert plans["hk2"].eval_leaks == 1
    assert plans["hk2"].duplicates_earlier == 0
    assert plans["hk2"].duplicated_from == {}


def test_copy_check_comes_before_leak_check():
    plans = deduplicate([miner(1, 10, "abcd"), miner(2, 20, "abcx")], eval_hashes={"x"})
    assert plans["hk2"].reason.startswith("duplicate: 3/4")


# ---------------------------------------------------------------------------------------------------------------
# empty and degenerate inputs


def test_empty_miner_ineligible():
    plans = deduplicate([miner(1, 10, ""), miner(2, 20, "ab")])
    assert plans["hk1"].reason == "no rows to deduplicate"
    assert plans["hk1"].rows_in == 0 and plans["hk1"].kept_indices == []
    assert plans["hk2"].eligible


def test_no_miners():
    assert deduplicate([]) == {}


def test_only_within_duplicates_and_leaks_leaves_no_rows():
    # thresholds at 1.0 so nothing but "no rows left" can make it ineligible
    m = miner(1, 10, "xx")
    plan = deduplicate([m], eval_hashes={"x"}, config=DedupConfig(1.0, 1.0))["hk1"]
    assert plan.rows_kept == 0
    assert plan.reason == "no rows left after deduplication"


def test_plans_keyed_by_hotkey_with_counts():
    plans = deduplicate([miner(1, 10, "abc", hotkey="5Alice"), miner(2, 20, "cde", hotkey="5Bob")])
    assert set(plans) == {"5Alice", "5Bob"}
    bob = plans["5Bob"]
    assert (bob.hotkey, bob.uid, bob.rows_in, bob.rows_kept) == ("5Bob", 2, 3, 2)


# ---------------------------------------------------------------------------------------------------------------
# DedupConfig


@pytest.mark.parametrize("field", ["max_duplicate_fraction", "max_leak_fraction"])
@pytest.mark.parametrize("value", [-0.01, 1.01, 2.0, float("nan")])
def test_dedup_config_rejects_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        DedupConfig(**{field: value})


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_dedup_config_accepts_range(value):
    config = DedupConfig(max_duplicate_fraction=value, max_leak_fraction=value)
    assert config.max_duplicate_fraction == value == config.max_leak_fraction


def test_recommitting_an_updated_dataset_keeps_the_rows_first_committed_earlier():
    """An honest miner updates its dataset (new commitment, later block) after a copier took the old rows: the rows
    stay with the honest miner, because it committed them first."""
    honest = MinerRows("honest", 1, commit_block=50, row_hashes=("a", "b", "c", "new"), row_blocks=(10, 10, 10, 50))
    copier = MinerRows("copier", 2, commit_block=20, row_hashes=("a", "b", "c"))
    plans = deduplicate([honest, copier])
    assert plans["honest"].eligible and plans["honest"].rows_kept == 4
    assert not plans["copier"].eligible and plans["copier"].duplicated_from == {1: 3}
    # without the history, the copier's earlier commitment would win
    plans = deduplicate([MinerRows("honest", 1, 50, ("a", "b", "c", "new")), copier])
    assert plans["copier"].eligible and plans["honest"].duplicates_earlier == 3
