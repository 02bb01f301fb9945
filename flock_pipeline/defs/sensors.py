"""Sensors: the chain drives everything.

- `new_block_sensor` opens an epoch when the chain reaches its first block: adds the `epochs` partition and runs
  `chain_commitments` for it (run key = epoch).
- `commitment_sensor` adds a `miners` partition for each new hotkey and downloads the changed commitments' datasets
  ahead of the epoch, in batches (run key = the miners' hotkey:revision).
- `epoch_progress_sensor` moves the newest epoch on, one stage at a time, from what the warehouse has recorded:
  missing datasets -> shards + evaluations in runs of up to FLOCK_MINER_BATCH miners (GPU pool) -> scores,
  weights and corpus -> a re-send of rate-limited weights once the chain allows it (`next_epoch_requests`, which
  `flock epoch run` follows too).
  Run keys make every request idempotent.
"""

import hashlib
import json
from collections.abc import Callable

import dagster as dg

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.defs.epoch import error_cause
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, MINER_STAGE_JOB, epoch_stage, miner_stage
from flock_pipeline.defs.assets import (EPOCH_TAG, RANGE_END, RANGE_START, SCORING_STAGE, chain_commitments,
                                        deduplicated_shards, epochs_partitions, miner_datasets, miner_eval_losses,
                                        miners_in_range, miners_partitions, submitted_weights)
from flock_pipeline.resources import batch_settings
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.store import ShardRecord
from flock_pipeline.validator.datasets import verdict_keys
from flock_pipeline.validator.evaluation import cache_key, competition_recipe, record_abandoned_evaluation
from flock_pipeline.validator.scoring import IN_FLIGHT, MAX_SENDS

SENSOR_INTERVAL_S = 30
FAULT_CLASSES = ("ValidatorFault", "EvalSetError")  # the validator's own faults (faults.py, shards.py)
ProvenanceOf = Callable[[str | None], dict | None]  # competition -> what its evaluations depend on


def scoped(network: str, key: str) -> str:
    """A run key of `network` (a chain's `network_id`): a re-seeded local chain repeats epochs, blocks and
    revisions, and Dagster never launches a sensor's run key twice."""
    return f"{network}/{key}" if network else key


def _cursor(raw: str | None, default):
    """(network, state) of a sensor cursor; a cursor written before cursors named their network: (None, it)."""
    if not raw:
        return None, default
    value = json.loads(raw)
    if isinstance(value, dict) and set(value) == {"network", "state"}:
        return value["network"], value["state"]
    return None, value


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, job=epoch_stage, default_status=dg.DefaultSensorStatus.STOPPED)
def new_block_sensor(context: dg.SensorEvaluationContext, chain: ChainResource) -> dg.SensorResult | dg.SkipReason:
    """Opens epoch N when the chain reaches block N * tempo (once per network: a re-seeded chain starts again)."""
    network = chain.network_id()
    block = chain.current_block()
    epoch = chain.epoch_of(block)
    seen_network, last = _cursor(context.cursor, -1)
    if seen_network not in (None, network):
        last = -1
    if epoch <= int(last):
        return dg.SkipReason(f"block {block}: epoch {epoch} already opened")
    key = str(epoch)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=scoped(network, f"epoch:{key}"), partition_key=key,
                                    job_name=EPOCH_STAGE_JOB, asset_selection=[chain_commitments.key])],
        dynamic_partitions_requests=[epochs_partitions.build_add_request([key])],
        cursor=json.dumps({"network": network, "state": epoch}),
    )


PREFETCH_TAG = "flock/prefetch"  # on the commitment sensor's download runs (the epoch sensor waits for them)
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, job=miner_stage, default_status=dg.DefaultSensorStatus.STOPPED)
def commitment_sensor(context: dg.SensorEvaluationContext, chain: ChainResource,
                      settings: ValidatorSettingsResource) -> dg.SensorResult | dg.SkipReason:
    """A new hotkey gets a `miners` partition; the changed commitments are downloaded ahead of the epoch, in runs
    of up to DATASET_BATCH miners (each run keyed by its miners' hotkey:revision). While such a run is in
    progress the epoch sensor waits for it instead of downloading the same files again."""
    from flock_pipeline.resources import DATASET_BATCH

    network = chain.network_id()
    seen_network, seen = _cursor(context.cursor, {})
    if seen_network not in (None, network):
        seen = {}  # another network's commitments
    changed: dict[str, str] = {}
    new_hotkeys: list[str] = []
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
        changed[raw.hotkey] = scoped(network, f"{raw.hotkey}:{c.revision}")
    if not changed:
        return dg.SkipReason("no new commitments")
    requests = [_batch_request(changed[batch[0]] if len(batch) == 1 else
                               _batch_key(scoped(network, "prefetch"), batch, changed),
                               batch, {PREFETCH_TAG: "true"}, [miner_datasets.key])
                for batch in miner_batches(context.instance, list(changed), DATASET_BATCH, appended=new_hotkeys)]
    return dg.SensorResult(run_requests=requests,
                           cursor=json.dumps({"network": network, "state": seen}, sort_keys=True),
                           dynamic_partitions_requests=[miners_partitions.build_add_request(new_hotkeys)]
                           if new_hotkeys else [])


