"""The warehouse: one DuckDB file holding every result as soon as it is produced.

Per-miner steps write here (not only to Dagster's IO manager) so that epoch-level steps can read every miner's
result, a killed run resumes without redoing finished miners, and evaluations are cached by content.
DuckDB allows one writing process at a time: connections are short and retried while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, block BIGINT, eval_repo VARCHAR, eval_revision VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS commitments (
    epoch INTEGER, hotkey VARCHAR, uid INTEGER, repo VARCHAR, competition_id VARCHAR, revision VARCHAR,
    commit_block BIGINT, registration_block BIGINT, status VARCHAR, reason VARCHAR, PRIMARY KEY (epoch, hotkey));
CREATE TABLE IF NOT EXISTS datasets (
    repo VARCHAR, revision VARCHAR, status VARCHAR, reason VARCHAR, size_bytes BIGINT, sha256 VARCHAR,
    rows_total INTEGER, rows_valid INTEGER, rows_used INTEGER, rejected VARCHAR, created_at TIMESTAMP,
    PRIMARY KEY (repo, revision));
CREATE TABLE IF NOT EXISTS dataset_rows (
    repo VARCHAR, revision VARCHAR, idx INTEGER, line INTEGER, row_hash VARCHAR, row_json VARCHAR,
    n_tokens INTEGER, PRIMARY KEY (repo, revision, idx));
CREATE TABLE IF NOT EXISTS shards (
    epoch INTEGER, hotkey VARCHAR, uid INTEGER, repo VARCHAR, revision VARCHAR, commit_block BIGINT,
    status VARCHAR, reason VARCHAR, rows_in INTEGER, rows_kept INTEGER, duplicates_within INTEGER,
    duplicates_earlier INTEGER, eval_leaks INTEGER, shard_hash VARCHAR, PRIMARY KEY (epoch, hotkey));
CREATE TABLE IF NOT EXISTS dedup_plans (
    epoch INTEGER, fingerprint VARCHAR, hotkey VARCHAR, plan VARCHAR, PRIMARY KEY (epoch, hotkey));
CREATE TABLE IF NOT EXISTS shard_rows (
    shard_hash VARCHAR, pos INTEGER, row_hash VARCHAR, row_json VARCHAR, PRIMARY KEY (shard_hash, pos));
CREATE TABLE IF NOT EXISTS eval_results (
    cache_key VARCHAR PRIMARY KEY, shard_hash VARCHAR, status VARCHAR, final BOOLEAN, error VARCHAR, eval_loss DOUBLE,
    per_row_losses DOUBLE[], train_losses DOUBLE[], train_tokens BIGINT, eval_tokens BIGINT, seconds DOUBLE,
    provenance VARCHAR, attempts INTEGER, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS win_rates (
    epoch INTEGER, hotkey VARCHAR, uid INTEGER, status VARCHAR, reason VARCHAR, eval_loss DOUBLE,
    win_rate DOUBLE, weight DOUBLE, PRIMARY KEY (epoch, hotkey));
CREATE TABLE IF NOT EXISTS weight_submissions (
    epoch INTEGER PRIMARY KEY, success BOOLEAN, block BIGINT, message VARCHAR, uids VARCHAR, weights VARCHAR,
    retry_after_block BIGINT, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS corpora (
    epoch INTEGER PRIMARY KEY, rows INTEGER, miners INTEGER, sha256 VARCHAR, jsonl_path VARCHAR,
    parquet_path VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS epoch_competitions (
    epoch INTEGER, competition VARCHAR, kind VARCHAR, share DOUBLE, eval_repo VARCHAR, eval_revision VARCHAR,
    round_id VARCHAR, phase VARCHAR, snapshot_block BIGINT, note VARCHAR, definition VARCHAR,
    PRIMARY KEY (epoch, competition));
CREATE TABLE IF NOT EXISTS competition_rounds (
    competition VARCHAR, round_id VARCHAR, eval_repo VARCHAR, eval_revision VARCHAR, first_epoch INTEGER,
    reused_from VARCHAR, decided BOOLEAN, winner_uid INTEGER, winner_hotkey VARCHAR, winner_loss DOUBLE,
    decided_epoch INTEGER, PRIMARY KEY (competition, round_id));
ALTER TABLE commitments ADD COLUMN IF NOT EXISTS competition VARCHAR;
ALTER TABLE shards ADD COLUMN IF NOT EXISTS competition VARCHAR;
ALTER TABLE win_rates ADD COLUMN IF NOT EXISTS competition VARCHAR;
ALTER TABLE win_rates ADD COLUMN IF NOT EXISTS competition_weight DOUBLE;
ALTER TABLE dataset_rows ADD COLUMN IF NOT EXISTS raw_hash VARCHAR;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS verdict_key VARCHAR;
ALTER TABLE competition_rounds ADD COLUMN IF NOT EXISTS contenders VARCHAR;
ALTER TABLE commitments ADD COLUMN IF NOT EXISTS coldkey VARCHAR;
"""
# Columns added after the first release (ALTER ... IF NOT EXISTS above): an older warehouse gains them on its next
# write, and their NULLs in older rows read as "the one curation competition" (`competition`) and "same as weight"
# (`competition_weight`).

LOCK_WAIT_S = 120.0  # seconds to wait for another process's write lock before giving up


