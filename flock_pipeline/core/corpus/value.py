"""What training on a release is worth: the rules of the measurement, and how it is told in the dataset card.

The base model is fine-tuned with the competition's recipe on N rows of the release and scored on a held-out set no
miner is scored against; three baselines get the same N rows, recipe and held-out set: the base model untrained,
rows drawn at random from everything the miners submitted that epoch (a few seeded draws: their mean and spread),
and the previous release. A release is worth buying when its loss is below the random rows' (the curation did
something) and theirs below the base model's (the data teaches anything at all).

Pure code: no I/O, no model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

VALUE_START, VALUE_END = "<!-- corpus value -->", "<!-- /corpus value -->"


@dataclass(frozen=True)
class ValueConfig:
    """The measurement's costs: at most `max_rows` rows per arm, `draws` random draws."""

    max_rows: int = 1000
    draws: int = 3

    def __post_init__(self) -> None:
        for name, low in (("max_rows", 1), ("draws", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")


def random_draws(pool: Sequence[Any], n: int, draws: int, epoch: int, config: str) -> list[list[Any]]:
    """`draws` samples of `n` rows (all of them when fewer) from `pool`, seeded by the epoch and config: the same
    release is always measured against the same draws."""
    if not pool:
        return []
    return [random.Random(f"corpus-value:{epoch}:{config}:{d}").sample(list(pool), min(n, len(pool)))
            for d in range(draws)]


def row_object(record: dict, keys: Sequence[str]) -> dict:
    """A release record's row itself (its provenance columns left out)."""
    return {k: record[k] for k in keys if k in record}


def verdict(release: float, randoms: Sequence[float], base: float | None, higher_is_better: bool = False) -> str:
    """In words, how the release compares with its baselines."""
    better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    parts = []
    if randoms:
        parts.append("beats" if better(release, mean(randoms)) else "does not beat")
        parts[-1] += " rows drawn at random from everything submitted"
    if base is not None:
        parts.append(("beats" if better(release, base) else "does not beat") + " the untrained base model")
    return "this release " + " and ".join(parts) if parts else "no baseline measured"


def value_section(values: Sequence[Any]) -> str:
    """The card's section "What training on this release does", one table per config (`values`: records with the
    `CorpusValueRecord` fields), between markers so that it is replaced, never repeated."""
    lines = [VALUE_START, "## What training on this release does", "",
             "The base model fine-tuned with the competition's recipe on the same number of rows in every arm, then "
             "scored on a held-out set that no miner is scored against (lower is better):", ""]
    for v in values:
        randoms = list(v.random_losses or ())
        told = verdict(v.release_loss, randoms, v.base_loss)
        lines += [f"**`{v.config}`** ({v.objective} loss on `{v.heldout_repo}` at `{v.heldout_revision[:12]}`, "
                  f"{v.heldout_rows} rows; recipe `{v.recipe_hash[:12]}`): {told}.",
                  "", f"| trained on ({v.rows} rows) | held-out loss |", "|---|---|",
                  f"| this release | {v.release_loss:.4f} |"]
        if randoms:
            lines.append(f"| rows drawn at random from everything submitted in epoch {v.epoch} (mean of "
                         f"{len(randoms)} draws, min-max) | {mean(randoms):.4f} ({min(randoms):.4f}-"
                         f"{max(randoms):.4f}) |")
        if v.previous_loss is not None:
            lines.append(f"| the previous release (epoch {v.previous_epoch}) | {v.previous_loss:.4f} |")
        if v.base_loss is not None:
            lines.append(f"| nothing (the base model) | {v.base_loss:.4f} |")
        lines.append("")
    return "\n".join(lines + [VALUE_END]) + "\n"


def with_value_section(card: str, values: Sequence[Any]) -> str:
    """`card` with its value section replaced by (or, the first time, followed by) the one for `values`."""
    section = value_section(values)
    if VALUE_START in card and VALUE_END in card:
        head, rest = card.split(VALUE_START, 1)
        return head + section + rest.split(VALUE_END, 1)[1].lstrip("\n")
    return card.rstrip("\n") + "\n\n" + section
