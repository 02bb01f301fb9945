"""The conditions an operator is told about, as pure functions over what the store and Dagster recorded, and the
rate limit that keeps a standing condition from posting every tick.

- `weights_not_applied`: the chain applied none of the validator's weights in the last N finished epochs (the
  newest epoch may still be working, so it counts only once its weights landed).
- `no_commitments`: the last N epochs recorded no commitment at all (the chain read returns nothing, or the subnet
  has no miners).
- `run_failed`: a run of the pipeline failed; `validator_fault` when the failure was the validator's own (the
  device, the base model, the eval set, a library: the epoch stops until the operator fixes it), else
  `run_failure`.

`due` decides whether an alert posts now: once per condition per window, and at once when its scope (the epoch
of a run failure) differs from the last post's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flock_pipeline.store import WeightSubmissionRecord

WEIGHTS_NOT_APPLIED = "weights_not_applied"
NO_COMMITMENTS = "no_commitments"
VALIDATOR_FAULT = "validator_fault"
RUN_FAILURE = "run_failure"
CONDITIONS = (WEIGHTS_NOT_APPLIED, NO_COMMITMENTS, VALIDATOR_FAULT, RUN_FAILURE)


@dataclass(frozen=True)
class Alert:
    condition: str  # one of CONDITIONS
    reason: str  # in words, short
    epoch: int | None = None  # the epoch it concerns (the newest recorded one for standing conditions)
    scope: str | None = None  # a new scope posts at once, inside the window too (e.g. the epoch of a failed run)


def landed(submission: WeightSubmissionRecord | None) -> bool:
    """Did the chain apply this submission? (A record written before submissions were confirmed: when it was
    taken.)"""
    if submission is None:
        return False
    return submission.state == "applied" or (submission.state is None and bool(submission.success))


def _state(submission: WeightSubmissionRecord | None) -> str:
    if submission is None:
        return "nothing sent"
    why = submission.detail if submission.state == "not applied" and submission.detail else submission.message
    return f"{submission.state or 'not taken'}" + (f" ({why})" if why else "")


def weights_not_applied(epochs: Sequence[int], submissions: Mapping[int, WeightSubmissionRecord | None],
                        n: int) -> Alert | None:
    """An alert when none of the last `n` finished epochs of `epochs` (ascending; the newest is still working
    unless its weights landed) had its weights applied on the chain. `submissions`: epoch -> its record, for at
    least the last n + 1 epochs."""
    if not epochs or landed(submissions.get(epochs[-1])):
        return None
    finished = list(epochs[:-1])[-n:]
    if len(finished) < n or any(landed(submissions.get(e)) for e in finished):
        return None
    span = f"epoch {finished[0]}" if n == 1 else f"epochs {finished[0]}-{finished[-1]}"
    last = finished[-1]
    return Alert(WEIGHTS_NOT_APPLIED, f"no weights applied on the chain in {span} ({n} finished epoch"
                                      f"{'s' if n > 1 else ''}); epoch {last}: {_state(submissions.get(last))}",
                 epoch=epochs[-1])


def no_commitments(epochs: Sequence[int], counts: Mapping[int, int], n: int) -> Alert | None:
    """An alert when each of the last `n` recorded `epochs` (ascending) recorded no commitment (`counts`: epoch ->
    commitments recorded, for at least the last n epochs)."""
    recent = list(epochs)[-n:]
    if len(recent) < n or any(counts.get(e, 0) > 0 for e in recent):
        return None
    span = f"epoch {recent[0]}" if n == 1 else f"epochs {recent[0]}-{recent[-1]}"
    return Alert(NO_COMMITMENTS, f"no miner commitment recorded in {span}: check the chain endpoint and the netuid",
                 epoch=recent[-1])


def run_failed(job: str, run_id: str, epoch: int | None, messages: Sequence[str], fault: bool) -> Alert:
    """The alert of a failed run of `job`: a validator fault (`fault`: an error of the validator's own
    environment in its failure) or any other run failure, with its steps' error messages."""
    said = "; ".join(m.strip() for m in messages if m and m.strip()) or "no error message recorded"
    what = "a validator fault stopped the epoch" if fault else "a run failed"
    return Alert(VALIDATOR_FAULT if fault else RUN_FAILURE, f"{what}: {job} run {run_id[:8]}: {said}", epoch=epoch,
                 scope=f"epoch {epoch}" if epoch is not None else job)


def due(last: Mapping | None, alert: Alert, now: float, interval_s: int) -> bool:
    """Whether `alert` posts now, given its condition's last successful post (`{"at": seconds, "scope": ...}`, or
    None): never posted, another scope, or the window has passed."""
    if not last or "at" not in last:
        return True
    try:
        at = float(last["at"])
    except (TypeError, ValueError):
        return True  # an unreadable ledger entry never silences an alert
    return last.get("scope") != alert.scope or now - at >= interval_s
