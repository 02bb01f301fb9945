"""Deduplication across all miners of an epoch, and against the evaluation set: exact and near-duplicate.

Every miner is compared with every other one (not a sample, unlike the reference validator). Exact copies are
found by the sha256 of a row's canonical JSON; near copies (reworded, re-cased, re-punctuated, turns reordered,
invisible characters, look-alike letters, numbers spelled out) by MinHash + LSH over the rows' folded words
(`core.neardup`), when the miners' row texts are given, at the level the trainer sees as well as whole rows:

- each (user turn, assistant answer) exchange of a multi-turn row is matched on its own, so rows packed into one
  multi-turn row are copies of their sources (a row is a copy when at least half of its exchanges are);
- answers are matched on their own (folded, at least `MIN_ANSWER_WORDS` words), exactly and as near copies, against
  every earlier unit and the eval set's: a copied answer under a new question is a copy, a word inserted into it or a
  few reworded change nothing, since only answers are trained on;
- rows whose questions or answers start or end with text many of the miner's share (a fixed preamble or signature
  on a fifth of them or more) are also matched without it, so wrapping copied rows in the same added text hides
  nothing.

Miners are processed in commitment order (block, then uid): the earliest commitment keeps a row, later copies are
dropped. A miner more than `max_duplicate_fraction` of whose used rows an earlier miner already committed is
ineligible, with the uids it copied; so is a miner more than `max_leak_fraction` of whose rows are (near) copies of
eval-set rows (leakage). Leaked rows are dropped and counted either way.

Outcomes are monotone: whether a miner's row is kept depends only on the eval set and the commitments that came
before the miner's (and its own), never on later ones, so a later commitment can never lower an earlier miner's kept
rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from flock_pipeline.core.neardup import TURN_SEPARATOR, NearDupConfig, Shingles, earliest_near_duplicates, signatures
from flock_pipeline.core.textnorm import PART_SEPARATOR, fold, fold_parts

MATCHING_VERSION = 5  # bump when the matching rules change: recorded dedup plans of older rules are not reused
MIN_ANSWER_WORDS = 5  # shorter answers ("Paris.", "Yes, it is.") are common to honest rows: not matched alone
MIN_SIMILAR_ANSWER_WORDS = 4  # answers matched by similarity (with the rare-word checks): "X mostly exports wine."
ANSWER_CONTAINMENT = 0.85  # an earlier answer this contained in a later one is copied: one word inserted into a
# four-word answer leaves 6 of its 7 words and word pairs
AFFIX_MIN_WORDS = 3  # a shared prefix / suffix this long ...
AFFIX_SHARE = 0.2  # ... on at least this share of a miner's questions (or answers) ...
AFFIX_MIN_ROWS = 8  # ... and at least this many is left out of its texts before matching
AFFIX_AGREEMENT = 0.9  # an affix grows by a word while this share of the rows that have it go on with that word


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
    row_systems: tuple[str, ...] | None = None  # the rows' system prompts: one that carries a row is matched too

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
    copied_rows: dict[int, int] = field(default_factory=dict)  # row index -> the earlier uid it copies
    eval_leaks: int = 0  # rows that are in the eval set
    near_duplicates: int = 0  # of duplicates_earlier + eval_leaks: the ones matched as near (not exact) copies
    rows_in: int = 0
    reason: str | None = None  # why the miner is ineligible, None when eligible
    rule_views: dict[str, dict] = field(default_factory=dict)  # games with rule sets: each one's verdict on it
    advisory: str | None = None  # what the operator should see about it that changes no weight

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
                plan.copied_rows[index] = first_uid
                continue
            source = near_here.get(index)
            if source is not None:
                plan.near_duplicates += 1
                if source == EVAL_SOURCE:
                    plan.eval_leaks += 1
                else:
                    plan.duplicates_earlier += 1
                    copied[source] += 1
                    plan.copied_rows[index] = source
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
    ordered = commitment_order(miners)
    groups_rows = _groups_rows(ordered, eval_texts)
    units = _units_of(groups_rows, systems=_own_systems(ordered))  # with the prompts that carry a row of their own
    source = _unit_sources(units, config)
    uid_of = {g: (EVAL_SOURCE if g == -1 else ordered[g].uid) for g, _, _ in groups_rows}
    whole, parts = _matched_units(units, source, uid_of)
    answers = _units_of(groups_rows, answers=True)  # answers alone, matched among answers only
    answer_config = replace(config, containment=min(config.containment, ANSWER_CONTAINMENT))
    by_system, by_answer = _matched_units(answers, _unit_sources(answers, answer_config), uid_of)
    for key, uid in by_system.items():
        whole.setdefault(key, uid)
    for key, found in by_answer.items():
        for k, uid in found.items():
            parts.setdefault(key, {}).setdefault(k, uid)
    out: dict[str, dict[int, int]] = {}
    for g, rows, row_claims in groups_rows[1:]:
        hotkey = ordered[g].hotkey
        for index, variants in enumerate(rows):
            found = whole.get((g, index))
            if found is None and len(variants[0]):
                found = _row_source(variants, ordered[g].row_texts[index], parts.get((g, index), {}),
                                    _earlier_answer(units.answers, uid_of, g, row_claims[index]))
            if found is not None:
                out.setdefault(hotkey, {})[index] = found
    return out


_GroupRows = tuple[int, list[list[list[tuple[str, str]]]], list[tuple[int, int]]]


def _groups_rows(ordered: list[MinerRows], eval_texts: tuple[str, ...]) -> list[_GroupRows]:
    """(group, each row's variants, each row's claim) for the eval set (group -1), then each miner in commitment
    order: a row's variants are it as written, and without its group's added affixes when it has them."""
    groups_rows: list[_GroupRows] = [(-1, [[row] for row in _folded_rows(eval_texts)], [(-1, -1)] * len(eval_texts))]
    for g, miner in enumerate(ordered):
        groups_rows.append((g, _row_variants(_folded_rows(miner.row_texts)),
                            [(miner.block_of(i), miner.uid) for i in range(len(miner.row_texts))]))
    return groups_rows


@dataclass
class _Units:
    """The texts near-duplicate matching runs on (units) and, per unit, where it comes from; plus each long enough
    answer's earliest claim."""

    texts: list[str] = field(default_factory=list)
    claims: list[tuple[int, int]] = field(default_factory=list)  # (block, uid) of the row's committer
    groups: list[int] = field(default_factory=list)
    unit_rows: list[tuple[int, int]] = field(default_factory=list)  # (group, row index)
    unit_kind: list[int] = field(default_factory=list)  # -1: the row whole, else the exchange's index
    counted: list[bool] = field(default_factory=list)  # counts for word rarity
    trimmed: list[bool] = field(default_factory=list)  # a row without its group's shared affixes (a variant)
    prefix_end: list[int] = field(default_factory=list)  # one past the last unit of the unit's group
    answers: dict[str, tuple[tuple[int, int], int]] = field(default_factory=dict)  # folded answer -> (claim, group)


