"""Which stage of an epoch a run is, as the run's `flock/stage` tag: commitments, datasets, evaluation, scoring,
weights (a follow-up of sent weights: confirm or re-send) or corpus value (on demand).

Every run the sensors and `flock epoch run` launch carries the tag from its request, so the Runs page can filter
by it while the run is still queued. A run launched any other way (`dagster asset materialize`, the UI's
Materialize button) gets it from its first step (`name_the_stage`), from the assets the run selects.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

STAGE_TAG = "flock/stage"

# In the graph's order: a run's stage is the stage of the earliest asset it materializes (a scoring run also
# sends the weights; a run of `submitted_weights` alone is a weights follow-up).
STAGE_OF_ASSET = {
    "chain_commitments": "commitments",
    "miner_datasets": "datasets",
    "deduplicated_shards": "evaluation",
    "miner_eval_losses": "evaluation",
    "win_rates": "scoring",
    "submitted_weights": "weights",
    "miner_history": "scoring",
    "final_corpus": "scoring",
    "epoch_report": "scoring",
    "corpus_value": "corpus value",
}
STAGES = tuple(dict.fromkeys(STAGE_OF_ASSET.values()))


def stage_of(selection: Iterable) -> str:
    """The stage of a run that materializes `selection` (assets definitions or asset keys)."""
    names = set()
    for item in selection:
        key = item.key if isinstance(item, dg.AssetsDefinition) else dg.AssetKey.from_coercible(item)
        names.add(key.to_user_string())
    for name, stage in STAGE_OF_ASSET.items():
        if name in names:
            return stage
    raise ValueError(f"no stage materializes {sorted(names)}")


def stage_tags(selection: Iterable) -> dict[str, str]:
    """The `flock/stage` tag of a run of `selection`, for its run request."""
    return {STAGE_TAG: stage_of(selection)}


def name_the_stage(context: dg.AssetExecutionContext) -> None:
    """Tag the running run with its stage when it was launched without one (`dagster asset materialize`, the UI):
    its stage is that of the assets the run selects (this step's own asset when Dagster does not say). An asset
    invoked directly, outside any run, has no run to tag."""
    try:
        run = context.run
    except dg.DagsterError:  # a direct invocation's context has no run (DagsterInvalidPropertyError, not exported)
        return
    if STAGE_TAG in run.tags:
        return
    selected = run.asset_selection or context.assets_def.keys
    context.instance.add_run_tags(run.run_id, stage_tags(selected))
