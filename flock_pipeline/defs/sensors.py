"""Sensors: the chain drives everything.

- `new_block_sensor` opens an epoch when the chain reaches its first block: adds the `epochs` partition and runs
  `chain_commitments` for it (run key = epoch).
- `commitment_sensor` adds a `miners` partition for each new hotkey and downloads the changed commitments' datasets
  ahead of the epoch, in batches (run key = the miners' hotkey:revision).
- `epoch_progress_sensor` moves the newest epoch on, one stage at a time, from what the store has recorded:
  missing datasets -> shards + evaluations in runs of up to FLOCK_MINER_BATCH miners (GPU pool) -> scores,
  weights and corpus -> a re-send of rate-limited weights once the chain allows it (`next_epoch_requests`, which
  `flock epoch run` follows too).
  Run keys make every request idempotent.
"""

import json
from collections.abc import Callable

import dagster as dg

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.defs.assets import (chain_commitments, epochs_partitions, miner_datasets, miners_partitions,
                                        submitted_weights)
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, epoch_stage, miner_stage
from flock_pipeline.defs.stages import stage_tags
from flock_pipeline.defs.planner import (PREFETCH_TAG, batch_key, batch_request, miner_batches,
                                         next_epoch_requests, provenance_lookup, scoped)
from flock_pipeline.resources import batch_settings
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.validator.commitments import eval_waiting
from flock_pipeline.validator.datasets import verdict_keys
from flock_pipeline.validator.weights import MAX_SENDS

SENSOR_INTERVAL_S = 30


def _cursor(raw: str | None, default):
    """(network, state) of a sensor cursor; a cursor written before cursors named their network: (None, it)."""
    if not raw:
        return None, default
    value = json.loads(raw)
    if isinstance(value, dict) and set(value) == {"network", "state"}:
        return value["network"], value["state"]
    return None, value


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, job=epoch_stage, default_status=dg.DefaultSensorStatus.STOPPED)
def new_block_sensor(context: dg.SensorEvaluationContext, chain: ChainResource, hub: HubResource,
                     settings: ValidatorSettingsResource, store: StoreResource) -> dg.SensorResult | dg.SkipReason:
    """Opens epoch N when the chain reaches block N * tempo (once per network: a re-seeded chain starts again), and,
    for a game under the eval policy `after_commitments`, once its eval set has a revision published after the
    epoch's cut-off (until then it skips, and each tick records the eval repos' heads)."""
    network = chain.network_id()
    block = chain.current_block()
    epoch = chain.epoch_of(block)
    seen_network, last = _cursor(context.cursor, -1)
    if seen_network not in (None, network):
        last = -1
    if epoch <= int(last):
        return dg.SkipReason(f"block {block}: epoch {epoch} already opened")
    waiting = eval_waiting(epoch, block, chain, hub, settings, store)
    if waiting is not None:
        return dg.SkipReason(f"block {block}: epoch {epoch} waits: {waiting}")
    key = str(epoch)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=scoped(network, f"epoch:{key}"), partition_key=key,
                                    job_name=EPOCH_STAGE_JOB, asset_selection=[chain_commitments.key],
                                    tags=stage_tags([chain_commitments]))],
        dynamic_partitions_requests=[epochs_partitions.build_add_request([key])],
        cursor=json.dumps({"network": network, "state": epoch}),
    )




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
    requests = [batch_request(changed[batch[0]] if len(batch) == 1 else
                               batch_key(scoped(network, "prefetch"), batch, changed),
                               batch, {PREFETCH_TAG: "true"}, [miner_datasets.key])
                for batch in miner_batches(context.instance, list(changed), DATASET_BATCH, appended=new_hotkeys)]
    return dg.SensorResult(run_requests=requests,
                           cursor=json.dumps({"network": network, "state": seen}, sort_keys=True),
                           dynamic_partitions_requests=[miners_partitions.build_add_request(new_hotkeys)]
                           if new_hotkeys else [])


@dg.sensor(minimum_interval_seconds=SENSOR_INTERVAL_S, jobs=[epoch_stage, miner_stage],
           default_status=dg.DefaultSensorStatus.STOPPED)
def epoch_progress_sensor(context: dg.SensorEvaluationContext, store: StoreResource,
                          evaluator: EvaluatorResource, chain: ChainResource,
                          settings: ValidatorSettingsResource) -> dg.SensorResult | dg.SkipReason:
    """Requests the next stage of the newest epoch whose commitments are recorded."""
    latest = store.latest_epoch()
    if latest is None:
        return dg.SkipReason("no epoch recorded yet")
    provenance_of = provenance_lookup(evaluator, settings, build=False)
    block = chain.current_block()
    network = chain.network_id()
    confirmations = confirmation_requests(store, lambda: chain.epoch_of(block), network)
    requests, stage = next_epoch_requests(latest, store, context.instance, provenance_of,
                                          block, evaluator.timeout_s,
                                          verdict_keys(settings), evaluator.evaluation_run_tags(),
                                          batch=batch_settings()[0], network=network, wait_for_runs=True)
    if confirmations:
        context.log.info(f"confirming the weights of epoch(s) {', '.join(r.partition_key for r in confirmations)}")
    if not requests and not confirmations:
        return dg.SkipReason(f"epoch {latest}: {stage}")
    context.log.info(f"epoch {latest}: {stage}")
    return dg.SensorResult(run_requests=confirmations + requests)


def confirmation_requests(store: StoreResource, chain_epoch_now: Callable[[], int],
                          network: str = "") -> list[dg.RunRequest]:
    """`submitted_weights` runs that follow a sent submission up: one for each commit-reveal submission whose reveal
    epoch has started (it reads the chain's stored weights and records "applied" or "not applied"; one run per
    submission and chain epoch), and one that sends again a submission found "not applied" while its chain epoch
    is still running (at most MAX_SENDS sends). The chain's epoch is asked only when there is one to follow."""
    out = []
    tags = stage_tags([submitted_weights])
    following = store.weight_submissions_in(("committed", "not applied"))
    chain_epoch = chain_epoch_now() if following else 0
    for sent in following:
        if sent.state == "committed" and sent.reveal_epoch is not None and chain_epoch >= int(sent.reveal_epoch):
            out.append(dg.RunRequest(run_key=scoped(network, f"weights:{sent.epoch}:confirm:{int(sent.block)}:"
                                                             f"{chain_epoch}"), job_name=EPOCH_STAGE_JOB,
                                     partition_key=str(sent.epoch), asset_selection=[submitted_weights.key],
                                     tags=tags))
        elif (sent.state == "not applied" and sent.chain_epoch is not None and chain_epoch == int(sent.chain_epoch)
              and int(sent.attempts or 0) < MAX_SENDS):
            out.append(dg.RunRequest(run_key=scoped(network, f"weights:{sent.epoch}:resend:{int(sent.attempts or 0)}"),
                                     job_name=EPOCH_STAGE_JOB, partition_key=str(sent.epoch),
                                     asset_selection=[submitted_weights.key], tags=tags))
    return out


SENSORS = [new_block_sensor, commitment_sensor, epoch_progress_sensor]
