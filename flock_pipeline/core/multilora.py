"""Multi-LoRA: several miners' LoRA adapters trained side by side over one frozen base model.

On a GPU one small LoRA fine-tune leaves most of the device idle. Here K adapters live in every target layer as
stacked tensors (A: [K, r, in], B: [K, out, r]); each sequence of a micro-batch is routed to its own adapter, so
one forward/backward pass over the shared base serves several miners. Everything that decides a miner's result is
kept per adapter, exactly as the single-miner trainer (`evaluator.train_lora`) does it:

- the initial adapter (the same seeded PEFT initialisation), the per-epoch row order, the optimizer steps of
  `batch_size` sequences with the loss normalised by that step's labelled tokens;
- the learning-rate schedule, gradient clipping (the norm of that adapter's gradients only) and AdamW state;
  an adapter whose miner has fewer rows simply stops stepping when its steps run out;
- dropout masks drawn per row from that row's own stream keyed by (seed, epoch, row index): on CPU the same
  numpy streams as the single-miner trainer, on CUDA a torch generator per row on the device (`rowmasks`).

The bookkeeping is batched over rows and adapters, so the number of small operations per optimizer step does not
grow with K (`benchmarks/multilora_ops.py` counts them): each layer's dropout masks for all rows of a micro-batch
come from one set of ops (a row's host stream is drawn once per pass, for all layers; on the device each row still
draws its part of each layer), AdamW updates every adapter of a stacked tensor at once with per-adapter coefficients
([K, 1, 1]: an adapter that does not step gets coefficients that leave it exactly as it is), and the per-adapter
gradient norms of the clipping are one reduction per tensor over the adapter axis.

Gradients of different adapters never mix (their parameters are disjoint slices and the loss is a sum of the
adapters' own losses), so a miner's result does not depend on which miners share its batch; only float rounding
of the shared matrix products differs. Evaluation then runs per adapter with its weights merged into the base, as
the single-miner path does. The single-miner path stays the reference (and the CPU default).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flock_pipeline.core.chat import IGNORE_INDEX, TokenizedRow
from flock_pipeline.core.evaluator import (MIN_TOKEN_BUDGET, BaseModel, EvalOutcome, RowDropoutPlan, _free_cache,
                                           _is_oom, _micro_batches, _pad_id, _sync, bf16_autocast, epoch_orders,
                                           evaluate_loss, fresh_lora, linear_schedule, mean_loss, mixed_precision,
                                           set_determinism, token_losses)
from flock_pipeline.core.recipe import TrainRecipe
from flock_pipeline.core.rowmasks import PassDropout, PassMasks, pass_masks


class Route:
    """Which adapter each sequence of the current forward pass uses (None: the bare base model)."""

    def __init__(self):
        self.index: torch.Tensor | None = None


class MultiLoraLinear(torch.nn.Module):
    """A frozen linear layer plus K LoRA adapters; each row of the input uses the adapter `route` names."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, k: int, scale: float,
                 route: Route, dropout: torch.nn.Module | None):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(a.detach().unsqueeze(0).repeat(k, 1, 1).contiguous())  # [K, r, in]
        self.lora_B = torch.nn.Parameter(b.detach().unsqueeze(0).repeat(k, 1, 1).contiguous())  # [K, out, r]
        self.scale, self.route, self.dropout = scale, route, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        index = self.route.index
        if index is None:
            return out
        h = self.dropout(x) if self.dropout is not None else x
        h = h.to(self.lora_A.dtype)
        delta = torch.bmm(torch.bmm(h, self.lora_A[index].transpose(1, 2)), self.lora_B[index].transpose(1, 2))
        return (out + delta * self.scale).to(out.dtype)

    def delta_weight(self, k: int) -> torch.Tensor:
        """Adapter k as a dense weight update (B A x scale), for merging."""
        return (self.lora_B[k].float() @ self.lora_A[k].float()) * self.scale


@dataclass
class _Layers:
    layers: list[tuple[torch.nn.Module, str, MultiLoraLinear]]  # (parent, attribute, layer)
    route: Route
    masks: PassMasks | None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, _, layer in self.layers for p in (layer.lora_A, layer.lora_B)]


