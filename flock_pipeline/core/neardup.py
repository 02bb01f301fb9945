"""Near-duplicate detection across every row of every miner (and the eval set), with MinHash + LSH in numpy.

A row's text is the contents of its turns (the system prompt is left out: changing it is free), normalised: Unicode
NFKC, lower case, everything but letters and digits turned into spaces. Its shingles are the set of its words and
of its word pairs, so reordering turns or rows, case, whitespace and punctuation change nothing and rewording a
few words changes a few shingles. Each word gets a stable 64-bit hash (blake2b, computed once per distinct word);
pairs are mixed from their words' hashes in numpy.

MinHash: `num_perm` multiply-shift hashes of every shingle, the minimum per row. LSH: the signature is cut into
`bands` bands of `num_perm / bands` values; rows that agree on a whole band are candidates, and a candidate pair
counts when the share of equal signature values (an estimate of the shingle sets' Jaccard similarity) reaches
`threshold`. Within a band bucket each row is checked against the earliest-ranked row of another group in it, so a
bucket of a thousand copies costs a thousand checks, not half a million.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flock_pipeline.core.schema import ChatRow

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class NearDupConfig:
    threshold: float = 0.65  # estimated Jaccard similarity of shingle sets at or above which two rows are copies
    num_perm: int = 128  # MinHash values per row (the estimate's standard error is about 0.04 at 0.7)
    bands: int = 32  # LSH bands (num_perm / bands values each): a pair at 0.65 is a candidate with p > 0.99
    seed: int = 1  # the hash family (fixed: the same rows always give the same signatures)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm <= 0 or self.bands <= 0 or self.num_perm % self.bands:
            raise ValueError("num_perm must be a positive multiple of bands")


def normalize(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def row_text(row: ChatRow) -> str:
    return " ".join(turn.content for turn in row.turns)


class Shingler:
    """Row text -> array of 64-bit shingle hashes (words and word pairs), with a per-word hash cache."""

    def __init__(self) -> None:
        self._words: dict[str, int] = {}

    def _word(self, word: str) -> int:
        h = self._words.get(word)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            self._words[word] = h
        return h

    def word_hashes(self, text: str) -> np.ndarray:
        words = normalize(text).split()
        return np.fromiter((self._word(w) for w in words), dtype=np.uint64, count=len(words))

    def __call__(self, text: str) -> np.ndarray:
        return shingles_of(self.word_hashes(text))


_PAIR_MIX = np.uint64(0x9E3779B97F4A7C15)


def shingles_of(words: np.ndarray) -> np.ndarray:
    """The distinct shingles of a word-hash sequence: the words and the ordered pairs of neighbours."""
    if len(words) == 0:
        return words
    with np.errstate(over="ignore"):
        pairs = (words[:-1] * _PAIR_MIX) ^ np.roll(words, -1)[:-1]
    return np.unique(np.concatenate([words, pairs]))


def _hash_family(config: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(config.seed))
    mult = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    xor = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
    return mult, xor


def signatures(shingle_sets: Sequence[np.ndarray], config: NearDupConfig = NearDupConfig(),
               chunk_shingles: int = 1 << 20) -> np.ndarray:
    """MinHash signatures [rows, num_perm] (uint32) of shingle-hash arrays. A row without shingles gets all-max
    values, which match nothing but another empty row."""
    n = len(shingle_sets)
    sig = np.full((n, config.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    mult, xor = _hash_family(config)
    start = 0
    while start < n:  # rows in chunks of about `chunk_shingles` shingles, to bound memory
        stop, total = start, 0
        while stop < n and (total == 0 or total + len(shingle_sets[stop]) <= chunk_shingles):
            total += len(shingle_sets[stop])
            stop += 1
        lengths = np.array([len(s) for s in shingle_sets[start:stop]])
        nonempty = np.nonzero(lengths)[0]
        if len(nonempty):
            flat = np.concatenate([shingle_sets[start + i] for i in nonempty])
            offsets = np.concatenate([[0], np.cumsum(lengths[nonempty])[:-1]])
            with np.errstate(over="ignore"):
                for p in range(config.num_perm):
                    h = ((flat ^ xor[p]) * mult[p]) >> np.uint64(32)
                    sig[start + nonempty, p] = np.minimum.reduceat(h, offsets).astype(np.uint32)
        start = stop
    return sig


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows (broadcasts)."""
    return (a == b).mean(axis=-1)


def earliest_near_duplicates(sig: np.ndarray, rank: np.ndarray, group: np.ndarray,
                             config: NearDupConfig = NearDupConfig()) -> np.ndarray:
    """For each row, the index of an earlier-ranked row of another group that it nearly duplicates, or -1.

    `rank`: smaller is earlier (who keeps a row); `group`: rows of one group (one miner, or the eval set) are never
    each other's source. Among the candidates found, the earliest-ranked one that passes the threshold is chosen.
    """
    n = sig.shape[0]
    source = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return source
    width = config.num_perm // config.bands
    best_rank = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    rank = rank.astype(np.int64)
    for band in range(config.bands):
        block = sig[:, band * width:(band + 1) * width]
        key = np.ascontiguousarray(block).view(np.dtype((np.void, block.dtype.itemsize * width))).ravel()
        order = np.lexsort((rank, key))  # by key, then earliest first
        sorted_key = key[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_key[1:] != sorted_key[:-1]
        run_id = np.cumsum(starts) - 1
        run_start = np.nonzero(starts)[0]
        first = order[run_start[run_id]]  # each row's bucket head (earliest in its bucket)
        # the bucket head may be of the row's own group: then try the earliest member of another group, found as
        # the first member whose group differs from the head's group
        head_group = group[first]
        other = group[order] != head_group
        idx = np.where(other, np.arange(n), n)
        # earliest position of an other-group member at or after each run start (min over the run, vectorised)
        run_min = np.minimum.reduceat(idx, run_start)
        second_pos = run_min[run_id]
        second = np.where(second_pos < n, order[np.minimum(second_pos, n - 1)], -1)
        rows = order
        candidate = np.where(group[rows] != head_group, first, second)
        valid = (candidate >= 0) & (candidate != rows)
        rows, candidate = rows[valid], candidate[valid]
        valid = (group[candidate] != group[rows]) & (rank[candidate] < rank[rows]) & (rank[candidate] < best_rank[rows])
        rows, candidate = rows[valid], candidate[valid]
        if len(rows) == 0:
            continue
        passing = similarity(sig[rows], sig[candidate]) >= config.threshold
        rows, candidate = rows[passing], candidate[passing]
        source[rows] = candidate
        best_rank[rows] = rank[candidate]
    return source