class WarehouseResource(dg.ConfigurableResource):
    """DuckDB file of results. `path` is the database file (its name must differ from any schema inside it)."""

    path: str

    @contextlib.contextmanager
    def connect(self, read_only: bool = False):
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only and Path(self.path).exists())
                break
            except duckdb.IOException as exc:  # another process holds the file lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.2)
        try:
            if not read_only:
                con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        if not Path(self.path).exists():
            with self.connect():
                pass
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def replace_rows(self, table: str, frame: pd.DataFrame, where: str, params: list) -> None:
        """Delete the rows matching `where` and insert `frame`, in one transaction."""
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                con.execute(f"DELETE FROM {table} WHERE {where}", params)
                if len(frame):
                    con.register("incoming", frame)
                    cols = ", ".join(frame.columns)
                    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
                    con.unregister("incoming")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    # -- typed reads used by several steps ------------------------------------------------------------------

    def epoch_info(self, epoch: int) -> dict | None:
        df = self.query("SELECT * FROM epochs WHERE epoch = ?", [epoch])
        return None if df.empty else df.iloc[0].to_dict()

    def epoch_commitments(self, epoch: int) -> pd.DataFrame:
        return self.query("SELECT * FROM commitments WHERE epoch = ? ORDER BY commit_block, uid", [epoch])

    def miner_commitment(self, hotkey: str, epoch: int | None = None) -> dict | None:
        """The hotkey's recorded commitment in `epoch` (default: the latest epoch it appears in)."""
        if epoch is None:
            df = self.query("SELECT * FROM commitments WHERE hotkey = ? ORDER BY epoch DESC LIMIT 1", [hotkey])
        else:
            df = self.query("SELECT * FROM commitments WHERE hotkey = ? AND epoch = ?", [hotkey, epoch])
        return None if df.empty else df.iloc[0].to_dict()

    def dataset(self, repo: str, revision: str) -> dict | None:
        df = self.query("SELECT * FROM datasets WHERE repo = ? AND revision = ?", [repo, revision])
        return None if df.empty else df.iloc[0].to_dict()

    def dataset_rows(self, repo: str, revision: str) -> pd.DataFrame:
        return self.query("SELECT * FROM dataset_rows WHERE repo = ? AND revision = ? ORDER BY idx",
                          [repo, revision])

    def epoch_shards(self, epoch: int) -> pd.DataFrame:
        return self.query("SELECT * FROM shards WHERE epoch = ? ORDER BY commit_block, uid", [epoch])

    def shard_rows(self, shard_hash: str) -> pd.DataFrame:
        return self.query("SELECT * FROM shard_rows WHERE shard_hash = ? ORDER BY pos", [shard_hash])

    def eval_result(self, cache_key: str) -> dict | None:
        df = self.query("SELECT * FROM eval_results WHERE cache_key = ?", [cache_key])
        return None if df.empty else df.iloc[0].to_dict()

    def win_rates(self, epoch: int) -> pd.DataFrame:
        return self.query("SELECT * FROM win_rates WHERE epoch = ? ORDER BY uid", [epoch])

    def previous_weights(self, epoch: int, competition: str | None = None) -> dict[int, float]:
        """uid -> weight within `competition` (default: all) of the latest epoch before `epoch` that computed them.

        Rows written before competitions existed (competition NULL) count as any competition's."""
        where = "" if competition is None else " AND (competition = ? OR competition IS NULL)"
        params = [epoch] if competition is None else [competition, epoch, competition]
        df = self.query("SELECT uid, coalesce(competition_weight, weight) AS weight FROM win_rates WHERE "
                        + ("" if competition is None else "(competition = ? OR competition IS NULL) AND ")
                        + "epoch = (SELECT max(epoch) FROM win_rates WHERE epoch < ?" + where + ")", params)
        return {int(r.uid): float(r.weight) for r in df.itertuples()}

    def epoch_competitions(self, epoch: int) -> pd.DataFrame:
        """The competitions an epoch ran, with each one's eval set (revision) and round."""
        return self.query("SELECT * FROM epoch_competitions WHERE epoch = ? ORDER BY competition", [epoch])

    def epoch_competition(self, epoch: int, competition: str) -> dict | None:
        df = self.query("SELECT * FROM epoch_competitions WHERE epoch = ? AND competition = ?", [epoch, competition])
        return None if df.empty else df.iloc[0].to_dict()

    def competition_round(self, competition: str, round_id: str) -> dict | None:
        df = self.query("SELECT * FROM competition_rounds WHERE competition = ? AND round_id = ?",
                        [competition, round_id])
        return None if df.empty else df.iloc[0].to_dict()

    def round_submission(self, competition: str, round_id: str, hotkey: str, before_epoch: int) -> dict | None:
        """The hotkey's accepted commitment in an earlier epoch of a daily round (uid, coldkey, registration block)."""
        df = self.query(
            "SELECT c.* FROM commitments c JOIN epoch_competitions ec ON ec.epoch = c.epoch "
            "AND ec.competition = c.competition WHERE c.competition = ? AND ec.round_id = ? AND c.hotkey = ? "
            "AND c.status = 'ok' AND c.epoch < ? ORDER BY c.epoch DESC LIMIT 1",
            [competition, round_id, hotkey, before_epoch])
        return None if df.empty else df.iloc[0].to_dict()

    def rounds_before(self, competition: str, round_id: str) -> pd.DataFrame:
        """The competition's recorded rounds before `round_id`, newest first."""
        return self.query("SELECT * FROM competition_rounds WHERE competition = ? AND round_id < ? "
                          "ORDER BY round_id DESC", [competition, round_id])

    def weight_submission(self, epoch: int) -> dict | None:
        df = self.query("SELECT * FROM weight_submissions WHERE epoch = ?", [epoch])
        if df.empty:
            return None
        row = df.iloc[0].to_dict()
        row["uids"], row["weights"] = json.loads(row["uids"]), json.loads(row["weights"])
        return row
