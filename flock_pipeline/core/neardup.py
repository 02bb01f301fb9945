"""Near-duplicate detection across every row of every miner (and the eval set): MinHash + LSH in numpy, then an
exact check.

A row's text is the contents of its turns (the system prompt is left out: changing it is free), folded as a reader
sees it (`core.textnorm.fold`: invisible characters removed, look-alike letters and spelled-out numbers mapped to one
form, case, whitespace and punctuation dropped). Its shingles are the set of its words and
of its neighbouring word pairs, so reordering turns or rows, case, whitespace and punctuation change nothing and
rewording a word changes a few shingles. Each distinct word gets a stable 64-bit hash (blake2b); pairs are mixed from
their words' hashes in numpy, for all rows at once.

Rows written from one template about different things (two countries' capitals) share most of their words but
not their rare ones (the names and values), so a pair must also agree on its rare words: those in few rows
(`rare_rows`, `rare_fraction`), and the earlier row's rare words, each weighted by its rarity (log of rows over
rows with it), must be in the later row for at least `rare_weight_share` of their weight, its two rarest among them.
A copy keeps them; rewording changes common words, which weigh little; two rows about different places that share a
template and a value ("... is crossed by the Mitor river") differ in a name, one of the two rarest words, even where a
small network counts template words as rare. Rarity is counted over the rows that come before the later row's whole
group (`prefix_end`), so rows added later never change a decision.

MinHash: `num_perm` multiply-shift hashes of every shingle, the minimum per row. LSH: the signature is cut into
`bands` bands; rows that agree on a whole band are candidates. Within a band bucket each row is paired with the
earliest-ranked row of another group in it (so a bucket of a thousand copies costs a thousand checks, not half a
million). A candidate pair whose estimated similarity is clearly above `threshold` counts, one clearly below does
not, and one in between is decided by the exact Jaccard similarity of the two shingle sets, so estimation noise does
not turn two different rows in one template into "copies". A candidate whose similarity is lower still counts when
the earlier row is contained in the later one (`containment` of its shingles and of its rare words): an earlier row
with additions around it is a copy.

Containment is also looked for from the earlier row's side, whatever the two rows' overall similarity: each row's
two rarest words (counted over the rows before its group's end) index it, and every later row of another group that
holds both, while they are still rare there, is a candidate. A row hidden inside a merged row, or a short answer with
a sentence of the copier's own around it, is found though LSH would rarely propose the pair.

A light rewording (two common words of each turn swapped for synonyms) leaves a short row's Jaccard similarity near
0.5, where the same fact in another wording also lands, so it is told apart by order instead: a candidate whose words
differ from the earlier row's in at most `reword_share` of the longer row's words (word-level edit distance:
substituted, inserted or deleted words, in place) is a copy when it keeps the earlier row's two rarest words and half
of its rare words' weight. Another wording of a fact moves and changes half of its words or more (the atlas's
templates: 0.50 to 0.92 of them); two swaps in a 12-word row change 0.33. Rows with a shared preamble or template
opening left out (`trimmed`) are matched by similarity alone: what is left of a templated sentence without its first
words sits inside, or a few words from, other wordings of the same fact.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein

from flock_pipeline.core.schema import ChatRow
from flock_pipeline.core.textnorm import PART_SEPARATOR, fold

TURN_SEPARATOR = PART_SEPARATOR  # between the turns of a row's text (folding turns it into a word break)
_PAIR_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.iinfo(np.uint32).max
SKETCH = 16  # rare words kept per row for the vectorised rare-word checks (rows rarely have more)
RAREST_KEPT = 2  # the earlier row's rarest words a near copy must keep, whatever their share (its name and value)
PAD = np.uint64(np.iinfo(np.uint64).max)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class NearDupConfig:
    threshold: float = 0.65  # Jaccard similarity of two rows' shingle sets at or above which they are copies
    num_perm: int = 64  # MinHash values per row
    bands: int = 16  # LSH bands (num_perm / bands values each): a pair at 0.65 is a candidate with p > 0.95
    exact_margin: float = 0.15  # estimates within this of the threshold are decided by the exact similarity
    rare_agreement: float = 0.5  # a copy must also share this much (Jaccard) of the two rows' rare words
    containment: float = 0.9  # or: this share of the earlier row's shingles and rare words is in the later row
    rare_weight_share: float = 0.8  # and this share of the earlier row's rare words, weighted by rarity, is in it
    rare_rows: int = 50  # a word in at most max(rare_rows, rare_fraction * rows) rows is rare (names, values)
    rare_fraction: float = 0.002
    # or: the two rows differ in at most this share of their words (word-level edit distance over the longer row's
    # words), the earlier row's two rarest words in the later one and `reword_rare_share` of its rare words' weight:
    # a few common words swapped for synonyms (0: off)
    reword_share: float = 0.35
    reword_rare_share: float = 0.5
    seed: int = 1  # the hash family (fixed: the same rows always give the same signatures)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm <= 0 or self.bands <= 0 or self.num_perm % self.bands:
            raise ValueError("num_perm must be a positive multiple of bands")
        if not 0.0 <= self.exact_margin < 1.0:
            raise ValueError(f"exact_margin must be in [0, 1), got {self.exact_margin}")
        if not 0.0 <= self.reword_share < 1.0:
            raise ValueError(f"reword_share must be in [0, 1), got {self.reword_share}")


normalize = fold  # the matching form of a text


def row_text(row: ChatRow) -> str:
    """The contents of the row's turns, user and assistant alternating, joined by TURN_SEPARATOR."""
    return TURN_SEPARATOR.join(turn.content for turn in row.turns)


