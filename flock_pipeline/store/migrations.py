"""Versioned schema of the store: an ordered list of migrations, each applied once and recorded.

`schema_migrations` holds the versions a database has. Opening a store applies the missing ones in order, in one
transaction each (on PostgreSQL under an advisory lock, so several processes opening a new database at once apply
each migration exactly once). A database made before versioning has the tables but no `schema_migrations`: every
statement here is idempotent (IF NOT EXISTS), so it is upgraded in place like any other.

The DDL is written once; `{double}` and `{doubles}` are the two type names the dialects spell differently.
A new column or table is a new migration at the end of the list; a released migration is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial tables", (
        "CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, block BIGINT, eval_repo VARCHAR, "
        "eval_revision VARCHAR, created_at TIMESTAMP)",
        "CREATE TABLE IF NOT EXISTS commitments (epoch INTEGER, hotkey VARCHAR, uid INTEGER, repo VARCHAR, "
        "competition_id VARCHAR, revision VARCHAR, commit_block BIGINT, registration_block BIGINT, status VARCHAR, "
        "reason VARCHAR, PRIMARY KEY (epoch, hotkey))",
        "CREATE TABLE IF NOT EXISTS datasets (repo VARCHAR, revision VARCHAR, status VARCHAR, reason VARCHAR, "
        "size_bytes BIGINT, sha256 VARCHAR, rows_total INTEGER, rows_valid INTEGER, rows_used INTEGER, "
        "rejected VARCHAR, created_at TIMESTAMP, PRIMARY KEY (repo, revision))",
        "CREATE TABLE IF NOT EXISTS dataset_rows (repo VARCHAR, revision VARCHAR, idx INTEGER, line INTEGER, "
        "row_hash VARCHAR, row_json VARCHAR, n_tokens INTEGER, PRIMARY KEY (repo, revision, idx))",
        "CREATE TABLE IF NOT EXISTS shards (epoch INTEGER, hotkey VARCHAR, uid INTEGER, repo VARCHAR, "
        "revision VARCHAR, commit_block BIGINT, status VARCHAR, reason VARCHAR, rows_in INTEGER, rows_kept INTEGER, "
        "duplicates_within INTEGER, duplicates_earlier INTEGER, eval_leaks INTEGER, shard_hash VARCHAR, "
        "PRIMARY KEY (epoch, hotkey))",
        "CREATE TABLE IF NOT EXISTS dedup_plans (epoch INTEGER, fingerprint VARCHAR, hotkey VARCHAR, plan VARCHAR, "
        "PRIMARY KEY (epoch, hotkey))",
        "CREATE TABLE IF NOT EXISTS shard_rows (shard_hash VARCHAR, pos INTEGER, row_hash VARCHAR, "
        "row_json VARCHAR, PRIMARY KEY (shard_hash, pos))",
        "CREATE TABLE IF NOT EXISTS eval_results (cache_key VARCHAR PRIMARY KEY, shard_hash VARCHAR, "
        "status VARCHAR, final BOOLEAN, error VARCHAR, eval_loss {double}, per_row_losses {doubles}, "
        "train_losses {doubles}, train_tokens BIGINT, eval_tokens BIGINT, seconds {double}, provenance VARCHAR, "
        "attempts INTEGER, created_at TIMESTAMP)",
        "CREATE TABLE IF NOT EXISTS win_rates (epoch INTEGER, hotkey VARCHAR, uid INTEGER, status VARCHAR, "
        "reason VARCHAR, eval_loss {double}, win_rate {double}, weight {double}, PRIMARY KEY (epoch, hotkey))",
        "CREATE TABLE IF NOT EXISTS weight_submissions (epoch INTEGER PRIMARY KEY, success BOOLEAN, block BIGINT, "
        "message VARCHAR, uids VARCHAR, weights VARCHAR, retry_after_block BIGINT, created_at TIMESTAMP)",
        "CREATE TABLE IF NOT EXISTS corpora (epoch INTEGER PRIMARY KEY, rows INTEGER, miners INTEGER, "
        "sha256 VARCHAR, jsonl_path VARCHAR, parquet_path VARCHAR, created_at TIMESTAMP)",
    )),
    Migration(2, "competitions", (
        "CREATE TABLE IF NOT EXISTS epoch_competitions (epoch INTEGER, competition VARCHAR, kind VARCHAR, "
        "share {double}, eval_repo VARCHAR, eval_revision VARCHAR, round_id VARCHAR, phase VARCHAR, "
        "snapshot_block BIGINT, note VARCHAR, definition VARCHAR, PRIMARY KEY (epoch, competition))",
        "CREATE TABLE IF NOT EXISTS competition_rounds (competition VARCHAR, round_id VARCHAR, eval_repo VARCHAR, "
        "eval_revision VARCHAR, first_epoch INTEGER, reused_from VARCHAR, decided BOOLEAN, winner_uid INTEGER, "
        "winner_hotkey VARCHAR, winner_loss {double}, decided_epoch INTEGER, PRIMARY KEY (competition, round_id))",
        "ALTER TABLE commitments ADD COLUMN IF NOT EXISTS competition VARCHAR",
        "ALTER TABLE shards ADD COLUMN IF NOT EXISTS competition VARCHAR",
        "ALTER TABLE win_rates ADD COLUMN IF NOT EXISTS competition VARCHAR",
        "ALTER TABLE win_rates ADD COLUMN IF NOT EXISTS competition_weight {double}",
    )),
    Migration(3, "raw row keys, verdict keys, round contenders, coldkeys", (
        "ALTER TABLE dataset_rows ADD COLUMN IF NOT EXISTS raw_hash VARCHAR",
        "ALTER TABLE datasets ADD COLUMN IF NOT EXISTS verdict_key VARCHAR",
        "ALTER TABLE competition_rounds ADD COLUMN IF NOT EXISTS contenders VARCHAR",
        "ALTER TABLE commitments ADD COLUMN IF NOT EXISTS coldkey VARCHAR",
    )),
    Migration(4, "weight submissions: state, rules and confirmation", tuple(
        f"ALTER TABLE weight_submissions ADD COLUMN IF NOT EXISTS {column}" for column in (
            "state VARCHAR", "hotkey VARCHAR", "version_key BIGINT", "commit_reveal BOOLEAN", "chain_epoch BIGINT",
            "reveal_epoch BIGINT", "reveal_round BIGINT", "confirmed_block BIGINT", "detail VARCHAR",
            "attempts INTEGER"))),
    Migration(5, "corpus releases: rows per config, release folders, publication", tuple(
        f"ALTER TABLE corpora ADD COLUMN IF NOT EXISTS {column}" for column in (
            "sft_rows INTEGER", "dpo_rows INTEGER", "release_dir VARCHAR", "latest_dir VARCHAR",
            "published_repo VARCHAR", "published_revision VARCHAR"))),
    Migration(6, "evaluation metrics besides the loss (DPO: reward accuracy, mean margin)",
              ("ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS metrics VARCHAR",)),
    Migration(7, "each score's explanation in words",
              ("ALTER TABLE win_rates ADD COLUMN IF NOT EXISTS explanation VARCHAR",)),
    Migration(8, "the scores table holds every game's score: win_rates -> scores, win_rate -> score",
              ("ALTER TABLE win_rates RENAME TO scores", "ALTER TABLE scores RENAME COLUMN win_rate TO score")),
    Migration(9, "what a dataset's row format says of the file as a whole (the selection game: the first line the "
                 "live trainer cannot read)",
              ("ALTER TABLE datasets ADD COLUMN IF NOT EXISTS facts VARCHAR",)),
    Migration(10, "what training on each release is worth, on a held-out set, against its baselines",
              ("CREATE TABLE IF NOT EXISTS corpus_values (epoch INTEGER, config VARCHAR, competition VARCHAR, "
               "objective VARCHAR, heldout_repo VARCHAR, heldout_revision VARCHAR, heldout_rows INTEGER, "
               "rows INTEGER, release_loss {double}, random_losses {doubles}, base_loss {double}, "
               "previous_epoch INTEGER, previous_loss {double}, recipe_hash VARCHAR, seconds {double}, "
               "created_at TIMESTAMP, PRIMARY KEY (epoch, config))",)),
    Migration(11, "the eval sets' heads as the validator saw them, block by block (eval policy after_commitments)",
              ("CREATE TABLE IF NOT EXISTS eval_observations (repo VARCHAR, block BIGINT, revision VARCHAR, "
               "seen_at TIMESTAMP, PRIMARY KEY (repo, block))",)),
    Migration(12, "what a score's explanation summarises, in full (every comparison, beside the scores)",
              ("CREATE TABLE IF NOT EXISTS score_details (epoch INTEGER, hotkey VARCHAR, detail VARCHAR, "
               "PRIMARY KEY (epoch, hotkey))",)),
)
# Older rows have NULL in the columns added by migrations 2 and 3: `competition` NULL reads as "the one curation
# competition" and `competition_weight` NULL as "same as weight".

LATEST = MIGRATIONS[-1].version
TYPES = {"duckdb": {"double": "DOUBLE", "doubles": "DOUBLE[]"},
         "postgresql": {"double": "DOUBLE PRECISION", "doubles": "DOUBLE PRECISION[]"}}
VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, "
                 "applied_at TIMESTAMP)")


def statements(migration: Migration, dialect: str) -> list[str]:
    return [s.format(**TYPES[dialect]) for s in migration.statements]
