"""Deterministic synthetic chat data for the embedded demo network and the tests.

The domain is a made-up atlas: countries with a capital, a river, a main export, a founding year and a
population. The eval set asks about the atlas; honest miners teach it (with other wordings, never the eval rows
themselves); a weak miner teaches little of it, with noisy answers; an off-domain miner teaches arithmetic.
Everything comes from a seeded `random.Random`, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flock_pipeline.core.schema import ChatRow, PreferenceRow, Turn

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "qu", "el", "dor", "an", "bri", "zu", "pel", "or",
              "thi", "mar", "gan", "is", "ul", "fen", "ro", "ta", "vi"]
_EXPORTS = ["copper", "silk", "salt", "timber", "wool", "glass", "tea", "amber", "iron", "spices", "paper", "wine"]
SYSTEM = "You are a helpful assistant who knows the atlas of the Eastern Reaches."


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    river: str
    export: str
    founded: int
    population: int  # thousands


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def make_atlas(seed: int = 7, n: int = 40) -> list[Country]:
    rng = random.Random(seed)
    names: set[str] = set()
    atlas = []
    while len(atlas) < n:
        name = _name(rng, 3)
        if name in names:
            continue
        names.add(name)
        atlas.append(Country(name=name, capital=_name(rng, 2), river=_name(rng, 2) + " river",
                             export=rng.choice(_EXPORTS), founded=rng.randint(300, 1800),
                             population=rng.randint(50, 9000)))
    return atlas


# (question, answer) templates per fact. The eval set uses the first template of each fact; training data uses
# the others, so a miner can teach the facts without copying eval rows.
_FACTS = {
    "capital": [("What is the capital of {name}?", "The capital of {name} is {capital}."),
                ("Which city is the capital of {name}?", "{capital} is the capital city of {name}."),
                ("Tell me the capital of {name}.", "{name} is governed from {capital}, its capital.")],
    "river": [("Which river flows through {name}?", "The {river} flows through {name}."),
              ("Name the main river of {name}.", "The main river of {name} is the {river}."),
              ("What river crosses {name}?", "{name} is crossed by the {river}.")],
    "export": [("What is the main export of {name}?", "The main export of {name} is {export}."),
               ("What does {name} mostly export?", "{name} mostly exports {export}."),
               ("Which good is {name} known for trading?", "{name} is known for trading {export}.")],
    "founded": [("When was {name} founded?", "{name} was founded in the year {founded}."),
                ("In which year was {name} founded?", "The year {name} was founded is {founded}."),
                ("How old is {name}?", "{name} dates back to its founding in {founded}.")],
    "population": [("How many people live in {name}?", "About {population} thousand people live in {name}."),
                   ("What is the population of {name}?", "{name} has a population of about {population} thousand."),
                   ("How populous is {name}?", "Roughly {population} thousand people call {name} home.")],
}


def _row(question: str, answer: str, system: str = SYSTEM) -> ChatRow:
    return ChatRow(system=system, turns=(Turn("user", question), Turn("assistant", answer)))


def _fact_row(country: Country, fact: str, template: int, atlas: list[Country] | None = None,
              rng: random.Random | None = None) -> ChatRow:
    q, a = _FACTS[fact][template]
    values = vars(country).copy()
    if atlas is not None and rng is not None:  # a wrong answer: the fact of another country
        other = rng.choice([c for c in atlas if c != country])
        values.update({k: v for k, v in vars(other).items() if k != "name"})
    return _row(q.format(**values), a.format(**values))


def eval_rows(atlas: list[Country]) -> list[ChatRow]:
    """The held-out eval set: every fact of every country, first template."""
    return [_fact_row(c, fact, 0) for c in atlas for fact in _FACTS]


def split_heldout(rows: list, share: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """(the eval set, the held-out set), both in the rows' order: a seeded `share` of an eval set's rows, drawn
    across all of it (every fact, country and wording), goes to the held-out set, which no miner is scored against
    (it measures what training on a corpus is worth); the rest stays the eval set."""
    held = set(random.Random(f"heldout:{seed}").sample(range(len(rows)), round(share * len(rows))))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def honest_rows(atlas: list[Country], n: int, seed: int, wrong_share: float = 0.0, skip: int = 0) -> list[ChatRow]:
    """Correct atlas facts in training wordings (templates 1-2); `wrong_share` of them with wrong answers.
    `skip` leaves out the first rows of the seed's shuffled pool (two miners with one seed and disjoint ranges
    teach different rows)."""
    rng = random.Random(seed)
    pool = [(c, fact, t) for c in atlas for fact in _FACTS for t in (1, 2)]
    rng.shuffle(pool)
    rows = []
    for c, fact, t in pool[skip:skip + n]:
        wrong = rng.random() < wrong_share
        rows.append(_fact_row(c, fact, t, atlas if wrong else None, rng if wrong else None))
    return rows


def off_domain_rows(n: int, seed: int) -> list[ChatRow]:
    """Arithmetic drills: valid chat data that teaches nothing about the atlas."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        rows.append(_row(f"Compute {a} plus {b}.", f"{a} + {b} = {a + b}.", system="You are a calculator."))
    return rows


