"""The validator's own faults (device, model, eval set, a library) never become miners' failures, and nothing
recorded or published is lost to a run that did less."""

import json
import shutil

import dagster as dg
import pytest

from flock_pipeline.defs.epoch import EpochFailed, RunnerBusy, run_epoch, runner_lock
from flock_pipeline.demo import epoch_report, seed_demo_network
from flock_pipeline.resources import EvaluatorResource, LocalHubResource, ValidatorSettingsResource, build_resources
from flock_pipeline.store import CorpusRecord, EvalResultRecord, ShardRecord
from flock_pipeline.validator.faults import ValidatorFault
from flock_pipeline.errors import ResultsKept
from flock_pipeline.validator.corpus import build_epoch_corpus
from flock_pipeline.validator.scoring import compute_epoch_scores
from flock_pipeline_tests.homes import home_with_model

EVAL_REPO = "flock/eval-atlas"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    """A demo home after one whole epoch: (home, epoch, its report by hotkey)."""
    home = tmp_path_factory.mktemp("faults") / "home"
    (home / "models").mkdir(parents=True)
    home_with_model(home, tiny_model_dir)
    epoch = seed_demo_network(home)
    resources = build_resources(home)
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    return home, epoch, _state(resources, epoch)


def _state(resources: dict, epoch: int) -> dict:
    """Everything recorded or published for an epoch that a bad run must not change."""
    store = resources["store"]
    return {"report": {m["hotkey"]: (m["status"], m["eval_loss"], m["weight"])
                       for m in epoch_report(epoch, store)},
            "results": [(r.cache_key, r.status, r.eval_loss) for r in store.rows(EvalResultRecord)],
            "corpus": [(r.rows, r.sha256, r.jsonl_path) for r in store.rows(CorpusRecord, epoch=epoch)],
            "weights": resources["chain"].weights_history("validator")}


def _same(before: dict, after: dict) -> None:
    assert after["report"] == before["report"]
    assert after["results"] == before["results"]
    assert after["corpus"] == before["corpus"]
    assert after["weights"] == before["weights"]


@pytest.fixture
def copy(scored, tmp_path):
    home, epoch, state = scored
    target = tmp_path / "home"
    shutil.copytree(home, target)
    return target, epoch, state


def test_a_missing_device_stops_the_epoch_and_leaves_every_result_untouched(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    cuda = {**resources, "evaluator": EvaluatorResource(device="cuda", cache_dir=str(home / "models"))}
    with pytest.raises(EpochFailed, match="FLOCK_DEVICE=cuda but this machine has"):
        run_epoch(epoch, cuda, dg.DagsterInstance.ephemeral())
    _same(before, _state(resources, epoch))
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())  # fixed: the next run scores them as before
    _same(before, _state(resources, epoch))