@contextlib.contextmanager
def multi_lora(base: BaseModel, recipe: TrainRecipe, k: int):
    """The base model with K fresh adapters in every layer the recipe targets, each initialised exactly as the
    single-miner trainer's fresh adapter; the base layers are put back on exit."""
    from peft.tuners.lora import LoraLayer

    inits = {}
    with fresh_lora(base, recipe) as peft_model:  # the seeded PEFT initialisation, read and then removed
        for name, module in peft_model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                inits[name.removeprefix("base_model.model.")] = (
                    module.lora_A["default"].weight.detach().clone(), module.lora_B["default"].weight.detach().clone(),
                    float(module.scaling["default"]))
    route = Route()
    targets = []
    for name, (a, b, scale) in inits.items():
        parent_name, _, attribute = name.rpartition(".")
        parent = base.model.get_submodule(parent_name) if parent_name else base.model
        targets.append((parent, attribute, a, b, scale))
    masks = None
    if recipe.lora_dropout > 0:
        masks = pass_masks(recipe.lora_dropout, RowDropoutPlan(recipe.seed, base.device),
                           [getattr(parent, attribute).in_features for parent, attribute, *_ in targets])
    layers = []
    for parent, attribute, a, b, scale in targets:
        layer = MultiLoraLinear(getattr(parent, attribute), a.to(base.device), b.to(base.device), k, scale, route,
                                PassDropout(masks) if masks is not None else None)
        setattr(parent, attribute, layer)
        layers.append((parent, attribute, layer))
    try:
        yield _Layers(layers, route, masks)
    finally:
        for parent, attribute, layer in layers:
            setattr(parent, attribute, layer.base)
        base.model.eval()