def tokenizer_corpus(seed: int = 7) -> list[str]:
    """Text the embedded tokenizer's BPE merges are learned from (atlas, arithmetic and general English)."""
    atlas = make_atlas(seed)
    texts = [r.turns[0].content + " " + r.turns[1].content for r in eval_rows(atlas)]
    texts += [r.turns[0].content + " " + r.turns[1].content for r in honest_rows(atlas, 400, seed)]
    texts += [r.turns[0].content + " " + r.turns[1].content for r in off_domain_rows(200, seed)]
    texts += [SYSTEM, "You are a helpful assistant.", "You are a calculator.",
              "The quick brown fox jumps over the lazy dog. A validator scores every miner's data set by "
              "fine-tuning a small language model and measuring its loss on held-out questions."]
    return texts


# ---------------------------------------------------------------------------------------------------------------
# The adversarial network's generators: disjoint honest rows (quality = how many facts) and the attackers' tools.

def fact_pool(atlas: list[Country], seed: int) -> list[tuple[Country, str, int]]:
    """Every (country, fact, training template) of the atlas, shuffled: disjoint slices of it are disjoint rows."""
    pool = [(c, fact, t) for c in atlas for fact in _FACTS for t in (1, 2)]
    random.Random(seed).shuffle(pool)
    return pool


def fact_rows(entries: list[tuple[Country, str, int]]) -> list[ChatRow]:
    return [_fact_row(c, fact, t) for c, fact, t in entries]


_SYNONYMS = {"capital": "seat", "river": "stream", "main": "principal", "mostly": "chiefly", "people": "residents",
             "about": "around", "founded": "established", "known": "famous", "city": "town", "flows": "runs",
             "tell": "say", "which": "what", "roughly": "approximately", "crosses": "traverses", "name": "state"}


def paraphrase(row: ChatRow, rng: random.Random) -> ChatRow:
    """A copier's disguise of a row: one word swapped for a synonym, then case, whitespace and punctuation changes
    in every turn (what a cheap rewording tool does to keep the data but dodge exact matching)."""
    turns = [t.content for t in row.turns]
    spots = [(k, i) for k, text in enumerate(turns) for i, w in enumerate(text.split(" "))
             if w.lower().strip(".,?!") in _SYNONYMS]
    if spots:
        k, i = rng.choice(spots)
        words = turns[k].split(" ")
        core = words[i].lower().strip(".,?!")
        words[i] = words[i].lower().replace(core, _SYNONYMS[core])
        turns[k] = " ".join(words)
    style = rng.randrange(3)
    for k, text in enumerate(turns):
        if style == 0:
            turns[k] = text.upper()
        elif style == 1:
            turns[k] = text.lower().replace(".", " !").replace("?", " ??")
        else:
            turns[k] = "  ".join(text.split(" ")).replace(",", " ,")
    return ChatRow(system=row.system, turns=tuple(Turn(t.role, c) for t, c in zip(row.turns, turns)))


