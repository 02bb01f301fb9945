"""The selection game's rule sets, one table per fact of the live validator (FLock-subnet 492c7bb): each case is
written from the fact, with what validators running that release end up with as the expected value, beside what
the game as its rules read (`intended`) decides."""

from __future__ import annotations

import hashlib

import pytest

from flock_pipeline.core.competitions import (RULE_SETS, CompetitionConfigError, Contender, Entry, EvalSet,
                                              RewardState, Round, ScoringContext, SelectionCompetition, Submission,
                                              build_competitions, load_document)
from flock_pipeline.core.competitions.selection import (INTENDED, LIVE_492C7BB, commitment_order, live_winner,
                                                        training_failure, unloadable)
from flock_pipeline.core.rowformats import RAW_JSON, physical_lines, trainer_problem
from flock_pipeline.core.schema import DatasetLimits, validate_bytes

LIVE = SelectionCompetition(name="selection", rules="live-492c7bb")
INTENDED_GAME = SelectionCompetition(name="selection")


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


POOL = EvalSet(row_hashes=frozenset(), raw_keys=frozenset(key(f"p{i}") for i in range(400)))


def entry(uid, block, rows, rejected=(), facts=None):
    keys = tuple(key(r) for r in rows)
    return Entry(hotkey=f"hk{uid}", uid=uid, commit_block=block, row_hashes=keys, raw_keys=keys,
                 row_lines=tuple(range(1, len(rows) + 1)), rejected_lines=tuple(rejected),
                 file_facts={"physical_lines": len(rows), "untrainable": None} if facts is None else facts)


def rows(start, n=100):
    return [f"p{i}" for i in range(start, start + n)]


def graph(n, moved=None):
    hotkeys = {u: f"hk{u}" for u in range(n)}
    hotkeys.update(moved or {})
    return hotkeys


def sub(uid, block, loss=None, status="scored", live=None, intended=None):
    """A recorded submission; `live` / `intended`: that rule set's verdict (default: eligible)."""
    views = {"live-492c7bb": live or {"reason": None, "loss": None, "why": None},
             "intended": intended or {"reason": None, "loss": None, "why": None}}
    return Submission(uid, f"hk{uid}", block, "", loss, status, views)


OUT = {"reason": "not from the pool", "loss": None, "why": None}


def decide(game, submissions, n_uids=40, previous=5, moved=None, coldkeys=None):
    context = ScoringContext(now_block=100, previous={}, hotkeys=graph(n_uids, moved), coldkeys=coldkeys or {},
                             burn_uid=0, round=Round("20260203", "rewarding", 99),
                             reward=RewardState("20260203", None, decide_now=True, previous_uid=previous),
                             submissions=tuple(submissions))
    return game.score([], context)


# -- fact 1: the reward step keeps the previous weights --------------------------------------------------------

@pytest.mark.parametrize("submissions, n_uids, moved, live, intended, why", [
    pytest.param([sub(3, 10, 1.0), sub(4, 11, 1.1), sub(6, 12, 1.2)], 40, {3: "newcomer", 9: "hk3"}, 5, 9,
                 "holds another hotkey now",
                 id="the winner's uid changed hands: live keeps the previous weights, intended follows its hotkey"),
    pytest.param([sub(0, 10, 1.0), sub(4, 11, 1.1)], 40, None, 5, 0, "uid 0",
                 id="uid 0 wins: live keeps the previous weights"),
    pytest.param([sub(3, 10, 1.0)], 40, None, 5, 3, "without a submission",
                 id="one real loss, k=2: uid 0 (no submission, no block) meets uid 3 in the sort: it fails"),
    pytest.param([sub(3, 10, 1.0), sub(1, 4, None, "ineligible", live=OUT, intended=OUT)], 21, None, 3, 3, None,
                 id="21 uids give k=1: the one real loss decides under both"),
    pytest.param([], 40, None, 5, None, "has no submission",
                 id="nobody submitted: the k lowest are uids without a submission: it fails"),
])
def test_fact_1_the_live_reward_step_fails_and_keeps_the_previous_weights(submissions, n_uids, moved, live,
                                                                          intended, why):
    out = decide(LIVE, submissions, n_uids, moved=moved)
    assert out.weights == {live if live is not None else 0: 1.0}
    assert out.decided[1] == live
    if why is not None:
        assert "previous weights stay" in out.decided_note and why in out.decided_note
        assert f"intended: {'uid ' + str(intended) if intended is not None else 'the burn uid'}" in out.differs
    else:
        assert out.decided_note is None
    their = decide(INTENDED_GAME, submissions, n_uids, moved=moved)
    assert their.decided[1] == intended