MAX_RUN_ATTEMPTS = 3  # runs of one stage of one miner that may fail (crash without a record) before it is given up


def provenance_lookup(evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                      build: bool = True) -> ProvenanceOf:
    """competition -> what its evaluations depend on (model, recipe), asked once per competition. With
    build=False (sensors) None for a model never built here."""
    cache: dict = {}

    def provenance_of(competition: str | None) -> dict | None:
        if competition not in cache:
            cache[competition] = evaluator.provenance(build=build, recipe=competition_recipe(settings, competition))
        return cache[competition]

    return provenance_of


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


def miner_batches(instance: dg.DagsterInstance, hotkeys: list[str], size: int,
                  appended: list[str] = ()) -> list[list[str]]:
    """`hotkeys` in `miners` partition order, cut into runs of at most `size` miners whose partitions are
    contiguous (a run covers a partition range, and Dagster's ranges follow the partitions' order: the order the
    hotkeys were first seen). `appended`: partitions being added now, after the existing ones. A hotkey without a
    partition is a batch of its own."""
    existing = list(instance.get_dynamic_partitions(miners_partitions.name))
    have = set(existing)
    order = {k: i for i, k in enumerate(existing + [h for h in appended if h not in have])}
    known = sorted((h for h in hotkeys if h in order), key=order.__getitem__)
    batches: list[list[str]] = []
    for hotkey in known:
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and order[hotkey] == order[last[-1]] + 1:
            last.append(hotkey)
        else:
            batches.append([hotkey])
    return batches + [[h] for h in hotkeys if h not in order]