def test_a_corrupted_base_model_stops_the_epoch_and_a_restored_one_scores_normally(copy):
    home, epoch, before = copy
    weights = next((home / "models").rglob("model.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])  # truncated
    resources = build_resources(home)
    with pytest.raises(EpochFailed, match="do not match their recorded digest"):
        run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    _same(before, _state(resources, epoch))
    weights.write_bytes(original)
    run_epoch(epoch, build_resources(home), dg.DagsterInstance.ephemeral())
    _same(before, _state(resources, epoch))


def test_an_unloadable_eval_set_stops_the_epoch_before_any_miner_is_judged(copy):
    home, epoch, before = copy
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    good = hub.download(EVAL_REPO, hub.head(EVAL_REPO))
    hub.upload(EVAL_REPO, b"this is not an eval set\n", private=False)
    resources = build_resources(home)
    chain = resources["chain"]
    chain.advance(chain.epoch_start(epoch + 1) - chain.current_block())
    with pytest.raises(EpochFailed, match="eval set flock/eval-atlas@.* is invalid"):
        run_epoch(epoch + 1, resources, dg.DagsterInstance.ephemeral())
    store = resources["store"]
    assert store.rows(ShardRecord, epoch=epoch + 1) == []
    _same(before, _state(resources, epoch))
    hub.upload(EVAL_REPO, good, private=False)  # fixed (a new revision of the same rows)
    chain.advance(chain.epoch_start(epoch + 2) - chain.current_block())
    run_epoch(epoch + 2, resources, dg.DagsterInstance.ephemeral())
    later = {m["hotkey"]: (m["status"], m["eval_loss"]) for m in epoch_report(epoch + 2, store)}
    assert later == {hk: (status, loss) for hk, (status, loss, _) in before["report"].items()}


def test_every_miner_failing_the_same_way_is_the_validators_fault(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    store = resources["store"]
    failed = "RuntimeError: a broken library"
    store.drop_eval_results([r.cache_key for r in store.rows(EvalResultRecord)
                                 if r.shard_hash != "base-model"])
    from flock_pipeline.validator.evaluation import shard_cache_key

    keys = []
    for shard in store.epoch_shards(epoch):
        if shard.status == "eligible":
            setup = store.epoch_competition(epoch, shard.competition)
            key = shard_cache_key(shard, setup.eval_revision, resources["evaluator"], resources["settings"])
            keys.append(key)
            store.record_eval_result(EvalResultRecord(
                cache_key=key, shard_hash=shard.shard_hash, status="failed", final=True, error=failed,
                eval_loss=None, attempts=3))
    assert len(keys) >= 2
    with pytest.raises(ValidatorFault, match=r"all 3 evaluated miners failed with the same error"):
        compute_epoch_scores(epoch, resources["evaluator"], resources["settings"], store, resources["hub"],
                             resources["chain"])
    remaining = [r for r in store.rows(EvalResultRecord) if r.status == "failed"]
    assert remaining == []  # dropped: the next run evaluates them again
    assert {hk: v[0] for hk, v in _state(resources, epoch)["report"].items()} == \
        {hk: v[0] for hk, v in before["report"].items()}  # the recorded scores stay


def test_scores_are_never_replaced_by_a_run_that_scored_fewer_miners(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    store = resources["store"]
    store.drop_eval_results([r.cache_key for r in store.rows(EvalResultRecord)
                                 if r.shard_hash != "base-model" and r.eval_loss < 1.9])
    args = (epoch, resources["evaluator"], resources["settings"], store, resources["hub"], resources["chain"])
    with pytest.raises(ResultsKept, match="already has 2 scored miner"):
        compute_epoch_scores(*args)
    assert _state(resources, epoch)["report"] == before["report"]
    replacing = ValidatorSettingsResource(corpus_dir=str(home / "corpus"), replace_results=True)
    frame = compute_epoch_scores(epoch, resources["evaluator"], replacing, store, resources["hub"],
                                 resources["chain"])
    assert sum(r.status == "scored" for r in frame) == 1  # with the explicit flag


def test_a_smaller_corpus_never_replaces_a_published_release(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    store = resources["store"]
    published_rows, _, published_path = before["corpus"][0]
    text = open(published_path, "rb").read()
    # the best miner's evaluation failed: only honest-fair's rows (49, not 100) would be left
    rows = [r.replace(status="failed") if r.hotkey == "hk-honest-good" else r for r in store.scores(epoch)]
    store.record_scores(epoch, rows)
    with pytest.raises(ResultsKept, match="published corpus has"):
        build_epoch_corpus(epoch, resources["settings"], store)
    assert _state(resources, epoch)["corpus"] == before["corpus"]
    replacing = ValidatorSettingsResource(corpus_dir=str(home / "corpus"), replace_results=True)
    row = build_epoch_corpus(epoch, replacing, store)
    assert row.jsonl_path != published_path and row.rows < published_rows  # written beside
    assert open(published_path, "rb").read() == text  # the earlier release is untouched
    import os
    import stat

    assert stat.S_IMODE(os.stat(row.jsonl_path).st_mode) & 0o044 == 0o044  # readable by other users


def test_rebuilding_the_same_corpus_rewrites_nothing(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    published_path = before["corpus"][0][2]
    mtime = (home / "corpus").stat().st_mtime_ns, open(published_path, "rb").read()
    row = build_epoch_corpus(epoch, resources["settings"], resources["store"])
    assert row.jsonl_path == published_path
    assert ((home / "corpus").stat().st_mtime_ns, open(published_path, "rb").read()) == mtime


def test_a_second_runner_on_the_same_home_is_refused(copy):
    home, epoch, before = copy
    resources = build_resources(home)
    with runner_lock(home):
        with pytest.raises(RunnerBusy, match="another epoch runner"):
            run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    _same(before, _state(resources, epoch))


def test_the_demo_refuses_a_home_an_epoch_runner_is_working_on(copy, capsys):
    """`flock demo` takes the epoch runner's lock: it never wipes the store, corpus or chain under a running epoch."""
    from flock_pipeline.cli import main

    home, epoch, before = copy
    (home / ".flock-demo").write_text("seeded by flock demo\n")  # a demo's home: the demo would wipe it
    resources = build_resources(home)
    with runner_lock(home):
        assert main(["demo", "--no-run", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "another epoch runner" in err and "nothing was changed" in err and err.count("\n") == 1
    _same(before, _state(resources, epoch))
    assert main(["demo", "--no-run", "--home", str(home)]) == 0  # once the runner is gone, the demo seeds it


def test_dataset_verdicts_are_remade_when_the_limits_change(copy):
    from flock_pipeline.validator.datasets import fetch_miner_dataset

    home, epoch, _ = copy
    resources = build_resources(home)
    strict = ValidatorSettingsResource(corpus_dir=str(home / "corpus"), limits={"max_line_bytes": 20})
    args = (resources["hub"], resources["evaluator"])
    wrong = fetch_miner_dataset("hk-honest-good", *args, strict, resources["store"], epoch=epoch)
    assert wrong.status == "invalid" and not wrong.cached
    right = fetch_miner_dataset("hk-honest-good", *args, resources["settings"], resources["store"], epoch=epoch)
    assert right.status == "ok" and not right.cached  # re-decided under the corrected limits, not served invalid
    again = fetch_miner_dataset("hk-honest-good", *args, resources["settings"], resources["store"], epoch=epoch)
    assert again.cached


def test_the_demo_refuses_a_home_it_did_not_create_and_deletes_nothing(tmp_path, monkeypatch, capsys):
    from flock_pipeline.cli import main

    home = tmp_path / "validator"
    home.mkdir()
    (home / "warehouse.duckdb").write_bytes(b"a validator's results")
    (home / "corpus").mkdir()
    (home / "corpus" / "sft.jsonl").write_text("published rows\n")
    assert main(["demo", "--home", str(home)]) == 2
    assert "did not create" in capsys.readouterr().err
    assert (home / "warehouse.duckdb").read_bytes() == b"a validator's results"
    assert (home / "corpus" / "sft.jsonl").read_text() == "published rows\n"
    monkeypatch.setenv("FLOCK_NETWORK", "test")
    assert main(["demo", "--home", str(tmp_path / "fresh")]) == 2
    assert "embedded local network only" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    monkeypatch.delenv("FLOCK_NETWORK")
    assert main(["demo", "--home", str(home), "--force", "--no-run"]) == 0  # explicitly: wiped and seeded
    assert not (home / "corpus" / "sft.jsonl").exists() and (home / ".flock-demo").is_file()
    assert main(["demo", "--home", str(home), "--no-run"]) == 0  # its own home: no --force needed


def test_miner_validate_exits_2_when_it_cannot_load_the_eval_set(tmp_path, monkeypatch, capsys):
    from flock_pipeline.cli import main

    monkeypatch.setenv("FLOCK_HOME", str(tmp_path / "empty"))
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    assert main(["miner", "validate", str(data)]) == 2
    err = capsys.readouterr().err
    assert "cannot load the eval set flock/eval-atlas" in err and err.count("\n") == 1
    assert main(["miner", "validate", str(data), "--no-eval-check", "--json"]) == 0


def test_bad_entries_on_the_embedded_hub_make_only_their_miner_unavailable(flock_home, tmp_path):
    """A FIFO, a directory, a symlink out of the hub (to a file of valid rows, and to /dev/urandom) and a garbled repo
    record: each of those miners ends "unavailable" with the reason, quickly; the honest miner's dataset is fine."""
    import os
    import threading
    import time

    from flock_pipeline.validator.commitments import snapshot_commitments
    from flock_pipeline.validator.datasets import fetch_miner_dataset

    epoch = seed_demo_network(flock_home)
    resources = build_resources(flock_home)
    hub = LocalHubResource(root=str(flock_home / "hub"), as_owner=True)
    snapshot_commitments(epoch, resources["chain"], resources["hub"], resources["settings"], resources["store"])
    commits = {c.hotkey: c for c in resources["store"].epoch_commitments(epoch)}

    def data(hotkey):
        c = commits[hotkey]
        return flock_home / "hub" / c.repo / "revisions" / c.revision / "data.jsonl"

    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(hub.download("alice/atlas-facts", hub.head("alice/atlas-facts")))
    damage = {"hk-honest-fair": ("fifo", "not a regular file"), "hk-weak-offdomain": ("dir", "not a regular file"),
              "hk-malformed": ("outside", "symbolic link"), "hk-empty": ("urandom", "symbolic link"),
              "hk-copier": ("record", "garbled")}
    for hotkey, (kind, _) in damage.items():
        path = data(hotkey)
        if kind == "record":
            (path.parents[2] / "repo.json").write_bytes(b'{"private": fal')
            continue
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        else:
            os.symlink(outside if kind == "outside" else "/dev/urandom", path)
    outcomes = {}

    def fetch_all():
        for hotkey in commits:
            outcomes[hotkey] = fetch_miner_dataset(hotkey, resources["hub"], resources["evaluator"],
                                                   resources["settings"], resources["store"], epoch=epoch)

    started = time.monotonic()
    worker = threading.Thread(target=fetch_all, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a bad hub entry blocked the epoch"
    assert time.monotonic() - started < 60
    assert outcomes["hk-honest-good"].status == "ok"
    for hotkey, (_, reason) in damage.items():
        assert outcomes[hotkey].status == "unavailable" and reason in outcomes[hotkey].reason, outcomes[hotkey]


def test_a_winner_whose_uid_changed_hands_before_scoring_gets_nothing(copy):
    """uid 1 (the winner) handed to a new hotkey while the miners were evaluated: the epoch's scores give it 0 with
    the reason, and the weight goes to the miners whose uids still hold their hotkeys."""
    home, epoch, _ = copy
    resources = build_resources(home)
    state = json.loads((home / "chain.json").read_text())
    winner = next(n for n in state["neurons"] if n["hotkey"] == "hk-honest-good")
    winner.update(hotkey="hk-newcomer", coldkey="cold-newcomer")
    (home / "chain.json").write_text(json.dumps(state))
    replacing = ValidatorSettingsResource(corpus_dir=str(home / "corpus"), replace_results=True)
    scores = {r.hotkey: r for r in compute_epoch_scores(epoch, resources["evaluator"], replacing, resources["store"],
                                                         resources["hub"], resources["chain"])}
    moved = scores["hk-honest-good"]
    assert (moved.status, moved.weight) == ("uid_changed", 0.0)
    assert f"uid {winner['uid']} is held by another hotkey (hk-newcomer)" in moved.reason
    assert scores["hk-honest-fair"].status == "scored" and scores["hk-honest-fair"].weight == pytest.approx(1.0)


def test_one_error_that_every_miner_hits_alike_is_the_validators(copy, monkeypatch):
    """A recipe or optimizer error that every miner of a batch hits the same way (here: the optimizer refusing the
    learning rate) stops the epoch as a validator fault; nothing is recorded against the miners, and once it is
    fixed the next run scores them."""
    from flock_pipeline.core.objectives import SftObjective

    home, epoch, before = copy
    resources = build_resources(home)
    store = resources["store"]
    store.drop_eval_results([r.cache_key for r in store.rows(EvalResultRecord)])  # every miner is evaluated again

    def refused(self, base, train_sets, eval_rows, recipe, trainer):
        return [ValueError("Invalid learning rate: -0.0002") for _ in train_sets]

    monkeypatch.setattr(SftObjective, "evaluate_many", refused)
    with pytest.raises(EpochFailed, match="failed with the same error, so it is the validator's"):
        run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    assert store.rows(EvalResultRecord) == []  # nothing against any miner
    monkeypatch.undo()
    run_epoch(epoch, resources, dg.DagsterInstance.ephemeral())
    report = {m["hotkey"]: m for m in epoch_report(epoch, store)}
    assert report["hk-honest-good"]["status"] == "scored" and report["hk-honest-good"]["weight"] > 0.9