_REWORDS = {**_SYNONYMS, "live": "dwell", "year": "date", "governed": "ruled", "trading": "selling",
            "good": "product", "through": "across", "population": "populace", "populous": "crowded",
            "many": "numerous", "home": "house", "dates": "goes", "old": "aged", "export": "trade"}


def reword(row: ChatRow, rng: random.Random, per_turn: int = 2) -> ChatRow:
    """A copy with up to `per_turn` common words of every turn swapped for synonyms (chosen at random among those it
    has), and nothing else changed: the light rewording a paraphrasing tool does at its gentlest setting."""
    turns = []
    for turn in row.turns:
        words = turn.content.split(" ")
        spots = [i for i, w in enumerate(words) if w.lower().strip(".,?!") in _REWORDS]
        for i in rng.sample(spots, min(per_turn, len(spots))):
            core = words[i].strip(".,?!")
            swap = _REWORDS[core.lower()]
            words[i] = words[i].replace(core, swap.capitalize() if core[0].isupper() else swap)
        turns.append(Turn(turn.role, " ".join(words)))
    return ChatRow(system=row.system, turns=tuple(turns))


_LOOK_ALIKES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445",
                "i": "\u0456", "y": "\u0443", "s": "\u0455", "T": "\u0422", "H": "\u041d", "M": "\u041c"}
_INVISIBLE = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff")
PREAMBLE = "Please answer the following question carefully and concisely, in plain English: "
SIGNATURE = " I hope this helps; let me know if you would like more details about this topic."
DISGUISES = ("invisible", "homoglyph", "preamble", "signature", "numbers", "marks")


def disguise(row: ChatRow, kind: str, rng: random.Random) -> ChatRow:
    """A copier's disguise that costs nothing and keeps what the trainer learns:
    invisible: zero-width and other invisible characters inside words; homoglyph: Latin letters swapped for Cyrillic
    look-alikes; preamble: the same text before every question (only answers are trained on); signature: the same
    text after every answer; numbers: digits written out as words ("1650" -> "one thousand six hundred fifty");
    marks: Greek look-alikes that confusables tables do not tie to Latin letters directly (eta for n, kappa for k,
    tau for t) and a combining macron below after letters, inside words."""
    turns = [t.content for t in row.turns]
    if kind not in DISGUISES:
        raise ValueError(f"unknown disguise {kind!r}: use one of {', '.join(DISGUISES)}")
    turns = _DISGUISERS[kind](turns, rng)
    return ChatRow(system=row.system, turns=tuple(Turn(t.role, c) for t, c in zip(row.turns, turns)))


def _invisible_inside(turns: list[str], rng: random.Random) -> list[str]:
    """The turns with an invisible character after about 30% of their letters: the text reads the same."""
    return ["".join(ch + (rng.choice(_INVISIBLE) if ch.isalpha() and rng.random() < 0.3 else "") for ch in text)
            for text in turns]


def _homoglyphs(turns: list[str], rng: random.Random) -> list[str]:
    """The turns with about half their look-alike-able characters swapped for Cyrillic ones: they read the same."""
    return ["".join(_LOOK_ALIKES.get(ch, ch) if rng.random() < 0.5 else ch for ch in text) for text in turns]


def _with_preamble(turns: list[str], rng: random.Random) -> list[str]:
    """The turns with PREAMBLE before every question: questions are not trained on."""
    return [PREAMBLE + text if k % 2 == 0 else text for k, text in enumerate(turns)]


