"""Objectives: what a game measures after training on a miner's rows, as a strategy object the game owns.

An `Objective` trains the base model on each training set and scores the result on the eval rows (`evaluate_many`),
scores the base model itself (`base_outcome`, the bar a miner's data must beat) and says whether a higher score is
better. The score travels through the pipeline as `EvalOutcome.eval_loss` (stored as the result's loss, whatever the
metric); `improves` and `higher_is_better` are the only places its direction is read.

SFT (next-token loss on the assistant turns, lower is better) and DPO (the mean DPO loss on preference pairs, lower
is better; ln 2 is the base) are the two built in. The torch code is imported only when an objective runs.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from flock_pipeline.core.strategy import Stateless

if TYPE_CHECKING:
    from flock_pipeline.core.evaluator import BaseModel, EvalOutcome
    from flock_pipeline.core.recipe import TrainRecipe

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Trainer:
    """How the validator's process lets an objective train: `lock` serialises use of the shared base model (hold it
    around every forward/backward pass), `multi_lora` is how many adapters may train side by side in one pass (0:
    one at a time)."""

    lock: AbstractContextManager
    multi_lora: int = 0
    stopped: Callable[[], Exception | None] = lambda: None  # a stop asked for (between sets): its error, or None
    finished: Callable[[int, Any], None] = lambda index, outcome: None  # told each set's outcome as soon as it is
    # known, so that the caller keeps what finished even when something interrupts the rest


class Objective(Stateless, ABC):
    """A game's metric. Subclasses are stateless; `name` is written into the training recipe (so it is part of every
    cache key: a result of one objective is never reused for another)."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = False
    metric: ClassVar[str] = "eval loss"  # what the score is called in reasons and reports

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not _NAME.fullmatch(cls.name):
            raise TypeError(f"{cls.__name__}.name must be 1-32 of a-z, 0-9, '_' or '-', got {cls.name!r}")

    def recipe_overrides(self) -> dict:
        """The recipe fields the objective sets: its name (at its default, "sft" stays out of the recipe hash)."""
        return {"objective": self.name}

    @abstractmethod
    def evaluate(self, base: BaseModel, train_rows: Sequence, eval_rows: Sequence, recipe: TrainRecipe,
                 on_step: Callable | None = None) -> EvalOutcome:
        """Train on one set of rows and score the trained model on the eval rows (the caller holds the lock)."""

    @abstractmethod
    def base_outcome(self, base: BaseModel, eval_rows: Sequence, recipe: TrainRecipe) -> EvalOutcome:
        """The base model's own score on the eval rows, untrained (the caller holds the lock)."""

    def evaluate_many(self, base: BaseModel, train_sets: Sequence[Sequence], eval_rows: Sequence,
                      recipe: TrainRecipe, trainer: Trainer) -> list[EvalOutcome | Exception]:
        """One outcome per training set, or the exception its evaluation raised (that set's failure alone).
        Default: each set alone, in turn."""
        results: list[Any] = []
        for rows in train_sets:
            stop = trainer.stopped()
            if stop is not None:  # a stop at a safe point: the sets not trained yet get the stop, not a result
                results.append(stop)
                continue
            try:
                with trainer.lock:
                    results.append(self.evaluate(base, rows, eval_rows, recipe))
            except Exception as exc:  # noqa: BLE001 - returned: the caller records it for that miner
                results.append(exc)
            trainer.finished(len(results) - 1, results[-1])
        return results

    def improves(self, score: float, base: float) -> bool:
        """Whether a miner's score beats the base model's."""
        return score > base if self.higher_is_better else score < base

    def worse_word(self) -> str:
        """How a score that does not beat the base is described: "above" for higher-is-better, "below" otherwise."""
        return "above" if self.higher_is_better else "below"


