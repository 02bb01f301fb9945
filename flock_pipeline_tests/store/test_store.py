"""The store's behaviour, the same tests on DuckDB and on a real PostgreSQL server (`store_url` is parametrised)."""

import math
import multiprocessing
from datetime import datetime

import pytest

from flock_pipeline.store import (
    SCHEMA_VERSION, CommitmentRecord, CompetitionRoundRecord, CorpusRecord, DatasetRecord, DatasetRowRecord,
    DedupPlanRecord, EpochCompetitionRecord, EpochRecord, EvalResultRecord, ScoreRecord, ShardRecord, ShardRowRecord,
    Store, StoreURLError, WeightSubmissionRecord, parse_url)
from flock_pipeline.store.migrations import MIGRATIONS, statements

T0 = datetime(2026, 12, 1, 12, 0, 0)


def _commitment(epoch: int, hotkey: str, uid: int, **kw) -> CommitmentRecord:
    base = dict(epoch=epoch, hotkey=hotkey, uid=uid, repo=f"ns/{hotkey}", competition_id="1", revision="a" * 40,
                commit_block=10 + uid, registration_block=1, status="ok", reason=None, competition="curation",
                coldkey=f"ck-{hotkey}")
    base.update(kw)
    return CommitmentRecord(**base)


def _score(epoch: int, hotkey: str, uid: int, weight: float, **kw) -> ScoreRecord:
    base = dict(epoch=epoch, hotkey=hotkey, uid=uid, status="scored", reason=None, eval_loss=1.5, score=0.5,
                weight=weight, competition="curation", competition_weight=weight)
    base.update(kw)
    return ScoreRecord(**base)


def _result(key: str, loss: float | None = 1.25, **kw) -> EvalResultRecord:
    base = dict(cache_key=key, shard_hash="s" + key, status="ok" if loss is not None else "failed", final=True,
                error=None if loss is not None else "RuntimeError: boom", eval_loss=loss,
                per_row_losses=(1.0, 1.5) if loss is not None else (), train_losses=(2.0, 1.0, 0.5),
                train_tokens=100, eval_tokens=50, seconds=1.5, provenance={"base_model": "tiny", "recipe_hash": "r"},
                attempts=1, created_at=T0)
    base.update(kw)
    return EvalResultRecord(**base)


