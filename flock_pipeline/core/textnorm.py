"""Text as a reader sees it, for telling copies apart from new data.

`fold(text)` is the form copies are matched on, a skeleton: Unicode compatibility decomposition (NFKD: full-width
and mathematical letters, ligatures, and accented letters split into a letter and its marks), then every combining
mark dropped ("ṟ", "r" with a macron below, is "r"; "é" is "e") and every character a reader cannot see removed
(format characters such as zero-width spaces and joiners, soft hyphens, bidirectional marks, word joiners, tag
characters, variation selectors), case folded, every letter a reader cannot tell from a Latin letter or digit
mapped to it (Unicode's confusables data, TR39, through `confusable-homoglyphs`, followed up to three look-alikes
away, each with its marks dropped and a Latin small capital read as its letter: Cyrillic "а", Greek "ο", "η", "κ"
and "τ" become "a", "o", "n", "k" and "t"), everything but
letters and digits turned into single spaces, and
spelled-out numbers written as digits ("twenty-one" and "21" both become "21"; a number stays one word, so two rows
that differ only in their numbers still differ in a rare word).

`invisible_characters` and `mixed_script_words` tell a miner which of its rows carry such text.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_EXTRA_INVISIBLE = (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F, 0x2800, 0x3164,
                    0xFFA0)  # grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian selectors, blank
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                      "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES) | {"hundred"}
@lru_cache(maxsize=1)
def _invisible() -> frozenset[int]:
    """Format characters (category Cf), variation selectors and the invisible fillers above."""
    planes = (range(0, 0x20000), range(0xE0000, 0xF0000))  # no other plane has a format character
    found = {cp for plane in planes for cp in plane if unicodedata.category(chr(cp)) == "Cf"}
    found.update(range(0xFE00, 0xFE10))  # variation selectors 1-16
    found.update(range(0xE0100, 0xE01F0))  # variation selectors 17-256
    found.update(_EXTRA_INVISIBLE)
    return frozenset(found)


LOOKALIKE_STEPS = 3  # how many look-alikes away a character's Latin letter may be in the confusables data


@lru_cache(maxsize=1)
def _marks() -> frozenset[int]:
    """Combining marks (categories Mn and Me): what an accent or a line below adds to the letter before it."""
    planes = (range(0, 0x20000), range(0xE0000, 0xF0000))
    return frozenset(cp for plane in planes for cp in plane if unicodedata.category(chr(cp)) in ("Mn", "Me"))


def _bare(text: str) -> str:
    """`text` decomposed, without its combining marks; a Latin letter's small capital or other form named after a
    plain letter ("LATIN LETTER SMALL CAPITAL T") as that letter."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", text) if ord(c) not in _marks())
    named = _LATIN_NAMED.match(unicodedata.name(bare, "")) if len(bare) == 1 else None
    return named["letter"].lower() if named else bare


_LATIN_NAMED = re.compile(r"^LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL )?(?P<letter>[A-Z])(?: WITH .*)?$")


@lru_cache(maxsize=1)
def _table() -> dict[int, str | None]:
    """str.translate table: invisible characters and combining marks -> removed; a non-ASCII character whose
    confusable (up to LOOKALIKE_STEPS look-alikes away in Unicode's confusables data, each without its marks) is an
    ASCII letter or digit -> that letter (lower case) or digit."""
    from confusable_homoglyphs import utils

    data = utils.load("confusables.json")
    table: dict[int, str | None] = {cp: None for cp in _invisible() | _marks()}

    def ascii_alnum(chars: list[str]) -> str | None:
        letters = sorted(c.lower() for c in chars if len(c) == 1 and c.isascii() and c.isalpha())
        digits = sorted(c for c in chars if len(c) == 1 and c.isascii() and c.isdigit())
        return (letters or digits or [None])[0]

    for char in data:
        if len(char) != 1 or char.isascii() or ord(char) in table:
            continue
        seen, near = set(), [char]  # the character itself (a small capital), then its look-alikes, ...
        for _ in range(LOOKALIKE_STEPS + 1):
            target = ascii_alnum([_bare(c) for c in near])
            if target is not None:
                table[ord(char)] = target
                break
            seen.update(near)
            near = [h["c"] for c in near for h in data.get(c, []) if h["c"] not in seen]
    return table


_FOLLOWS = {None: {"unit", "ten"}, "unit": {"hundred", "scale"}, "ten": {"unit", "hundred", "scale"},
            "hundred": {"unit", "ten", "scale"}, "scale": {"unit", "ten"}}  # number words that may come next


def _kind(word: str) -> str | None:
    if word in _UNITS:
        return "unit"
    if word in _TENS:
        return "ten"
    if word == "hundred":
        return "hundred"
    return "scale" if word in _SCALES else None


