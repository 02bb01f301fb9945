"""Functions short enough to read at once: no function or method of the package above radon's rank C (cyclomatic
complexity 20; radon counts each boolean operator too, which ruff's mccabe check does not). A function that grows
past it is split into named helpers."""

from __future__ import annotations

from pathlib import Path

from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).resolve().parents[1] / "flock_pipeline"
MAX_RANK = "C"


def ranked_above(source: str, rank: str = MAX_RANK) -> list[str]:
    """`name (rank complexity)` of every function and method in `source` ranked worse than `rank`."""
    out = []
    for block in cc_visit(source):
        for item in [block, *getattr(block, "methods", [])]:
            if cc_rank(item.complexity) > rank:
                out.append(f"{item.fullname} ({cc_rank(item.complexity)} {item.complexity})")
    return out


def test_no_function_is_above_rank_c():
    found = {str(p.relative_to(ROOT.parent)): ranked_above(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}
    assert {path: names for path, names in found.items() if names} == {}


def test_the_check_catches_a_deliberately_tangled_function():
    branches = "".join(f"    if x == {i} and y:\n        return {i}\n" for i in range(12))
    # 1 for the function, 1 for each of the 12 ifs and 1 for each of their 12 `and`s
    assert ranked_above(f"def tangled(x, y):\n{branches}    return -1\n") == ["tangled (D 25)"]