class _WordHashes(dict):
    def __missing__(self, word: str) -> int:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        self[word] = h
        return h


@dataclass
class Shingles:
    """All rows' word hashes, flat, with row offsets (row i's words are words[offsets[i]:offsets[i + 1]])."""

    words: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = rows + 1
    counted: np.ndarray | None = None  # bool per row: counted for word rarity (default: every row)
    vocabulary: np.ndarray | None = None  # the distinct word hashes, sorted (default: found from `words`)
    _counts: dict | None = field(default=None, repr=False)  # the index _rare_index builds once

    @classmethod
    def of(cls, texts: Sequence[str], folded: bool = False) -> Shingles:
        """`folded`: the texts are already `fold`ed (their words separated by single spaces)."""
        table = _WordHashes()
        flat = array("Q")
        lengths = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            words = (text if folded else normalize(text)).split()
            lengths[i] = len(words)
            flat.extend(map(table.__getitem__, words))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.frombuffer(flat, dtype=np.uint64) if len(flat) else np.zeros(0, np.uint64), offsets,
                   vocabulary=np.sort(np.fromiter(table.values(), dtype=np.uint64, count=len(table))))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(pair hash at each word position but the last, whether that position starts a pair inside its row)."""
        w = self.words
        if len(w) < 2:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        with np.errstate(over="ignore"):
            pairs = (w[:-1] * _PAIR_MIX) ^ w[1:]
        valid = np.ones(len(w) - 1, dtype=bool)
        ends = self.offsets[1:-1] - 1  # the last word of each row but the last row pairs with nothing
        valid[ends[(ends >= 0) & (ends < len(valid))]] = False
        return pairs, valid

    def _rare_index(self) -> dict:
        """(word id, row) once per row that has the word and is `counted`, sorted: the rows with a word before a
        given row are two searchsorted calls away. Built once."""
        if self._counts is None:
            n = len(self)
            vocabulary = self.vocabulary if self.vocabulary is not None else _unique(self.words)
            inverse = np.searchsorted(vocabulary, self.words)  # dense word ids
            row_of_word = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.offsets))
            counted = self.counted if self.counted is not None else np.ones(n, dtype=bool)
            keep = counted[row_of_word]
            self._counts = {"inverse": inverse, "counted_before": np.concatenate([[0], np.cumsum(counted)]),
                            "keys": _unique(inverse[keep].astype(np.int64) * (n + 1) + row_of_word[keep])}
        return self._counts

    def _rare(self, rows: np.ndarray, config: NearDupConfig, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sketch, weights) of `rows`. The sketch: the rare words of rows[k] among the `counted` rows [0, ends[k])
        -- those in at most max(rare_rows, rare_fraction x those rows) of them -- as a [len(rows), SKETCH] array of
        each row's distinct rare words, smallest hashes first (at most SKETCH), padded with PAD. The weights: each
        word's rarity, log((rows + 1) / rows with it) over the counted rows [0, ends[k]) (0 for PAD): names and
        values (in few rows) weigh more than template words. Vectorised, for many rows at once."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full((len(rows), SKETCH), PAD, dtype=np.uint64)
        weight = np.zeros((len(rows), SKETCH), dtype=np.float64)
        if len(rows) == 0:
            return out, weight
        index, n = self._rare_index(), len(self)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        starts = np.repeat(self.offsets[rows] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        positions = starts + np.arange(int(lengths.sum()), dtype=np.int64)
        end_of = np.asarray(ends, dtype=np.int64)[owner]
        base = index["inverse"][positions].astype(np.int64) * (n + 1)
        keys = index["keys"]
        rows_with = np.searchsorted(keys, base + end_of) - np.searchsorted(keys, base)
        counted = index["counted_before"][end_of]
        limit = np.maximum(config.rare_rows, config.rare_fraction * counted)
        rare = rows_with <= limit
        owner, words = owner[rare], self.words[positions][rare]
        idf = np.log((counted[rare] + 1.0) / np.maximum(rows_with[rare], 1))
        order = np.lexsort((words, owner))
        owner, words, idf = owner[order], words[order], idf[order]
        distinct = np.ones(len(words), dtype=bool)
        distinct[1:] = (owner[1:] != owner[:-1]) | (words[1:] != words[:-1])
        owner, words, idf = owner[distinct], words[distinct], idf[distinct]
        first = np.searchsorted(owner, owner)  # each entry's position within its row's run
        slot = np.arange(len(owner)) - first
        fits = slot < SKETCH
        out[owner[fits], slot[fits]] = words[fits]
        weight[owner[fits], slot[fits]] = idf[fits]
        return out, weight

    def row_words(self, i: int) -> list[int]:
        return self.words[self.offsets[i]:self.offsets[i + 1]].tolist()

    def row_set(self, i: int) -> set[int]:
        w = self.words[self.offsets[i]:self.offsets[i + 1]].tolist()
        mix = int(_PAIR_MIX)
        return set(w).union(((x * mix) & _MASK64) ^ y for x, y in zip(w, w[1:]))


def _unique(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values: by sorting, which for these integer arrays is many times faster than
    `np.unique`'s hash table (numpy 2.4: 7 s against 0.04 s for five million int64)."""
    values = np.sort(values)
    distinct = np.ones(len(values), dtype=bool)
    distinct[1:] = values[1:] != values[:-1]
    return values[distinct]


