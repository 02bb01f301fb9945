"""Asset checks: the invariants between evaluation and the irreversible weight submission."""

import math

import dagster as dg

from flock_pipeline.core.scoring import validate_weights
from flock_pipeline.defs.assets import epoch_of_run, miner_eval_losses, win_rates
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


@dg.asset_check(asset=miner_eval_losses,
                description="A recorded eval loss is finite; a failed evaluation carries an error, not a loss.")
def eval_loss_is_finite(context: dg.AssetCheckExecutionContext, evaluator: EvaluatorResource,
                        settings: ValidatorSettingsResource, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    found = miner_shard(warehouse, _partition(context), epoch_of_run(context))
    if found is None or found.shard.status != "eligible":
        return dg.AssetCheckResult(passed=True, metadata={"evaluated": False})
    result = warehouse.eval_result(shard_cache_key(found.shard, found.eval_revision, evaluator, settings))
    if result is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no result recorded"})
    if result.status == "ok":
        losses = list(result.per_row_losses)
        finite = math.isfinite(result.eval_loss) and any(math.isfinite(x) for x in losses)
        return dg.AssetCheckResult(passed=finite, metadata={"eval_loss": float(result.eval_loss)})
    passed = result.eval_loss is None or math.isnan(result.eval_loss)
    return dg.AssetCheckResult(passed=passed, metadata={"status": result.status, "error": result.error or ""})


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
