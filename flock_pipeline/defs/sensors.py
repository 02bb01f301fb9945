"""Sensors: the chain drives everything.

- `new_block_sensor` opens an epoch when the chain reaches its first block: adds the `epochs` partition and runs
  `chain_commitments` for it (run key = epoch).
- `commitment_sensor` adds a `miners` partition for each new hotkey and downloads a miner's dataset as soon as its
  commitment changes (run key = hotkey:revision).
- `epoch_progress_sensor` moves the newest epoch on, one stage at a time, from what the warehouse has recorded:
  missing datasets -> one run per miner for its shard + evaluation (GPU pool) -> scores, weights and corpus ->
  a re-send of rate-limited weights once the chain allows it.
  Run keys make every request idempotent.
"""

import json
from collections.abc import Callable

import dagster as dg

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.core.schema import verdict_key
from flock_pipeline.defs.epoch import error_cause
from flock_pipeline.defs.assets import (EPOCH_TAG, chain_commitments, deduplicated_shards, epochs_partitions, final_corpus,
                                        miner_datasets, miner_eval_losses, miners_partitions, submitted_weights,
                                        win_rates)
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.store import ShardRecord
from flock_pipeline.validator.evaluation import cache_key, competition_recipe, record_abandoned_evaluation
from flock_pipeline.validator.scoring import IN_FLIGHT, MAX_SENDS

SENSOR_INTERVAL_S = 30
FAULT_CLASSES = ("ValidatorFault", "EvalSetError")  # the validator's own faults (faults.py, shards.py)
ProvenanceOf = Callable[[str | None], dict | None]  # competition -> what its evaluations depend on


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, asset_selection=[chain_commitments],
           default_status=dg.DefaultSensorStatus.STOPPED)
def new_block_sensor(context: dg.SensorEvaluationContext, chain: ChainResource) -> dg.SensorResult | dg.SkipReason:
    """Opens epoch N when the chain reaches block N * tempo."""
    block = chain.current_block()
    epoch = chain.epoch_of(block)
    last = int(context.cursor) if context.cursor else -1
    if epoch <= last:
        return dg.SkipReason(f"block {block}: epoch {epoch} already opened")
    key = str(epoch)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"epoch:{key}", partition_key=key,
                                    asset_selection=[chain_commitments.key])],
        dynamic_partitions_requests=[epochs_partitions.build_add_request([key])],
        cursor=key,
    )


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, asset_selection=[miner_datasets],
           default_status=dg.DefaultSensorStatus.STOPPED)
def commitment_sensor(context: dg.SensorEvaluationContext, chain: ChainResource,
                      settings: ValidatorSettingsResource) -> dg.SensorResult | dg.SkipReason:
    """A new hotkey gets a `miners` partition; a changed commitment gets a dataset download (hotkey:revision)."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    requests, new_hotkeys = [], []
    for raw in chain.commitments():
        if seen.get(raw.hotkey) == raw.data:
            continue
        seen[raw.hotkey] = raw.data
        try:
            c = Commitment.from_compressed_str(raw.data)
        except CommitmentError as exc:
            context.log.info(f"ignoring commitment of {raw.hotkey} at block {raw.block}: {exc}")
            continue
        if settings.competition_set().for_commitment(c.competition_id) is None:
            continue
        if not context.instance.has_dynamic_partition(miners_partitions.name, raw.hotkey):
            new_hotkeys.append(raw.hotkey)
        requests.append(dg.RunRequest(run_key=f"{raw.hotkey}:{c.revision}", partition_key=raw.hotkey,
                                      asset_selection=[miner_datasets.key]))
    if not requests:
        return dg.SkipReason("no new commitments")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True),
                           dynamic_partitions_requests=[miners_partitions.build_add_request(new_hotkeys)]
                           if new_hotkeys else [])


MAX_RUN_ATTEMPTS = 3  # runs of one stage of one miner that may fail (crash without a record) before it is given up


def _final_results(warehouse: WarehouseResource, shards: list[ShardRecord], provenance_of: ProvenanceOf,
                   revisions: dict[str | None, str]) -> set[str]:
    """Shard hashes that have a final result under their competition's model/recipe and eval set (a success or a
    recorded failure), in one query for the whole epoch."""
    keys = {}
    for s in shards:
        provenance = provenance_of(s.competition)
        if provenance is not None:  # None: the model was never built here, so nothing was evaluated with it
            keys[cache_key(s.shard_hash, provenance, revisions[s.competition])] = s.shard_hash
    if not keys:
        return set()
    return {keys[k] for k in warehouse.final_eval_keys(keys)}


def _attempt_key(base: str, attempt: int) -> str:
    return base if attempt == 0 else f"{base}#retry{attempt}"


def _run_key(instance: dg.DagsterInstance, base: str) -> str | None:
    """`base`, or `base#retryN` when the runs with the earlier keys failed; None once MAX_RUN_ATTEMPTS failed.

    A run that crashed before recording anything (killed process, lost lock) would otherwise block its run key,
    and so the epoch, for good.
    """
    for attempt in range(MAX_RUN_ATTEMPTS):
        key = _attempt_key(base, attempt)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1)
        if not runs or runs[0].status != dg.DagsterRunStatus.FAILURE:
            return key
    return None


def _last_failure(instance: dg.DagsterInstance, base: str) -> tuple[str, bool]:
    """What the last run of `base`'s keys died of (its failure message), for the record, and whether that was the
    validator's own fault (a ValidatorFault: then nothing is recorded against the miner)."""
    key = _attempt_key(base, MAX_RUN_ATTEMPTS - 1)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1)
    message, fault = "no failure message recorded", False
    if runs:
        for entry in instance.all_logs(runs[0].run_id):
            event = entry.dagster_event
            if event is not None and event.event_type in (dg.DagsterEventType.STEP_FAILURE,
                                                          dg.DagsterEventType.RUN_FAILURE):
                error = getattr(event.event_specific_data, "error", None)
                message = error_cause(error) if error is not None else (entry.message or event.message or message)
                while error is not None:
                    fault = fault or error.cls_name in FAULT_CLASSES
                    error = error.cause
    return f"{MAX_RUN_ATTEMPTS} evaluation runs failed without a result; the last: {message}"[:2000], fault


