"""DPO evaluation: LoRA-DPO of the base model on a miner's preference pairs, then the DPO loss on held-out pairs.

The loss of a pair (prompt x, chosen answer y_w, rejected answer y_l) is DPO's sigmoid loss (Rafailov et al., 2023;
TRL's default `loss_type="sigmoid"`)::

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

where log p(y|x) is the sum of the answer tokens' log-probabilities (labels on the answer only, as in SFT), pi is the
base model with the miner's LoRA adapter and ref the frozen base model itself: the same weights without the adapter,
so no second model is loaded. beta is the recipe's `dpo_beta` (0.1).

- Training: the recipe's optimizer steps (AdamW, linear warm-up and decay, clipping, seeded shuffle, per-row
  dropout streams) over `batch_size` pairs each; a step's loss is the mean of its pairs' losses (TRL's reduction).
  Both answers of a pair run in the same padded micro-batch, under the token budget; the output head runs on
  labelled positions only, in chunks, as in SFT. The reference log-probabilities of the training pairs are computed
  once, before the adapter exists.
- Evaluation: with the adapter merged, each eval pair's loss against the base model's log-probabilities (computed
  once per eval set). The eval loss is their mean: ln 2 (0.6931) when the policy equals the reference (the base
  model's own score), lower when the chosen answers became relatively more likely. Also reported: reward accuracy
  (the share of pairs whose implicit reward margin is positive) and the mean margin beta * (...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from flock_pipeline.core.chat import TokenizedRow, tokenize_pair
from flock_pipeline.core.evaluator import (BaseModel, EvalOutcome, _pad, _pad_id, _sync, dropout_plan,
                                           evaluate_token_sums, fresh_lora, mean_loss, merged_weights,
                                           set_determinism, token_losses, train_lora)
from flock_pipeline.core.recipe import TrainRecipe
from flock_pipeline.core.schema import PreferenceRow


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair's two sequences and, once computed, the reference model's log-probabilities of its
    answers."""

    chosen: TokenizedRow
    rejected: TokenizedRow
    ref_chosen: float = math.nan
    ref_rejected: float = math.nan

    @property
    def n_labels(self) -> int:
        """Labelled tokens of both answers; 0 when either answer was truncated away (nothing to compare)."""
        c, r = self.chosen.n_labels, self.rejected.n_labels
        return c + r if c and r else 0

    @property
    def longest(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def pair_tokens(rows: Sequence[PreferenceRow], tokenizer, recipe: TrainRecipe, *, train: bool) -> list[TokenizedPair]:
    """Pairs as the recipe trains or evaluates them: stripped when it says so, training pairs capped at
    `max_train_rows`, each sequence truncated at `max_seq_len`."""
    if recipe.strip_whitespace:
        rows = [r.stripped() for r in rows]
    if train:
        rows = rows[: recipe.max_train_rows]
    return [TokenizedPair(*tokenize_pair(r, tokenizer, recipe.max_seq_len)) for r in rows]


def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """(per-pair loss, per-pair margin) from the four log-probabilities (tensors or numpy arrays)."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    if isinstance(margin, torch.Tensor):
        return -F.logsigmoid(margin), margin
    margin = np.asarray(margin, dtype=np.float64)
    return np.logaddexp(0.0, -margin), margin


def answer_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_id: int, device: torch.device,
                 batch_tokens: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(log p(chosen), log p(rejected)) of every pair under `model` (sums over answer tokens; no gradients)."""
    seqs = [s for p in pairs for s in (p.chosen, p.rejected)]
    sums = evaluate_token_sums(model, seqs, pad_id=pad_id, device=device, batch_tokens=batch_tokens, chunk=chunk)
    logps = -np.array([total for total, _ in sums], dtype=np.float64)
    return logps[0::2], logps[1::2]


def with_reference(base: BaseModel, pairs: Sequence[TokenizedPair], recipe: TrainRecipe) -> list[TokenizedPair]:
    """The pairs with the base model's log-probabilities of their answers (the reference policy)."""
    chosen, rejected = answer_logps(base.model, pairs, pad_id=_pad_id(base.tokenizer), device=base.device,
                                    batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk)
    return [replace(p, ref_chosen=float(c), ref_rejected=float(r)) for p, c, r in zip(pairs, chosen, rejected)]


def _pair_groups(pairs: Sequence[TokenizedPair], budget: int) -> list[list[int]]:
    """Indices of pairs grouped so that 2 x (pairs in group) x (longest sequence) <= budget, longest first."""
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i].longest)
    groups: list[list[int]] = []
    for i in order:
        if groups and 2 * (len(groups[-1]) + 1) * pairs[groups[-1][0]].longest > budget:
            groups.append([])
        if not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def dpo_step(model: torch.nn.Module, recipe: TrainRecipe, *, pad_id: int, device: torch.device) -> Callable:
    """The `train_lora` step function of DPO: forward + backward of one optimizer step's pairs; gradients of the
    mean DPO loss of its usable pairs."""
    plan = dropout_plan(model)

    def accumulate(batch: Sequence[TokenizedPair], keys: Sequence[tuple[int, int]], budget: int) -> float:
        usable = [(p, k) for p, k in zip(batch, keys) if p.n_labels > 0]
        total = 0.0
        for group in _pair_groups([p for p, _ in usable], budget):
            members = [usable[g] for g in group]
            seqs = [s for p, _ in members for s in (p.chosen, p.rejected)]
            if plan is not None:  # each answer draws from its own stream: (epoch, 2 x pair) and (epoch, 2 x pair + 1)
                plan.set_rows([(plan.generator(epoch, 2 * index + side), len(s.input_ids))
                               for (p, (epoch, index)) in members
                               for side, s in enumerate((p.chosen, p.rejected))])
            ids, labels, mask = _pad(seqs, pad_id, device)
            sums, _ = token_losses(model, ids, labels, mask, recipe.logits_chunk, recompute=True)
            logps = -sums
            ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p, _ in members], dtype=torch.float32,
                               device=device)
            losses, _ = dpo_losses(logps[0::2], logps[1::2], ref[:, 0], ref[:, 1], recipe.dpo_beta)
            loss = losses.sum() / len(usable)
            loss.backward()
            total += float(loss.detach())
        return total

    return accumulate