SYSTEM_UNIT = -2  # the unit kind of a system prompt that carries a row of its own


def _own_systems(ordered: list[MinerRows]) -> dict[tuple[int, int], str]:
    """(group, row) -> the folded system prompt of each row whose prompt is its own (no other row of its miner has
    it) and has at least MIN_SIMILAR_ANSWER_WORDS words: where a copied row can hide. A miner's common prompt, or
    the default one, is not matched."""
    out: dict[tuple[int, int], str] = {}
    folds: dict[str, str] = {}  # most rows share a few prompts: each distinct one is folded once
    for g, miner in enumerate(ordered):
        folded = [folds[s] if s in folds else folds.setdefault(s, fold(s)) for s in (miner.row_systems or ())]
        counts = Counter(folded)
        out.update({(g, i): s for i, s in enumerate(folded)
                    if counts[s] == 1 and s.count(" ") + 1 >= MIN_SIMILAR_ANSWER_WORDS})
    return out


def _units_of(groups_rows: list[_GroupRows], answers: bool = False,
              systems: dict[tuple[int, int], str] | None = None) -> _Units:
    """The units of every group: every variant of a row whole, and each exchange of a multi-turn one (`answers`:
    each answer of at least MIN_ANSWER_WORDS words alone, what the trainer learns from); a group's units together,
    groups in commitment order; only a row (an answer) as written counts for word rarity. Also each long enough
    answer's earliest claim, for matching answers exactly."""
    units = _Units()
    for g, rows, row_claims in groups_rows:
        first = len(units.texts)
        for index, (variants, claim) in enumerate(zip(rows, row_claims)):
            own_system = (systems or {}).get((g, index))
            for v, row in enumerate(variants):
                units_here = _answer_units(row) if answers else _row_units(row)
                if own_system and v == 0 and not answers:
                    units_here.append((SYSTEM_UNIT, own_system))  # matched like the row whole
                for kind, text in units_here:
                    units.texts.append(text)
                    units.claims.append(claim)
                    units.groups.append(g)
                    units.unit_rows.append((g, index))
                    units.unit_kind.append(kind)
                    units.counted.append(v == 0 and (answers or kind == -1))
                    units.trimmed.append(v > 0)
                if not answers:
                    _note_answers(units.answers, row, claim, g)
        units.prefix_end.extend([len(units.texts)] * (len(units.texts) - first))
    return units