def _digits(words: list[str]) -> list[str]:
    """Runs of number words ("one hundred and five", "twenty one", "67 million") replaced by their value in digits;
    "one two three" stays three numbers."""
    out: list[str] = []
    i = 0
    while i < len(words):
        scaled_digits = _scaled_digits(words, i)
        if not scaled_digits and _kind(words[i]) not in ("unit", "ten"):
            out.append(words[i])
            i += 1
            continue
        value, i = _number_at(words, i, scaled_digits)
        out.append(str(value))
    return out


def _scaled_digits(words: list[str], i: int) -> bool:
    """Whether words[i] is a number in digits a scale word multiplies ("67 million"): it starts a number."""
    return (words[i].isdigit() and len(words[i]) <= 9 and i + 1 < len(words)
            and _kind(words[i + 1]) in ("hundred", "scale"))


def _number_at(words: list[str], i: int, scaled_digits: bool) -> tuple[int, int]:
    """The value of the number that starts at words[i], and the index of the first word after it."""
    total, current, last = 0, (int(words[i]) if scaled_digits else 0), ("unit" if scaled_digits else None)
    top_scale = 0  # the largest scale word of this number so far
    j = i + 1 if scaled_digits else i
    while j < len(words):
        w = words[j]
        if _joining_and(words, j, last):
            j += 1
            continue
        kind = _kind(w)
        if kind not in _FOLLOWS[last] or (kind == "unit" and last == "ten" and _UNITS[w] > 9):
            break
        total, current = _add_word(w, kind, total, current, top_scale)
        if kind == "scale":
            top_scale = max(top_scale, _SCALES[w])
        last = kind
        j += 1
    return total + current, j


def _joining_and(words: list[str], j: int, last: str | None) -> bool:
    """Whether words[j] is an "and" inside a number ("one hundred and five"): skipped, the number goes on."""
    return (words[j] == "and" and last in ("hundred", "scale") and j + 1 < len(words)
            and _kind(words[j + 1]) in ("unit", "ten"))


def _add_word(w: str, kind: str, total: int, current: int, top_scale: int) -> tuple[int, int]:
    """(total, current) of a number after its next word `w` of `kind`: current is the part not yet scaled."""
    if kind in ("unit", "ten"):
        current += _UNITS.get(w, 0) + _TENS.get(w, 0)
    elif kind == "hundred":
        current = max(current, 1) * 100
    elif _SCALES[w] >= top_scale and top_scale:  # "4 thousand 321 thousand": the whole is scaled
        total = (total + current) * _SCALES[w]
        current = 0
    else:
        total += max(current, 1) * _SCALES[w]
        current = 0
    return total, current


def fold(text: str) -> str:
    """The matching form of `text` (see the module docstring): words separated by single spaces."""
    return " ".join(part for part in fold_parts(text) if part)


PART_SEPARATOR = "\x1f"  # a control character no text has: where `fold_parts` splits (turns, sentences)
_ASCII_SPACES = {cp: " " for cp in range(128) if not (chr(cp).isalnum() or chr(cp) == PART_SEPARATOR)}
_NON_WORD_KEEPING_PARTS = re.compile(rf"[^\w{PART_SEPARATOR}]+|_", re.UNICODE)


def fold_parts(text: str) -> list[str]:
    """`fold` of each part of `text` between PART_SEPARATORs, in one pass over the whole text."""
    if text.isascii():  # the common case: nothing to remove or map
        text = text.lower()
    else:
        table = _table()
        text = unicodedata.normalize("NFKD", text).translate(table).casefold().translate(table)
    if text.isascii():  # still ASCII after folding: punctuation to spaces by a table, not a regex
        parts = text.translate(_ASCII_SPACES).split(PART_SEPARATOR)
    else:
        parts = _NON_WORD_KEEPING_PARTS.sub(" ", text).split(PART_SEPARATOR)
    out = []
    for part in parts:
        words = part.split()
        out.append(" ".join(words if _NUMBER_WORDS.isdisjoint(words) else _digits(words)))
    return out


def invisible_characters(text: str) -> list[str]:
    """The Unicode names of the invisible characters in `text` (each once, in order of appearance)."""
    hidden = _invisible()
    seen: dict[str, None] = {}
    for char in text:
        if ord(char) in hidden:
            seen.setdefault(unicodedata.name(char, f"U+{ord(char):04X}"), None)
    return list(seen)


def _script(char: str) -> str | None:
    """The script of a letter, by its Unicode name's first word (LATIN, CYRILLIC, GREEK, ...); None otherwise."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def mixed_script_words(text: str, limit: int = 5) -> list[str]:
    """Words that mix letters of several scripts (a Cyrillic "а" inside a Latin word: a look-alike), at most
    `limit` of them."""
    out = []
    for word in unicodedata.normalize("NFKC", text).split():
        scripts = {s for s in map(_script, word) if s is not None}
        if len(scripts) > 1:
            out.append(word)
            if len(out) >= limit:
                break
    return out
