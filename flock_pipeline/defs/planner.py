"""The stage planner: what an epoch needs next, from what the store and Dagster's run history recorded.

`next_epoch_requests` gives the runs of the next stage of an epoch (missing datasets -> shards + evaluations in
batches of miners -> scores, weights and corpus), each with an idempotent run key; the epoch sensor launches them
over time and `flock epoch run` executes the same requests in its own process. A run of one miner's stage that
crashed without recording anything is retried up to MAX_RUN_ATTEMPTS times, then recorded as that miner's failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import dagster as dg

from flock_pipeline.defs.assets import (EPOCH_TAG, RANGE_END, RANGE_START, SCORING_STAGE, deduplicated_shards,
                                        miner_datasets, miner_eval_losses, miners_in_range, miners_partitions,
                                        submitted_weights)
from flock_pipeline.defs.checks import report_given_up
from flock_pipeline.defs.jobs import EPOCH_STAGE_JOB, MINER_STAGE_JOB
from flock_pipeline.defs.stages import stage_tags
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ShardRecord
from flock_pipeline.validator.evaluation import cache_key, record_abandoned_evaluation
from flock_pipeline.validator.games import competition_recipe
from flock_pipeline.validator.weights import IN_FLIGHT

FAULT_CLASSES = ("ValidatorFault", "EvalSetError")  # the validator's own faults (errors.py, validator/eval_sets.py)
ProvenanceOf = Callable[[str | None], dict | None]  # competition -> what its evaluations depend on
PREFETCH_TAG = "flock/prefetch"  # on the commitment sensor's download runs (the epoch sensor waits for them)
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


def scoped(network: str, key: str) -> str:
    """A run key of `network` (a chain's `network_id`): a re-seeded local chain repeats epochs, blocks and
    revisions, and Dagster never launches a sensor's run key twice."""
    return f"{network}/{key}" if network else key


_RETRY_WRAPPER = "RetryRequestedFromPolicy"  # what a step's retry policy wraps the asset's own error in


def error_cause(error) -> str:
    """The asset's own error message (Dagster wraps it in its step-execution error, and a step that used up its
    retries in "Exceeded max_retries of N", which is said after the cause)."""
    retries = None
    while error.cause is not None and error.cls_name and (error.cls_name.startswith("Dagster")
                                                          or error.cls_name == _RETRY_WRAPPER):
        said = str(error.message).split(":")[0].strip()
        if error.cls_name == _RETRY_WRAPPER and said.startswith("Exceeded max_retries") and not said.endswith(" 0"):
            retries = said.lower()
        error = error.cause
    message = str(error.message).strip()
    return f"{message} ({retries})" if retries else message


def failure_messages(events) -> list[str]:
    """Each failed step's own error of a run's events; when a retried step failed for good, its first attempt's
    cause too (a transient first failure often explains the last)."""
    first: dict[str, str] = {}
    out = []
    for e in events:
        error = getattr(e.event_specific_data, "error", None) if e.event_specific_data is not None else None
        if error is None:
            continue
        if e.is_step_up_for_retry:
            first.setdefault(e.step_key, error_cause(error))
        elif e.is_step_failure:
            message = error_cause(error)
            earlier = first.get(e.step_key)
            out.append(message if earlier is None or earlier == message.split(" (exceeded")[0]
                       else f"{message}; first attempt: {earlier}")
    return out


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


def _final_results(store: StoreResource, shards: list[ShardRecord], provenance_of: ProvenanceOf,
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
    return {keys[k] for k in store.final_eval_keys(keys)}


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
        if not runs or runs[0].status not in _ENDED_UNFINISHED:
            return key
    return None


# A run that failed, or that was terminated (SIGTERM to its worker, "terminate" in the UI), frees its key for a retry.
_ENDED_UNFINISHED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _last_failure(instance: dg.DagsterInstance, base: str) -> tuple[str, bool]:
    """What the last run of `base`'s keys died of (its failure message), for the record, and whether that was the
    validator's own fault (a ValidatorFault: then nothing is recorded against the miner)."""
    key = _attempt_key(base, MAX_RUN_ATTEMPTS - 1)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1)
    message, fault = "no failure message recorded", False
    if runs and runs[0].status == dg.DagsterRunStatus.CANCELED:  # terminated by the operator: never the miner's
        return f"{MAX_RUN_ATTEMPTS} evaluation runs were terminated before they finished", True
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
            run_key = _run_key(instance, batch_key(prefix, batch, bases))
            if run_key is not None:
                requests.append(batch_request(run_key, batch, limited(len(batch)), selection))
                continue
        for hotkey in batch:
            run_key = _run_key(instance, bases[hotkey])
            if run_key is None:
                given_up.append(hotkey)
            else:
                requests.append(batch_request(run_key, [hotkey], limited(1), selection))
    return requests, given_up


def batch_key(prefix: str, batch: list[str], bases: dict[str, str]) -> str:
    """A batch's run key: its range, size and a digest of its members' own keys (hotkey and revision)."""
    digest = hashlib.sha256("|".join(bases[h] for h in batch).encode()).hexdigest()[:16]
    return f"{prefix}:{batch[0]}..{batch[-1]}:{len(batch)}:{digest}"


def batch_request(run_key: str, batch: list[str], tags: dict, selection: list) -> dg.RunRequest:
    """A run of `selection` (of the miner stage's job) for one miner's partition, or for the partition range of a
    batch, tagged with its stage."""
    tags = {**tags, **stage_tags(selection)}
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


def next_epoch_requests(epoch: int, store: StoreResource, instance: dg.DagsterInstance,
                        provenance_of: ProvenanceOf, chain_block: int | None = None,
                        eval_timeout_s: int = 0, verdict: str | dict[str | None, str] | None = None,
                        eval_tags: dict[str, str] | None = None, batch: int = 1,
                        dataset_batch: int | None = None, network: str = "",
                        wait_for_runs: bool = False) -> tuple[list[dg.RunRequest], str]:
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
    `network_id`). With `wait_for_runs` (the sensors: runs of earlier ticks may still be going), a miner that a miner
    stage run in progress covers is not requested again (it would be trained twice at once on a pool of several
    GPUs); the in-process runner executes its runs one after the other, so none is in progress when it asks.
    """
    from flock_pipeline.resources import DATASET_BATCH

    key = str(epoch)
    tags = {EPOCH_TAG: key}
    accepted = [c for c in store.epoch_commitments(epoch) if c.status == "ok"]
    step = _dataset_requests(epoch, store, instance, accepted, verdict, dataset_batch or DATASET_BATCH, network, tags)
    if step is None:
        covered = _miners_in_progress(instance, str(epoch)) if wait_for_runs else set()
        step = _miner_requests_of_epoch(epoch, store, instance, accepted, provenance_of, batch, network,
                                        {**(eval_tags or {}), **tags}, eval_timeout_s, covered)
    if step is not None:
        return step
    if not store.scores(epoch):
        return [dg.RunRequest(run_key=scoped(network, f"score:{key}"), partition_key=key, job_name=EPOCH_STAGE_JOB,
                              asset_selection=[a.key for a in SCORING_STAGE], tags=stage_tags(SCORING_STAGE))], \
            "scoring"
    return _weights_requests(epoch, store, instance, chain_block, network)


def _dataset_requests(epoch: int, store: StoreResource, instance: dg.DagsterInstance, accepted: list,
                      verdict, size: int, network: str, tags: dict) -> tuple[list[dg.RunRequest], str] | None:
    """The dataset stage: runs downloading the accepted miners' missing datasets (or a wait for the commitment
    sensor's downloads); None when every dataset is recorded."""
    key = str(epoch)
    recorded = store.hotkeys_with_dataset(epoch, verdict)  # under today's limits and rules, one query per tick
    missing = {c.hotkey: scoped(network, f"dataset:{key}:{c.hotkey}:{c.revision}") for c in accepted
               if c.hotkey not in recorded}
    if missing and instance.get_run_ids(dg.RunsFilter(tags={PREFETCH_TAG: "true"}, statuses=IN_PROGRESS), limit=1):
        return [], f"waiting for the commitment sensor's downloads ({len(missing)} dataset(s) missing)"
    downloads, _ = _miner_requests(instance, missing, size, scoped(network, f"datasets:{key}"), tags,
                                   [miner_datasets.key])
    if downloads:
        return downloads, f"downloading {len(missing)} dataset(s) in {len(downloads)} run(s)"
    return None


