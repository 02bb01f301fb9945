"""Deduplication across all miners of an epoch, and against the evaluation set: exact and near-duplicate.

Every miner is compared with every other one (not a sample, unlike the reference validator). Exact copies are
found by the sha256 of a row's canonical JSON; near copies (reworded, re-cased, re-punctuated, turns reordered) by
MinHash + LSH over the rows' normalised words (`core.neardup`), when the miners' row texts are given. Miners are
processed in commitment order (block, then uid): the earliest commitment keeps a row, later copies are dropped. A
miner more than `max_duplicate_fraction` of whose used rows an earlier miner already committed is ineligible; so is
a miner more than `max_leak_fraction` of whose rows are (near) copies of eval-set rows (leakage). Leaked rows are
dropped and counted either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from flock_pipeline.core.neardup import NearDupConfig, Shingles, earliest_near_duplicates, signatures


@dataclass(frozen=True)
class DedupConfig:
    max_duplicate_fraction: float = 0.2  # above this share of rows copied from earlier miners: ineligible
    max_leak_fraction: float = 0.5  # above this share of rows found in the eval set: ineligible
    near: NearDupConfig | None = NearDupConfig()  # None: exact matching only

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
    row_texts: tuple[str, ...] | None = None  # the rows' texts (turn contents), for near-duplicate matching

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
    near_duplicates: int = 0  # of duplicates_earlier + eval_leaks: the ones matched as near (not exact) copies
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
                config: DedupConfig = DedupConfig(), eval_texts: tuple[str, ...] = ()) -> dict[str, ShardPlan]:
    """Plan every miner's shard. Returns hotkey -> ShardPlan.

    A row belongs to the miner that committed it first: the smallest (block, uid) over every miner holding it.
    Near-duplicate matching runs when `config.near` is set and every miner carries its row texts.
    """
    owner: dict[str, tuple[int, int]] = {}  # row hash -> (block, uid) of its first committer
    for miner in miners:
        for index, row_hash in enumerate(miner.row_hashes):
            claim = (miner.block_of(index), miner.uid)
            if row_hash not in owner or claim < owner[row_hash]:
                owner[row_hash] = claim
    near = _near_sources(miners, eval_texts, config.near)
    plans: dict[str, ShardPlan] = {}
    for miner in commitment_order(miners):
        plan = ShardPlan(hotkey=miner.hotkey, uid=miner.uid, rows_in=len(miner.row_hashes))
        seen_here: set[str] = set()
        copied: Counter[int] = Counter()
        near_here = near.get(miner.hotkey, {})
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
            source = near_here.get(index)
            if source is not None:
                plan.near_duplicates += 1
                if source == EVAL_SOURCE:
                    plan.eval_leaks += 1
                else:
                    plan.duplicates_earlier += 1
                    copied[source] += 1
                continue
            plan.kept_indices.append(index)
        plan.duplicated_from = dict(copied)
        plan.reason = _ineligibility(plan, config)
        plans[miner.hotkey] = plan
    return plans


EVAL_SOURCE = -1  # the "uid" of the eval set as a near-duplicate source


def _near_sources(miners: list[MinerRows], eval_texts: tuple[str, ...],
                  config: NearDupConfig | None) -> dict[str, dict[int, int]]:
    """hotkey -> {row index: uid of the earlier miner it nearly copies, or EVAL_SOURCE}."""
    if config is None or not miners or any(m.row_texts is None for m in miners):
        return {}
    texts, claims, groups, owners = [], [], [], []
    for text in eval_texts:
        texts.append(text)
        claims.append((-1, -1))
        groups.append(-1)
        owners.append(None)
    for g, miner in enumerate(miners):
        for index, text in enumerate(miner.row_texts):
            texts.append(text)
            claims.append((miner.block_of(index), miner.uid))
            groups.append(g)
            owners.append((miner.hotkey, index))
    order = sorted(range(len(claims)), key=claims.__getitem__)
    rank = np.empty(len(claims), dtype=np.int64)
    rank[order] = np.arange(len(claims))
    shingles = Shingles.of(texts)
    sig = signatures(shingles, config)
    source = earliest_near_duplicates(sig, rank, np.asarray(groups, dtype=np.int64), config, shingles)
    out: dict[str, dict[int, int]] = {}
    for i in np.nonzero(source >= 0)[0]:
        if owners[i] is None:
            continue
        hotkey, index = owners[i]
        j = int(source[i])
        out.setdefault(hotkey, {})[index] = EVAL_SOURCE if groups[j] == -1 else miners[groups[j]].uid
    return out


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
