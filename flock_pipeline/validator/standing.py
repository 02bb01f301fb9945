"""A miner's standing after its evaluation (the `miner_evaluated` asset check, one evaluation per miner
partition): was the miner judged soundly? A recorded evaluation failure (a crash that persisted through its
retries), a non-finite loss or a missing result is a real failure (red). A miner whose dataset was rejected, whose
rows were copies or eval-set leaks, or whose loss does not beat the base model's was judged: the judgement is that
verdict (`improving`, `rejected`, `copied`, `ineligible`, `no_improvement`), the miner's own outcome and never a
failure of the validator's run.

It is read from what the store recorded, so it can be recomputed for any epoch; a later epoch's evaluation
supersedes an earlier one's standing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flock_pipeline.core.competitions import Competition
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import EvalResultRecord, ShardRecord, ShardToEvaluate
from flock_pipeline.validator.evaluation import base_eval_loss, miner_shard, shard_cache_key

JUDGED = ("improving", "no_improvement", "rejected", "copied", "ineligible")  # verdicts of a sound judgement


@dataclass(frozen=True)
class Standing:
    verdict: str  # improving | no_improvement | rejected | copied | ineligible | failed | non_finite | not_evaluated
    summary: str  # one line, with the numbers
    metadata: dict = field(default_factory=dict)  # epoch, competition, rows kept / dropped, losses (as text)

    @property
    def judged(self) -> bool:
        """The validator judged this miner without an evaluation failure."""
        return self.verdict in JUDGED


def _ineligible(reason: str) -> str:
    if reason.startswith("dataset "):
        return "rejected"
    if reason.startswith("duplicate"):
        return "copied"
    return "ineligible"


def miner_standing(hotkey: str, epoch: int | None, evaluator: EvaluatorResource, hub: HubResource,
                   settings: ValidatorSettingsResource, store: StoreResource,
                   bars: dict | None = None) -> Standing:
    """The standing of `hotkey` in `epoch` (None: its latest epoch with a shard). `bars`: base losses already
    looked up, by (competition, eval repo, eval revision), shared by the miners of one run."""
    found = miner_shard(store, hotkey, epoch)
    if found is None:
        where = f"epoch {epoch}" if epoch is not None else "any epoch"
        return Standing("not_evaluated", f"not judged: no shard recorded for {where}")
    shard = found.shard
    meta = _shard_metadata(shard)
    if shard.status != "eligible":
        reason = shard.reason or "ineligible"
        verdict = _ineligible(reason)
        return Standing(verdict, f"{verdict}: {reason}", meta)
    result = store.eval_result(shard_cache_key(shard, found.eval_revision, evaluator, settings))
    if result is None or (result.status != "ok" and not result.final):
        return Standing("not_evaluated", "eligible, but no final evaluation result is recorded", meta)
    if result.status != "ok":
        return _failed(result, meta)
    loss = float(result.eval_loss)
    meta["eval_loss"] = f"{loss:.6f}"
    if not math.isfinite(loss) or not any(math.isfinite(x) for x in result.per_row_losses):
        return Standing("non_finite", f"non-finite loss {result.eval_loss}", meta)
    competition = next((c for c in settings.competition_set() if c.name == shard.competition), None)
    if competition is None or not competition.needs_base_loss:
        return Standing("improving", f"evaluated: eval loss {loss:.4f}", meta)
    base = _base_loss(found, competition, evaluator, hub, store, bars)
    meta["base_loss"] = f"{base:.6f}"
    return _against_base(loss, base, competition, meta)


def _shard_metadata(shard: ShardRecord) -> dict:
    """The standing's metadata a shard record gives: epoch, competition, rows kept and dropped (as text)."""
    return {"epoch": str(shard.epoch), "competition": shard.competition or "",
            "rows_kept": str(int(shard.rows_kept or 0)),
            "rows_dropped": f"{int(shard.duplicates_within or 0)} repeated, {int(shard.duplicates_earlier or 0)} "
                            f"copied from earlier miners, {int(shard.eval_leaks or 0)} eval-set rows"}


def _failed(result: EvalResultRecord, meta: dict) -> Standing:
    """The failed standing of a final evaluation result whose status is not ok."""
    if result.eval_loss is not None and not math.isnan(result.eval_loss):
        return Standing("failed", f"status {result.status} carries a loss {result.eval_loss}", meta)
    error = (result.error or "").strip().splitlines()
    return Standing("failed", f"evaluation failed after {result.attempts} attempt(s): "
                              f"{error[0] if error else 'no error recorded'}", meta)


def _base_loss(found: ShardToEvaluate, competition: Competition, evaluator: EvaluatorResource, hub: HubResource,
               store: StoreResource, bars: dict | None) -> float:
    """The base model's loss on the shard's eval set, looked up once per bar and kept in `bars` for the others."""
    bars = {} if bars is None else bars
    bar = (found.shard.competition, found.eval_repo, found.eval_revision)
    if bar not in bars:
        bars[bar] = base_eval_loss(evaluator, hub, store, found.eval_repo, found.eval_revision, competition)
    return bars[bar]


def _against_base(loss: float, base: float, competition: Competition, meta: dict) -> Standing:
    """The standing of an evaluated loss measured against the base model's in a game with that bar."""
    metric, better = competition.objective.metric, competition.objective.worse_word()
    if not competition.objective.improves(loss, base):
        return Standing("no_improvement",
                        f"no improvement: {metric} {loss:.4f} is not {better} the base model's {base:.4f}", meta)
    sign = ">" if competition.objective.higher_is_better else "<"
    return Standing("improving", f"improves on the base model: {metric} {loss:.4f} {sign} {base:.4f}", meta)
