import pytest

from flock_pipeline.core.ranking import kendall_tau, ranks, spearman


@pytest.mark.parametrize("values, expected", [([3, 1, 2], [3, 1, 2]), ([1, 1, 2], [1.5, 1.5, 3]),
                                              ([5, 5, 5], [2, 2, 2])])
def test_ranks(values, expected):
    assert ranks(values) == expected


@pytest.mark.parametrize("x, y, expected", [
    ([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], 1.0),
    ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0),
    ([0.6, 1.0, 0.2, 0.8, 0.4], [4, 5, 1, 3, 2], 0.9),  # one adjacent swap of five
])
def test_spearman(x, y, expected):
    assert spearman(x, y) == pytest.approx(expected)


@pytest.mark.parametrize("a, b, expected", [("abcd", "abcd", 1.0), ("abcd", "dcba", -1.0), ("abcde", "bacde", 0.8)])
def test_kendall_tau(a, b, expected):
    assert kendall_tau(list(a), list(b)) == pytest.approx(expected)


@pytest.mark.parametrize("call", [lambda: spearman([1], [1]), lambda: spearman([1, 1], [1, 2]),
                                  lambda: kendall_tau(["a", "b"], ["a", "c"])])
def test_invalid(call):
    with pytest.raises(ValueError):
        call()