def _row_units(row: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(kind, text) of a row's units: the row whole (kind -1), then each exchange of a multi-turn row (its index)."""
    units = [(-1, " ".join(f"{q} {a}" for q, a in row))]
    if len(row) > 1:
        units += [(k, f"{q} {a}") for k, (q, a) in enumerate(row)]
    return units


def _answer_units(row: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(exchange index, answer) of a row's answers of at least MIN_SIMILAR_ANSWER_WORDS words: matched by similarity
    among answers alone, so a new question and a word inserted into a copied answer hide nothing."""
    return [(k, a) for k, (_q, a) in enumerate(row) if a.count(" ") + 1 >= MIN_SIMILAR_ANSWER_WORDS]


def _note_answers(answers: dict[str, tuple[tuple[int, int], int]], row: list[tuple[str, str]],
                  claim: tuple[int, int], g: int) -> None:
    """Records the row's long enough answers under `claim` where it is the earliest: answers are matched alone."""
    for _q, answer in row:
        if len(answer.split()) >= MIN_ANSWER_WORDS and (answer not in answers or claim < answers[answer][0]):
            answers[answer] = (claim, g)


def _unit_sources(units: _Units, config: NearDupConfig) -> np.ndarray:
    """Per unit, the index of the earliest unit of another group it nearly copies (negative: none), from
    `earliest_near_duplicates` with the units ranked by claim."""
    claims = units.claims
    order = sorted(range(len(claims)), key=claims.__getitem__)
    rank = np.empty(len(claims), dtype=np.int64)
    rank[order] = np.arange(len(claims))
    shingles = Shingles.of(units.texts, folded=True)
    shingles.counted = np.asarray(units.counted, dtype=bool)
    sig = signatures(shingles, config)
    return earliest_near_duplicates(sig, rank, np.asarray(units.groups, dtype=np.int64), config, shingles,
                                    np.asarray(units.prefix_end, dtype=np.int64), np.asarray(units.trimmed, dtype=bool))


def _matched_units(units: _Units, source: np.ndarray, uid_of: dict[int, int]
                   ) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], dict[int, int]]]:
    """The source uids of the matched units: (group, row) -> uid for rows matched whole, and (group, row) ->
    {exchange: uid} for exchanges matched alone; the first match of each is kept."""
    groups = units.groups
    whole: dict[tuple[int, int], int] = {}
    parts: dict[tuple[int, int], dict[int, int]] = {}
    for u, (g, index) in enumerate(units.unit_rows):
        if source[u] >= 0 and groups[int(source[u])] != g:
            found = uid_of[groups[int(source[u])]]
            if units.unit_kind[u] in (-1, SYSTEM_UNIT):
                whole.setdefault((g, index), found)
            else:
                parts.setdefault((g, index), {}).setdefault(units.unit_kind[u], found)
    return whole, parts


def _earlier_answer(answers: dict[str, tuple[tuple[int, int], int]], uid_of: dict[int, int], g: int,
                    claim: tuple[int, int]):
    """`earlier(folded answer)`: the uid of an earlier row of another group with that answer, or None, for the row
    of group `g` claimed at `claim`."""

    def earlier(answer: str) -> int | None:
        owner = answers.get(answer)
        return uid_of[owner[1]] if owner is not None and owner[1] != g and owner[0] < claim else None

    return earlier


def _row_source(variants: list[list[tuple[str, str]]], raw_text: str, exchanges: dict[int, int],
                earlier) -> int | None:
    """The uid a row not matched whole copies, or None: the most common source of its exchanges, when at least half
    of them are copies (matched as exchanges, by their answer alone or containing an earlier answer)."""
    sources = dict(exchanges)
    for row in variants:
        for k, (_q, answer) in enumerate(row):
            uid = earlier(answer) if k not in sources else None
            if uid is not None:
                sources[k] = uid
    raw_answers = raw_text.split(TURN_SEPARATOR)[1::2]
    for k, raw in enumerate(raw_answers):  # containment: an earlier answer among this one's sentences
        if k not in sources and _SENTENCE_END.search(raw):
            found_k = _contained_answer(raw, earlier)
            if found_k is not None:
                sources[k] = found_k
    if sources and 2 * len(sources) >= len(variants[0]):
        return Counter(sources.values()).most_common(1)[0][0]
    return None