def _miner_requests(instance: dg.DagsterInstance, bases: dict[str, str], size: int, prefix: str, tags: dict,
                    selection: list, runtime_s: int = 0) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests covering the miners of `bases` (hotkey -> its own run key base), in batches of `size`, and
    the hotkeys given up (their own key failed MAX_RUN_ATTEMPTS times). With `runtime_s`, each run may take that
    long per miner it covers (Dagster's `dagster/max_runtime` tag).

    A batch's key names its members, so a batch that keeps dying is tried MAX_RUN_ATTEMPTS times, then its
    miners run one by one under their own keys: a miner that kills its run is found and given up alone, and never
    holds back the rest."""
    requests, given_up = [], []

    def limited(n: int) -> dict:
        return {**tags, "dagster/max_runtime": str(runtime_s * n)} if runtime_s > 0 else tags

    for batch in miner_batches(instance, list(bases), size):
        if len(batch) > 1:
            run_key = _run_key(instance, _batch_key(prefix, batch, bases))
            if run_key is not None:
                requests.append(_batch_request(run_key, batch, limited(len(batch)), selection))
                continue
        for hotkey in batch:
            run_key = _run_key(instance, bases[hotkey])
            if run_key is None:
                given_up.append(hotkey)
            else:
                requests.append(_batch_request(run_key, [hotkey], limited(1), selection))
    return requests, given_up


def _batch_key(prefix: str, batch: list[str], bases: dict[str, str]) -> str:
    """A batch's run key: its range, size and a digest of its members' own keys (hotkey and revision)."""
    digest = hashlib.sha256("|".join(bases[h] for h in batch).encode()).hexdigest()[:16]
    return f"{prefix}:{batch[0]}..{batch[-1]}:{len(batch)}:{digest}"


def _batch_request(run_key: str, batch: list[str], tags: dict, selection: list) -> dg.RunRequest:
    """A run of `selection` (of the miner stage's job) for one miner's partition, or for the partition range of a
    batch."""
    if len(batch) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=batch[0], tags=tags, job_name=MINER_STAGE_JOB,
                             asset_selection=selection)
    return dg.RunRequest(run_key=run_key, tags={**tags, RANGE_START: batch[0], RANGE_END: batch[-1]},
                         job_name=MINER_STAGE_JOB, asset_selection=selection)


def request_miners(request: dg.RunRequest, instance: dg.DagsterInstance) -> list[str]:
    """The miner partitions a per-miner run request covers (one key, or every key of its range)."""
    start, end = request.tags.get(RANGE_START), request.tags.get(RANGE_END)
    if start is None:
        return [request.partition_key] if request.partition_key is not None else []
    return miners_in_range(instance, start, end)


def next_epoch_requests(epoch: int, warehouse: WarehouseResource, instance: dg.DagsterInstance,
                        provenance_of: ProvenanceOf, chain_block: int | None = None,
                        eval_timeout_s: int = 0, verdict: "str | dict[str | None, str] | None" = None,
                        eval_tags: dict[str, str] | None = None, batch: int = 1,
                        dataset_batch: int | None = None, network: str = "") -> tuple[list[dg.RunRequest], str]:
    """The run requests that move `epoch` to its next stage, and a one-line description of where it stands.

    This is the one description of an epoch's stages: the epoch sensor launches what it returns, and `flock epoch
    run` executes the same requests in its own process. The stages: every accepted miner's dataset (runs of up to
    `dataset_batch` miners, default DATASET_BATCH), then each miner's shard + evaluation (runs of up to `batch`
    miners, the GPU pool), then scores + weights + corpus, then the weights' follow-up.

    `provenance_of(competition)` is what an evaluation in that competition depends on (model, recipe), None when
    the model was never built here.

    Miners whose runs failed MAX_RUN_ATTEMPTS times are left behind so that one miner never stops the epoch; an
    evaluation given up that way is recorded as failed with the last run's error (it scores 0 with that reason).
    With `eval_timeout_s`, evaluation runs carry Dagster's `dagster/max_runtime` tag: run monitoring fails a run
    that takes longer, which then counts as one of its attempts. Run keys are scoped by `network` (the chain's
    `network_id`).
    """
    from flock_pipeline.resources import DATASET_BATCH

    key = str(epoch)
    tags = {EPOCH_TAG: key}
    accepted = [c for c in warehouse.epoch_commitments(epoch) if c.status == "ok"]
    recorded = warehouse.hotkeys_with_dataset(epoch, verdict)  # under today's limits and rules, one query per tick
    missing = {c.hotkey: scoped(network, f"dataset:{key}:{c.hotkey}:{c.revision}") for c in accepted
               if c.hotkey not in recorded}
    if missing and instance.get_run_ids(dg.RunsFilter(tags={PREFETCH_TAG: "true"}, statuses=IN_PROGRESS), limit=1):
        return [], f"waiting for the commitment sensor's downloads ({len(missing)} dataset(s) missing)"
    downloads, _ = _miner_requests(instance, missing, dataset_batch or DATASET_BATCH,
                                   scoped(network, f"datasets:{key}"), tags,
                                   [miner_datasets.key])
    if downloads:
        return downloads, f"downloading {len(missing)} dataset(s) in {len(downloads)} run(s)"
    info = warehouse.epoch_info(epoch)
    revisions: dict[str | None, str] = {None: info.eval_revision}
    revisions.update({r.competition: r.eval_revision for r in warehouse.epoch_competitions(epoch)})
    shards = {}
    for shard in warehouse.epoch_shards(epoch):
        shards[shard.hotkey] = shard if shard.competition in revisions else shard.replace(competition=None)
    evaluated = _final_results(warehouse, [s for s in shards.values() if s.status == "eligible"], provenance_of,
                               revisions)
    todo = {}
    for c in accepted:
        shard = shards.get(c.hotkey)
        if shard is None or (shard.status == "eligible" and shard.shard_hash not in evaluated):
            todo[c.hotkey] = scoped(network, f"miner:{key}:{c.hotkey}:{c.revision}")
    pending, given_up = _miner_requests(instance, todo, batch, scoped(network, f"miners:{key}"),
                                        {**(eval_tags or {}), **tags},
                                        [deduplicated_shards.key, miner_eval_losses.key], eval_timeout_s)
    faults = []
    for hotkey in given_up:
        shard = shards.get(hotkey)
        if shard is not None and provenance_of(shard.competition) is not None:
            message, fault = _last_failure(instance, todo[hotkey])
            if fault:  # the validator's environment: the operator must fix it; nothing counts against the miner
                faults.append(message)
                continue
            record_abandoned_evaluation(warehouse, shard.shard_hash, provenance_of(shard.competition),
                                        revisions[shard.competition], message, MAX_RUN_ATTEMPTS)
    if pending:
        return pending, f"deduplicating + evaluating {len(todo) - len(given_up)} miner(s) in {len(pending)} run(s)"
    if faults:
        return [], f"stopped by a validator fault (fix it, then re-execute the failed runs): {faults[0]}"
    if not warehouse.win_rates(epoch):
        return [dg.RunRequest(run_key=scoped(network, f"score:{key}"), partition_key=key, job_name=EPOCH_STAGE_JOB,
                              asset_selection=[a.key for a in SCORING_STAGE])], "scoring"
    sent = warehouse.weight_submission(epoch)
    if sent is not None and sent.state == IN_FLIGHT:
        # a run died between sending and recording: re-run it, it asks the chain before sending again
        run_key = _run_key(instance, scoped(network, f"weights:{key}:in-flight:{int(sent.block)}"))
        if run_key is not None:
            return [dg.RunRequest(run_key=run_key, partition_key=key, job_name=EPOCH_STAGE_JOB,
                                  asset_selection=[submitted_weights.key])], \
                "confirming weights whose answer was not recorded"
    if sent is not None and sent.state == "rate limited" and sent.retry_after_block is not None:
        retry_at = int(sent.retry_after_block)
        if chain_block is not None and chain_block >= retry_at:
            return [dg.RunRequest(run_key=scoped(network, f"weights:{key}:{retry_at}"), partition_key=key,
                                  job_name=EPOCH_STAGE_JOB, asset_selection=[submitted_weights.key])], \
                "re-sending rate-limited weights"
        return [], f"weights rate-limited until block {retry_at}"
    return [], "done"


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, jobs=[epoch_stage, miner_stage],
           default_status=dg.DefaultSensorStatus.STOPPED)
def epoch_progress_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource,
                          evaluator: EvaluatorResource, chain: ChainResource,
                          settings: ValidatorSettingsResource) -> dg.SensorResult | dg.SkipReason:
    """Requests the next stage of the newest epoch whose commitments are recorded."""
    latest = warehouse.latest_epoch()
    if latest is None:
        return dg.SkipReason("no epoch recorded yet")
    provenance_of = provenance_lookup(evaluator, settings, build=False)
    block = chain.current_block()
    network = chain.network_id()
    confirmations = confirmation_requests(warehouse, lambda: chain.epoch_of(block), network)
    requests, stage = next_epoch_requests(latest, warehouse, context.instance, provenance_of,
                                          block, evaluator.timeout_s,
                                          verdict_keys(settings), evaluator.evaluation_run_tags(),
                                          batch=batch_settings()[0], network=network)
    if confirmations:
        context.log.info(f"confirming the weights of epoch(s) {', '.join(r.partition_key for r in confirmations)}")
    if not requests and not confirmations:
        return dg.SkipReason(f"epoch {latest}: {stage}")
    context.log.info(f"epoch {latest}: {stage}")
    return dg.SensorResult(run_requests=confirmations + requests)


def confirmation_requests(warehouse: WarehouseResource, chain_epoch_now: Callable[[], int],
                          network: str = "") -> list[dg.RunRequest]:
    """`submitted_weights` runs that follow a sent submission up: one for each commit-reveal submission whose reveal
    epoch has started (it reads the chain's stored weights and records "applied" or "not applied"; one run per
    submission and chain epoch), and one that sends again a submission found "not applied" while its chain epoch
    is still running (at most MAX_SENDS sends). The chain's epoch is asked only when there is one to follow."""
    out = []
    following = warehouse.weight_submissions_in(("committed", "not applied"))
    chain_epoch = chain_epoch_now() if following else 0
    for sent in following:
        if sent.state == "committed" and sent.reveal_epoch is not None and chain_epoch >= int(sent.reveal_epoch):
            out.append(dg.RunRequest(run_key=scoped(network, f"weights:{sent.epoch}:confirm:{int(sent.block)}:"
                                                             f"{chain_epoch}"), job_name=EPOCH_STAGE_JOB,
                                     partition_key=str(sent.epoch), asset_selection=[submitted_weights.key]))
        elif (sent.state == "not applied" and sent.chain_epoch is not None and chain_epoch == int(sent.chain_epoch)
              and int(sent.attempts or 0) < MAX_SENDS):
            out.append(dg.RunRequest(run_key=scoped(network, f"weights:{sent.epoch}:resend:{int(sent.attempts or 0)}"),
                                     job_name=EPOCH_STAGE_JOB, partition_key=str(sent.epoch),
                                     asset_selection=[submitted_weights.key]))
    return out


SENSORS = [new_block_sensor, commitment_sensor, epoch_progress_sensor]
