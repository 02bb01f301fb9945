"""Untrusted text and numbers made safe to show (core/untrusted.py)."""

import math

import pytest

from flock_pipeline.core.untrusted import finite, number_or_none, printable, text_or_none


@pytest.mark.parametrize("text, shown", [
    pytest.param("plain words, café", "plain words, café", id="printable text is kept"),
    pytest.param("\x1b[2Jwiped", "\\x1b[2Jwiped", id="an ANSI escape"),
    pytest.param("a\rb\nc\x07", "a\\rb\\nc\\x07", id="carriage return, newline, bell"),
    pytest.param("abc\u202edcba", "abc\\u202edcba", id="a right-to-left override"),
    pytest.param("x\u2028y", "x\\u2028y", id="a line separator"),
])
def test_printable_escapes_what_would_drive_a_terminal(text, shown):
    assert printable(text) == shown


def test_printable_cuts_long_text():
    assert printable("a" * 500, limit=10) == "a" * 10 + "..."


def test_finite_replaces_nan_and_infinity_everywhere():
    assert finite({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "NaN", "e": 2}) == {
        "a": None, "b": [1.0, None, {"c": None}], "d": "NaN", "e": 2}


@pytest.mark.parametrize("value, number", [(1, 1), (1.5, 1.5), (math.nan, None), (math.inf, None), (True, None),
                                           ("3", None), ({"x": 1}, None), (None, None)])
def test_number_or_none(value, number):
    assert number_or_none(value) == number


def test_text_or_none():
    assert text_or_none("x" * 400) == "x" * 300 and text_or_none(3) is None and text_or_none(["a"]) is None