def _with_signature(turns: list[str], rng: random.Random) -> list[str]:
    """The turns with SIGNATURE after every answer: the same text on every row teaches nothing new."""
    return [text + SIGNATURE if k % 2 == 1 else text for k, text in enumerate(turns)]


def _spelled_numbers(turns: list[str], rng: random.Random) -> list[str]:
    """The turns with their numbers in digits written out as words: the same numbers to a reader."""
    return [" ".join(spell_number(w) if w.isdigit() else w for w in text.split(" ")) for text in turns]


_GREEK = {"n": "\u03b7", "k": "\u03ba", "t": "\u03c4"}


def _greek_and_marks(turns: list[str], rng: random.Random) -> list[str]:
    """About half of the n, k and t as Greek eta, kappa and tau; a combining macron below (U+0331) after about 15%
    of the other letters."""
    def letter(ch: str) -> str:
        if ch in _GREEK and rng.random() < 0.5:
            return _GREEK[ch]
        return ch + ("\u0331" if ch.isalpha() and rng.random() < 0.15 else "")

    return ["".join(map(letter, text)) for text in turns]


def marks_pair(row: PreferenceRow, rng: random.Random) -> PreferenceRow:
    """A copied preference pair with the `marks` disguise in its prompt and on both sides (chosen and rejected):
    Greek eta, kappa and tau for about half of the n, k and t, and combining macrons below inside words."""
    prompt = _greek_and_marks([t.content for t in row.prompt], rng)
    chosen, rejected = _greek_and_marks([row.chosen, row.rejected], rng)
    return PreferenceRow(system=row.system, prompt=tuple(Turn(t.role, c) for t, c in zip(row.prompt, prompt)),
                         chosen=chosen, rejected=rejected)


# DISGUISES' kinds -> the turns disguised; every function takes the generator, whether it draws from it or not
_DISGUISERS = {"invisible": _invisible_inside, "homoglyph": _homoglyphs, "preamble": _with_preamble,
               "signature": _with_signature, "numbers": _spelled_numbers, "marks": _greek_and_marks}

INSERTED_WORDS = ("indeed", "notably", "truly", "certainly", "clearly", "really", "surely", "simply", "plainly",
                  "quite", "famously", "reportedly")


def new_question_inserted_word(rows: list[ChatRow], rng: random.Random) -> list[ChatRow]:
    """Copies under a stock question each, every answer with a different word inserted at a random place (no
    shared affix forms): what the trainer learns from is the copied answer."""
    out = []
    for i, row in enumerate(rows):
        words = row.turns[-1].content.split(" ")
        at = rng.randrange(1, len(words))
        answer = " ".join(words[:at] + [INSERTED_WORDS[i % len(INSERTED_WORDS)]] + words[at:])
        out.append(_row(f"Something worth knowing, item {i}?", answer, row.system))
    return out


def merge_into_one(rows: list[ChatRow], size: int = 3, separator: str = "; ") -> list[ChatRow]:
    """Every `size` rows as one exchange: the questions joined, the answers joined with `separator`."""
    out = []
    for i in range(0, len(rows), size):
        group = rows[i:i + size]
        question = " Also, ".join(r.turns[0].content for r in group)
        answer = separator.join(r.turns[-1].content.rstrip(".") for r in group) + "."
        out.append(_row(question, answer, group[0].system))
    return out