class SftObjective(Objective):
    """LoRA SFT on the rows, then the mean over eval rows of each row's mean assistant-token loss (nats; lower is
    better). Several sets train side by side through multi-LoRA when the trainer allows it (plain LoRA, AdamW)."""

    name = "sft"

    def evaluate(self, base, train_rows, eval_rows, recipe, on_step=None):
        from flock_pipeline.core.evaluator import train_and_evaluate

        return train_and_evaluate(base, train_rows, eval_rows, recipe, on_step)

    def base_outcome(self, base, eval_rows, recipe):
        from flock_pipeline.core.evaluator import base_eval_loss

        return base_eval_loss(base, eval_rows, recipe)

    def evaluate_many(self, base, train_sets, eval_rows, recipe, trainer):
        """The eval rows are tokenised once for all sets; a multi-LoRA pass that fails as a whole (out of memory at
        the smallest micro-batch, say) is redone one set at a time, so one miner's failure is its own."""
        from flock_pipeline.core import evaluator as core_eval

        results: list[Any] = [None] * len(train_sets)
        train_tok: list = [[] for _ in train_sets]
        with trainer.lock:
            eval_tok = core_eval.recipe_tokens(eval_rows, base.tokenizer, recipe, train=False)
            for i, rows in enumerate(train_sets):
                try:
                    train_tok[i] = core_eval.recipe_tokens(rows, base.tokenizer, recipe, train=True)
                except Exception as exc:  # noqa: BLE001 - that miner's failure, recorded by the caller
                    results[i] = exc
        if trainer.multi_lora and recipe.quantization == "none" and recipe.optimizer == "adamw":
            self._multi_lora(base, train_tok, eval_tok, recipe, trainer, results)
        for i, tokens in enumerate(train_tok):
            if results[i] is None and trainer.stopped() is not None:
                results[i] = trainer.stopped()  # a stop at a safe point: not trained, nothing to record
            if results[i] is None:
                try:
                    with trainer.lock:
                        results[i] = core_eval.train_and_evaluate_tokens(base, tokens, eval_tok, recipe)
                except Exception as exc:  # noqa: BLE001 - returned: the caller records it for that miner
                    results[i] = exc
                trainer.finished(i, results[i])
        return results

    @staticmethod
    def _multi_lora(base, train_tok: list, eval_tok: list, recipe, trainer: Trainer, results: list) -> None:
        from flock_pipeline.core.multilora import train_and_evaluate_many

        todo = [i for i, t in enumerate(train_tok) if t and results[i] is None]
        for start in range(0, len(todo), trainer.multi_lora):
            if trainer.stopped() is not None:
                return
            chunk = todo[start:start + trainer.multi_lora]
            try:
                with trainer.lock:
                    outcomes = train_and_evaluate_many(base, [train_tok[i] for i in chunk], eval_tok, recipe)
            except Exception:  # noqa: BLE001 - each set of the pass is redone alone afterwards
                continue
            for i, outcome in zip(chunk, outcomes):
                if not isinstance(outcome, BaseException):
                    outcome.procedure = "multi-lora"
                results[i] = outcome
                trainer.finished(i, outcome)


class DpoObjective(Objective):
    """LoRA DPO on preference pairs with the frozen base as the reference policy, then the mean DPO loss on the
    eval pairs (lower is better; ln 2 = 0.6931 is the base, which learned nothing). Each set trains alone; the eval
    pairs' reference log-probabilities are computed once for all sets."""

    name = "dpo"

    def evaluate(self, base, train_rows, eval_rows, recipe, on_step=None):
        from flock_pipeline.core.dpo import train_and_evaluate_dpo

        return train_and_evaluate_dpo(base, train_rows, eval_rows, recipe, on_step)

    def base_outcome(self, base, eval_rows, recipe):
        from flock_pipeline.core.dpo import base_dpo_loss

        return base_dpo_loss(base, eval_rows, recipe)

    def evaluate_many(self, base, train_sets, eval_rows, recipe, trainer):
        from flock_pipeline.core import dpo

        results: list[Any] = []
        with trainer.lock:
            eval_pairs = dpo.with_reference(base, dpo.pair_tokens(eval_rows, base.tokenizer, recipe, train=False),
                                            recipe)
        for rows in train_sets:
            stop = trainer.stopped()
            if stop is not None:
                results.append(stop)
                continue
            try:
                with trainer.lock:
                    tokens = dpo.pair_tokens(rows, base.tokenizer, recipe, train=True)
                    results.append(dpo.train_and_evaluate_pair_tokens(base, tokens, eval_pairs, recipe))
            except Exception as exc:  # noqa: BLE001 - returned: the caller records it for that miner
                results.append(exc)
            trainer.finished(len(results) - 1, results[-1])
        return results


SFT = SftObjective()
DPO = DpoObjective()
OBJECTIVES = {o.name: o for o in (SFT, DPO)}  # by name: what a published report names
