"""The DPO game: miners submit preference pairs; a validator LoRA-DPO-trains the base model on them and scores the
mean DPO loss on its own eval pairs (lower is better; ln 2 = 0.6931 is the base model, which learned nothing).

- Rows: TRL's conversational preference form, `{"system"?, "prompt": [turns ending with a user turn], "chosen":
  [one assistant turn], "rejected": [one assistant turn]}`; a row whose answers are the same, or with an empty side,
  is rejected with its reason.
- Eligibility: the curation game's rules on the pairs' identity (system, prompt, chosen): exact and near copies of an
  earlier commitment's pairs and of the eval pairs (leaks) are dropped, and too large a share of them makes the
  miner ineligible (`DedupConfig`). And: too large a share of trivial rejected answers makes it ineligible (more
  than `max_trivial_fraction`, 20 %). A rejected answer is trivial when it is short (fewer than
  `min_rejected_words` words), unrelated (no word of four or more letters in common with its prompt and chosen
  answer: junk, or a stock reply) or a stock answer (the same text, folded, as the rejected answer of more than
  `max_rejected_repeats` of the miner's pairs). Contrasting a good answer with junk teaches nothing about telling
  good answers from plausible bad ones, and costs nothing to produce.
- Training: the validator's recipe with `objective: "dpo"` (beta `dpo_beta`, 0.1) on top of the competition's own
  recipe fields; plain LoRA with AdamW (no 4-bit base).
- Scoring: the curation game's rule on the DPO losses (win rates with the earlier commitment's advantage, softmax,
  blend), and a miner must beat the base model's ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flock_pipeline.core.competitions.base import CompetitionConfigError, Entry, EvalSet
from flock_pipeline.core.competitions.curation import CurationCompetition
from flock_pipeline.core.dedup import ShardPlan
from flock_pipeline.core.objectives import DPO, Objective
from flock_pipeline.core.rowformats import PREFERENCE, RowFormat
from flock_pipeline.core.textnorm import fold


@dataclass(frozen=True)
class DpoCompetition(CurationCompetition):
    commitment_id: str = "3"
    eval_repo: str = "flock/eval-atlas-pairs"
    min_rejected_words: int = 3  # a rejected answer of fewer words (after folding) is trivial
    max_rejected_repeats: int = 3  # ... and so is one used as the rejected answer of more pairs than this
    max_trivial_fraction: float = 0.2  # above this share of trivial rejected answers: ineligible

    kind: ClassVar[str] = "dpo"
    row_format: ClassVar[RowFormat] = PREFERENCE
    objective: ClassVar[Objective] = DPO
    in_corpus: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"competition {self.name!r}"
        for name in ("min_rejected_words", "max_rejected_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name[:3] == "min" else 1):
                raise CompetitionConfigError(f"{where}: {name} must be a whole number >= "
                                             f"{0 if name[:3] == 'min' else 1}, got {value!r}")
        if not isinstance(self.max_trivial_fraction, (int, float)) or not 0 <= self.max_trivial_fraction <= 1:
            raise CompetitionConfigError(f"{where}: max_trivial_fraction must be in [0, 1]")
        for name, plain in (("quantization", "none"), ("optimizer", "adamw")):
            if self.recipe.get(name, plain) != plain:
                raise CompetitionConfigError(f"{where}: recipe.{name} must be {plain}: DPO trains plain LoRA")

    def needs_row_texts(self) -> bool:
        return True  # the rejected answers, for the trivial-answer rule

    def rows_reason(self, rows: list) -> str | None:
        """The trivial-rejected-answers rule on one file's pairs (the copy rules need the other miners)."""
        if not rows:
            return None
        entry = Entry("me", 0, 0, tuple(r.row_hash for r in rows), row_lines=tuple(range(1, len(rows) + 1)),
                      row_texts=tuple(self.row_format.text(r) for r in rows),
                      contrast_texts=tuple(self.row_format.contrast_text(r) for r in rows))
        return self.plan([entry], EvalSet(row_hashes=frozenset()))["me"].reason

    def plan(self, entries: list[Entry], eval_set: EvalSet) -> dict[str, ShardPlan]:
        plans = super().plan(entries, eval_set)
        for entry in entries:
            plan = plans[entry.hotkey]
            if plan.reason is not None or entry.contrast_texts is None or entry.row_texts is None:
                continue
            kinds = trivial_rejected(entry.contrast_texts, entry.row_texts, self.min_rejected_words,
                                     self.max_rejected_repeats)
            total = sum(kinds.values())
            if total > self.max_trivial_fraction * len(entry.contrast_texts):
                plan.kept_indices = []
                what = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)
                plan.reason = (f"trivial rejected answers: {total} of {len(entry.contrast_texts)} pairs ({what}; "
                               f"more than {self.max_trivial_fraction:.0%}): contrast each chosen answer with a "
                               "plausible wrong one")
        return plans


def trivial_rejected(rejected: tuple[str, ...] | list[str], contexts: tuple[str, ...] | list[str], min_words: int,
                     max_repeats: int) -> dict[str, int]:
    """How many rejected answers are trivial, by kind (each counted once, in this order): "short" (fewer than
    `min_words` words once folded: case, punctuation, invisible characters and look-alike letters do not count),
    "unrelated" (no word of four or more letters in common with its pair's prompt and chosen answer, `contexts`)
    and "stock" (the same folded text as the rejected answer of more than `max_repeats` pairs)."""
    folded = [fold(t) for t in rejected]
    counts: dict[str, int] = {}
    for f in folded:
        counts[f] = counts.get(f, 0) + 1
    kinds = {"short": 0, "unrelated": 0, "stock": 0}
    for f, context in zip(folded, contexts):
        words = f.split()
        if len(words) < min_words:
            kinds["short"] += 1
        elif not {w for w in words if len(w) >= 4} & set(fold(context).split()):
            kinds["unrelated"] += 1
        elif counts[f] > max_repeats:
            kinds["stock"] += 1
    return kinds
