#!/usr/bin/env bash
# Materialize one epoch with `dagster asset materialize`, stage by stage -- what the sensors do over time, in the
# same batches: the per-miner stages run over partition ranges of up to FLOCK_MINER_BATCH miners (default 64).
# Usage: scripts/materialize_epoch.sh [EPOCH]   (default: the chain's current epoch)
# Needs DAGSTER_HOME (the Makefile sets it to the repo root) and the same FLOCK_* environment as the validator.
# The console shows Dagster's warnings and errors only; FLOCK_VERBOSE=1 shows its whole event log (DEBUG lines).
set -euo pipefail
M=(-m flock_pipeline.definitions)
if [ -z "${FLOCK_VERBOSE:-}" ]; then
  M+=(--config-json '{"loggers": {"console": {"config": {"log_level": "WARNING"}}}}')
  export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"  # the CLI's notice that `dg launch` supersedes it
fi
EPOCH=$(flock epoch open ${1:+"$1"})
echo "== epoch $EPOCH" >&2
dagster asset materialize "${M[@]}" --select chain_commitments --partition "$EPOCH"
BATCHES=$(flock epoch batches "$EPOCH")
for RANGE in $BATCHES; do
  echo "== datasets $RANGE" >&2
  dagster asset materialize "${M[@]}" --select miner_datasets --partition-range "$RANGE"
done
# every dataset first: a shard depends on all miners' rows (the earliest commitment keeps a row)
for RANGE in $BATCHES; do
  echo "== shards + evaluations $RANGE" >&2
  dagster asset materialize "${M[@]}" --select deduplicated_shards,miner_eval_losses --partition-range "$RANGE"
done
echo "== scores, weights, corpus, report" >&2
dagster asset materialize "${M[@]}" --select win_rates,submitted_weights,miner_history,final_corpus,epoch_report --partition "$EPOCH"
flock epoch report "$EPOCH"
