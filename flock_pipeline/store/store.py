"""The store: every read and write of the pipeline's records, and the only place that holds SQL.

Writes are idempotent: a record replaces the one with the same key, and a step that writes a set (an epoch's
commitments, a dataset's rows, a shard with its rows) replaces the whole set in one transaction, so a retried or
repeated step never duplicates anything and a failed one leaves what was there. Reads return records
(`flock_pipeline.store.records`) or plain values.
"""

from __future__ import annotations

from collections.abc import Mapping

from dataclasses import dataclass
from collections.abc import Iterable

from flock_pipeline.store.backends import Backend, Transaction, backend_for
from flock_pipeline.store.records import (
    RECORD_OF_TABLE, CommitmentRecord, CompetitionRoundRecord, CorpusRecord, CorpusValueRecord, DatasetRecord,
    DatasetRowRecord, EvalObservationRecord,
    DedupPlanRecord, EpochCompetitionRecord, EpochRecord, EvalResultRecord, Record, ScoreDetailRecord, ScoreRecord,
    ShardRecord,
    ShardRowRecord, WeightSubmissionRecord, decode_json)


@dataclass(frozen=True)
class UsedRow:
    """A used row of a miner's dataset as dedup sees it (no JSON: that is read only when needed)."""
    idx: int
    row_hash: str
    line: int
    raw_hash: str | None


@dataclass(frozen=True)
class DatasetVerdict:
    status: str
    reason: str | None
    rejected: tuple
    facts: dict | None = None


@dataclass(frozen=True)
class ShardToEvaluate:
    """A recorded shard with the eval set its competition used in that epoch."""
    shard: ShardRecord
    eval_repo: str
    eval_revision: str


