"""Asset checks: whether each miner was judged soundly after its evaluation (per miner partition: red for a real
failure, with the miner's verdict either way) and the invariants before the irreversible weight submission."""

import warnings

import dagster as dg
# not exported by dagster 1.13 (pinned), yet the only way to tie a check evaluation logged per partition to the
# materialization it judges
from dagster._core.definitions.asset_checks.asset_check_evaluation import \
    AssetCheckEvaluationTargetMaterializationData

from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.defs.assets import epoch_of_run, miner_eval_losses, miners_in_range, miners_partitions, win_rates
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.validator.weights import weighted_uids, weights_of
from flock_pipeline.validator.standing import miner_standing as miner_standing_of


def _partition(context: dg.AssetCheckExecutionContext) -> str:
    """The partition of the run the check runs in (checks share the run of their asset's partition)."""
    key = context.run.tags.get("dagster/partition")
    if key is None:
        raise dg.Failure("this check runs with its asset's partition: launch it with the asset")
    return key


def _miner_partitions(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The miners of the run the check runs in: its partition, or every key of its partition range (a batch)."""
    tags = context.run.tags
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start is not None and end is not None:
        return miners_in_range(context.instance, start, end)
    return [_partition(context)]


@dg.asset_check(asset=win_rates, blocking=True,
                description="Weights are finite, non-negative, sum to 1 and go only to scored (eligible) miners, a "
                            "daily round's rewarded winner or the burn uid. Blocking: submitted_weights does not run "
                            "when this fails.")
def weights_are_valid(context: dg.AssetCheckExecutionContext, store: StoreResource,
                      settings: ValidatorSettingsResource) -> dg.AssetCheckResult:
    scores = store.scores(int(_partition(context)))
    weights = weights_of(scores)
    eligible = weighted_uids(scores)
    try:
        validate_weights(weights, eligible)
        # some games always give a scored miner some weight (win rates: a softmax); others may give none
        scored = {int(r.uid) for r in scores if r.status == "scored"}
        if scored and not weights and any(c.requires_weight_when_scored() for c in settings.competition_set()):
            raise ValueError("scored miners exist but every weight is 0")
    except ValueError as exc:
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    return dg.AssetCheckResult(passed=True, metadata={"scored": len(eligible), "sum": sum(weights.values())})


# Partitioned asset checks are a preview feature of Dagster 1.13 (pinned): the warning is known and accepted here.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=dg.PreviewWarning)


MINER_EVALUATED = "miner_evaluated"


def _target(instance: dg.DagsterInstance, hotkey: str) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The partition's latest materialization: the one its check evaluation is about."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=miner_eval_losses.key, asset_partitions=[hotkey]), limit=1).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(storage_id=records[0].storage_id,
                                                         run_id=records[0].run_id, timestamp=records[0].timestamp)


@dg.multi_asset_check(name="miner_standing", specs=[
    dg.AssetCheckSpec(MINER_EVALUATED, asset=miner_eval_losses, partitions_def=miners_partitions,
                      description="Per miner: the validator judged it without an evaluation failure. ERROR (red) "
                                  "when its evaluation failed for good (a crash that persisted through the "
                                  "retries), its loss is not finite, or an eligible miner has no result. A miner "
                                  "whose data earns nothing (rejected, copies or eval-set leaks, a loss not below "
                                  "the base model's) passes: the judgement is the verdict, in the metadata "
                                  "(`verdict`) with the numbers behind it. A later epoch's evaluation supersedes "
                                  "it."),
])
def miner_standing(context: dg.AssetCheckExecutionContext, evaluator: EvaluatorResource, hub: HubResource,
                   settings: ValidatorSettingsResource, store: StoreResource):
    """The check from one reading of each miner's standing: one evaluation per miner partition of the run, also in a
    batch run (a range, where a returned AssetCheckResult would carry no partition), then the check's (empty)
    output.

    One check, not one per kind of outcome: a check's partition list draws every failed partition red whatever its
    severity, so a miner's own outcome (a copy, a loss above the base model's) would read as the validator's
    failure there; and at 256 miners a second check evaluation per miner adds about 0.8 MB of Dagster storage an
    epoch (each is stored in the event log and in the check's own table). Who earned what and why is the epoch
    report's table."""
    epoch = epoch_of_run(context)
    bars: dict = {}  # the base model's loss, looked up once per competition and eval set
    with store.session():
        standings = {h: miner_standing_of(h, epoch, evaluator, hub, settings, store, bars)
                     for h in _miner_partitions(context)}
    for hotkey, standing in standings.items():
        yield dg.AssetCheckEvaluation(  # (the summary is the description, not repeated in the metadata)
            asset_key=miner_eval_losses.key, check_name=MINER_EVALUATED, passed=standing.judged,
            metadata={"verdict": standing.verdict, **standing.metadata}, severity=dg.AssetCheckSeverity.ERROR,
            description=standing.summary, partition=hotkey, target_materialization_data=_target(context.instance,
                                                                                                hotkey))
    for output in context.op_def.output_defs:
        yield dg.Output(None, output_name=output.name)


def report_given_up(instance: dg.DagsterInstance, hotkey: str, epoch: int, message: str) -> None:
    """A miner whose evaluation runs kept dying and whose evaluation the planner recorded as failed: the standing
    check fails on its partition, outside any run (no run of it got as far as its checks).

    Where a failed evaluation shows among the partitions: Dagster colours an asset's partition from runs alone (red
    only when a run that planned it failed and nothing materialized it since), and a recorded failure is this
    pipeline's outcome for the miner, not a failed run. The per-partition check is what the UI lists as failed
    (the asset's Checks tab, `miner_evaluated`: "Failed (N)", each partition red), so every recorded failure, in a
    run or given up here, is a failed `miner_evaluated` evaluation on the miner's partition. It targets the
    partition's latest materialization, or the UI would call it out of date and show no status."""
    summary = message.strip().splitlines()[0] if message.strip() else "evaluation given up"
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=miner_eval_losses.key, check_name=MINER_EVALUATED, passed=False,
        severity=dg.AssetCheckSeverity.ERROR, metadata={"verdict": "failed", "summary": summary, "epoch": str(epoch)},
        description=summary, partition=hotkey, target_materialization_data=_target(instance, hotkey)))


CHECKS = [miner_standing, weights_are_valid]
