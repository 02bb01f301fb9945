"""Re-checking a recorded score: re-run a miner's evaluation from the inputs the record names and compare.

A recorded evaluation names everything its loss depends on: the shard (its hash; the rows are stored), the base
model (name and content digest), the recipe (all of it, with device and dtype), the eval set revision and the
library versions. An audit checks each input as it is now against the record; when all agree it trains and
evaluates again and compares the per-row losses: bit-exact on CPU ("match"), within `GPU_TOLERANCE` on a GPU (whose
kernels are not deterministic across machines). When an input differs it says which, and does not pretend a
comparison would mean anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from flock_pipeline.errors import UsageError
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubError, HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import EvalResultRecord
from flock_pipeline.validator.datasets import rows_from_json
from flock_pipeline.validator.eval_sets import load_eval_rows
from flock_pipeline.validator.evaluation import cache_key
from flock_pipeline.validator.games import epoch_setups, shard_competition
from flock_pipeline.validator.shards import shard_hash

GPU_TOLERANCE = 1e-3  # relative, per row: bf16 kernels differ between GPU models and runs
PROVENANCE_FIELDS = (("base_model", "base model"), ("base_revision", "model digest"), ("recipe_hash", "recipe hash"),
                     ("device", "device"), ("dtype", "dtype"), ("versions", "library versions"))


@dataclass
class Audit:
    """The outcome of an audit: "match", "mismatch" (same inputs, other losses) or "inputs differ"."""

    epoch: int
    hotkey: str
    verdict: str
    recorded_loss: float | None
    rerun_loss: float | None = None
    max_row_difference: float | None = None
    differences: list[str] = field(default_factory=list)  # the inputs that differ, each in words
    inputs: dict = field(default_factory=dict)  # what the record names

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "hotkey": self.hotkey, "verdict": self.verdict,
                "recorded_loss": self.recorded_loss, "rerun_loss": self.rerun_loss,
                "max_row_difference": self.max_row_difference, "differences": self.differences,
                "inputs": self.inputs}


def audit_score(epoch: int, hotkey: str, settings: ValidatorSettingsResource, store: StoreResource,
                evaluator: EvaluatorResource, hub: HubResource) -> Audit:
    """Re-run `hotkey`'s recorded evaluation of `epoch` and compare (UsageError when there is none to re-run)."""
    shard = next((s for s in store.epoch_shards(epoch) if s.hotkey == hotkey), None)
    if shard is None:
        raise UsageError(f"{hotkey} has no shard recorded in epoch {epoch}: nothing to audit")
    if shard.status != "eligible":
        raise UsageError(f"{hotkey}'s shard in epoch {epoch} was not evaluated ({shard.reason}): nothing to audit")
    setup = epoch_setups(store, epoch, settings.competition_set()).get(shard.competition or "")
    if setup is None:
        raise UsageError(f"epoch {epoch} has no recorded eval set for competition {shard.competition!r}")
    record = _recorded_result(store, shard.shard_hash, setup.eval_revision)
    if record is None:
        raise UsageError(f"{hotkey}'s shard in epoch {epoch} has no recorded evaluation: nothing to audit")
    game = shard_competition(settings, shard.competition)
    recorded = dict(record.provenance or {})
    out = Audit(epoch, hotkey, "inputs differ", record.eval_loss, inputs={
        "shard_hash": shard.shard_hash, "eval_repo": setup.eval_repo, "eval_revision": setup.eval_revision,
        **{k: recorded.get(k) for k, _ in PROVENANCE_FIELDS}})
    rows = store.shard_rows(shard.shard_hash)
    out.differences += _shard_differences(rows, shard.shard_hash, game)
    now = evaluator.provenance(recipe=recorded.get("recipe") or {}) or {}
    out.differences += [f"{label}: recorded {_short(recorded.get(k))}, now {_short(now.get(k))}"
                        for k, label in PROVENANCE_FIELDS if recorded.get(k) != now.get(k)]
    try:
        eval_rows = load_eval_rows(hub, setup.eval_repo, setup.eval_revision, game.row_format)
    except HubError as exc:
        out.differences.append(f"eval set: {setup.eval_repo} at {setup.eval_revision} cannot be read now ({exc})")
    if out.differences:
        return out
    train = rows_from_json(rows, game.row_format)
    (outcome,) = evaluator.evaluate_many([train], list(eval_rows), recipe=recorded.get("recipe") or {},
                                         objective=game.objective)
    if isinstance(outcome, BaseException):
        out.verdict, out.differences = "mismatch", [f"the re-run failed: {type(outcome).__name__}: {outcome}"]
        return out
    return _compare(out, record, outcome, now.get("device") == "cuda")