_SENTENCE_END = re.compile(r"(?<=[.!?;:,]) +(?=\S)")  # clauses within a turn (turns: TURN_SEPARATOR): answers
# merged into one with "; " or ", " are found as runs of its clauses


def _contained_answer(raw: str, earlier) -> int | None:
    """An earlier row's whole answer (folded) as a run of this answer's sentences: the earlier row contained in this
    one, with sentences added around it. `earlier(folded answer)` gives that row's uid, or None."""
    sentences = fold_parts(_SENTENCE_END.sub(PART_SEPARATOR, raw))
    for i in range(len(sentences)):
        for j in range(i + 1, len(sentences) + 1):
            if (i, j) == (0, len(sentences)):
                continue  # the whole answer: matched as such already
            run = " ".join(x for x in sentences[i:j] if x)
            if run.count(" ") + 1 >= MIN_ANSWER_WORDS and earlier(run) is not None:
                return earlier(run)
    return None


def _folded_rows(texts: tuple[str, ...]) -> list[list[tuple[str, str]]]:
    """Each row's exchanges as folded (question, answer) pairs."""
    rows = []
    for text in texts:
        parts = fold_parts(text)
        pairs = [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        rows.append(pairs or [("", parts[0])])
    return rows


def _row_variants(rows: list[list[tuple[str, str]]]) -> list[list[list[tuple[str, str]]]]:
    """Per row: the row as written, then, when it has them, the row without the prefix / suffix that many of this
    miner's questions (answers) share: a preamble or signature wrapped around copied rows. Both are matched, so
    removing text never makes a row look like someone else's it was not."""
    questions = _common_affixes([q for row in rows for q, _ in row])
    answers = _common_affixes([a for row in rows for _, a in row])
    out = []
    for row in rows:
        stripped = [(_strip(q, questions), _strip(a, answers)) for q, a in row]
        out.append([row] if stripped == row else [row, stripped])
    return out


def _common_affixes(texts: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The longest word prefix and suffix (each at least AFFIX_MIN_WORDS words) that at least
    max(AFFIX_MIN_ROWS, AFFIX_SHARE x texts) of `texts` start (end) with; () when there is none. A copier who wraps
    only part of its rows is found too. Words are compared by `_shape`: numbered boilerplate ("entry 12", "entry
    13") is one affix."""
    need = max(AFFIX_MIN_ROWS, AFFIX_SHARE * len(texts))
    if len(texts) < need:
        return (), ()

    def longest(texts: list[str], from_end: bool) -> tuple[str, ...]:
        def head(t: str) -> tuple[str, ...] | None:  # the first (last) AFFIX_MIN_WORDS words, shaped
            parts = t.rsplit(" ", AFFIX_MIN_WORDS)[::-1] if from_end else t.split(" ", AFFIX_MIN_WORDS)
            return tuple(map(_shape, parts[:AFFIX_MIN_WORDS])) if len(parts) > AFFIX_MIN_WORDS else None

        heads = [head(t) for t in texts]
        counts = Counter(h for h in heads if h is not None)
        if not counts:
            return ()
        best, n = counts.most_common(1)[0]
        if n < need:
            return ()
        members = [t.split()[::-1] if from_end else t.split() for t, h in zip(texts, heads) if h == best]
        length = AFFIX_MIN_WORDS
        while True:  # extend while (nearly) all the rows that share it go on with the same word
            following = Counter(_shape(w[length]) for w in members if len(w) > length + 1)
            if not following:
                return best
            word, n = following.most_common(1)[0]
            if n < max(need, AFFIX_AGREEMENT * len(members)):
                return best
            members = [w for w in members if len(w) > length + 1 and _shape(w[length]) == word]
            best, length = best + (word,), length + 1

    prefix = longest(texts, from_end=False)
    suffix = longest(texts, from_end=True)
    return prefix, tuple(reversed(suffix))


def _shape(word: str) -> str:
    """A word as affixes compare it: any number is "#"."""
    return "#" if word.isdigit() else word


def _strip(text: str, affixes: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    prefix, suffix = affixes
    words = text.split()
    if prefix and len(words) > len(prefix) and tuple(map(_shape, words[:len(prefix)])) == prefix:
        words = words[len(prefix):]
    if suffix and len(words) > len(suffix) and tuple(map(_shape, words[-len(suffix):])) == suffix:
        words = words[:-len(suffix)]
    return " ".join(words)


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
