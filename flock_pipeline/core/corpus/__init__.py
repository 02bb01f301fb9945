"""The final corpus: the selected miners' rows as a Hugging Face dataset with two configs, with provenance.

Configs: `sft` (chat rows: `system`, `conversations`) and `dpo` (preference pairs: `system`, `prompt`, `chosen`,
`rejected`, and `derived`). Every row carries where it came from (`PROVENANCE_COLUMNS`): the miner's hotkey and uid,
the dataset repo and revision, the commitment block, the row's hash, the competition and epoch, the miner's weight in
the epoch and its eval loss, the base model (name, revision) and the eval set (repo, revision) it was scored with.

A release is a folder::

    sft-<12 hex>.parquet  dpo-<12 hex>.parquet   the configs, each file named by its content (`parquet_name`;
                                      written even when empty, with its schema; the card declares only the
                                      configs that hold rows)
    jsonl/sft.jsonl  jsonl/dpo.jsonl  the same rows as JSONL (sorted keys, UTF-8)
    README.md                         the dataset card: the Hub's YAML front matter (configs, features, license,
                                      size category, task) and a generated summary

It is staged in a hidden folder beside its target and renamed into place; files are 0644 and folders 0755 whatever
the umask. Its identity (`release_sha256`) covers both configs' rows, not the card.

Which miners' rows enter is the `CorpusPolicy` (per competition, by weight). Derived pairs (opt-in) contrast a
selected miner's single-turn answer (chosen) with the base model's own greedy answer to the same prompt (rejected);
the base model's answers are cached in a JSONL file (`BaseAnswerCache`) so that they are generated once.
"""

from flock_pipeline.core.corpus.answers import BaseAnswerCache, greedy_answers, single_turn
from flock_pipeline.core.corpus.card import SIZE_CATEGORIES, dataset_card, size_category
from flock_pipeline.core.corpus.policy import Candidate, CorpusPolicy, select_miners
from flock_pipeline.core.corpus.release import (CARD_FILE, COLUMNS, CONFIGS, CorpusShard, DEFAULT_LICENSE, DIR_MODE,
                                                DPO, FILES, FILE_MODE, JSONL_FILES, LATEST, LATEST_STORE,
                                                PROVENANCE_COLUMNS, ReleaseError, SFT, TYPES, arrow_schema,
                                                build_release_records, features_yaml, jsonl_text, make_dir,
                                                merge_releases, parquet_name, read_release, release_files,
                                                release_sha256, replace_latest, write_release)

__all__ = ["BaseAnswerCache", "CARD_FILE", "COLUMNS", "CONFIGS", "Candidate", "CorpusPolicy", "CorpusShard",
           "DEFAULT_LICENSE", "DIR_MODE", "DPO", "FILES", "FILE_MODE", "JSONL_FILES", "LATEST", "LATEST_STORE",
           "PROVENANCE_COLUMNS", "ReleaseError", "SFT", "SIZE_CATEGORIES", "TYPES", "arrow_schema",
           "build_release_records", "dataset_card", "features_yaml", "greedy_answers", "jsonl_text", "make_dir",
           "merge_releases", "parquet_name", "read_release", "release_files", "release_sha256", "replace_latest",
           "select_miners", "single_turn", "size_category", "write_release"]
