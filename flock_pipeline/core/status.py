"""A miner's way through an epoch, as pure rules: which commitment counts and whether it is accepted, and the status
a miner has before its competition scores it.

Commitment acceptance (`round_gate`, `late_reason`, `acceptance`), in the order the validator applies them:

1. the commitment must decode and name a competition this validator runs (core/commitment.py, the caller);
2. a daily round still in its submission window, or one that reuses an earlier round: `pending`, nothing is judged;
3. a commitment written after the round's submission window closed is late: the hotkey's commitment at the window's
   last block counts instead (when it names the same competition), else `rejected`;
4. the hotkey must be registered, the commitment must not predate its (re-)registration and must be at least
   `min_age` blocks old at the epoch's block.

Miner status before scoring (`miner_status`): rejected / pending (the commitment), not_deduplicated (no shard yet),
ineligible (the shard's reason), not_evaluated (no result yet), failed (the evaluation's error), or scored; the
competition may then turn `scored` into another status (e.g. no_improvement).

Pure code: no dagster, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from flock_pipeline.core.competitions import Round

OK, PENDING, REJECTED = "ok", "pending", "rejected"


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str | None = None


ACCEPTED = Verdict(OK)


def round_gate(rnd: Round, reused_from: str | None) -> Verdict | None:
    """`pending` while a daily round takes submissions or reuses an earlier round; None: the round judges now."""
    if rnd.phase == "submission":
        return Verdict(PENDING, f"round {rnd.round_id}'s submission window is open (it closes after block "
                                f"{rnd.snapshot_block}); submissions are evaluated after that")
    if reused_from is not None:
        return Verdict(PENDING, f"round {rnd.round_id} reuses round {reused_from} (the pool did not change): nothing "
                                "is evaluated, the earlier winner keeps the reward")
    return None


def is_late(commit_block: int, rnd: Round) -> bool:
    """Written after the round's snapshot (a daily round: its submission window's last block)."""
    return commit_block > rnd.snapshot_block


def late_reason(commit_block: int, rnd: Round) -> str:
    return (f"late: committed at block {commit_block}, after round {rnd.round_id}'s submission window closed "
            f"(block {rnd.snapshot_block})")


def acceptance(commit_block: int, registration_block: int | None, epoch_block: int, min_age: int) -> Verdict:
    """The registration and age rules on the commitment that counts (`registration_block` None: the hotkey is not
    registered)."""
    if registration_block is None:
        return Verdict(REJECTED, "hotkey is not registered on the subnet")
    if commit_block < registration_block:
        return Verdict(REJECTED, "commitment predates the hotkey's registration")
    if epoch_block - commit_block < min_age:
        return Verdict(REJECTED, f"commitment is {epoch_block - commit_block} blocks old at the epoch's block, the "
                                 f"minimum age is {min_age}")
    return ACCEPTED


def holder_changed(uid: int, committed_hotkey: str, hotkey_now: str | None) -> Verdict | None:
    """`uid_changed` when the uid no longer holds the hotkey that committed (deregistered, or handed to another
    hotkey since the commitment was read): a weight on the uid would reach a hotkey that never committed. None: the
    uid still holds it."""
    if hotkey_now == committed_hotkey:
        return None
    holder = f"is held by another hotkey ({hotkey_now[:16]})" if hotkey_now else "is no longer registered"
    return Verdict("uid_changed", f"uid {uid} {holder} since {committed_hotkey[:16]} committed: its weight would "
                                  "reach a hotkey that never committed, so it gets none")


@dataclass(frozen=True)
class Outcome:
    """What a step recorded: its status and, when it did not succeed, why."""

    status: str
    reason: str | None = None


def miner_status(commitment: Outcome, shard: Outcome | None, result: Outcome | None) -> Verdict:
    """A committing miner's status before its competition scores it. `shard` None: no shard recorded yet; `result`
    None: no evaluation result recorded yet (read only for an eligible shard)."""
    if commitment.status == PENDING:
        return Verdict(PENDING, commitment.reason)
    if commitment.status != OK:
        return Verdict(REJECTED, commitment.reason)
    if shard is None:
        return Verdict("not_deduplicated", "deduplicated_shards has not run for this miner")
    if shard.status != "eligible":
        return Verdict("ineligible", shard.reason)
    if result is None:
        return Verdict("not_evaluated", "no evaluation result for this shard and recipe")
    if result.status != "ok":
        return Verdict("failed", f"evaluation failed: {result.reason}")
    return Verdict("scored")