def test_fact_1_fewer_than_k_real_losses_with_every_row_blocked_rewards_the_earliest_even_an_ineligible_one():
    # 40 uids, k = 2: one real loss; the next lowest is 999, and uid 0 without a submission would come before any
    # other 999 row by uid, so here every uid below the ineligible one has a submission (a blocked row)
    submissions = [sub(0, 30, 1.0), sub(1, 5, None, "ineligible", live=OUT, intended=OUT)]
    winner, failure = live_winner([Contender(0, "hk0", 1.0, 30)], submissions, graph(40), 2)
    assert failure is None and winner.uid == 1 and winner.loss == 999.0  # the ineligible one committed first
    out = decide(LIVE, submissions)
    assert out.weights == {1: 1.0} and "ineligible submissions (loss 999)" in out.extra[1][2]
    assert out.differs == "live-492c7bb: uid 1; intended: uid 0"


def test_fact_1_the_previous_weights_are_the_last_decided_winner_or_the_owner_at_a_fresh_start():
    submissions = [sub(0, 10, 1.0), sub(4, 11, 1.1)]  # uid 0 wins: the live step fails
    assert decide(LIVE, submissions, previous=7).weights == {7: 1.0}
    fresh = decide(LIVE, submissions, previous=None)
    assert fresh.weights == {0: 1.0} and fresh.extra[0][1] == "burn"  # at a fresh start all weight is the owner's
    assert "keeps the burn uid (the previous weights): the winner is uid 0" in fresh.extra[0][2]


def test_fact_1_nobody_with_any_loss_keeps_the_previous_weights():
    winner, failure = live_winner([], [], {}, 1)
    assert winner is None and failure == "nobody has a loss"


# -- fact 2: how the live code reads a submission ------------------------------------------------------------

@pytest.mark.parametrize("data, lines", [
    pytest.param(b'{"a":1}\r\n{"a":2}\r{"a":3}\n', [1, 2, 3], id="universal newlines: \\r\\n, a bare \\r, \\n"),
    pytest.param('{"a":1}\n\u00a0\n\u2028\n\x1c\n \t\n{"a":2}'.encode(), [1, 6],
                 id="a line blank after str.strip() is skipped, Unicode whitespace included"),
    pytest.param('\u00a0{"a":1}\u3000\n'.encode(), [1], id="a row is parsed after str.strip()"),
    pytest.param(b'{"a":"' + b"x" * 200_000 + b'"}\n', [1], id="no cap on a line's length"),
])
def test_fact_2_the_live_loader_reads_lines(data, lines):
    report = validate_bytes(data, DatasetLimits(max_line_bytes=1000), RAW_JSON)
    assert [r.line for r in report.valid_rows] == lines and not report.rejected_rows


@pytest.mark.parametrize("rejected, live, intended", [
    pytest.param([(150, "not valid JSON: Expecting value")], "line 150 is not valid JSON", None,
                 id="an unparseable line after row 100: live ineligible, intended eligible"),
    pytest.param([], None, None, id="every line loads"),
])
def test_fact_2_every_line_is_parsed(rejected, live, intended):
    e = entry(1, 10, rows(0), rejected)
    assert (unloadable(LIVE_492C7BB, e) is None) == (live is None)
    if live:
        assert live in unloadable(LIVE_492C7BB, e)
        assert live in LIVE.plan([e], POOL)["hk1"].reason
    assert unloadable(INTENDED, e) is None and INTENDED_GAME.plan([e], POOL)["hk1"].reason is None


@pytest.mark.parametrize("data, problem", [
    pytest.param(b'{"system":"s","conversations":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}',
                 None, id="a row the trainer reads"),
    pytest.param(b"", "a blank line", id="a blank line"),
    pytest.param(b"   \t", "a blank line", id="spaces only"),
    pytest.param('\u00a0{"system":"s","conversations":[]}'.encode(), "characters around the row",
                 id="NBSP before the row: not JSON as written"),
    pytest.param(b'{"conversations":[]}', "no system prompt text", id="no system: the live loader has no default"),
    pytest.param(b'{"system":"s"}', "no conversations", id="no conversations"),
    pytest.param(b'{"system":"s","conversations":[{"role":"assistant","content":"a"},{"role":"user","content":"q"}]}',
                 "order", id="roles out of order"),
])
def test_fact_2_what_the_live_trainer_cannot_read(data, problem):
    got = trainer_problem(data)
    assert (got is None) if problem is None else (problem in got)


