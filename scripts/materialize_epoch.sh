#!/usr/bin/env bash
# Materialize one epoch with `dagster asset materialize`, stage by stage -- what the sensors do over time.
# Usage: scripts/materialize_epoch.sh [EPOCH]   (default: the chain's current epoch)
# Needs DAGSTER_HOME (the Makefile sets it to the repo root) and the same FLOCK_* environment as the validator.
set -euo pipefail
# in_process: one process per run instead of one per step (each would import torch again)
M=(-m flock_pipeline.definitions --config-json '{"execution": {"config": {"in_process": {}}}}')
EPOCH=$(flock epoch open ${1:+"$1"})
echo "== epoch $EPOCH" >&2
dagster asset materialize "${M[@]}" --select chain_commitments --partition "$EPOCH"
MINERS=$(flock epoch miners "$EPOCH")
for HK in $MINERS; do
  dagster asset materialize "${M[@]}" --select miner_datasets --partition "$HK"
done
# every dataset first: a shard depends on all miners' rows (the earliest commitment keeps a row)
for HK in $MINERS; do
  dagster asset materialize "${M[@]}" --select deduplicated_shards,miner_eval_losses --partition "$HK"
done
dagster asset materialize "${M[@]}" --select win_rates,submitted_weights,final_corpus --partition "$EPOCH"
flock epoch report "$EPOCH"