def _hash_family(config: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(config.seed))
    mult = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    xor = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
    return mult, xor


def _segment_min(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Minimum of values[start:start + length] per segment; _EMPTY for empty segments."""
    out = np.full(len(starts), _EMPTY, dtype=np.uint32)
    nonempty = lengths > 0
    if nonempty.any():
        out[nonempty] = np.minimum.reduceat(values, starts[nonempty])
    return out


def signatures(shingles: Shingles, config: NearDupConfig = NearDupConfig()) -> np.ndarray:
    """MinHash signatures [rows, num_perm] (uint32). A row without words gets all-max values, which match nothing
    but another empty row."""
    n = len(shingles)
    sig = np.empty((n, config.num_perm), dtype=np.uint32)
    mult, xor = _hash_family(config)
    row_of_word = np.repeat(np.arange(n), np.diff(shingles.offsets))
    pairs, valid = shingles.pairs()
    rows = np.concatenate([row_of_word, row_of_word[:-1][valid]])
    order = np.argsort(rows, kind="stable")  # every row's words and pairs side by side
    values = np.concatenate([shingles.words, pairs[valid]])[order]
    counts = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    with np.errstate(over="ignore"):
        for p in range(config.num_perm):
            hashed = (((values ^ xor[p]) * mult[p]) >> np.uint64(32)).astype(np.uint32)
            sig[:, p] = _segment_min(hashed, starts, counts)
    return sig


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows (broadcasts)."""
    return (a == b).mean(axis=-1)


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def containment(inner: set, outer: set) -> float:
    """The share of `inner` that is in `outer` (1.0 for an empty `inner`)."""
    return len(inner & outer) / len(inner) if inner else 1.0


def _band_key(block: np.ndarray) -> np.ndarray:
    """One 64-bit key per row for a band of uint32 values (a rare collision only adds a candidate, which the
    similarity check then judges)."""
    key = np.zeros(block.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(block.shape[1]):
            key = (key ^ block[:, j].astype(np.uint64)) * _PAIR_MIX
    return key


def _band_candidates(sig: np.ndarray, rank: np.ndarray, group: np.ndarray, config: NearDupConfig):
    """(row, candidate) pairs from every band: each row with its bucket's earliest row of another group."""
    n = sig.shape[0]
    width = config.num_perm // config.bands
    rows_out, cand_out = [], []
    for band in range(config.bands):
        key = _band_key(sig[:, band * width:(band + 1) * width])
        order = np.lexsort((rank, key))  # by key, then earliest first
        sorted_key = key[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_key[1:] != sorted_key[:-1]
        run_id = np.cumsum(starts) - 1
        run_start = np.nonzero(starts)[0]
        head = order[run_start[run_id]]  # each row's bucket head (earliest in its bucket)
        # when the head is of the row's own group, the earliest member of another group is the candidate
        other = np.where(group[order] != group[head], np.arange(n), n)
        first_other = np.minimum.reduceat(other, run_start)[run_id]
        second = np.where(first_other < n, order[np.minimum(first_other, n - 1)], -1)
        candidate = np.where(group[order] != group[head], head, second)
        keep = (candidate >= 0) & (candidate != order)
        rows_out.append(order[keep])
        cand_out.append(candidate[keep])
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    cands = np.concatenate(cand_out) if cand_out else np.zeros(0, np.int64)
    keep = (group[cands] != group[rows]) & (rank[cands] < rank[rows])
    key = _unique(rows[keep].astype(np.int64) * n + cands[keep])
    return key // n, key % n


def _anchor_candidates(shingles: Shingles, rank: np.ndarray, group: np.ndarray, config: NearDupConfig,
                       ends: np.ndarray, own: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate) pairs found from the earlier row's side: each row's rarest word (counted over the rows before
    its group's end, so later rows change nothing) is its anchor, and every later row of another group that holds the
    anchor, while the anchor is still rare there, is paired with it. A row hidden inside a merged or padded row is
    then a candidate however low the two rows' overall similarity; the checks that follow decide."""
    n = len(shingles)
    rows = np.arange(n, dtype=np.int64)
    sketch, weight = own  # every row's rare words and their weights, counted at its own `ends`
    has = (sketch != PAD).any(axis=1)
    if not has.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    by_rarity = np.argsort(-np.where(sketch != PAD, weight, -1.0), axis=1, kind="stable")[:, :RAREST_KEPT]
    rarest = np.take_along_axis(sketch, by_rarity, axis=1)[has]  # the anchor, then the next rarest (or PAD)
    anchored = rows[has]
    index = shingles._rare_index()
    vocabulary = shingles.vocabulary if shingles.vocabulary is not None else _unique(shingles.words)
    word_id = np.searchsorted(vocabulary, rarest[:, 0]).astype(np.int64)
    row_of_word = np.repeat(rows, np.diff(shingles.offsets))
    occurrences = _unique(index["inverse"].astype(np.int64) * (n + 1) + row_of_word)  # (word, row), any row
    lo = np.searchsorted(occurrences, word_id * (n + 1))
    hi = np.searchsorted(occurrences, word_id * (n + 1) + n + 1)
    counts = hi - lo
    cands = np.repeat(anchored, counts)
    at = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(int(counts.sum()))
    holders = occurrences[at] % (n + 1)
    keep = (group[holders] != group[cands]) & (rank[cands] < rank[holders])
    holders, cands, words = holders[keep], cands[keep], np.repeat(word_id, counts)[keep]
    # the next rarest word must be there too (a near copy keeps its row's rarest words): same-template rows that
    # share one value (a capital's name) are no candidates
    second = np.repeat(rarest[:, 1], counts)[keep]
    second_id = np.searchsorted(vocabulary, second).astype(np.int64)
    probe = second_id * (n + 1) + holders
    found = occurrences[np.minimum(np.searchsorted(occurrences, probe), len(occurrences) - 1)] == probe
    keep = (second == PAD) | found
    holders, cands, words = holders[keep], cands[keep], words[keep]
    # still rare where the later row is judged (the same count as its rare words'), which also bounds the pairs
    keys = index["keys"]
    end = ends[holders]
    with_word = np.searchsorted(keys, words * (n + 1) + end) - np.searchsorted(keys, words * (n + 1))
    counted = index["counted_before"][end]
    rare = with_word <= np.maximum(config.rare_rows, config.rare_fraction * counted)
    return holders[rare], cands[rare]


def _candidate_pairs(sig: np.ndarray, rank: np.ndarray, group: np.ndarray, config: NearDupConfig,
                     shingles: Shingles | None, ends: np.ndarray,
                     own: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, candidate, estimated similarity) of the pairs worth checking, per row earliest candidate first: the LSH
    band pairs whose estimate is near the threshold or says the earlier row may be contained in the later one, and
    (with `shingles`) every pair found from the earlier row's rarest words."""
    n = sig.shape[0]
    rows, cands = _band_candidates(sig, rank, group, config)
    exact = shingles is not None
    anchored = np.zeros(len(rows), dtype=bool)
    if exact:
        a_rows, a_cands = _anchor_candidates(shingles, rank, group, config, ends, own)
        a_key = a_rows * n + a_cands
        key = _unique(np.concatenate([rows.astype(np.int64) * n + cands, a_key]))
        anchored = np.zeros(len(key), dtype=bool)
        anchored[np.searchsorted(key, a_key)] = True
        rows, cands = key // n, key % n
    est = similarity(sig[rows], sig[cands])
    keep = (est >= config.threshold - (config.exact_margin if exact else 0.0)) | anchored
    if exact:  # or the earlier row may be contained in this one: containment estimated from J and the set sizes
        size = (2 * np.diff(shingles.offsets) - 1).clip(min=1).astype(np.float64)
        contained = est * (size[rows] + size[cands]) / ((1 + est) * size[cands])
        longer = size[rows] >= 1.25 * size[cands]  # containment is only the question when this row has additions
        keep |= longer & (contained >= config.containment - config.exact_margin)
    rows, cands, est = rows[keep], cands[keep], est[keep]
    order = np.lexsort((rank[cands], rows))  # per row, earliest candidate first
    return rows[order], cands[order], est[order]


def earliest_near_duplicates(sig: np.ndarray, rank: np.ndarray, group: np.ndarray,
                             config: NearDupConfig = NearDupConfig(),
                             shingles: Shingles | None = None, prefix_end: np.ndarray | None = None,
                             trimmed: np.ndarray | None = None) -> np.ndarray:
    """For each row, the index of an earlier-ranked row of another group that it nearly duplicates, or -1.

    `rank`: smaller is earlier (who keeps a row); `group`: rows of one group (one miner, or the eval set) are never
    each other's source. Among the candidates that pass, the earliest-ranked is chosen (one that passes only as a
    rewording where no other does). With `shingles`, estimates
    within `exact_margin` of the threshold are decided by the exact similarity; without, by the estimate.
    `prefix_end[i]`: row i's rare words are counted over rows [0, prefix_end[i]) (its group's rows and the ones
    before them, in `shingles` order), so a decision between two rows depends on no later group; default: all rows.
    `trimmed[i]`: row i is another row with words its group shares on many rows left out (a preamble, or a
    template's opening words): matched by similarity only, never as contained in a later row or as a rewording
    (what is left of a templated answer without its opening words is inside, or a few words from, many other
    wordings of the same fact).
    """
    n = sig.shape[0]
    source = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return source
    rank = rank.astype(np.int64)
    exact = shingles is not None
    ends = prefix_end if prefix_end is not None else np.full(n, len(shingles) if exact else n, dtype=np.int64)
    # every row's rare words counted at its own group's end: the anchors, and the later side of every pair
    own = shingles._rare(np.arange(n, dtype=np.int64), config, ends) if exact else None
    rows, cands, est = _candidate_pairs(sig, rank, group, config, shingles, ends, own)
    if len(rows) == 0:
        return source
    if not exact:  # by the estimate alone: each row's earliest candidate clearly above the threshold
        for row, cand, e in zip(rows.tolist(), cands.tolist(), est.tolist()):
            if source[row] < 0 and e >= config.threshold:
                source[row] = cand
        return source
    checks = _rare_checks(shingles, config, rows, cands, ends, own, trimmed)
    return _verified(source, shingles, config, rows.tolist(), cands.tolist(), est.tolist(), checks)


@dataclass
class _PairChecks:
    """The rare-word checks of every candidate pair (lists, one entry per pair)."""

    rare_ok: list[bool]  # the two rows share enough of their rare words (Jaccard)
    rare_within: list[bool]  # the earlier row's rare words are in the later one
    names_kept: list[bool]  # the earlier row's rarest words and most of its rare words' weight are in the later one
    reword_ok: list[bool]  # may be a rewording: its two rarest words and half its rare words' weight kept
    whole: list[bool]  # the earlier row may be found contained in the later one (it is not a trimmed variant)


def _rare_checks(shingles: Shingles, config: NearDupConfig, rows: np.ndarray, cands: np.ndarray, ends: np.ndarray,
                 own: tuple[np.ndarray, np.ndarray], trimmed: np.ndarray | None) -> _PairChecks:
    """Both rows' rare words counted over the rows up to the later row's group's end (see the module), vectorised
    over the pairs."""
    n = len(shingles)
    a = own[0][rows]
    combos, at = np.unique(cands.astype(np.int64) * (n + 1) + ends[rows], return_inverse=True)
    b, b_weight = shingles._rare(combos // (n + 1), config, combos % (n + 1))  # once per (cand, end)
    b, b_weight = b[at], b_weight[at]
    size_a, size_b = (a != PAD).sum(axis=1), (b != PAD).sum(axis=1)
    # the earlier row's rare words, weighted by their rarity, must nearly all be in this one: two rows about
    # different things in one template differ in a name, which outweighs the template words a small network
    # counts as rare; a reworded common word weighs little
    same = (b[:, :, None] == a[:, None, :]) & (b != PAD)[:, :, None]  # b's word j is a's word i
    in_a = same.any(axis=2)
    share = (b_weight * in_a).sum(axis=1) / np.maximum(b_weight.sum(axis=1), 1e-12)
    top = np.argsort(-b_weight, axis=1, kind="stable")[:, :RAREST_KEPT]  # the earlier row's rarest words
    rarest_in_a = np.take_along_axis(in_a | (b == PAD), top, axis=1).all(axis=1)
    names_kept = (size_b == 0) | ((share >= config.rare_weight_share) & rarest_in_a)
    # a reworded copy keeps the names but may lose a template word a small network counts as rare
    reword_ok = (size_b > 0) & rarest_in_a & (share >= config.reword_rare_share) & (config.reword_share > 0)
    whole = np.ones(len(rows), dtype=bool)
    if trimmed is not None:
        reword_ok &= ~trimmed[rows] & ~trimmed[cands]
        whole = ~trimmed[cands]
    inter = same.sum(axis=(1, 2))
    union = size_a + size_b - inter
    both = (size_a > 0) & (size_b > 0)
    rare_ok = ~both | (inter >= config.rare_agreement * np.maximum(union, 1))
    rare_within = (size_b == 0) | (inter >= config.containment * size_b)  # b's rare words are in a
    return _PairChecks(rare_ok.tolist(), rare_within.tolist(), names_kept.tolist(), reword_ok.tolist(),
                       whole.tolist())


def _verified(source: np.ndarray, shingles: Shingles, config: NearDupConfig, rows: list[int], cands: list[int],
              est: list[float], checks: _PairChecks) -> np.ndarray:
    """`source` with each row's earliest candidate that passes: the rare-word checks, then (unless the estimate is
    clearly above the threshold) the exact similarity, the earlier row's containment, or, where neither passes
    for any candidate, a rewording."""
    judge = _Judge(shingles, config, checks)
    reworded: dict[int, int] = {}  # row -> its earliest candidate that passes as a rewording alone
    for k, (row, cand, e) in enumerate(zip(rows, cands, est)):
        if source[row] >= 0:
            continue  # already traced to an earlier source
        verdict = judge(k, row, cand, e, row not in reworded)
        if verdict == "copy":
            source[row] = cand
        elif verdict == "reworded":
            reworded[row] = cand
    for row, cand in reworded.items():  # the weaker evidence: only where no candidate is similar or contained
        if source[row] < 0:
            source[row] = cand
    return source


@dataclass
class _Judge:
    """One candidate pair's verdict: "copy", "reworded" (a copy only where no other candidate is one) or None; each
    row's shingle set and words computed once."""

    shingles: Shingles
    config: NearDupConfig
    checks: _PairChecks
    sets: dict = field(default_factory=dict)
    words: dict = field(default_factory=dict)

    def _set(self, i: int) -> set[int]:
        if i not in self.sets:
            self.sets[i] = self.shingles.row_set(i)
        return self.sets[i]

    def _words(self, i: int) -> list[int]:
        if i not in self.words:
            self.words[i] = self.shingles.row_words(i)
        return self.words[i]

    def __call__(self, k: int, row: int, cand: int, estimate: float, try_reword: bool) -> str | None:
        checks, config = self.checks, self.config
        rare_ok = checks.rare_ok[k]
        names = checks.names_kept[k] and (rare_ok or checks.rare_within[k])
        if not (names or checks.reword_ok[k]):  # the cheap checks first: they reject most same-template pairs
            return None
        if estimate >= config.threshold + config.exact_margin and rare_ok and names:
            return "copy"
        mine, theirs = self._set(row), self._set(cand)
        if names and rare_ok and jaccard(mine, theirs) >= config.threshold:
            return "copy"
        # or the earlier row is contained in this one, with additions around it
        if names and checks.rare_within[k] and checks.whole[k] and containment(theirs, mine) >= config.containment:
            return "copy"
        if try_reword and checks.reword_ok[k] and _reworded(self._words(row), self._words(cand), config):
            return "reworded"
        return None


def _reworded(a: list[int], b: list[int], config: NearDupConfig) -> bool:
    """Whether word sequences `a` and `b` differ in at most `reword_share` of the longer one's words (substituted,
    inserted or deleted words, in order): a copy with a few words swapped for synonyms. The same fact in another
    wording moves and changes most of its words (the atlas's templates: half of them or more)."""
    budget = int(config.reword_share * max(len(a), len(b)))
    if abs(len(a) - len(b)) > budget:
        return False
    return Levenshtein.distance(a, b, score_cutoff=budget) <= budget