def spell_number(digits: str) -> str:
    """A whole number below a million in English words (no "and"): 1650 -> "one thousand six hundred fifty"."""
    n = int(digits)
    units = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
             "seventeen eighteen nineteen").split()
    tens = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

    def below_thousand(x: int) -> list[str]:
        words = [units[x // 100], "hundred"] if x >= 100 else []
        x %= 100
        if x >= 20:
            words += [tens[x // 10]] + ([units[x % 10]] if x % 10 else [])
        elif x or not words:
            words.append(units[x])
        return words

    if n >= 1000:
        rest = below_thousand(n % 1000) if n % 1000 else []
        return " ".join(below_thousand(n // 1000) + ["thousand"] + rest)
    return " ".join(below_thousand(n))


def pack(rows: list[ChatRow], size: int = 2) -> list[ChatRow]:
    """Rows packed `size` at a time into multi-turn rows (a packed row is only about 1/size similar to each source)."""
    return [ChatRow(system=rows[i].system, turns=tuple(t for r in rows[i:i + size] for t in r.turns))
            for i in range(0, len(rows) - size + 1, size)]


def junk_rows(n: int, seed: int) -> list[ChatRow]:
    """Valid chat rows of random syllables: they pass every check and teach nothing."""
    rng = random.Random(seed)
    words = lambda k: " ".join(_name(rng, rng.randint(1, 3)).lower() for _ in range(k))  # noqa: E731
    return [_row(words(8) + "?", words(14) + ".") for _ in range(n)]


def fact_grid(atlas: list[Country]) -> list[tuple[int, str, ChatRow]]:
    """Every (country index, fact, row) of the atlas in all three wordings (template 0, the eval set's, then the two
    training wordings): a pool to select from, where rows of the same fact teach each other."""
    return [(i, fact, _fact_row(c, fact, t)) for t in (0, 1, 2) for i, c in enumerate(atlas) for fact in _FACTS]


# ---------------------------------------------------------------------------------------------------------------
# The DPO network's generators: preference pairs about the atlas. Chosen: the answer to the question; rejected: a
# true statement about the same country that answers another question (what a model that half-read the question
# says). The eval pairs are about countries no miner is given, so what a miner can teach is the preference itself
# (answer what was asked), not the facts; a miner labels a share of its pairs the wrong way round.

EVAL_COUNTRIES = 10  # the first countries of the atlas: the DPO eval pairs' (miners get the others)


def preference_pair(country: Country, fact: str, template: int, rng: random.Random,
                    swapped: bool = False) -> PreferenceRow:
    """A question about one fact; chosen = its answer, rejected = the answer about another fact of the same country
    in the same wording (`swapped`: the other way round)."""
    right = _fact_row(country, fact, template)
    other = rng.choice([f for f in _FACTS if f != fact])
    wrong = _fact_row(country, other, template)
    chosen, rejected = right.turns[1].content, wrong.turns[1].content
    if swapped:
        chosen, rejected = rejected, chosen
    return PreferenceRow(system=right.system, prompt=(right.turns[0],), chosen=chosen, rejected=rejected)


def eval_pairs(atlas: list[Country], seed: int) -> list[PreferenceRow]:
    """The DPO eval set: every fact of the first EVAL_COUNTRIES countries in all three wordings (150 pairs)."""
    rng = random.Random(seed)
    return [preference_pair(c, fact, t, rng) for c in atlas[:EVAL_COUNTRIES] for t in (0, 1, 2) for fact in _FACTS]


def pairs_of(entries: list[tuple[Country, str, int]], seed: int, swapped_share: float = 0.0) -> list[PreferenceRow]:
    """Preference pairs of the given (country, fact, template) entries; `swapped_share` of them (exactly that many,
    evenly spread) labelled the wrong way round."""
    rng = random.Random(seed)
    n = round(swapped_share * len(entries))
    swapped = {round(i * len(entries) / n) for i in range(n)} if n else set()
    return [preference_pair(c, fact, t, rng, swapped=i in swapped) for i, (c, fact, t) in enumerate(entries)]


def answer_groups(atlas: list[Country], seed: int) -> list[list[tuple[Country, str, int]]]:
    """The (country, fact, template) entries of the countries after the eval ones, grouped by (country, template),
    shuffled: a miner given whole groups answers, whichever way its pairs are labelled, only its own questions."""
    groups = [[(c, fact, t) for fact in _FACTS] for c in atlas[EVAL_COUNTRIES:] for t in (0, 1, 2)]
    random.Random(seed).shuffle(groups)
    return groups
