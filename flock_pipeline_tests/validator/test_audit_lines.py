"""The lines a published report says a shard kept: written as ranges, read back line for line, and anything else in
another validator's file refused."""

import pytest

from flock_pipeline.validator.audit import line_ranges, parse_line_ranges


@pytest.mark.parametrize("lines, text", [
    ([1, 2, 3, 5, 7, 8, 9], "1-3,5,7-9"),
    (list(range(1, 51)), "1-50"),
    ([4], "4"),
    ([], ""),
])
def test_kept_lines_round_trip_as_ranges(lines, text):
    assert line_ranges(lines) == text and parse_line_ranges(text) == lines


@pytest.mark.parametrize("text", ["0-3", "5-2", "a", "1-", "1-2000000"])
def test_a_malformed_or_huge_range_is_refused(text):
    with pytest.raises(ValueError):
        parse_line_ranges(text)