class StackedAdamW:
    """AdamW over stacked adapter tensors ([K, ...]) with a step count and learning rate per adapter:
    torch.optim.AdamW's update for every adapter that steps, applied to all K slices of a tensor at once with
    per-adapter coefficients; an adapter that does not step gets the coefficients of no change (factors 1,
    increments 0)."""

    def __init__(self, params: list[torch.nn.Parameter], k: int, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.weight_decay, self.betas, self.eps = params, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [0] * k

    def _coefficients(self, stepping: Sequence[int], lrs: dict[int, float]) -> torch.Tensor:
        """[6, K, 1, 1]: per adapter the weight-decay factor, the two moment updates (weight of the gradient in the
        first, factor and gradient weight of the second), the bias correction of the second and the step size."""
        beta1, beta2 = self.betas
        rows = [[1.0] * len(self.steps), [0.0] * len(self.steps), [1.0] * len(self.steps), [0.0] * len(self.steps),
                [1.0] * len(self.steps), [0.0] * len(self.steps)]
        for k in stepping:
            self.steps[k] += 1
            t, lr = self.steps[k], lrs[k]
            rows[0][k], rows[1][k], rows[2][k], rows[3][k] = 1 - lr * self.weight_decay, 1 - beta1, beta2, 1 - beta2
            rows[4][k], rows[5][k] = math.sqrt(1 - beta2 ** t), -(lr / (1 - beta1 ** t))
        device = self.params[0].device if self.params else None
        return torch.tensor(rows, dtype=torch.float32, device=device).view(6, len(self.steps), 1, 1)

    @torch.no_grad()
    def step(self, stepping: Sequence[int], lrs: dict[int, float]) -> None:
        if not stepping:
            return
        decay, weight1, factor2, weight2, bias2_sqrt, step_size = self._coefficients(stepping, lrs).unbind(0)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay:
                p.mul_(decay)
            m.lerp_(grad, weight1)
            v.mul_(factor2).addcmul_(grad * weight2, grad)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.addcdiv_(m * step_size, denom)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def _clip_per_adapter(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each adapter's own gradients (its slices of every stacked tensor): the
    per-adapter norms are one reduction per tensor over the adapter axis. An adapter without gradients has norm 0
    and is left as it is."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g, 2.0, dim=tuple(range(1, g.dim()))) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, 2.0, dim=1)  # [K]: over each adapter's row of tensor norms [K, P]
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


@dataclass(frozen=True)
class _Sequence:
    adapter: int
    epoch: int
    row: int
    tokens: TokenizedRow


def train_multi_lora(layers: _Layers, model: torch.nn.Module, datasets: Sequence[Sequence[TokenizedRow]],
                     recipe: TrainRecipe, *, pad_id: int, device: torch.device) -> list[list[float]]:
    """Train adapter k on datasets[k] (k = 0..K-1) side by side; returns each adapter's loss per optimizer step."""
    k_count = len(datasets)
    params = layers.parameters()
    optimizer = StackedAdamW(params, k_count, recipe.weight_decay)
    schedules = [_schedule(rows, recipe) for rows in datasets]  # per adapter: its optimizer steps
    losses: list[list[float]] = [[] for _ in datasets]
    budget = recipe.train_micro_tokens
    model.train()
    for step in range(max(len(s) for s in schedules)):
        active = [k for k in range(k_count) if step < len(schedules[k])]
        seqs, n_labels = _step_sequences(datasets, schedules, active, step)
        stepping = [k for k in active if n_labels[k] > 0]
        step_loss = {k: 0.0 for k in active}
        if stepping:
            step_loss, budget = _accumulate_fitting(layers, model, optimizer, seqs, n_labels, active, budget, recipe,
                                                    pad_id, device)
            if recipe.max_grad_norm > 0:
                _clip_per_adapter(params, recipe.max_grad_norm)
            total = {k: len(schedules[k]) for k in stepping}
            optimizer.step(stepping, {k: recipe.learning_rate * linear_schedule(step, recipe.warmup_steps, total[k])
                                      for k in stepping})
        optimizer.zero_grad()
        for k in active:
            losses[k].append(step_loss[k])
    layers.route.index = None
    if layers.masks is not None:
        layers.masks.end()
    model.eval()
    return losses


def _schedule(rows: Sequence[TokenizedRow], recipe: TrainRecipe) -> list[tuple[int, list[int]]]:
    """One adapter's optimizer steps as (epoch, row indices): the single-miner trainer's epoch orders in batches."""
    steps = []
    for epoch, order in enumerate(epoch_orders(len(rows), recipe.epochs, recipe.seed)):
        steps += [(epoch, order[s:s + recipe.batch_size]) for s in range(0, len(order), recipe.batch_size)]
    return steps


def _step_sequences(datasets: Sequence[Sequence[TokenizedRow]], schedules: list[list[tuple[int, list[int]]]],
                    active: list[int], step: int) -> tuple[list[_Sequence], dict[int, int]]:
    """The sequences of optimizer step `step` of every active adapter, and each one's labelled-token count: an
    adapter whose rows of this step have no labels contributes no sequences (it does not step)."""
    seqs, n_labels = [], {}
    for k in active:
        epoch, indices = schedules[k][step]
        n_labels[k] = sum(datasets[k][i].n_labels for i in indices)
        if n_labels[k] > 0:
            seqs += [_Sequence(k, epoch, i, datasets[k][i]) for i in indices]
    return seqs, n_labels


def _accumulate_fitting(layers: _Layers, model, optimizer: StackedAdamW, seqs: list[_Sequence],
                        n_labels: dict[int, int], active: list[int], budget: int, recipe: TrainRecipe, pad_id: int,
                        device: torch.device) -> tuple[dict[int, float], int]:
    """`_accumulate` of one step, redone in smaller micro-batches while it runs out of memory; returns each active
    adapter's step loss and the token budget that fitted (later steps start from it)."""
    while True:
        try:
            step_loss = {k: 0.0 for k in active}
            _accumulate(layers, model, seqs, n_labels, step_loss, budget, recipe, pad_id, device)
            return step_loss, budget
        except RuntimeError as exc:  # out of memory: redo the step in smaller micro-batches
            if not _is_oom(exc) or budget // 2 < MIN_TOKEN_BUDGET:
                raise
            optimizer.zero_grad()
            _free_cache(device)
            budget //= 2


def _accumulate(layers: _Layers, model, seqs: list[_Sequence], n_labels: dict[int, int], step_loss: dict,
                budget: int, recipe: TrainRecipe, pad_id: int, device: torch.device) -> None:
    """Forward + backward of one optimizer step of every stepping adapter, in mixed micro-batches: each row's
    token-loss sum is divided by its own adapter's labelled-token count of this step."""
    masks = layers.masks
    generators = [masks.plan.generator(s.epoch, s.row) for s in seqs] if masks is not None else []
    for micro in _micro_batches([s.tokens for s in seqs], budget):
        members = [seqs[i] for i in micro]
        layers.route.index = torch.tensor([s.adapter for s in members], device=device)
        ids, labels, mask = _pad_rows([s.tokens for s in members], pad_id, device)
        if masks is not None:
            masks.begin([(generators[i], len(seqs[i].tokens.input_ids)) for i in micro], ids.shape[1], device)
        with bf16_autocast(device, mixed_precision(recipe, device)):  # as the single trainer: forward only
            sums, _ = token_losses(model, ids, labels, mask, recipe.logits_chunk, recompute=True)
        weights = torch.tensor([1.0 / n_labels[s.adapter] for s in members], device=sums.device)
        per_row = sums * weights
        per_row.sum().backward()
        for s, value in zip(members, per_row.detach().tolist()):
            step_loss[s.adapter] += value


def _pad_rows(rows: Sequence[TokenizedRow], pad_id: int, device: torch.device):
    """(ids, labels, attention mask) [B, longest] of rows padded at the end, as `evaluator._pad` makes them, built
    on the host in a few whole-batch steps and moved to the device once each."""
    lengths = np.fromiter((len(r.input_ids) for r in rows), dtype=np.int64, count=len(rows))
    valid = np.arange(lengths.max())[None, :] < lengths[:, None]
    ids = np.full(valid.shape, pad_id, dtype=np.int64)
    labels = np.full(valid.shape, IGNORE_INDEX, dtype=np.int64)
    total = int(lengths.sum())
    ids[valid] = np.fromiter(itertools.chain.from_iterable(r.input_ids for r in rows), dtype=np.int64, count=total)
    labels[valid] = np.fromiter(itertools.chain.from_iterable(r.labels for r in rows), dtype=np.int64, count=total)
    return (torch.from_numpy(ids).to(device), torch.from_numpy(labels).to(device),
            torch.from_numpy(valid.astype(np.int64)).to(device))


@contextlib.contextmanager
def _merged(layers: _Layers, k: int):
    """Adapter k folded into the base weights (new tensors; the base's own are put back on exit)."""
    swapped = []
    try:
        with torch.no_grad():
            for _, _, layer in layers.layers:
                original = layer.base.weight
                merged = original.float() + layer.delta_weight(k)
                layer.base.weight = torch.nn.Parameter(merged.to(original.dtype), requires_grad=False)
                swapped.append((layer.base, original))
        layers.route.index = None
        yield
    finally:
        for linear, original in swapped:
            linear.weight = original


def train_and_evaluate_many(base: BaseModel, train_sets: Sequence[Sequence[TokenizedRow]],
                            eval_tok: Sequence[TokenizedRow], recipe: TrainRecipe) -> list[EvalOutcome]:
    """LoRA-train one adapter per training set side by side, then score each on the same eval rows (merged)."""
    if not train_sets or any(not rows for rows in train_sets) or not eval_tok:
        raise ValueError("every adapter needs training rows, and the eval set rows")
    if recipe.quantization != "none" or recipe.optimizer != "adamw":
        raise ValueError("multi-LoRA trains the plain LoRA recipe (no 4-bit base, torch AdamW)")
    set_determinism(recipe.deterministic)
    pad_id = _pad_id(base.tokenizer)
    train_sets = [list(rows[: recipe.max_train_rows]) for rows in train_sets]
    t0 = time.perf_counter()
    with multi_lora(base, recipe, len(train_sets)) as layers:
        losses = train_multi_lora(layers, base.model, train_sets, recipe, pad_id=pad_id, device=base.device)
        _sync(base.device)
        train_seconds = (time.perf_counter() - t0) / len(train_sets)  # the shared training, split evenly
        outcomes = []
        for k, rows in enumerate(train_sets):
            t1 = time.perf_counter()
            with _merged(layers, k):
                per_row = evaluate_loss(base.model, eval_tok, pad_id=pad_id, device=base.device,
                                        batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk,
                                        packing=recipe.packing, mixed=mixed_precision(recipe, base.device))
            _sync(base.device)
            outcomes.append(EvalOutcome(
                eval_loss=mean_loss(per_row), per_row_losses=per_row, train_losses=losses[k], train_rows=len(rows),
                train_tokens=sum(len(r.input_ids) for r in rows),
                eval_tokens=sum(len(r.input_ids) for r in eval_tok), optimizer_steps=len(losses[k]),
                train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1))
    return outcomes
