"""`flock demo --network selection` (the live SN96 selection game over a daily cycle on the local chain's clock) and
`--network mixed` (curation and selection side by side, shares 0.5 / 0.5): what the validator decides and sends."""

import contextlib
import io
import json
import shutil

import pytest

from flock_pipeline.cli import main
from flock_pipeline.core.competitions import SelectionCompetition
from flock_pipeline.demo import OWNER_HOTKEY, SELECTION_REPORT_EPOCH
from flock_pipeline.resources import LocalChainResource, StoreResource
from flock_pipeline_tests.homes import home_with_model

INELIGIBLE = {  # label -> (status, a piece of the reason)
    "outside-the-pool": ("ineligible", "not from the pool: 1 of 100 rows"),
    "shares-40": ("ineligible", "duplicate: shares 40 rows with the earlier submission of uid {strong}"),
    "exact-copy": ("ineligible", "duplicate: shares 100 rows with the earlier submission of uid {strong}"),
    "late": ("rejected", "late: committed at block"),
}


def _demo(home, network):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--network", network, "--json", "--home", str(home)]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def selection(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("selection")
    home_with_model(home, tiny_model_dir)
    return home, _demo(home, "selection")


def _uid(chain: LocalChainResource, hotkey: str) -> int:
    return next(n.uid for n in chain.metagraph() if n.hotkey == hotkey)


def test_exactly_one_miner_gets_weight_one_the_earliest_of_the_k_best(selection):
    home, doc = selection
    assert doc["epoch"] == SELECTION_REPORT_EPOCH
    miners = {m["label"]: m for m in doc["miners"] if m["label"]}
    assert {m["competition"] for m in doc["miners"]} == {"selection"}
    winners = [m for m in doc["miners"] if m["weight"] > 0]
    assert len(winners) == 1 and winners[0]["weight"] == pytest.approx(1.0, abs=1e-12)
    # the rule, recomputed from what the store recorded: k from the metagraph, the k lowest losses, earliest
    chain = LocalChainResource(path=str(home / "chain.json"))
    commits = StoreResource(path=str(home / "warehouse.duckdb")).epoch_commitments(doc["epoch"])
    blocks = {c.hotkey: c.commit_block for c in commits}
    k = SelectionCompetition(name="s").top_k(len(chain.metagraph()))
    assert k == 2
    scored = sorted((m for m in doc["miners"] if m["status"] == "scored"), key=lambda m: (m["eval_loss"], m["uid"]))
    earliest = min(scored[:k], key=lambda m: (blocks[m["hotkey"]], m["uid"]))
    assert winners[0]["hotkey"] == earliest["hotkey"] == "hk-random-selector"
    assert "earliest commitment among the 2 lowest" in winners[0]["reason"]
    # not simply the lowest loss: the strong selector's data is better and committed later
    assert miners["strong-selector"]["eval_loss"] < miners["random-selector"]["eval_loss"]
    assert miners["random-selector"]["eval_loss"] < miners["weak-selector"]["eval_loss"]
    for m in doc["miners"]:
        if m["weight"] == 0:
            assert m["reason"], m


def test_outside_the_pool_duplicates_and_late_miners_are_ineligible_with_reasons(selection):
    home, doc = selection
    miners = {m["label"]: m for m in doc["miners"] if m["label"]}
    strong = miners["strong-selector"]["uid"]
    for label, (status, reason) in INELIGIBLE.items():
        assert miners[label]["status"] == status, miners[label]
        assert reason.format(strong=strong) in miners[label]["reason"], miners[label]
        assert miners[label]["weight"] == 0.0