@pytest.mark.parametrize("facts, n_rows, live", [
    pytest.param({"physical_lines": 101, "untrainable": [40, "a blank line"]}, 100, "fails on line 40",
                 id="a blank line among the first 100 physical lines: the benchmark loss, eligible"),
    pytest.param({"physical_lines": 101, "untrainable": [101, "a blank line"]}, 100, None,
                 id="a blank line after the first 100 physical lines: trained"),
    pytest.param({"physical_lines": 0, "untrainable": None}, 0, "without rows",
                 id="an empty file passes the pool check (0 of 0) and training fails: the benchmark loss"),
])
def test_fact_2_training_reads_the_first_100_physical_lines(facts, n_rows, live):
    e = entry(1, 10, rows(0, n_rows), facts=facts)
    assert training_failure(INTENDED, e, 100) is None
    got = training_failure(LIVE_492C7BB, e, 100)
    assert (got is None) if live is None else (live in got)
    plan = LIVE.plan([e], POOL)["hk1"]
    view = plan.rule_views["live-492c7bb"]
    if live is None:
        assert plan.reason is None and view["loss"] is None
    else:  # not trained: scored at the benchmark loss
        assert view == {"reason": None, "loss": 2.6, "why": got}
        assert plan.rows_kept == 0 and "benchmark loss 2.60" in plan.reason
    intended = plan.rule_views["intended"]
    assert (intended["reason"] is None) == (n_rows > 0) and intended["loss"] is None


def test_fact_2_a_live_training_failure_is_scored_at_the_benchmark_loss_and_can_win():
    submissions = [sub(3, 10, None, "ineligible", live={"reason": None, "loss": 2.6, "why": "blank line"}),
                   sub(4, 11, 2.5), sub(5, 12, 2.7)]
    out = decide(LIVE, submissions)  # k = 2: losses 2.5 (uid 4) and 2.6 (uid 3, earlier): uid 3 wins
    assert out.weights == {3: 1.0} and out.losses == {3: 2.6}
    # intended would train uid 3 (its blank line is skipped); under the live rule set it was not trained
    assert out.differs == "live-492c7bb: uid 3; intended: uid 4 (uids 3 not evaluated here)"


def test_fact_2_the_physical_lines_are_split_like_python_text_files():
    assert physical_lines(b"a\r\nb\rc\n\n") == [b"a", b"b", b"c", b""]
    assert physical_lines(b"") == [] and physical_lines(b"a") == [b"a"]
    assert physical_lines("a\u2028b\x1cc".encode()) == ["a\u2028b\x1cc".encode()]  # no other line breaks


# -- fact 3: duplicates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("blocks, shared, live_out, intended_out", [
    pytest.param((10, 10), 34, {"hk1", "hk2"}, {"hk2"}, id="same block, 34 shared: live both, intended the later uid"),
    pytest.param((10, 11), 34, {"hk2"}, {"hk2"}, id="different blocks: the later only, under both"),
    pytest.param((10, 10), 33, set(), set(), id="33 shared is no copy"),
])
def test_fact_3_copies_in_one_block_are_both_duplicates_under_live(blocks, shared, live_out, intended_out):
    a = entry(1, blocks[0], rows(0))
    b = entry(2, blocks[1], rows(0, shared) + rows(200, 100 - shared))
    for game, out in ((LIVE, live_out), (INTENDED_GAME, intended_out)):
        plans = game.plan([b, a], POOL)
        assert {h for h, p in plans.items() if p.reason is not None} == out
        assert all("duplicate" in plans[h].reason for h in out)


def test_fact_3_an_earlier_file_the_live_code_loads_counts_whatever_its_rows():
    bad = entry(1, 10, rows(0, 99) + ["not a pool row"])  # ineligible itself, but loaded
    copy = entry(2, 11, rows(0))
    for game in (LIVE, INTENDED_GAME):
        assert "duplicate: shares 99 rows with the earlier submission of uid 1" in game.plan([bad, copy],
                                                                                              POOL)["hk2"].reason


def test_fact_3_a_file_the_live_code_cannot_load_is_no_copy_source():
    unloadable_file = entry(1, 10, rows(0), rejected=[(150, "not valid JSON")])
    copy = entry(2, 11, rows(0))
    assert LIVE.plan([unloadable_file, copy], POOL)["hk2"].reason is None
    assert "duplicate" in INTENDED_GAME.plan([unloadable_file, copy], POOL)["hk2"].reason


# -- fact 4: commitments -------------------------------------------------------------------------------------

def test_fact_4_the_live_rule_set_never_reads_the_competition_id_and_accepts_short_revisions():
    live = build_competitions(load_document("sn96"))
    assert live.for_commitment("7").name == "selection" and live.for_commitment("1").name == "selection"
    assert live.competitions[0].accepts_short_revisions()
    intended = build_competitions([{"kind": "selection", "name": "selection"}])
    assert intended.for_commitment("7") is None and not intended.competitions[0].accepts_short_revisions()