@dataclass(frozen=True)
class ReportRow:
    """One line of an epoch's report: a commitment and/or a scored uid."""
    uid: int
    hotkey: str
    score_status: str | None
    commitment_status: str | None
    reason: str | None
    rows_kept: int | None
    eval_loss: float | None
    score: float | None
    weight: float | None
    competition: str | None
    explanation: str | None = None


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class StoreOps:
    """The typed interface; `_backend()` supplies the database (DuckDB or PostgreSQL)."""

    def _backend(self) -> Backend:
        raise NotImplementedError

    # -- generic ---------------------------------------------------------------------------------------------

    def _select(self, cls: type[Record], where: str = "", params: Iterable = (), order: str = "",
                limit: int | None = None) -> list:
        sql = f"SELECT {', '.join(cls.columns())} FROM {cls.TABLE}"
        sql += f" WHERE {where}" if where else ""
        sql += f" ORDER BY {order}" if order else ""
        sql += f" LIMIT {int(limit)}" if limit is not None else ""
        return [cls.from_row(r) for r in self._backend().read(sql, list(params))]

    def _one(self, cls: type[Record], where: str, params: Iterable, order: str = ""):
        rows = self._select(cls, where, params, order, limit=1)
        return rows[0] if rows else None

    @staticmethod
    def _replace(tx: Transaction, cls: type[Record], scope: dict, records: list[Record]) -> None:
        """Delete the rows of `cls`'s table matching `scope` (column -> value, or -> list of values) and insert
        `records`, under the scope's lock."""
        tx.lock(f"{cls.TABLE}:" + "|".join(f"{k}={v}" for k, v in sorted(scope.items())
                                            if not isinstance(v, (list, tuple, set, frozenset))))
        clauses, params = [], []
        for column, value in scope.items():
            if isinstance(value, (list, tuple, set, frozenset)):
                value = sorted(value)
                if not value:
                    clauses.append("FALSE")
                    continue
                clauses.append(f"{column} IN ({_marks(len(value))})")
                params.extend(value)
            else:
                clauses.append(f"{column} = ?")
                params.append(value)
        tx.execute(f"DELETE FROM {cls.TABLE} WHERE {' AND '.join(clauses)}", params)
        columns = cls.columns()
        tx.executemany(f"INSERT INTO {cls.TABLE} ({', '.join(columns)}) VALUES ({_marks(len(columns))})",
                       [r.values() for r in records])

    def _put(self, record: Record) -> None:
        with self._backend().transaction() as tx:
            self._replace(tx, type(record), {k: getattr(record, k) for k in record.KEY}, [record])

    def session(self):
        """A block of store operations on one open connection (see `Backend.session`)."""
        return self._backend().session()

    def released(self):
        """Inside a session: free the database for other processes during a long computation."""
        return self._backend().released()

    def rows(self, cls: type[Record], **equals) -> list:
        """Every record of `cls` whose columns equal `equals` (for reports, tools and tests), in key order."""
        unknown = set(equals) - set(cls.columns())
        if unknown:
            raise ValueError(f"{cls.TABLE} has no column(s) {', '.join(sorted(unknown))}")
        where = " AND ".join(f"{k} = ?" for k in equals)
        return self._select(cls, where, list(equals.values()), order=", ".join(cls.KEY))

    def schema_version(self) -> int:
        return self._backend().schema_version()

    # -- epochs and commitments ------------------------------------------------------------------------------

    def record_epoch(self, epoch: EpochRecord, commitments: list[CommitmentRecord]) -> None:
        """An epoch's opening block and eval set with every commitment read at it, replacing any earlier ones."""
        with self._backend().transaction() as tx:
            self._replace(tx, EpochRecord, {"epoch": epoch.epoch}, [epoch])
            self._replace(tx, CommitmentRecord, {"epoch": epoch.epoch}, commitments)

    def epoch_info(self, epoch: int) -> EpochRecord | None:
        return self._one(EpochRecord, "epoch = ?", [epoch])

    def latest_epoch(self) -> int | None:
        rows = self._backend().read("SELECT max(epoch) AS e FROM epochs")
        return None if rows[0]["e"] is None else int(rows[0]["e"])

    def epoch_commitments(self, epoch: int) -> list[CommitmentRecord]:
        return self._select(CommitmentRecord, "epoch = ?", [epoch], "commit_block, uid, hotkey")

    def miner_commitment(self, hotkey: str, epoch: int | None = None) -> CommitmentRecord | None:
        """The hotkey's recorded commitment in `epoch` (default: the latest epoch it appears in)."""
        if epoch is None:
            return self._one(CommitmentRecord, "hotkey = ?", [hotkey], "epoch DESC")
        return self._one(CommitmentRecord, "hotkey = ? AND epoch = ?", [hotkey, epoch])

    def latest_epoch_of(self, hotkey: str) -> int | None:
        rows = self._backend().read("SELECT max(epoch) AS e FROM commitments WHERE hotkey = ?", [hotkey])
        return None if rows[0]["e"] is None else int(rows[0]["e"])

    # -- competitions and rounds ---------------------------------------------------------------------------

    def record_epoch_competitions(self, epoch: int, records: list[EpochCompetitionRecord]) -> None:
        with self._backend().transaction() as tx:
            self._replace(tx, EpochCompetitionRecord, {"epoch": epoch}, records)

    def epoch_competitions(self, epoch: int) -> list[EpochCompetitionRecord]:
        """The competitions an epoch ran, with each one's eval set (revision) and round."""
        return self._select(EpochCompetitionRecord, "epoch = ?", [epoch], "competition")

    def epoch_competition(self, epoch: int, competition: str) -> EpochCompetitionRecord | None:
        return self._one(EpochCompetitionRecord, "epoch = ? AND competition = ?", [epoch, competition])

    def record_round(self, record: CompetitionRoundRecord) -> None:
        self._put(record)

    def competition_round(self, competition: str, round_id: str) -> CompetitionRoundRecord | None:
        return self._one(CompetitionRoundRecord, "competition = ? AND round_id = ?", [competition, round_id])

    def rounds_before(self, competition: str, round_id: str) -> list[CompetitionRoundRecord]:
        """The competition's recorded rounds before `round_id`, newest first."""
        return self._select(CompetitionRoundRecord, "competition = ? AND round_id < ?", [competition, round_id],
                            "round_id DESC")

    def round_submission(self, competition: str, round_id: str, hotkey: str,
                         before_epoch: int) -> CommitmentRecord | None:
        """The hotkey's accepted commitment in an earlier epoch of a daily round (uid, coldkey, registration block)."""
        columns = ", ".join(f"c.{c}" for c in CommitmentRecord.columns())
        rows = self._backend().read(
            f"SELECT {columns} FROM commitments c JOIN epoch_competitions ec ON ec.epoch = c.epoch "
            "AND ec.competition = c.competition WHERE c.competition = ? AND ec.round_id = ? AND c.hotkey = ? "
            "AND c.status = 'ok' AND c.epoch < ? ORDER BY c.epoch DESC LIMIT 1",
            [competition, round_id, hotkey, before_epoch])
        return CommitmentRecord.from_row(rows[0]) if rows else None

    # -- datasets --------------------------------------------------------------------------------------------

    def record_dataset(self, dataset: DatasetRecord, rows: list[DatasetRowRecord] | None = None) -> None:
        """A dataset revision's verdict, and (when given) its used rows, replacing earlier ones, together."""
        with self._backend().transaction() as tx:
            if rows is not None:
                self._replace(tx, DatasetRowRecord, {"repo": dataset.repo, "revision": dataset.revision}, rows)
            self._replace(tx, DatasetRecord, {"repo": dataset.repo, "revision": dataset.revision}, [dataset])

    def dataset(self, repo: str, revision: str) -> DatasetRecord | None:
        return self._one(DatasetRecord, "repo = ? AND revision = ?", [repo, revision])

    def dataset_rows(self, repo: str, revision: str) -> list[DatasetRowRecord]:
        return self._select(DatasetRowRecord, "repo = ? AND revision = ?", [repo, revision], "idx")

    def hotkeys_with_dataset(self, epoch: int, verdict_key: str | Mapping[str | None, str] | None) -> set[str]:
        """Hotkeys of `epoch` whose committed dataset is recorded (under `verdict_key`'s limits and rules when
        given: one key, or the key of each competition by name, None standing for commitments recorded without
        one; an unavailable dataset counts whatever the key)."""
        rows = self._backend().read(
            "SELECT c.hotkey, c.competition, d.status, d.verdict_key FROM commitments c "
            "JOIN datasets d USING (repo, revision) WHERE c.epoch = ?", [epoch])
        if verdict_key is None:
            return {r["hotkey"] for r in rows}
        keys = verdict_key if isinstance(verdict_key, Mapping) else None
        return {r["hotkey"] for r in rows if r["status"] == "unavailable" or r["verdict_key"] == (
            verdict_key if keys is None else keys.get(r["competition"], keys.get(None)))}

    # -- dedup inputs and plans ------------------------------------------------------------------------------

    def epoch_dataset_verdicts(self, epoch: int) -> dict[str, DatasetVerdict]:
        """hotkey -> the verdict of its accepted commitment's dataset in `epoch`."""
        rows = self._backend().read(
            "SELECT c.hotkey, d.status, d.reason, d.rejected, d.facts FROM commitments c JOIN datasets d "
            "USING (repo, revision) WHERE c.epoch = ? AND c.status = 'ok'", [epoch])
        return {r["hotkey"]: DatasetVerdict(r["status"], r["reason"], decode_json(r["rejected"] or "[]"),
                                            decode_json(r["facts"]) if r["facts"] else None)
                for r in rows}

    def epoch_used_rows(self, epoch: int) -> dict[str, list[UsedRow]]:
        """hotkey -> its accepted commitment's used rows (hashes and lines, not JSON), in row order."""
        rows = self._backend().read(
            "SELECT c.hotkey, r.idx, r.row_hash, r.line, r.raw_hash FROM commitments c "
            "JOIN dataset_rows r USING (repo, revision) WHERE c.epoch = ? AND c.status = 'ok' "
            "ORDER BY c.hotkey, r.idx", [epoch])
        out: dict[str, list[UsedRow]] = {}
        for r in rows:
            out.setdefault(r["hotkey"], []).append(UsedRow(int(r["idx"]), r["row_hash"], int(r["line"]),
                                                            r["raw_hash"]))
        return out

    def first_commit_blocks(self, epoch: int) -> dict[str, dict[str, int]]:
        """hotkey -> row hash -> the first block at which the hotkey committed that row, over the epochs recorded
        up to `epoch` and since its current registration (a re-registered hotkey starts over)."""
        rows = self._backend().read(
            "SELECT cur.hotkey, r.row_hash, min(c.commit_block) AS first_block FROM commitments cur "
            "JOIN commitments c ON c.hotkey = cur.hotkey JOIN dataset_rows r ON r.repo = c.repo "
            "AND r.revision = c.revision WHERE cur.epoch = ? AND cur.status = 'ok' AND c.status = 'ok' "
            "AND c.epoch <= ? AND c.commit_block >= coalesce(cur.registration_block, 0) "
            "GROUP BY cur.hotkey, r.row_hash", [epoch, epoch])
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["hotkey"], {})[r["row_hash"]] = int(r["first_block"])
        return out

    def epoch_row_json(self, epoch: int, hotkeys: list[str]) -> dict[str, list[str]]:
        """The used rows' canonical JSON of some miners of `epoch`, in row order."""
        if not hotkeys:
            return {}
        rows = self._backend().read(
            "SELECT c.hotkey, r.row_json FROM commitments c JOIN dataset_rows r USING (repo, revision) "
            f"WHERE c.epoch = ? AND c.status = 'ok' AND c.hotkey IN ({_marks(len(hotkeys))}) "
            "ORDER BY c.hotkey, r.idx", [epoch, *hotkeys])
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["hotkey"], []).append(r["row_json"])
        return out

    def record_dedup_plans(self, epoch: int, plans: list[DedupPlanRecord]) -> None:
        with self._backend().transaction() as tx:
            self._replace(tx, DedupPlanRecord, {"epoch": epoch, "hotkey": [p.hotkey for p in plans]}, plans)

    def dedup_plans(self, epoch: int, fingerprint: str) -> list[DedupPlanRecord]:
        return self._select(DedupPlanRecord, "epoch = ? AND fingerprint = ?", [epoch, fingerprint], "hotkey")

    def epoch_plans(self, epoch: int) -> dict[str, dict]:
        """hotkey -> the plan recorded for it in `epoch` (the latest one made)."""
        return {p.hotkey: dict(p.plan) for p in self._select(DedupPlanRecord, "epoch = ?", [epoch], "hotkey")}

    # -- shards ----------------------------------------------------------------------------------------------

    def record_shard(self, shard: ShardRecord, rows: list[ShardRowRecord] | None = None) -> None:
        """A miner's shard of an epoch, and (when eligible) the shard's rows, together."""
        with self._backend().transaction() as tx:
            if rows is not None and shard.shard_hash is not None:
                self._replace(tx, ShardRowRecord, {"shard_hash": shard.shard_hash}, rows)
            self._replace(tx, ShardRecord, {"epoch": shard.epoch, "hotkey": shard.hotkey}, [shard])

    def epoch_shards(self, epoch: int) -> list[ShardRecord]:
        return self._select(ShardRecord, "epoch = ?", [epoch], "commit_block, uid, hotkey")

    def shard_rows(self, shard_hash: str) -> list[ShardRowRecord]:
        return self._select(ShardRowRecord, "shard_hash = ?", [shard_hash], "pos")

    def shard_to_evaluate(self, hotkey: str, epoch: int | None = None) -> ShardToEvaluate | None:
        """The hotkey's shard in `epoch` (default: the latest epoch that has one), with its competition's eval set
        for that epoch (shards from before competitions existed: the epoch's one eval set)."""
        columns = ", ".join(f"s.{c}" for c in ShardRecord.columns())
        rows = self._backend().read(
            f"SELECT {columns}, coalesce(ec.eval_repo, e.eval_repo) AS x_eval_repo, "
            "coalesce(ec.eval_revision, e.eval_revision) AS x_eval_revision FROM shards s "
            "JOIN epochs e ON e.epoch = s.epoch LEFT JOIN epoch_competitions ec ON ec.epoch = s.epoch "
            "AND ec.competition = s.competition WHERE s.hotkey = ?" + (" AND s.epoch = ?" if epoch is not None else "")
            + " ORDER BY s.epoch DESC LIMIT 1", [hotkey] if epoch is None else [hotkey, epoch])
        if not rows:
            return None
        return ShardToEvaluate(ShardRecord.from_row(rows[0]), rows[0]["x_eval_repo"], rows[0]["x_eval_revision"])

    # -- evaluation results ----------------------------------------------------------------------------------

    def record_eval_result(self, result: EvalResultRecord) -> None:
        self._put(result)

    def eval_result(self, cache_key: str) -> EvalResultRecord | None:
        return self._one(EvalResultRecord, "cache_key = ?", [cache_key])

    def final_eval_keys(self, keys: Iterable[str]) -> set[str]:
        """The cache keys among `keys` that have a final result (a success or a recorded failure)."""
        keys = sorted(set(keys))
        if not keys:
            return set()
        rows = self._backend().read(
            f"SELECT cache_key FROM eval_results WHERE final AND cache_key IN ({_marks(len(keys))})", keys)
        return {r["cache_key"] for r in rows}

    def drop_eval_results(self, keys: Iterable[str]) -> None:
        with self._backend().transaction() as tx:
            self._replace(tx, EvalResultRecord, {"cache_key": list(keys)}, [])

    # -- scores, weights, corpora ----------------------------------------------------------------------------

    def record_scores(self, epoch: int, scores: list[ScoreRecord], details: list[ScoreDetailRecord] = ()) -> None:
        """An epoch's scores, and what their explanations summarise, replacing the epoch's earlier ones."""
        with self._backend().transaction() as tx:
            self._replace(tx, ScoreRecord, {"epoch": epoch}, scores)
            self._replace(tx, ScoreDetailRecord, {"epoch": epoch}, list(details))

    def score_detail(self, epoch: int, hotkey: str) -> ScoreDetailRecord | None:
        """What the miner's explanation in `epoch` summarises, in full (None: its explanation says it all)."""
        return self._one(ScoreDetailRecord, "epoch = ? AND hotkey = ?", [epoch, hotkey])

    def scores(self, epoch: int) -> list[ScoreRecord]:
        return self._select(ScoreRecord, "epoch = ?", [epoch], "uid, hotkey")

    def latest_score(self, hotkey: str) -> ScoreRecord | None:
        return self._one(ScoreRecord, "hotkey = ?", [hotkey], "epoch DESC")

    def previous_weights(self, epoch: int, competition: str | None = None) -> dict[int, float]:
        """uid -> weight within `competition` (default: all) of the latest epoch before `epoch` that computed them.

        Rows written before competitions existed (competition NULL) count as any competition's."""
        if competition is None:
            rows = self._backend().read(
                "SELECT uid, coalesce(competition_weight, weight) AS weight FROM scores "
                "WHERE epoch = (SELECT max(epoch) FROM scores WHERE epoch < ?)", [epoch])
        else:
            rows = self._backend().read(
                "SELECT uid, coalesce(competition_weight, weight) AS weight FROM scores "
                "WHERE (competition = ? OR competition IS NULL) AND epoch = (SELECT max(epoch) FROM scores "
                "WHERE epoch < ? AND (competition = ? OR competition IS NULL))", [competition, epoch, competition])
        return {int(r["uid"]): float(r["weight"]) for r in rows}

    def record_weight_submission(self, submission: WeightSubmissionRecord) -> None:
        self._put(submission)

    def weight_submission(self, epoch: int) -> WeightSubmissionRecord | None:
        return self._one(WeightSubmissionRecord, "epoch = ?", [epoch])

    def weight_submissions_in(self, states: tuple[str, ...]) -> list[WeightSubmissionRecord]:
        """Submissions in one of `states`, oldest epoch first (e.g. commits still waiting for their reveal)."""
        marks = ", ".join("?" for _ in states)
        return self._select(WeightSubmissionRecord, f"state IN ({marks})", list(states), "epoch")

    def latest_sent_epoch(self) -> int | None:
        """The latest epoch whose weights the chain took (included, committed or applied)."""
        found = self._one(WeightSubmissionRecord, "success", [], "epoch DESC")
        return int(found.epoch) if found is not None else None

    def weight_submission_at(self, block: int) -> WeightSubmissionRecord | None:
        """The recorded submission the chain included (or took the commit of) at `block`, of any epoch."""
        return self._one(WeightSubmissionRecord, "block = ? AND success", [block], "epoch DESC")

    def record_corpus(self, corpus: CorpusRecord) -> None:
        self._put(corpus)

    def corpus(self, epoch: int) -> CorpusRecord | None:
        return self._one(CorpusRecord, "epoch = ?", [epoch])

    def latest_corpus_epoch(self) -> int | None:
        latest = self._one(CorpusRecord, "", [], "epoch DESC")
        return None if latest is None else int(latest.epoch)

    def corpora_before(self, epoch: int) -> list[CorpusRecord]:
        """The corpus releases of the epochs before `epoch`, newest first."""
        return self._select(CorpusRecord, "epoch < ?", [epoch], "epoch DESC")

    def record_eval_observation(self, observation: EvalObservationRecord) -> None:
        self._put(observation)

    def eval_observations(self, repo: str) -> list[EvalObservationRecord]:
        """What the validator saw as `repo`'s head, oldest block first."""
        return self._select(EvalObservationRecord, "repo = ?", [repo], "block")

    def record_corpus_value(self, value: CorpusValueRecord) -> None:
        self._put(value)

    def corpus_values(self, epoch: int | None = None) -> list[CorpusValueRecord]:
        """The recorded values of `epoch`'s release configs (default: every epoch's), by epoch then config."""
        if epoch is None:
            return self._select(CorpusValueRecord, order="epoch, config")
        return self._select(CorpusValueRecord, "epoch = ?", [epoch], "config")

    # -- reports ---------------------------------------------------------------------------------------------

    def epoch_report_rows(self, epoch: int) -> list[ReportRow]:
        """Every committing hotkey and every scored uid of `epoch`, with its commitment, shard and score."""
        rows = self._backend().read(
            "SELECT coalesce(c.uid, w.uid) AS uid, coalesce(c.hotkey, w.hotkey) AS hotkey, "
            "w.status AS score_status, c.status AS commitment_status, coalesce(w.reason, c.reason) AS reason, "
            "s.rows_kept, w.eval_loss, w.score, w.weight, "
            "coalesce(w.competition, c.competition, s.competition) AS competition, w.explanation "
            "FROM commitments c FULL OUTER JOIN (SELECT * FROM scores WHERE epoch = ?) w "
            "ON w.epoch = c.epoch AND w.hotkey = c.hotkey "
            "LEFT JOIN shards s ON s.epoch = c.epoch AND s.hotkey = c.hotkey "
            "WHERE coalesce(c.epoch, w.epoch) = ? ORDER BY 1, 2", [epoch, epoch])
        return [ReportRow(**r) for r in rows]


class Store(StoreOps):
    """The store outside Dagster: `Store("duckdb:///path")`, `Store("/path/file.duckdb")` or
    `Store("postgresql://user@host/db")`."""

    def __init__(self, url: str):
        self.url = url
        self._db = backend_for(url)

    def _backend(self) -> Backend:
        return self._db


__all__ = ["Store", "StoreOps", "UsedRow", "DatasetVerdict", "ShardToEvaluate", "ReportRow", "RECORD_OF_TABLE"]