def _recorded_result(store: StoreResource, shard_hash_: str, eval_revision: str) -> EvalResultRecord | None:
    """The shard's successful evaluation on that eval revision (the one the score used), newest first."""
    found = [r for r in store.rows(EvalResultRecord, shard_hash=shard_hash_, status="ok")
             if r.provenance and r.cache_key == cache_key(shard_hash_, r.provenance, eval_revision)]
    return max(found, key=lambda r: (r.created_at is not None, r.created_at), default=None)


def _shard_differences(rows, recorded_hash: str, game) -> list[str]:
    """The stored shard rows against the record: each row's JSON re-hashes to its recorded hash, and (where a row's
    hash is its identity) the rows in order hash to the shard's hash."""
    fmt = game.row_format
    for r in rows:
        if fmt.from_json_obj(json.loads(r.row_json)).row_hash != r.row_hash:
            return [f"shard: stored row {r.pos} no longer hashes to its recorded row hash (the stored rows were "
                    "altered)"]
    identities = [fmt.training_identity(r.row_hash, None) for r in rows]
    if all(i == r.row_hash for i, r in zip(identities, rows)) and shard_hash(identities) != recorded_hash:
        return [f"shard: the stored rows hash to {shard_hash(identities)[:16]}, the record says {recorded_hash[:16]}"]
    return []


def _compare(out: Audit, record: EvalResultRecord, outcome, gpu: bool) -> Audit:
    """Per-row losses of the re-run against the record."""
    before, after = [float(x) for x in record.per_row_losses], [float(x) for x in outcome.per_row_losses]
    out.rerun_loss = float(outcome.eval_loss)
    if len(before) != len(after):
        out.verdict = "mismatch"
        out.differences = [f"per-row losses: {len(before)} recorded, {len(after)} now"]
        return out
    gaps = [abs(a - b) for a, b in zip(before, after)]
    out.max_row_difference = max(gaps, default=0.0)
    close = all(g <= GPU_TOLERANCE * max(abs(b), 1e-12) for g, b in zip(gaps, before)) if gpu else \
        all(a == b for a, b in zip(after, before))
    out.verdict = "match" if close and math.isfinite(out.rerun_loss) else "mismatch"
    if out.verdict == "mismatch":
        worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
        out.differences = [f"per-row losses differ by up to {out.max_row_difference:.3g} (eval row {worst}) with the "
                           "same inputs" + (f", beyond the GPU tolerance {GPU_TOLERANCE:g}" if gpu else "")]
    return out


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- scores other validators publish ------------------------------------------------------------------------------

def audit_inputs(epoch: int, store: StoreResource, settings: ValidatorSettingsResource) -> dict[str, dict]:
    """hotkey -> what anyone needs to re-run its recorded evaluation of `epoch` from public data alone (published in
    `reports.json`): the dataset repo and revision, the lines of its file the shard kept, the shard's hash, the row
    format and objective, the eval set revision, the base model and its digest, the recipe, device, dtype and
    library versions."""
    setups = epoch_setups(store, epoch, settings.competition_set())
    plans, used = store.epoch_plans(epoch), store.epoch_used_rows(epoch)
    out = {}
    for shard in store.epoch_shards(epoch):
        setup = setups.get(shard.competition or "")
        plan = plans.get(shard.hotkey) or {}
        if shard.status != "eligible" or setup is None or shard.hotkey not in used:
            continue
        record = _recorded_result(store, shard.shard_hash, setup.eval_revision)
        if record is None:
            continue
        game = shard_competition(settings, shard.competition)
        lines = [used[shard.hotkey][i].line for i in plan.get("kept_indices") or []]
        provenance = record.provenance or {}
        out[shard.hotkey] = {
            "repo": shard.repo, "revision": shard.revision, "lines": line_ranges(lines),
            "shard_hash": shard.shard_hash, "row_format": game.row_format.name, "objective": game.objective.name,
            "eval_repo": setup.eval_repo, "eval_revision": setup.eval_revision,
            **{k: provenance.get(k) for k, _ in PROVENANCE_FIELDS}, "recipe": provenance.get("recipe")}
    return out


def line_ranges(lines: list[int]) -> str:
    """Line numbers as ranges ("1-50,52,54-100"), in their order."""
    parts, start = [], None
    for i, line in enumerate(lines):
        if start is None:
            start = line
        if i + 1 == len(lines) or lines[i + 1] != line + 1:
            parts.append(str(start) if start == line else f"{start}-{line}")
            start = None
    return ",".join(parts)