def next_epoch_requests(epoch: int, warehouse: WarehouseResource, instance: dg.DagsterInstance,
                        provenance_of: ProvenanceOf, chain_block: int | None = None,
                        eval_timeout_s: int = 0, verdict: str | None = None,
                        eval_tags: dict[str, str] | None = None) -> tuple[list[dg.RunRequest], str]:
    """The run requests that move `epoch` to its next stage, and a one-line description of where it stands.

    `provenance_of(competition)` is what an evaluation in that competition depends on (model, recipe), None when
    the model was never built here.

    Miners whose runs failed MAX_RUN_ATTEMPTS times are left behind so that one miner never stops the epoch; an
    evaluation given up that way is recorded as failed with the last run's error (it scores 0 with that reason).
    With `eval_timeout_s`, evaluation runs carry Dagster's `dagster/max_runtime` tag: run monitoring fails a run
    that takes longer, which then counts as one of its attempts.
    """
    key = str(epoch)
    tags = {EPOCH_TAG: key}
    accepted = [c for c in warehouse.epoch_commitments(epoch) if c.status == "ok"]
    recorded = warehouse.hotkeys_with_dataset(epoch, verdict)  # under today's limits and rules, one query per tick
    downloads = []
    for c in accepted:
        if c.hotkey in recorded:
            continue
        run_key = _run_key(instance, f"dataset:{key}:{c.hotkey}:{c.revision}")
        if run_key is not None:
            downloads.append(dg.RunRequest(run_key=run_key, partition_key=c.hotkey, tags=tags,
                                           asset_selection=[miner_datasets.key]))
    if downloads:
        return downloads, f"downloading {len(downloads)} dataset(s)"
    info = warehouse.epoch_info(epoch)
    revisions: dict[str | None, str] = {None: info.eval_revision}
    revisions.update({r.competition: r.eval_revision for r in warehouse.epoch_competitions(epoch)})
    shards = {}
    for shard in warehouse.epoch_shards(epoch):
        shards[shard.hotkey] = shard if shard.competition in revisions else shard.replace(competition=None)
    evaluated = _final_results(warehouse, [s for s in shards.values() if s.status == "eligible"], provenance_of,
                               revisions)
    pending, faults = [], []
    for c in accepted:
        shard = shards.get(c.hotkey)
        if shard is not None and (shard.status != "eligible" or shard.shard_hash in evaluated):
            continue
        base = f"miner:{key}:{c.hotkey}:{c.revision}"
        run_key = _run_key(instance, base)
        if run_key is not None:
            run_tags = {**(eval_tags or {}), **tags}
            if eval_timeout_s > 0:
                run_tags["dagster/max_runtime"] = str(eval_timeout_s)
            pending.append(dg.RunRequest(run_key=run_key, partition_key=c.hotkey, tags=run_tags,
                                         asset_selection=[deduplicated_shards.key, miner_eval_losses.key]))
        elif shard is not None and provenance_of(shard.competition) is not None:
            message, fault = _last_failure(instance, base)
            if fault:  # the validator's environment: the operator must fix it; nothing counts against the miner
                faults.append(message)
                continue
            record_abandoned_evaluation(warehouse, shard.shard_hash, provenance_of(shard.competition),
                                        revisions[shard.competition], message, MAX_RUN_ATTEMPTS)
    if pending:
        return pending, f"deduplicating + evaluating {len(pending)} miner(s)"
    if faults:
        return [], f"stopped by a validator fault (fix it, then re-execute the failed runs): {faults[0]}"
    if not warehouse.win_rates(epoch):
        return [dg.RunRequest(run_key=f"score:{key}", partition_key=key,
                              asset_selection=[win_rates.key, submitted_weights.key, final_corpus.key])], "scoring"
    sent = warehouse.weight_submission(epoch)
    if sent is not None and sent.state == IN_FLIGHT:
        # a run died between sending and recording: re-run it, it asks the chain before sending again
        run_key = _run_key(instance, f"weights:{key}:in-flight:{int(sent.block)}")
        if run_key is not None:
            return [dg.RunRequest(run_key=run_key, partition_key=key, asset_selection=[submitted_weights.key])], \
                "confirming weights whose answer was not recorded"
    if sent is not None and sent.state == "rate limited" and sent.retry_after_block is not None:
        retry_at = int(sent.retry_after_block)
        if chain_block is not None and chain_block >= retry_at:
            return [dg.RunRequest(run_key=f"weights:{key}:{retry_at}", partition_key=key,
                                  asset_selection=[submitted_weights.key])], "re-sending rate-limited weights"
        return [], f"weights rate-limited until block {retry_at}"
    return [], "done"


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S,
           asset_selection=[miner_datasets, deduplicated_shards, miner_eval_losses, win_rates, submitted_weights,
                            final_corpus],
           default_status=dg.DefaultSensorStatus.STOPPED)
