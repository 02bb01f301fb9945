"""The selection game's rules, each written from the live subnet's facts, and the competitions document."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, UTC

import pytest

from flock_pipeline.core.competitions import (Clock, CompetitionConfigError, Contender, CurationCompetition, Entry,
                                              EvalSet, RewardState, Round, ScoringContext, SelectionCompetition,
                                              build_competitions, load_document, select_winner)

SEL = SelectionCompetition(name="selection")


def C(uid, loss, block, hotkey=None, coldkey=""):
    return Contender(uid=uid, hotkey=hotkey or f"hk{uid}", loss=loss, block=block, coldkey=coldkey)


def graph(n, moved=None):
    hotkeys = {u: f"hk{u}" for u in range(n)}
    hotkeys.update(moved or {})
    return hotkeys


# -- the winner ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uids, k", [
    pytest.param(255, 12, id="255 uids: floor(12.75) = 12"),
    pytest.param(256, 12, id="256 uids: floor(12.8) = 12"),
    pytest.param(10, 1, id="10 uids: floor(0.5) = 0, at least 1"),
    pytest.param(19, 1, id="19 uids: still 1"),
    pytest.param(20, 1, id="20 uids: exactly 1"),
    pytest.param(40, 2, id="40 uids: 2"),
    pytest.param(1, 1, id="a lone uid"),
])
def test_k_is_five_percent_of_the_metagraph_rounded_down_at_least_one(uids, k):
    assert SEL.top_k(uids) == k


@pytest.mark.parametrize("contenders, n_uids, winner", [
    pytest.param([C(1, 2.0, 10), C(2, 1.0, 20)], 10, 2, id="k=1: the lowest loss, however late"),
    pytest.param([C(1, 2.0, 10), C(2, 1.0, 20), C(3, 3.0, 5)], 40, 1,
                 id="k=2: the earliest of the two best, not the best"),
    pytest.param([C(1, 2.0, 10), C(2, 1.0, 20), C(3, 3.0, 5)], 60, 3, id="k=3: the earliest of all three"),
    pytest.param([C(4, 1.0, 30), C(2, 1.0, 30)], 10, 2, id="tied loss and block: the lower uid"),
    pytest.param([C(5, 1.0, 30), C(3, 1.0, 31), C(1, 2.0, 1)], 40, 5,
                 id="tied loss: lower uid enters the top k first, then the earlier block wins"),
    pytest.param([C(1, 1.5, 10), C(2, 1.5, 10), C(3, 1.5, 9)], 40, 1,
                 id="three tied losses, k=2: uids 1 and 2 enter; uid 3's earlier block is outside the top 2"),
    pytest.param([], 40, None, id="nobody scored"),
])
def test_winner_is_the_earliest_commitment_among_the_k_lowest_losses(contenders, n_uids, winner):
    got = select_winner(contenders, graph(n_uids), {}, SEL.top_k(n_uids))
    assert (got.uid if got else None) == winner


def test_a_winner_whose_uid_changed_hands_is_found_by_hotkey_then_coldkey_then_the_next_candidate():
    best = [C(1, 1.0, 10, coldkey="cold-a"), C(2, 2.0, 20, coldkey="cold-b")]
    # uid 1 now holds another hotkey; the winner's hotkey moved to uid 7
    assert select_winner(best, graph(40, {1: "newcomer", 7: "hk1"}), {}, 2).uid == 7
    # the hotkey is gone; the coldkey holds uid 9
    assert select_winner(best, graph(40, {1: "newcomer"}), {9: "cold-a", 1: "cold-x"}, 2).uid == 9
    # neither: the next candidate (commitment order among the k) whose uid still holds its hotkey
    assert select_winner(best, graph(40, {1: "newcomer"}), {1: "cold-x"}, 2).uid == 2
    # no candidate at all: the uid keeps it (as the live validator does)
    assert select_winner([best[0]], graph(40, {1: "newcomer"}), {1: "cold-x"}, 2).uid == 1


def context(reward, n_uids=40, burn=0, round_id="20260202", phase="rewarding"):
    return ScoringContext(now_block=100, previous={}, hotkeys=graph(n_uids), coldkeys={}, burn_uid=burn,
                          round=Round(round_id, phase, 99), reward=reward)


def test_scoring_decides_the_round_once_its_rewarding_window_opens():
    out = SEL.score([C(1, 2.0, 10), C(2, 1.0, 20), C(3, 3.0, 5)],
                    context(RewardState("20260202", None, decide_now=True)))
    assert out.weights == {1: 1.0} and out.decided == ("20260202", 1, 2.0)
    assert out.scores == {1: 1.0, 2: 0.0, 3: 0.0}
    assert "not the earliest" in out.reasons[2] and "not among the 2 lowest" in out.reasons[3]


@pytest.mark.parametrize("reward, weights, status", [
    pytest.param(RewardState("20260202", None, decide_now=True), {0: 1.0}, "burn",
                 id="round decided with nobody scored"),
    pytest.param(RewardState(None, None), {0: 1.0}, "burn", id="fresh start: no round decided yet"),
    pytest.param(RewardState("20260201", None), {0: 1.0}, "burn", id="the last decided round had no winner"),
    pytest.param(RewardState("20260201", 5), {5: 1.0}, "reward", id="the last winner keeps it while validating"),
    pytest.param(RewardState("20260201", 5, reused_from="20260201"), {5: 1.0}, "reward",
                 id="pool unchanged: the earlier winner keeps it"),
])
def test_nobody_scored_burns_to_the_owner_and_a_decided_winner_is_kept(reward, weights, status):
    out = SEL.score([], context(reward, phase="validation"))
    assert out.weights == weights
    (uid,) = weights
    assert out.extra[uid][1] == status


def test_without_an_owner_uid_nobody_scored_awards_nothing():
    out = SEL.score([], context(RewardState(None, None), burn=None))
    assert out.weights == {}


# -- pool membership and duplicates --------------------------------------------------------------------------

def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


POOL = EvalSet(row_hashes=frozenset(), raw_keys=frozenset(key(f"p{i}") for i in range(200)))


def entry(uid, block, rows, rejected=(), lines=None):
    keys = tuple(key(r) for r in rows)
    return Entry(hotkey=f"hk{uid}", uid=uid, commit_block=block, row_hashes=keys, raw_keys=keys,
                 row_lines=tuple(lines or range(1, len(rows) + 1)), rejected_lines=tuple(rejected))


def pool_rows(start, n):
    return [f"p{i}" for i in range(start, start + n)]


@pytest.mark.parametrize("rows, rejected, lines, reason", [
    pytest.param(pool_rows(0, 100), (), None, None, id="100 pool rows"),
    pytest.param(pool_rows(0, 99) + ["not in the pool"], (), None, "not from the pool: 1 of 100", id="one outside"),
    pytest.param(pool_rows(0, 99) + ["p0"], (), None, "repeated rows: 1 of 100", id="a repeated pool row"),
    pytest.param(pool_rows(0, 99), [(50, "not valid JSON")], [*range(1, 50), *range(51, 101)],
                 "line 50 is invalid", id="an invalid line among the first 100"),
    pytest.param(pool_rows(0, 100), [(101, "not valid JSON")], None, None, id="an invalid line after the first 100"),
    pytest.param([], (), None, "no rows", id="an empty submission"),
])
def test_a_submission_is_distinct_pool_rows(rows, rejected, lines, reason):
    plan = SEL.plan([entry(1, 10, rows, rejected, lines)], POOL)["hk1"]
    assert (plan.reason is None) if reason is None else (reason in plan.reason)
    if reason is None:
        assert plan.rows_kept == min(len(rows), 100)


def test_only_the_first_selection_size_rows_count():
    sel = SelectionCompetition(name="s", selection_size=10)
    plan = sel.plan([entry(1, 10, pool_rows(0, 10) + ["outside, row 11"])], POOL)["hk1"]
    assert plan.reason is None and plan.kept_indices == list(range(10))


@pytest.mark.parametrize("shared, duplicate", [
    pytest.param(33, False, id="33 shared rows: allowed"),
    pytest.param(34, True, id="34 shared rows: a duplicate"),
])
def test_more_than_33_shared_rows_make_the_later_submission_a_duplicate(shared, duplicate):
    first = entry(1, 10, pool_rows(0, 100))
    later = entry(2, 11, pool_rows(0, shared) + pool_rows(100, 100 - shared))
    plans = SEL.plan([later, first], POOL)
    assert plans["hk1"].reason is None
    assert (plans["hk2"].reason is not None) == duplicate
    if duplicate:
        assert "uid 1" in plans["hk2"].reason and f"shares {shared} rows" in plans["hk2"].reason


def test_duplicates_are_ordered_by_block_then_uid():
    rows = pool_rows(0, 100)
    plans = SEL.plan([entry(5, 10, rows), entry(3, 10, rows), entry(1, 11, rows)], POOL)
    assert plans["hk3"].reason is None  # same block: the lower uid is earlier
    assert "uid 3" in plans["hk5"].reason and "uid 3" in plans["hk1"].reason


def test_an_earlier_ineligible_submission_still_makes_a_copy_of_it_a_duplicate():
    outside = entry(1, 10, pool_rows(0, 99) + ["outside"])
    copy = entry(2, 11, pool_rows(0, 99) + ["p150"])
    plans = SEL.plan([outside, copy], POOL)
    assert "not from the pool" in plans["hk1"].reason and "duplicate" in plans["hk2"].reason


def test_a_submission_sharing_with_an_earlier_duplicate_is_a_duplicate_too():
    a = entry(1, 10, pool_rows(0, 100))
    b = entry(2, 11, pool_rows(60, 100))  # shares 40 with a
    c = entry(3, 12, pool_rows(120, 80) + pool_rows(0, 0) + ["p100", "p101"] + pool_rows(102, 18))  # shares with b
    plans = SEL.plan([a, b, c], POOL)
    assert plans["hk1"].reason is None
    assert "uid 1" in plans["hk2"].reason and "uid 2" in plans["hk3"].reason


def test_a_later_submission_never_changes_an_earlier_one():
    early = [entry(1, 10, pool_rows(0, 100)), entry(2, 11, pool_rows(100, 100))]
    alone = SEL.plan(early, POOL)
    crowd = SEL.plan(early + [entry(9, 12, pool_rows(0, 100)), entry(8, 13, pool_rows(50, 100))], POOL)
    for hotkey in ("hk1", "hk2"):
        assert (alone[hotkey].reason, alone[hotkey].kept_indices) == (crowd[hotkey].reason, crowd[hotkey].kept_indices)


# -- windows and rounds ----------------------------------------------------------------------------------------

def utc(day, hour, minute=0, second=0):
    return datetime(2026, 2, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize("when, round_id, phase", [
    pytest.param(utc(2, 11, 59), "20260201", "rewarding", id="11:59: yesterday's round is rewarding"),
    pytest.param(utc(2, 11, 29), "20260201", "validation", id="11:29: yesterday's round is still validated"),
    pytest.param(utc(2, 11, 30), "20260201", "rewarding", id="11:30: rewarding starts"),
    pytest.param(utc(2, 12, 0), "20260202", "submission", id="12:00: today's submission window opens"),
    pytest.param(utc(2, 12, 29, 59), "20260202", "submission", id="12:29:59: still open"),
    pytest.param(utc(2, 12, 30), "20260202", "validation", id="12:30: validation"),
    pytest.param(utc(2, 23, 59), "20260202", "validation", id="before midnight"),
    pytest.param(utc(3, 0, 1), "20260202", "validation", id="after midnight: the same round"),
])
def test_a_round_per_utc_day_with_its_three_phases(when, round_id, phase):
    assert SEL.phase_at(when) == (round_id, phase)


def test_round_windows_map_to_blocks_on_the_chain_clock():
    clock = Clock(utc(2, 11, 0), 60.0)  # block 0 at 11:00, a block a minute
    assert clock.last_block_before(utc(2, 12, 30)) == 89 and clock.time_of(90) == utc(2, 12, 30)
    rnd = SEL.round_at(100, clock)  # 12:40
    assert (rnd.round_id, rnd.phase, rnd.snapshot_block, rnd.opens_block) == ("20260202", "validation", 89, 60)
    assert SEL.round_at(70, clock).snapshot_block == 70  # inside the window: nothing after the epoch's block
    assert SEL.round_at(60 + 23 * 60 + 40, clock).phase == "rewarding"  # day 1 11:40


def test_configurable_windows():
    sel = SelectionCompetition(name="s", submission_start_min=6 * 60, submission_minutes=60, reward_start_min=5 * 60)
    assert sel.phase_at(utc(2, 6, 59)) == ("20260202", "submission")
    assert sel.phase_at(utc(3, 5, 0)) == ("20260202", "rewarding")


# -- the competitions document ---------------------------------------------------------------------------------

@pytest.mark.parametrize("document, message", [
    pytest.param([{"kind": "lottery"}], "competitions[0].kind: unknown kind 'lottery'", id="unknown kind"),
    pytest.param([{"kind": "curation", "share": 0.5}, {"kind": "selection", "share": 0.4, "commitment_id": "2"}],
                 "shares must sum to 1, got 0.9", id="shares not summing to 1"),
    pytest.param([{"kind": "selection", "selection_size": 0}], "selection_size must be a positive whole number",
                 id="a selection size of 0"),
    pytest.param([{"kind": "curation", "scoring": {"mode": "curvy"}}],
                 "competitions[0] (curation).scoring.mode: mode must be one of",
                 id="unknown scoring rule"),
    pytest.param([{"kind": "curation", "scoring": {"epsilonn": 1}}], "scoring: unknown field(s) epsilonn",
                 id="unknown scoring field"),
    pytest.param([{"kind": "selection", "top_k": 3}], "unknown field(s) top_k", id="unknown field"),
    pytest.param([{"kind": "curation", "share": 0.5}, {"kind": "selection", "share": 0.5}],
                 "two competitions take commitment id(s) ['1']", id="one commitment id for two games"),
    pytest.param([{"kind": "curation", "name": "a"}, {"kind": "curation", "name": "a", "commitment_id": "2"}],
                 "names must be unique", id="duplicate names"),
    pytest.param([], "at least one competition", id="none"),
    pytest.param({"kind": "curation"}, "expected a list", id="not a list"),
    pytest.param([{"kind": "selection", "submission_start_min": 1440}], "submission_start_min must be minutes",
                 id="a window outside the day"),
])
def test_a_bad_competitions_document_names_the_field(document, message):
    with pytest.raises(CompetitionConfigError) as err:
        build_competitions(document)
    assert message in str(err.value)


def test_presets_files_and_json_give_the_same_competitions(tmp_path):
    path = tmp_path / "competitions.json"
    doc = [{"kind": "curation", "share": 0.5}, {"kind": "selection", "share": 0.5, "commitment_id": "2"}]
    path.write_text(json.dumps(doc))
    from_file = build_competitions(load_document(f"@{path}"))
    assert from_file == build_competitions(load_document(json.dumps(doc)))
    assert [c.kind for c in from_file] == ["curation", "selection"]
    assert build_competitions(load_document("curation")).competitions == (CurationCompetition(name="curation"),)
    live = build_competitions(load_document("sn96")).by_name("selection")
    assert live.eval_repo == "flock-io/flock-off-s1-competition" and live.recipe["quantization"] == "nf4"
    with pytest.raises(CompetitionConfigError, match="cannot read"):
        load_document(f"@{tmp_path / 'missing.json'}")
    with pytest.raises(CompetitionConfigError, match="not a preset"):
        load_document("curvy")


def test_the_clock_round_trips_blocks_and_times():
    clock = Clock(utc(2, 11, 0), 12.0)
    for block in (0, 1, 299, 300, 7201):
        when = clock.time_of(block)
        assert clock.last_block_before(when) == block - 1
        assert clock.last_block_before(when + timedelta(seconds=1)) == block


def test_an_earlier_round_is_decided_late_from_its_recorded_contenders():
    """Epochs need not open inside the 30-minute rewarding window: the first epoch after it decides the round from
    the contenders recorded for it, while this epoch's own contenders (the next round's) wait."""
    recorded = (C(1, 2.0, 10), C(2, 1.0, 20), C(3, 3.0, 5))
    reward = RewardState("20260201", None, decide_now=True, contenders=recorded)
    out = SEL.score([C(7, 0.5, 900)], context(reward, round_id="20260202", phase="submission"))
    assert out.decided == ("20260201", 1, 2.0) and out.weights == {1: 1.0}
    assert out.extra[1][1] == "reward" and "winner of round 20260201" in out.extra[1][2]
    assert "not decided yet" in out.reasons[7] and out.scores[7] == 0.0


def test_a_rewarding_window_starting_with_the_submission_window_is_refused():
    with pytest.raises(CompetitionConfigError, match="rewarding must start before"):
        SelectionCompetition(name="s", reward_start_min=12 * 60)