def test_the_daily_cycle_burns_until_a_round_is_decided_then_keeps_the_winner(selection):
    home, doc = selection
    chain = LocalChainResource(path=str(home / "chain.json"))
    owner, winner = _uid(chain, OWNER_HOTKEY), _uid(chain, "hk-random-selector")
    phases = [(e["rounds"]["selection"]["round"], e["rounds"]["selection"]["phase"]) for e in doc["cycle"]]
    assert phases == [("20260202", "submission"), ("20260202", "validation"), ("20260202", "rewarding"),
                      ("20260203", "validation"), ("20260204", "submission"), ("20260204", "validation"),
                      ("20260204", "rewarding")]
    fresh, validating, rewarded, next_day = doc["cycle"][:4]
    for entry in (fresh, validating):  # nobody scored yet: all weight to the subnet owner's uid
        assert entry["weights"] == {str(owner): 1.0} and "burn" in entry["why"][str(owner)]
    assert rewarded["weights"] == {str(winner): 1.0}
    assert next_day["weights"] == {str(winner): 1.0}  # the pool did not change: the winner keeps the reward
    assert "the pool did not change" in next_day["why"][str(winner)]
    # and each went to the chain as the validator's weights of that epoch
    sent = [(w["uids"], w["weights"]) for w in chain.weights_history("validator")]
    assert sent == [([owner], [65535])] * 2 + [([winner], [65535])] * 5