def test_every_record_round_trips(store_url):
    store = Store(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    epoch = EpochRecord(7, 700, "flock/eval", "e" * 40, T0)
    commitments = [_commitment(7, "hk-a", 1), _commitment(7, "hk-b", 2, status="rejected", reason="late",
                                                         competition=None, coldkey=None, registration_block=None)]
    store.record_epoch(epoch, commitments)
    assert store.epoch_info(7) == epoch
    assert store.epoch_commitments(7) == commitments
    assert store.latest_epoch() == 7 and store.latest_epoch_of("hk-b") == 7 and store.latest_epoch_of("x") is None
    assert store.miner_commitment("hk-a") == commitments[0]

    dataset = DatasetRecord("ns/hk-a", "a" * 40, "ok", None, 1234, "f" * 64, 3, 2, 2,
                            ({"line": 3, "reason": "bad role"},), T0, "vk1")
    rows = [DatasetRowRecord("ns/hk-a", "a" * 40, i, i + 1, f"h{i}", '{"m": 1}', 12, f"r{i}") for i in range(2)]
    store.record_dataset(dataset, rows)
    assert store.dataset("ns/hk-a", "a" * 40) == dataset and store.dataset_rows("ns/hk-a", "a" * 40) == rows
    assert store.hotkeys_with_dataset(7, "vk1") == {"hk-a"} and store.hotkeys_with_dataset(7, "other") == set()
    assert store.epoch_dataset_verdicts(7)["hk-a"].rejected == ({"line": 3, "reason": "bad role"},)
    assert [r.row_hash for r in store.epoch_used_rows(7)["hk-a"]] == ["h0", "h1"]
    assert store.first_commit_blocks(7) == {"hk-a": {"h0": 11, "h1": 11}}
    assert store.epoch_row_json(7, ["hk-a"]) == {"hk-a": ['{"m": 1}', '{"m": 1}']}

    plan = DedupPlanRecord(7, "fp", "hk-a", {"rows_in": 2, "kept_indices": [0, 1], "reason": None})
    store.record_dedup_plans(7, [plan])
    assert store.dedup_plans(7, "fp") == [plan] and store.dedup_plans(7, "other") == []

    shard = ShardRecord(7, "hk-a", 1, "ns/hk-a", "a" * 40, 11, "eligible", None, 2, 2, 0, 0, 0, "sh", "curation")
    shard_rows = [ShardRowRecord("sh", i, f"h{i}", '{"m": 1}') for i in range(2)]
    store.record_shard(shard, shard_rows)
    assert store.epoch_shards(7) == [shard] and store.shard_rows("sh") == shard_rows
    setup = EpochCompetitionRecord(7, "curation", "curation", 1.0, "flock/eval", "c" * 40, "epoch", "scoring", 700)
    store.record_epoch_competitions(7, [setup])
    assert store.epoch_competitions(7) == [setup] and store.epoch_competition(7, "curation") == setup
    found = store.shard_to_evaluate("hk-a")
    assert found.shard == shard and (found.eval_repo, found.eval_revision) == ("flock/eval", "c" * 40)

    ok, failed = _result("k1"), _result("k2", loss=None, final=False, attempts=2)
    store.record_eval_result(ok)
    store.record_eval_result(failed)
    assert store.eval_result("k1") == ok and store.eval_result("k2") == failed
    assert store.final_eval_keys(["k1", "k2", "k3"]) == {"k1"}

    scores = [_score(7, "hk-a", 1, 1.0), _score(7, "hk-b", 2, 0.0, status="rejected", eval_loss=math.nan)]
    store.record_scores(7, scores)
    got = store.scores(7)
    assert got[0] == scores[0] and math.isnan(got[1].eval_loss) and got[1].replace(eval_loss=0) == \
        scores[1].replace(eval_loss=0)
    assert store.latest_score("hk-a") == scores[0]
    sent = WeightSubmissionRecord(7, True, 705, "ok", (1, 2), (65535, 0), None, T0)
    store.record_weight_submission(sent)
    assert store.weight_submission(7) == sent
    corpus = CorpusRecord(7, 2, 1, "z" * 64, "/c/x.jsonl", "/c/x.parquet", T0)
    store.record_corpus(corpus)
    assert store.corpus(7) == corpus
    rnd = CompetitionRoundRecord("selection", "20261201", "flock/pool", "p" * 40, 7, contenders='[{"uid": 1}]')
    store.record_round(rnd)
    assert store.competition_round("selection", "20261201") == rnd
    assert store.rounds_before("selection", "20261202") == [rnd] and store.rounds_before("selection", "20261201") == []
    report = {r.hotkey: r for r in store.epoch_report_rows(7)}
    assert report["hk-a"].rows_kept == 2 and report["hk-a"].weight == 1.0 and report["hk-b"].rows_kept is None


def test_reads_of_an_empty_store(store_url):
    store = Store(store_url)
    assert store.epoch_info(1) is None and store.latest_epoch() is None and store.epoch_commitments(1) == []
    assert store.scores(1) == [] and store.previous_weights(1) == {} and store.weight_submission(1) is None
    assert store.final_eval_keys([]) == set() and store.shard_to_evaluate("x") is None


def test_set_writes_are_scoped_idempotent_and_transactional(store_url):
    store = Store(store_url)
    store.record_scores(1, [_score(1, "a", 1, 1.0)])
    store.record_scores(2, [_score(2, "a", 1, 0.5), _score(2, "b", 2, 0.5)])
    store.record_scores(1, [_score(1, "a", 1, 0.25)])
    store.record_scores(1, [_score(1, "a", 1, 0.25)])  # a retried step: replaces, never duplicates
    assert [r.weight for r in store.scores(1)] == [0.25] and len(store.scores(2)) == 2
    assert store.previous_weights(2) == {1: 0.25} and store.previous_weights(1) == {}
    assert store.previous_weights(3, "curation") == {1: 0.5, 2: 0.5}
    with pytest.raises(Exception):  # noqa: B017 - each backend's driver raises its own error type: the second
        # row's uid is not a number, so the whole write fails ...
        store.record_scores(1, [_score(1, "a", 1, 0.75), _score(1, "c", "not a uid", 0.25)])
    assert [r.weight for r in store.scores(1)] == [0.25]  # ... and its delete was rolled back
    for _ in range(2):
        store.record_epoch(EpochRecord(1, 10, "r", "v", T0), [_commitment(1, "a", 1), _commitment(1, "b", 2)])
    assert len(store.epoch_commitments(1)) == 2
    store.drop_eval_results([])
    store.record_eval_result(_result("k"))
    store.record_eval_result(_result("k", loss=2.0))
    assert store.eval_result("k").eval_loss == 2.0 and len(store.rows(EvalResultRecord)) == 1
    store.drop_eval_results(["k"])
    assert store.rows(EvalResultRecord) == []
    with pytest.raises(ValueError, match="no column"):
        store.rows(EvalResultRecord, nope=1)


@pytest.mark.parametrize("upto", [1, 2])
def test_an_older_database_is_upgraded_in_place(store_url, upto):
    dialect, target = parse_url(store_url)
    # The old schema through a bare connection, bypassing the store's own migration on first use.
    if dialect == "duckdb":
        import duckdb

        con = duckdb.connect(target)
    else:
        import psycopg

        con = psycopg.connect(target, autocommit=True)
    for m in MIGRATIONS[:upto]:
        for sql in statements(m, dialect):
            con.execute(sql)
    con.execute("INSERT INTO win_rates (epoch, hotkey, uid, status, reason, eval_loss, win_rate, weight) "
                "VALUES (3, 'old', 4, 'scored', NULL, 1.1, 1.0, 1.0)")
    con.execute("INSERT INTO commitments (epoch, hotkey, uid, repo, competition_id, revision, commit_block, "
                "registration_block, status, reason) VALUES (3, 'old', 4, 'ns/old', '1', 'aaa', 5, 1, 'ok', NULL)")
    con.close()
    store = Store(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    [old] = store.scores(3)
    assert old.hotkey == "old" and old.competition is None and old.competition_weight is None  # NULL: curation
    assert store.previous_weights(4, "curation") == {4: 1.0}
    assert store.epoch_commitments(3)[0].coldkey is None
    store.record_scores(4, [_score(4, "new", 5, 1.0)])  # the new columns are writable
    assert store.scores(4)[0].competition == "curation"
    versions = {r["version"] for r in store._backend().read("SELECT version FROM schema_migrations")}
    assert versions == {m.version for m in MIGRATIONS}


def _writer(url: str, worker: int, n: int, barrier) -> None:
    store = Store(url)
    barrier.wait()
    for i in range(n):
        store.record_eval_result(_result(f"w{worker}-{i}", loss=float(worker * 100 + i)))
        store.record_eval_result(_result(f"shared-{i % 4}", loss=float(i % 4)))  # every writer: same 4 keys
    store.record_scores(9, [_score(9, f"hk-{j}", j, 0.25, score=float(worker)) for j in range(4)])
    store.record_epoch(EpochRecord(9, 90, "r", "v", T0), [_commitment(9, f"hk-{j}", j) for j in range(4)])


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(store_url):
    """8 processes recording results at once (on DuckDB they take turns for the file lock)."""
    workers, n = 8, 12 if store_url.startswith("postgresql") else 4
    Store(store_url).schema_version()  # created before the race (the race itself is in the next test)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(store_url, w, n, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * workers
    store = Store(store_url)
    results = store.rows(EvalResultRecord)
    keys = [r.cache_key for r in results]
    assert len(keys) == len(set(keys)) == workers * n + 4
    for w in range(workers):
        for i in range(n):
            assert store.eval_result(f"w{w}-{i}").eval_loss == float(w * 100 + i)
    scores = store.scores(9)
    assert len(scores) == 4 and len({s.score for s in scores}) == 1  # one writer's whole set, never a mix
    assert len(store.epoch_commitments(9)) == 4


def _open(url: str, barrier) -> None:
    barrier.wait()
    assert Store(url).schema_version() == SCHEMA_VERSION


def test_processes_opening_a_new_postgres_database_at_once_migrate_it_once(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open, args=(postgres_url, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    rows = Store(postgres_url)._backend().read("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]


def test_duckdb_waits_for_another_writer(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "w.duckdb"
    store = Store(str(path))
    store.latest_epoch()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(2)"),
        str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    assert store.epoch_info(1) is None  # blocks until the other process lets go, then answers
    assert time.monotonic() - started > 0.5
    holder.wait(timeout=10)


@pytest.mark.parametrize("url, problem", [
    ("mysql://db/x", "use duckdb:"), ("postgresql://host:5432", "name the database"), ("duckdb://", "file path"),
    ("", "empty")])
def test_a_store_url_names_a_supported_database(url, problem):
    with pytest.raises(StoreURLError, match=problem):
        parse_url(url)


def test_a_password_never_appears_in_an_error():
    with pytest.raises(StoreURLError) as err:
        parse_url("postgresql://flock:s3cret@host:5432")
    assert "s3cret" not in str(err.value)