def evaluate_pairs(model: torch.nn.Module, eval_pairs: Sequence[TokenizedPair], recipe: TrainRecipe, *,
                   pad_id: int, device: torch.device) -> tuple[list[float], dict]:
    """Per eval pair its DPO loss under `model` against the pairs' reference log-probabilities (NaN for a pair with
    an answer truncated away), and the metrics: mean margin and reward accuracy over the scored pairs."""
    chosen, rejected = answer_logps(model, eval_pairs, pad_id=pad_id, device=device,
                                    batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk)
    ref_c = np.array([p.ref_chosen for p in eval_pairs])
    ref_r = np.array([p.ref_rejected for p in eval_pairs])
    losses, margins = dpo_losses(chosen, rejected, ref_c, ref_r, recipe.dpo_beta)
    scored = np.array([p.n_labels > 0 for p in eval_pairs])
    per_pair = [float(x) if ok else math.nan for x, ok in zip(losses, scored)]
    metrics = {"reward_accuracy": float(np.mean(margins[scored] > 0)) if scored.any() else math.nan,
               "mean_margin": float(np.mean(margins[scored])) if scored.any() else math.nan,
               "pairs": int(scored.sum())}
    return per_pair, metrics


def train_and_evaluate_dpo(base: BaseModel, train_rows: Sequence[PreferenceRow], eval_rows: Sequence[PreferenceRow],
                           recipe: TrainRecipe, on_step: Callable[[int, int], None] | None = None) -> EvalOutcome:
    """LoRA-DPO a fresh adapter on `train_rows`, then the mean DPO loss on `eval_rows` (see the module text)."""
    if not train_rows or not eval_rows:
        raise ValueError("no training pairs" if not train_rows else "no eval pairs")
    eval_pairs = with_reference(base, pair_tokens(eval_rows, base.tokenizer, recipe, train=False), recipe)
    return train_and_evaluate_pair_tokens(base, pair_tokens(train_rows, base.tokenizer, recipe, train=True),
                                          eval_pairs, recipe, on_step)


def train_and_evaluate_pair_tokens(base: BaseModel, train_pairs: Sequence[TokenizedPair],
                                   eval_pairs: Sequence[TokenizedPair], recipe: TrainRecipe,
                                   on_step: Callable[[int, int], None] | None = None) -> EvalOutcome:
    """The DPO evaluator on tokenised pairs; `eval_pairs` carry their reference log-probabilities already
    (`with_reference`, once per eval set)."""
    if recipe.quantization != "none" or recipe.optimizer != "adamw":
        raise ValueError("the DPO objective trains plain LoRA with AdamW (quantization none, optimizer adamw)")
    if not train_pairs or not eval_pairs:
        raise ValueError("no training pairs" if not train_pairs else "no eval pairs")
    if not any(p.n_labels for p in train_pairs):
        raise ValueError("no training pair has both answers within max_seq_len")
    set_determinism(recipe.deterministic)
    pad_id = _pad_id(base.tokenizer)
    t0 = time.perf_counter()
    train_pairs = with_reference(base, list(train_pairs[: recipe.max_train_rows]), recipe)
    with fresh_lora(base, recipe) as model:
        losses = train_lora(model, train_pairs, recipe, pad_id=pad_id, device=base.device, on_step=on_step,
                            accumulate=dpo_step(model, recipe, pad_id=pad_id, device=base.device))
        _sync(base.device)
        t1 = time.perf_counter()
        with merged_weights(model):
            per_pair, metrics = evaluate_pairs(model, eval_pairs, recipe, pad_id=pad_id, device=base.device)
        _sync(base.device)
        t2 = time.perf_counter()
    return EvalOutcome(eval_loss=mean_loss(per_pair), per_row_losses=per_pair, train_losses=losses,
                       train_rows=len(train_pairs), train_tokens=_tokens(train_pairs), eval_tokens=_tokens(eval_pairs),
                       optimizer_steps=len(losses), train_seconds=t1 - t0, eval_seconds=t2 - t1, metrics=metrics)


def base_dpo_loss(base: BaseModel, eval_rows: Sequence[PreferenceRow], recipe: TrainRecipe) -> EvalOutcome:
    """The base model's own DPO eval loss: the policy is the reference, so every pair scores ln 2 (computed, not
    assumed: the same code path as a miner's)."""
    set_determinism(recipe.deterministic)
    t0 = time.perf_counter()
    pairs = with_reference(base, pair_tokens(eval_rows, base.tokenizer, recipe, train=False), recipe)
    per_pair, metrics = evaluate_pairs(base.model, pairs, recipe, pad_id=_pad_id(base.tokenizer), device=base.device)
    return EvalOutcome(eval_loss=mean_loss(per_pair), per_row_losses=per_pair, eval_tokens=_tokens(pairs),
                       eval_seconds=time.perf_counter() - t0, metrics=metrics)


def _tokens(pairs: Sequence[TokenizedPair]) -> int:
    return sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