def epoch_progress_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource,
                          evaluator: EvaluatorResource, chain: ChainResource,
                          settings: ValidatorSettingsResource) -> dg.SensorResult | dg.SkipReason:
    """Requests the next stage of the newest epoch whose commitments are recorded."""
    latest = warehouse.latest_epoch()
    if latest is None:
        return dg.SkipReason("no epoch recorded yet")
    cache: dict = {}

    def provenance_of(competition: str | None) -> dict | None:
        if competition not in cache:
            cache[competition] = evaluator.provenance(build=False,
                                                      recipe=competition_recipe(settings, competition))
        return cache[competition]

    block = chain.current_block()
    confirmations = confirmation_requests(warehouse, lambda: chain.epoch_of(block))
    requests, stage = next_epoch_requests(latest, warehouse, context.instance, provenance_of,
                                          block, evaluator.timeout_s,
                                          verdict_key(settings.limits()), evaluator.evaluation_run_tags())
    if confirmations:
        context.log.info(f"confirming the weights of epoch(s) {', '.join(r.partition_key for r in confirmations)}")
    if not requests and not confirmations:
        return dg.SkipReason(f"epoch {latest}: {stage}")
    context.log.info(f"epoch {latest}: {stage}")
    return dg.SensorResult(run_requests=confirmations + requests)


def confirmation_requests(warehouse: WarehouseResource, chain_epoch_now: Callable[[], int]) -> list[dg.RunRequest]:
    """`submitted_weights` runs that follow a sent submission up: one for each commit-reveal submission whose reveal
    epoch has started (it reads the chain's stored weights and records "applied" or "not applied"; one run per
    submission and chain epoch), and one that sends again a submission found "not applied" while its chain epoch
    is still running (at most MAX_SENDS sends). The chain's epoch is asked only when there is one to follow."""
    out = []
    following = warehouse.weight_submissions_in(("committed", "not applied"))
    chain_epoch = chain_epoch_now() if following else 0
    for sent in following:
        if sent.state == "committed" and sent.reveal_epoch is not None and chain_epoch >= int(sent.reveal_epoch):
            out.append(dg.RunRequest(run_key=f"weights:{sent.epoch}:confirm:{int(sent.block)}:{chain_epoch}",
                                     partition_key=str(sent.epoch), asset_selection=[submitted_weights.key]))
        elif (sent.state == "not applied" and sent.chain_epoch is not None and chain_epoch == int(sent.chain_epoch)
              and int(sent.attempts or 0) < MAX_SENDS):
            out.append(dg.RunRequest(run_key=f"weights:{sent.epoch}:resend:{int(sent.attempts or 0)}",
                                     partition_key=str(sent.epoch), asset_selection=[submitted_weights.key]))
    return out


SENSORS = [new_block_sensor, commitment_sensor, epoch_progress_sensor]