def _miner_requests_of_epoch(epoch: int, store: StoreResource, instance: dg.DagsterInstance, accepted: list,
                             provenance_of: ProvenanceOf, batch: int, network: str, tags: dict,
                             eval_timeout_s: int, covered: set[str] = frozenset()
                             ) -> tuple[list[dg.RunRequest], str] | None:
    """The miner stage: runs of shard + evaluation for the miners without a final result; a miner whose runs kept
    failing is recorded as failed (or, for a validator fault, stops the epoch); None when every miner is done."""
    key = str(epoch)
    info = store.epoch_info(epoch)
    revisions: dict[str | None, str] = {None: info.eval_revision}
    revisions.update({r.competition: r.eval_revision for r in store.epoch_competitions(epoch)})
    shards = {}
    for shard in store.epoch_shards(epoch):
        shards[shard.hotkey] = shard if shard.competition in revisions else shard.replace(competition=None)
    evaluated = _final_results(store, [s for s in shards.values() if s.status == "eligible"], provenance_of,
                               revisions)
    todo = {}
    for c in accepted:
        shard = shards.get(c.hotkey)
        if shard is None or (shard.status == "eligible" and shard.shard_hash not in evaluated):
            todo[c.hotkey] = scoped(network, f"miner:{key}:{c.hotkey}:{c.revision}")
    busy = sorted(h for h in todo if h in covered)
    todo = {h: k for h, k in todo.items() if h not in covered}
    pending, given_up = _miner_requests(instance, todo, batch, scoped(network, f"miners:{key}"), tags,
                                        [deduplicated_shards.key, miner_eval_losses.key], eval_timeout_s)
    faults = _give_up(given_up, shards, todo, provenance_of, revisions, instance, store)
    if pending:
        return pending, (f"deduplicating + evaluating {len(todo) - len(given_up)} miner(s) in {len(pending)} run(s)"
                         + (f"; {len(busy)} more in runs in progress" if busy else ""))
    if busy:
        return [], f"waiting for {len(busy)} miner(s) being evaluated by runs in progress"
    if faults:
        return [], f"stopped by a validator fault (fix it, then re-execute the failed runs): {faults[0]}"
    return None