def test_fact_4_at_most_one_game_takes_every_commitment_and_a_named_id_goes_to_its_game():
    games = build_competitions([{"kind": "curation", "name": "curation", "share": 0.5, "commitment_id": "1"},
                                {"kind": "selection", "name": "selection", "share": 0.5, "commitment_id": "2",
                                 "rules": "live-492c7bb"}])
    assert games.for_commitment("1").name == "curation" and games.for_commitment("9").name == "selection"
    with pytest.raises(CompetitionConfigError, match="at most one game"):
        build_competitions([{"kind": "selection", "name": "a", "share": 0.5, "rules": "live-492c7bb"},
                            {"kind": "selection", "name": "b", "share": 0.5, "commitment_id": "2",
                             "rules": "live-492c7bb"}])


# -- fact 5: ties inside one block ---------------------------------------------------------------------------

@pytest.mark.parametrize("rules, winner", [
    pytest.param(LIVE_492C7BB, 7, id="live: lower loss first (the poll time's stand-in), then uid"),
    pytest.param(INTENDED, 3, id="intended: lower uid"),
])
def test_fact_5_ties_inside_one_block(rules, winner):
    tied = [Contender(3, "hk3", 1.2, 50), Contender(7, "hk7", 1.1, 50)]
    assert min(tied, key=lambda c: commitment_order(rules, c)).uid == winner
    game = LIVE if rules is LIVE_492C7BB else INTENDED_GAME
    assert decide(game, [sub(3, 50, 1.2), sub(7, 50, 1.1)]).decided[1] == winner


# -- the rule sets as configuration --------------------------------------------------------------------------

def test_the_sn96_preset_runs_the_live_rule_set_and_intended_is_selectable():
    assert set(RULE_SETS) == {"intended", "live-492c7bb"}
    assert build_competitions(load_document("sn96")).competitions[0].rules == "live-492c7bb"
    doc = '[{"kind": "selection", "name": "selection", "rules": "intended"}]'
    assert build_competitions(load_document(doc)).competitions[0].rules == "intended"
    with pytest.raises(CompetitionConfigError, match="rules must be one of intended, live-492c7bb, got 'live'"):
        build_competitions([{"kind": "selection", "name": "selection", "rules": "live"}])


def test_a_selection_of_the_same_facts_in_other_wordings_is_flagged_for_the_operator_only():
    """Advisory, not a rule: the live validators compare rows as written, and the consensus must not change. A later
    submission teaching 40 of an earlier one's facts in another wording shares 0 rows: eligible, and flagged."""
    import json

    from flock_pipeline.core import synthetic
    from flock_pipeline.core.neardup import row_text

    grid = synthetic.fact_grid(synthetic.make_atlas(7))  # (country, fact, row) in three wordings
    by_wording = {t: [row for i, (_, _, row) in enumerate(grid) if i // 200 == t] for t in range(3)}

    def submission(uid, block, picked):
        keys = tuple(key(json.dumps(r.to_json_obj(), sort_keys=True)) for r in picked)
        return Entry(hotkey=f"hk{uid}", uid=uid, commit_block=block, row_hashes=keys, raw_keys=keys,
                     row_lines=tuple(range(1, len(picked) + 1)), row_texts=tuple(row_text(r) for r in picked),
                     file_facts={"physical_lines": len(picked), "untrainable": None})

    pool_rows = [row for _, _, row in grid]
    pool = EvalSet(row_hashes=frozenset(), texts=tuple(row_text(r) for r in pool_rows),
                   raw_keys=frozenset(key(json.dumps(r.to_json_obj(), sort_keys=True)) for r in pool_rows))
    first = submission(3, 10, by_wording[1][:100])
    same_facts = submission(4, 11, by_wording[2][:40] + by_wording[2][100:160])  # 40 of uid 3's facts, reworded
    # facts nobody took (160-199, in two wordings) and 20 of uid 4's: under the threshold
    other_facts = submission(5, 12, by_wording[0][160:200] + by_wording[2][160:200] + by_wording[0][140:160])
    for game in (LIVE, INTENDED_GAME):
        plans = game.plan([first, same_facts, other_facts], pool)
        assert all(p.eligible for p in plans.values()), plans  # the weights are not touched
        assert plans["hk4"].advisory.startswith("teaches 40 of the same facts as the earlier submission of uid 3 "
                                                "(block 10) in other wordings of the pool, sharing 0 rows")
        assert plans["hk3"].advisory is None and plans["hk5"].advisory is None