def parse_line_ranges(text: str, limit: int = 1_000_000) -> list[int]:
    """The line numbers of `line_ranges`' text (ValueError on anything else, or more than `limit` lines)."""
    out: list[int] = []
    for part in filter(None, str(text).split(",")):
        low, dash, high = part.partition("-")
        first, last = int(low), int(high if dash else low)  # "1-" is no range
        if first < 1 or last < first or len(out) + last - first + 1 > limit:
            raise ValueError(f"bad line range {part!r}")
        out.extend(range(first, last + 1))
    return out


def audit_published(repo: str, hotkey: str, entry: dict, evaluator: EvaluatorResource, hub: HubResource) -> Audit:
    """Re-run the evaluation another validator published for `hotkey` (`entry`: its row of the validator's
    `reports.json` in `repo`, `reports.published_entry`) from public data alone: the miner's dataset at its committed
    revision, the lines the validator says it kept, the eval set at its revision, the recipe it names; then compare
    the loss with the published one (exactly on CPU, within `GPU_TOLERANCE` on a GPU)."""
    from flock_pipeline.core.objectives import OBJECTIVES
    from flock_pipeline.core.rowformats import FORMATS

    inputs = entry.get("audit")
    if not isinstance(inputs, dict):
        raise UsageError(f"{repo} publishes no audit inputs for {hotkey} in epoch {entry['epoch']} (not evaluated, "
                         "or a validator release that did not publish them)")
    out = Audit(int(entry["epoch"]), hotkey, "inputs differ", entry.get("eval_loss"), inputs=dict(inputs))
    fmt, objective = FORMATS.get(str(inputs.get("row_format"))), OBJECTIVES.get(str(inputs.get("objective")))
    if fmt is None or objective is None:
        out.differences.append(f"unknown row format or objective: {inputs.get('row_format')!r}, "
                               f"{inputs.get('objective')!r}")
        return out
    rows = _published_rows(inputs, fmt, hub, out)
    now = evaluator.provenance(recipe=inputs.get("recipe") or {}) or {}
    out.differences += [f"{label}: published {_short(inputs.get(k))}, here {_short(now.get(k))}"
                        for k, label in PROVENANCE_FIELDS if inputs.get(k) != now.get(k)]
    try:
        eval_rows = load_eval_rows(hub, str(inputs["eval_repo"]), str(inputs["eval_revision"]), fmt)
    except (HubError, KeyError) as exc:
        out.differences.append(f"eval set: cannot be read ({exc})")
    if out.differences:
        return out
    (outcome,) = evaluator.evaluate_many([rows], list(eval_rows), recipe=inputs.get("recipe") or {},
                                         objective=objective)
    return _compare_published(out, outcome, now.get("device") == "cuda")


def _published_rows(inputs: dict, fmt, hub: HubResource, out: Audit) -> list:
    """The rows a published shard names (the lines of the miner's file at its revision), checked against the
    published shard hash; a problem goes into `out.differences`."""
    from flock_pipeline.core.schema import DatasetLimits, validate_bytes

    try:
        data = hub.download(str(inputs["repo"]), str(inputs["revision"]))
        wanted = parse_line_ranges(inputs.get("lines", ""))
    except (HubError, KeyError, ValueError) as exc:
        out.differences.append(f"the miner's dataset cannot be read as published: {exc}")
        return []
    report = validate_bytes(data, DatasetLimits(max_rows_used=10**9, max_file_bytes=2**31, max_line_bytes=2**31),
                            fmt)
    by_line = {r.line: r.row for r in report.valid_rows}
    if any(line not in by_line for line in wanted):
        out.differences.append("shard: the published lines are not all valid rows of the miner's file")
        return []
    rows = [by_line[line] for line in wanted]
    if all(fmt.training_identity(r.row_hash, None) == r.row_hash for r in rows) \
            and shard_hash([r.row_hash for r in rows]) != inputs.get("shard_hash"):
        out.differences.append("shard: the published lines of the miner's file do not hash to the published shard")
    return rows


def _compare_published(out: Audit, outcome, gpu: bool) -> Audit:
    """The re-run's loss against the published one."""
    if isinstance(outcome, BaseException):
        out.verdict, out.differences = "mismatch", [f"the re-run failed: {type(outcome).__name__}: {outcome}"]
        return out
    loss = out.recorded_loss
    out.rerun_loss = float(outcome.eval_loss)
    same = (loss is not None and abs(out.rerun_loss - loss) <= GPU_TOLERANCE * abs(loss)) if gpu else \
        out.rerun_loss == loss
    out.verdict = "match" if same else "mismatch"
    if not same:
        out.differences = [f"eval loss published {loss}, re-run {out.rerun_loss} with the same inputs"]
    return out