def _miners_in_progress(instance: dg.DagsterInstance, epoch_key: str) -> set[str]:
    """The miners that runs of the epoch's miner stage, queued or running now, cover (one partition, or a range)."""
    covered: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(tags={EPOCH_TAG: epoch_key}, statuses=IN_PROGRESS,
                                                       job_name=MINER_STAGE_JOB)):
        start, end = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
        if start is not None and end is not None:
            covered.update(miners_in_range(instance, start, end))
        elif run.tags.get("dagster/partition"):
            covered.add(run.tags["dagster/partition"])
    return covered


def _give_up(given_up: list[str], shards: dict, todo: dict[str, str], provenance_of: ProvenanceOf,
             revisions: dict, instance: dg.DagsterInstance, store: StoreResource) -> list[str]:
    """Record the evaluations whose runs kept failing as failed with the last run's error; returns the messages of
    those that failed for the validator's own reasons (nothing is recorded against those miners)."""
    faults = []
    for hotkey in given_up:
        shard = shards.get(hotkey)
        if shard is not None and provenance_of(shard.competition) is not None:
            message, fault = _last_failure(instance, todo[hotkey])
            if fault:  # the validator's environment: the operator must fix it; nothing counts against the miner
                faults.append(message)
                continue
            record_abandoned_evaluation(store, shard.shard_hash, provenance_of(shard.competition),
                                        revisions[shard.competition], message, MAX_RUN_ATTEMPTS)
            report_given_up(instance, hotkey, int(shard.epoch), message)  # red where its partitions are listed
    return faults


def _weights_requests(epoch: int, store: StoreResource, instance: dg.DagsterInstance, chain_block: int | None,
                      network: str) -> tuple[list[dg.RunRequest], str]:
    """The weights' follow-up once the epoch is scored: confirm a send whose answer was not recorded, re-send
    rate-limited weights when the chain allows it, or nothing left to do."""
    key = str(epoch)
    sent = store.weight_submission(epoch)
    if sent is not None and sent.state == IN_FLIGHT:
        # a run died between sending and recording: re-run it, it asks the chain before sending again
        run_key = _run_key(instance, scoped(network, f"weights:{key}:in-flight:{int(sent.block)}"))
        if run_key is not None:
            return [dg.RunRequest(run_key=run_key, partition_key=key, job_name=EPOCH_STAGE_JOB,
                                  asset_selection=[submitted_weights.key], tags=stage_tags([submitted_weights]))], \
                "confirming weights whose answer was not recorded"
    if sent is not None and sent.state == "rate limited" and sent.retry_after_block is not None:
        retry_at = int(sent.retry_after_block)
        if chain_block is not None and chain_block >= retry_at:
            return [dg.RunRequest(run_key=scoped(network, f"weights:{key}:{retry_at}"), partition_key=key,
                                  job_name=EPOCH_STAGE_JOB, asset_selection=[submitted_weights.key],
                                  tags=stage_tags([submitted_weights]))], \
                "re-sending rate-limited weights"
        return [], f"weights rate-limited until block {retry_at}"
    return [], "done"
