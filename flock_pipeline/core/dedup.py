"""Exact deduplication across all miners of an epoch, and against the evaluation set.

Every miner is compared with every other one (not a sample, unlike the reference validator). Rows are identified
by the sha256 of their canonical JSON. Miners are processed in commitment order (block, then uid): the earliest
commitment keeps a row, later copies are dropped. A miner whose used rows are mostly rows that an earlier miner
already committed is ineligible; a miner whose rows are mostly eval-set rows is ineligible too (leakage).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DedupConfig:
    max_duplicate_fraction: float = 0.5  # above this share of rows copied from earlier miners: ineligible
    max_leak_fraction: float = 0.5  # above this share of rows found in the eval set: ineligible

    def __post_init__(self) -> None:
        for name in ("max_duplicate_fraction", "max_leak_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class MinerRows:
    """One miner's used rows, in file order, as row hashes.

    `row_blocks` (optional, same length) is the block at which this miner first committed each row, when it was
    already in an earlier revision: re-committing an updated dataset must not hand its old rows to someone who
    copied them in between. Without it every row counts from `commit_block`.
    """

    hotkey: str
    uid: int
    commit_block: int
    row_hashes: tuple[str, ...]
    row_blocks: tuple[int, ...] | None = None

    def block_of(self, index: int) -> int:
        if self.row_blocks is None:
            return self.commit_block
        return min(self.row_blocks[index], self.commit_block)


@dataclass
class ShardPlan:
    """What dedup decided for one miner."""

    hotkey: str
    uid: int
    kept_indices: list[int] = field(default_factory=list)  # indices into the miner's used rows
    duplicates_within: int = 0  # rows repeated inside the miner's own file
    duplicates_earlier: int = 0  # rows an earlier commitment already contributed
    duplicated_from: dict[int, int] = field(default_factory=dict)  # earlier uid -> rows copied from it
    eval_leaks: int = 0  # rows that are in the eval set
    rows_in: int = 0
    reason: str | None = None  # why the miner is ineligible, None when eligible

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def rows_kept(self) -> int:
        return len(self.kept_indices)


def commitment_order(miners: list[MinerRows]) -> list[MinerRows]:
    """Earliest commitment first; uid breaks ties within a block."""
    return sorted(miners, key=lambda m: (m.commit_block, m.uid))


def deduplicate(miners: list[MinerRows], eval_hashes: frozenset[str] | set[str] = frozenset(),
                config: DedupConfig = DedupConfig()) -> dict[str, ShardPlan]:
    """Plan every miner's shard. Returns hotkey -> ShardPlan.

    A row belongs to the miner that committed it first: the smallest (block, uid) over every miner holding it.
    """
    owner: dict[str, tuple[int, int]] = {}  # row hash -> (block, uid) of its first committer
    for miner in miners:
        for index, row_hash in enumerate(miner.row_hashes):
            claim = (miner.block_of(index), miner.uid)
            if row_hash not in owner or claim < owner[row_hash]:
                owner[row_hash] = claim
    plans: dict[str, ShardPlan] = {}
    for miner in commitment_order(miners):
        plan = ShardPlan(hotkey=miner.hotkey, uid=miner.uid, rows_in=len(miner.row_hashes))
        seen_here: set[str] = set()
        copied: Counter[int] = Counter()
        for index, row_hash in enumerate(miner.row_hashes):
            if row_hash in eval_hashes:
                plan.eval_leaks += 1
                continue
            if row_hash in seen_here:
                plan.duplicates_within += 1
                continue
            seen_here.add(row_hash)
            first_uid = owner[row_hash][1]
            if first_uid != miner.uid:
                plan.duplicates_earlier += 1
                copied[first_uid] += 1
                continue
            plan.kept_indices.append(index)
        plan.duplicated_from = dict(copied)
        plan.reason = _ineligibility(plan, config)
        plans[miner.hotkey] = plan
    return plans


def _ineligibility(plan: ShardPlan, config: DedupConfig) -> str | None:
    if plan.rows_in == 0:
        return "no rows to deduplicate"
    dup_share = plan.duplicates_earlier / plan.rows_in
    if dup_share > config.max_duplicate_fraction:
        sources = ", ".join(f"uid {uid}: {n}" for uid, n in sorted(plan.duplicated_from.items()))
        return (f"duplicate: {plan.duplicates_earlier}/{plan.rows_in} rows ({dup_share:.0%}) were committed "
                f"earlier by another miner ({sources})")
    leak_share = plan.eval_leaks / plan.rows_in
    if leak_share > config.max_leak_fraction:
        return f"eval leakage: {plan.eval_leaks}/{plan.rows_in} rows ({leak_share:.0%}) are eval-set rows"
    if plan.rows_kept == 0:
        return "no rows left after deduplication"
    return None
