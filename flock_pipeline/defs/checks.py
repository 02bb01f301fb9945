"""Asset checks: the invariants between evaluation and the irreversible weight submission."""

import math

import dagster as dg

from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.defs.assets import epoch_of_run, miner_eval_losses, miners_in_range, win_rates
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.warehouse import WarehouseResource
from flock_pipeline.validator.evaluation import miner_shard, shard_cache_key
from flock_pipeline.validator.scoring import weighted_uids, weights_of


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


@dg.asset_check(asset=miner_eval_losses,
                description="A recorded eval loss is finite; a failed evaluation carries an error, not a loss. "
                            "Covers every miner of the run (a batch); the metadata names each one that fails.")
def eval_loss_is_finite(context: dg.AssetCheckExecutionContext, evaluator: EvaluatorResource,
                        settings: ValidatorSettingsResource, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    epoch = epoch_of_run(context)
    problems: dict[str, str] = {}
    losses: dict[str, float] = {}
    hotkeys = _miner_partitions(context)
    with warehouse.session():
        found = {h: _finite_problem(h, epoch, evaluator, settings, warehouse) for h in hotkeys}
    for hotkey in hotkeys:
        problem, loss = found[hotkey]
        if problem is not None:
            problems[hotkey] = problem
        elif loss is not None:
            losses[hotkey] = loss
    metadata: dict = {"miners": len(hotkeys), "evaluated": len(losses) + len(problems)}
    if len(losses) == 1 and not problems:
        metadata["eval_loss"] = next(iter(losses.values()))
    if problems:
        metadata["problems"] = dg.MetadataValue.json(problems)
    return dg.AssetCheckResult(passed=not problems, metadata=metadata)


def _finite_problem(hotkey: str, epoch: int | None, evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                    warehouse: WarehouseResource) -> tuple[str | None, float | None]:
    """(what is wrong with the miner's recorded result, its finite loss): (None, None) when it was not evaluated."""
    found = miner_shard(warehouse, hotkey, epoch)
    if found is None or found.shard.status != "eligible":
        return None, None
    result = warehouse.eval_result(shard_cache_key(found.shard, found.eval_revision, evaluator, settings))
    if result is None:
        return "no result recorded", None
    if result.status == "ok":
        finite = math.isfinite(result.eval_loss) and any(math.isfinite(x) for x in result.per_row_losses)
        return (None, float(result.eval_loss)) if finite else (f"non-finite loss {result.eval_loss}", None)
    if result.eval_loss is None or math.isnan(result.eval_loss):
        return None, None  # a failure recorded with its error and no loss: as it should be
    return f"status {result.status} carries a loss {result.eval_loss}", None


@dg.asset_check(asset=win_rates, blocking=True,
                description="Weights are finite, non-negative, sum to 1 and go only to scored (eligible) miners, a "
                            "daily round's rewarded winner or the burn uid. Blocking: submitted_weights does not run "
                            "when this fails.")
def weights_are_valid(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource,
                      settings: ValidatorSettingsResource) -> dg.AssetCheckResult:
    scores = warehouse.win_rates(int(_partition(context)))
    weights = weights_of(scores)
    eligible = weighted_uids(scores)
    try:
        validate_weights(weights, eligible)
        # win rates always give a scored miner some weight (softmax); the curve and top-k modes may give none
        scored = {int(r.uid) for r in scores if r.status == "scored"}
        curation_win_rate = any(c.kind == "curation" and c.scoring.mode == "win_rate"
                                for c in settings.competition_set())
        if scored and not weights and curation_win_rate:
            raise ValueError("scored miners exist but every weight is 0")
    except ValueError as exc:
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    return dg.AssetCheckResult(passed=True, metadata={"scored": len(eligible), "sum": sum(weights.values())})


CHECKS = [eval_loss_is_finite, weights_are_valid]