def test_on_day_2_the_rule_sets_differ_and_the_live_one_keeps_the_weights_it_had(selection, monkeypatch, capsys):
    """Day 2's pool is new, so every earlier selection is out (not pool rows), and one miner selects from it: one
    real loss with k = 2. The live reward step meets uid 0 (no submission, no commitment block) beside it and fails:
    validators running the live code keep day 0's winner. The game as its rules read rewards the day-2 miner. The
    epoch's report says both."""
    home, doc = selection
    chain = LocalChainResource(path=str(home / "chain.json"))
    kept, day2 = _uid(chain, "hk-random-selector"), _uid(chain, "hk-day2-selector")
    store = StoreResource(path=str(home / "warehouse.duckdb"))
    record = store.competition_round("selection", "20260204")
    assert record.reused_from is None and record.decided and record.decided_epoch == 218
    assert record.winner_uid == kept and record.winner_loss is None
    decided = doc["cycle"][-1]
    assert decided["epoch"] == 218 and decided["weights"] == {str(kept): 1.0}
    why = decided["why"][str(kept)]
    assert f"live-492c7bb: keeps uid {kept} (the previous weights): fewer than 2 submissions have a real loss" in why
    assert "uid 0 without a submission" in why and f"intended: uid {day2}" in why
    from flock_pipeline.demo import epoch_report

    report = {m["label"]: m for m in epoch_report(218, store, json.loads((home / "demo.json").read_text())["labels"])}
    assert report["day2-selector"]["status"] == "scored" and report["day2-selector"]["weight"] == 0.0
    assert f"intended: uid {day2}" in report["day2-selector"]["reason"]
    assert "not from the pool" in report["late"]["reason"]  # earlier commitments carry over into day 2's round
    # `flock epoch report` prints both outcomes on the rewarded row and on the other rule set's winner
    monkeypatch.setenv("FLOCK_HOME", str(home))
    capsys.readouterr()
    assert main(["epoch", "report", "218"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if "intended: uid" in line]
    assert {line.split()[0] for line in printed} == {str(kept), str(day2)}
    # the round keeps how it was decided: later epochs reward the kept uid and say why
    assert "previous weights" in json.loads(record.contenders)["note"]


def test_a_changed_pool_opens_a_new_round_and_commitments_carry_over(selection, tmp_path):
    """Day 1's round reused day 0's; after the pool repo gets a new revision that keeps day 0's rows, day 3's round
    is new. Commitments carry over from earlier days (the live validator records whatever each hotkey has on-chain
    during the window), so the miner that was late for day 0 takes part, and wins nothing it did not earn."""
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import epoch_report, run_cycle, selection_pool
    from flock_pipeline.core.schema import rows_to_jsonl
    from flock_pipeline.resources import LocalHubResource, build_resources

    home, _ = selection
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    hub = LocalHubResource(root=str(copy / "hub"), as_owner=True)
    pool = rows_to_jsonl(selection_pool()).encode()
    hub.upload("flock/selection-pool", pool + pool.splitlines(keepends=True)[0].replace(b"?", b" ?"), private=False)
    demo = json.loads((copy / "demo.json").read_text())
    demo["cycle"] = [221, 290]  # day 3 12:40 (validation of round 20260205), then day 4 11:40 (its rewarding)
    (copy / "demo.json").write_text(json.dumps(demo))
    resources = build_resources(copy)
    cycle = run_cycle(copy, resources, dg.DagsterInstance.ephemeral(), run_epoch)
    rounds = [(e["rounds"]["selection"]["round"], e["rounds"]["selection"]["phase"]) for e in cycle]
    assert rounds == [("20260205", "validation"), ("20260205", "rewarding")]
    store, chain = resources["store"], resources["chain"]
    record = store.competition_round("selection", "20260205")
    assert record.reused_from is None and record.decided and record.decided_epoch == 290
    old_winner = _uid(chain, "hk-random-selector")
    assert cycle[0]["weights"] == {str(old_winner): 1.0}  # while round 20260205 is validated, the last weights stay
    report = {m["label"]: m for m in epoch_report(290, store, demo["labels"])}
    assert report["late"]["status"] == "scored"  # its commitment predates this round's window
    (winner,) = [m for m in report.values() if m["weight"] > 0]
    assert cycle[1]["weights"] == {str(winner["uid"]): 1.0} and record.winner_uid == winner["uid"]


@pytest.mark.slow
def test_a_curation_and_a_selection_competition_send_one_valid_weight_vector(tmp_path, tiny_model_dir):
    home = tmp_path / "mixed"
    (home / "models").mkdir(parents=True)
    home_with_model(home, tiny_model_dir)
    doc = _demo(home, "mixed")
    report = doc["miners"]
    by_game = {}
    for m in report:
        by_game.setdefault(m["competition"], 0.0)
        by_game[m["competition"]] += m["weight"]
    assert by_game["curation"] == pytest.approx(0.5, abs=1e-9) and by_game["selection"] == pytest.approx(0.5, abs=1e-9)
    labels = {m["label"]: m for m in report if m["label"]}
    assert labels["random-selector"]["weight"] == pytest.approx(0.5, abs=1e-12)
    assert labels["honest-good"]["weight"] == pytest.approx(0.5) and labels["honest-fair"]["weight"] == 0.0
    assert labels["copier"]["weight"] == 0.0 and labels["shares-40"]["weight"] == 0.0
    chain = LocalChainResource(path=str(home / "chain.json"))
    uids, u16 = chain.weights_history("validator")[-1]["uids"], chain.weights_history("validator")[-1]["weights"]
    weighted = {m["uid"]: m["weight"] for m in report if m["weight"] > 0}
    top = max(weighted.values())
    # what goes out is the SDK's u16 vector: a weight under half a u16 step of the top one rounds to 0 and is dropped
    assert uids == sorted(u for u, w in weighted.items() if round(w / top * 65535) >= 1)
    assert max(u16) == 65535 and len(uids) == len(set(uids))
    total = sum(m["weight"] for m in report)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_a_miner_checks_and_scores_a_selection_as_the_validators_do(selection, tmp_path, monkeypatch, capsys):
    from flock_pipeline.demo import day2_miner, epoch_report, selection_miners

    home, doc = selection
    monkeypatch.setenv("FLOCK_HOME", str(home))  # its competitions.json: the selection game; its pool: day 2's
    files = {}
    for m in selection_miners() + [day2_miner()]:
        files[m.label] = tmp_path / f"{m.label}.jsonl"
        files[m.label].write_bytes(m.data)
    capsys.readouterr()
    assert main(["miner", "validate", str(files["day2-selector"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selection"] == "ok"
    assert main(["miner", "validate", str(files["strong-selector"]), "--json"]) == 1  # day 0's pool rows
    assert "not from the pool" in json.loads(capsys.readouterr().out)["selection"]
    assert main(["miner", "score", str(files["day2-selector"]), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    store = StoreResource(path=str(home / "warehouse.duckdb"))
    validator = {m["hotkey"]: m for m in epoch_report(218, store)}
    assert scored["competition"] == "selection" and scored["eval_rows"] == 600
    assert scored["results"][0]["eval_loss"] == pytest.approx(validator["hk-day2-selector"]["eval_loss"], abs=1e-6)
    assert main(["miner", "validate", str(files["strong-selector"]), "--competition", "curation"]) == 2


def test_a_round_is_decided_by_the_first_epoch_after_its_reward_time(tmp_path, tiny_model_dir):
    """No epoch opens inside day 1's 11:30-12:00 rewarding window here (on the live chain, 72-minute epochs may never
    do): the first epoch after it, in the next round's submission window, decides round 20260202 from the contenders
    its validation recorded, and rewards the same winner an in-window epoch would have."""
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import run_cycle, seed_demo_network
    from flock_pipeline.resources import build_resources

    home = tmp_path / "late"
    (home / "models").mkdir(parents=True)
    home_with_model(home, tiny_model_dir)
    seed_demo_network(home, network="selection")
    demo = json.loads((home / "demo.json").read_text())
    demo["cycle"] = [6, 76]  # day 0 13:00 (validation), then day 1 12:20 (round 20260203's submission window)
    (home / "demo.json").write_text(json.dumps(demo))
    resources = build_resources(home)
    cycle = run_cycle(home, resources, dg.DagsterInstance.ephemeral(), run_epoch)
    assert cycle[1]["rounds"]["selection"] == {"round": "20260203", "phase": "submission"}
    winner = _uid(resources["chain"], "hk-random-selector")
    assert cycle[1]["weights"] == {str(winner): 1.0} and "winner of round 20260202" in cycle[1]["why"][str(winner)]
    record = resources["store"].competition_round("selection", "20260202")
    assert record.decided and record.winner_uid == winner and record.decided_epoch == 76


def test_a_winner_whose_hotkey_left_keeps_its_place_and_its_reward_follows_its_coldkey(tmp_path, tiny_model_dir):
    """After round 20260202's window, the random selector's uid is taken by a newcomer and its coldkey registers
    another hotkey. Under the rules as read (`intended`), its submission still counts in the round (as the live
    validator recorded it in the window), it still wins, and the reward goes to the uid its coldkey holds now; the
    live code's hand-over fails there, which the report says beside it."""
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import run_cycle, seed_demo_network
    from flock_pipeline.resources import build_resources

    home = tmp_path / "moved"
    (home / "models").mkdir(parents=True)
    home_with_model(home, tiny_model_dir)
    seed_demo_network(home, network="selection")
    games = json.loads((home / "competitions.json").read_text())
    games[0]["rules"] = "intended"  # the game as its rules read follows the winner (the live code cannot)
    (home / "competitions.json").write_text(json.dumps(games))
    demo = json.loads((home / "demo.json").read_text())
    resources = build_resources(home)
    demo["cycle"] = [6]
    (home / "demo.json").write_text(json.dumps(demo))
    run_cycle(home, resources, dg.DagsterInstance.ephemeral(), run_epoch)  # validation: evaluated, recorded
    chain = resources["chain"]
    state = json.loads((home / "chain.json").read_text())
    old = next(n for n in state["neurons"] if n["hotkey"] == "hk-random-selector")
    coldkey = old["coldkey"]
    old.update(hotkey="newcomer", coldkey="cold-newcomer")
    (home / "chain.json").write_text(json.dumps(state))
    moved = chain.register("hk-random-again", coldkey=coldkey)
    demo["cycle"] = [74]
    (home / "demo.json").write_text(json.dumps(demo))
    [entry] = run_cycle(home, resources, dg.DagsterInstance.ephemeral(), run_epoch)
    assert entry["weights"] == {str(moved.uid): 1.0}
    report = {m["hotkey"]: m for m in epoch_report_of(resources, 74)}
    assert report["hk-random-selector"]["status"] == "scored" and report["hk-random-selector"]["uid"] == old["uid"]
    assert f"the reward goes to uid {moved.uid}" in report["hk-random-selector"]["reason"]
    assert (f"live-492c7bb: keeps the burn uid (the previous weights): the winner's uid {old['uid']} holds another "
            "hotkey now") in report["hk-random-selector"]["reason"]
    record = resources["store"].competition_round("selection", "20260202")
    assert record.winner_uid == moved.uid


def epoch_report_of(resources, epoch):
    from flock_pipeline.demo import epoch_report

    return epoch_report(epoch, resources["store"])


def test_the_live_reading_of_files_through_the_pipeline(tmp_path, tiny_model_dir, monkeypatch):
    """Fact 2 end to end (datasets, plan, scores): under `live-492c7bb`, a blank line among a file's first 100
    physical lines makes the live trainer fail, so the submission is not trained and is scored at the benchmark loss
    2.60; a line that does not load after row 100 makes a file ineligible. The report says what `intended` decides
    for each."""
    import dagster as dg

    from flock_pipeline import demo as demo_module
    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import DemoMiner, epoch_report, run_cycle, seed_demo_network, selection_miners
    from flock_pipeline.resources import build_resources

    def with_two_more(seed=7, competition_id="1"):
        miners = selection_miners(seed, competition_id)
        used = {line for m in miners for line in m.data.splitlines()}
        free = [line for line in demo_module.rows_to_jsonl(demo_module.selection_pool(seed)).encode().splitlines()
                if line not in used]
        blank = b"\n".join(free[:50]) + b"\n\n" + b"\n".join(free[50:100]) + b"\n"
        unloadable = miners[-1].data + b"{not json\n"  # the late miner's 100 rows (it is no submission: late)
        return miners[:-1] + [DemoMiner("blank-line", "hk-blank-line", "blank/selection", blank),
                              DemoMiner("bad-tail", "hk-bad-tail", "tail/selection", unloadable), miners[-1]]

    monkeypatch.setattr(demo_module, "selection_miners", with_two_more)
    home = tmp_path / "reading"
    (home / "models").mkdir(parents=True)
    home_with_model(home, tiny_model_dir)
    seed_demo_network(home, network="selection")
    doc = json.loads((home / "demo.json").read_text())
    doc["cycle"] = [6, 74]
    (home / "demo.json").write_text(json.dumps(doc))
    resources = build_resources(home)
    run_cycle(home, resources, dg.DagsterInstance.ephemeral(), run_epoch)
    report = {m["label"]: m for m in epoch_report(74, resources["store"], doc["labels"])}
    blank = report["blank-line"]
    assert (blank["status"], blank["eval_loss"], blank["rows_kept"]) == ("scored", 2.6, 0)
    assert ("scored at the benchmark loss 2.60: the live trainer fails on line 51 of its first 100 lines "
            "(a blank line)") in blank["reason"]
    tail = report["bad-tail"]
    assert tail["status"] == "ineligible"
    assert "the file does not load: line 101 is not valid JSON" in tail["reason"]
    # the winner is the same under both rule sets here: the random selector (2.60 is not among the 2 lowest)
    assert [m["label"] for m in report.values() if m["weight"] > 0] == ["random-selector"]
    plans = resources["store"].epoch_plans(74)
    assert plans["hk-blank-line"]["rule_views"]["intended"]["reason"] is None  # intended trains it: blank skipped
    assert plans["hk-bad-tail"]["rule_views"]["intended"]["reason"] is None
