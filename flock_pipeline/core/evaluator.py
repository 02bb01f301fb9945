"""LoRA fine-tune on a miner's rows, then the eval loss on the held-out set.

The metric: eval_loss = mean over eval rows of each row's mean next-token cross-entropy over its assistant tokens
(natural log, nats per token). Rows with no labelled token after truncation are left out of the mean.

Semantics kept from the reference recipe (Hugging Face Trainer, batch 1 x gradient accumulation 8): every optimizer
step sees `batch_size` sequences and its loss is the sum of their token losses divided by their labelled-token count
(the Trainer's gradient-accumulation normalisation); AdamW; linear warm-up from 0 then linear decay to 0; gradient
clipping at `max_grad_norm`; a seeded shuffle per epoch. What differs is only how the work is laid out: the
sequences of a step run as a few padded micro-batches under a token budget instead of one at a time, and the output
head runs only at labelled positions, in chunks, so whole-vocabulary logits never exist for a batch.

One base model is loaded per process and reused; each call wraps it in a fresh LoRA adapter and removes it
afterwards, so nothing from one miner can leak into the next.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from flock_pipeline.core.chat import IGNORE_INDEX, TokenizedRow, tokenize_row
from flock_pipeline.core.model import BaseModel, load_base_model, resolve_device, resolve_dtype
from flock_pipeline.core.recipe import TrainRecipe
from flock_pipeline.core.schema import ChatRow

__all__ = ["BaseModel", "EvalOutcome", "base_eval_loss", "load_base_model", "resolve_device", "resolve_dtype",
           "train_and_evaluate", "train_and_evaluate_tokens"]


@dataclass
class EvalOutcome:
    eval_loss: float  # nats per assistant token, mean over eval rows of each row's mean
    per_row_losses: list[float]  # one per eval row, in the order given (NaN where a row had no labelled token)
    train_losses: list[float] = field(default_factory=list)  # one per optimizer step
    train_rows: int = 0
    train_tokens: int = 0
    eval_tokens: int = 0
    optimizer_steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)  # objective-specific numbers (DPO: reward accuracy, mean margin)
    procedure: str = "single"  # how it was trained: "single" (one adapter) or "multi-lora" (side by side)


def set_determinism(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled


def linear_schedule(step: int, warmup: int, total: int) -> float:
    """The Trainer's linear schedule factor for optimizer step `step` (0-based): 0 -> 1 over warm-up, then -> 0."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _pad(rows: Sequence[TokenizedRow], pad_id: int, device: torch.device):
    length = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _micro_batches(rows: Sequence[TokenizedRow], token_budget: int) -> list[list[int]]:
    """Indices grouped so that (rows in group) x (longest row) <= token_budget; longest first, similar lengths."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(rows[current[0]].input_ids) if current else len(rows[i].input_ids)
        if current and (len(current) + 1) * longest > token_budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _causal_lm_parts(model: torch.nn.Module):
    """(decoder, output head) of a Hugging Face causal LM, through a peft wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def token_losses(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 chunk: int, *, recompute: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses per row [B], labelled-token count per row [B]) for a padded batch.

    The output head runs on the labelled positions only, `chunk` positions at a time; with `recompute` the chunk's
    logits are recomputed in the backward pass instead of being kept (training), so peak memory holds one chunk.
    """
    decoder, head = _causal_lm_parts(model)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, H]
    shifted = labels[:, 1:]
    selected = shifted != IGNORE_INDEX  # [B, T-1]
    h = hidden[:, :-1][selected]  # [N, H]
    targets = shifted[selected]  # [N]
    row_of = torch.nonzero(selected, as_tuple=True)[0]  # [N]
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device)
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start:start + chunk], targets[start:start + chunk]
        if recompute and torch.is_grad_enabled():
            per = checkpoint(_per_position, head, hs, ts, use_reentrant=False)
        else:
            per = _per_position(head, hs, ts)
        sums = sums.index_add(0, row_of[start:start + chunk], per)
    return sums, selected.sum(dim=1)


def _per_position(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


MIN_TOKEN_BUDGET = 256  # tokens; below this an out-of-memory error is final (the model itself does not fit)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, rows: Sequence[TokenizedRow], *, pad_id: int, device: torch.device,
                  batch_tokens: int, chunk: int) -> list[float]:
    """Per-row mean assistant-token loss (nats), in input order; NaN for rows without a labelled token.

    On out-of-memory the batch token budget is halved and the remaining rows are retried (rows are independent in
    eval, so the numbers do not depend on the budget).
    """
    sums = evaluate_token_sums(model, rows, pad_id=pad_id, device=device, batch_tokens=batch_tokens, chunk=chunk)
    # the mean in float32, as the tensors hold it
    return [float(np.float32(total) / np.float32(count)) if count > 0 else math.nan for total, count in sums]


@torch.no_grad()
def evaluate_token_sums(model: torch.nn.Module, rows: Sequence[TokenizedRow], *, pad_id: int, device: torch.device,
                        batch_tokens: int, chunk: int) -> list[tuple[float, int]]:
    """Per row (sum of its labelled tokens' losses in nats, labelled-token count), in input order; what
    `evaluate_loss` averages and the DPO evaluator turns into log-probabilities. Halves the token budget on
    out-of-memory, like `evaluate_loss`."""
    was_training = model.training
    model.eval()
    out = [(0.0, 0)] * len(rows)
    done = [False] * len(rows)
    budget = batch_tokens
    while not all(done):
        todo = [i for i in range(len(rows)) if not done[i]]
        try:
            for group in _micro_batches([rows[i] for i in todo], budget):
                members = [todo[g] for g in group]
                ids, labels, mask = _pad([rows[i] for i in members], pad_id, device)
                sums, counts = token_losses(model, ids, labels, mask, chunk, recompute=False)
                for j, i in enumerate(members):
                    out[i] = (float(sums[j]), int(counts[j]))
                    done[i] = True
        except RuntimeError as exc:
            if not _is_oom(exc) or budget // 2 < MIN_TOKEN_BUDGET:
                raise
            _free_cache(device)
            budget //= 2
    model.train(was_training)
    return out


def mean_loss(per_row: Sequence[float]) -> float:
    finite = [x for x in per_row if not math.isnan(x)]
    if not finite:
        raise ValueError("no eval row has a labelled token")
    return sum(finite) / len(finite)


def recipe_tokens(rows: Sequence[ChatRow], tokenizer, recipe: TrainRecipe, *, train: bool) -> list[TokenizedRow]:
    """Rows as the recipe trains or evaluates them: stripped when it says so, training rows capped at
    `max_train_rows`, truncated at `max_seq_len`."""
    if recipe.strip_whitespace:
        rows = [r.stripped() for r in rows]
    return tokenize_rows(rows[: recipe.max_train_rows] if train else rows, tokenizer, recipe.max_seq_len)


def tokenize_rows(rows: Sequence[ChatRow], tokenizer, max_seq_len: int) -> list[TokenizedRow]:
    return [tokenize_row(r, tokenizer, max_seq_len) for r in rows]


HOST_DROPOUT_DEVICES = ("cpu",)  # devices whose LoRA dropout draws its masks on the host (`HostDropout`); the
# others draw them on the device (`DeviceRowDropout`): keyed by row either way


class RowDropoutPlan:
    """Which rows the next forward pass holds: per row, its mask generator and its real (unpadded) length.

    `device`: None (or a host device) for numpy streams (`HostDropout`), else torch generators on that device
    (`DeviceRowDropout`); either way each row's stream is keyed by (seed, epoch, row)."""

    def __init__(self, seed: int, device: torch.device | None = None):
        self.seed = seed
        self.device = device if device is not None and device.type not in HOST_DROPOUT_DEVICES else None
        self.rows: list | None = None

    def generator(self, epoch: int, row: int):
        """The mask stream of training row `row` in epoch `epoch`: the same however the rows are batched."""
        if self.device is None:
            return np.random.Generator(np.random.PCG64([self.seed, epoch, row]))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, row]).generate_state(1, np.uint64)[0]
                                  >> 1))
        return generator

    def set_rows(self, rows: Sequence[tuple[np.random.Generator, int]] | None) -> None:
        self.rows = list(rows) if rows is not None else None


class RowDropout(torch.nn.Module):
    """LoRA dropout whose masks are drawn per row from that row's own stream (`RowDropoutPlan`: keyed by seed, epoch
    and row index, read in forward order): a row gets the same masks alone at batch 1, in a padded micro-batch, or
    after an out-of-memory split. Padded positions are zeroed (they carry no label). Subclasses draw the masks."""

    def __init__(self, p: float, plan: RowDropoutPlan):
        super().__init__()
        self.p, self.plan = p, plan

    def drops(self) -> bool:
        return self.p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drops():
            return x
        rows = self.plan.rows
        if rows is None or len(rows) != x.shape[0]:
            raise RuntimeError(f"{type(self).__name__} needs the rows of the batch (RowDropoutPlan.set_rows) while "
                               "training")
        return self.masked(x, rows)

    def masked(self, x: torch.Tensor, rows: list) -> torch.Tensor:
        raise NotImplementedError


class HostDropout(RowDropout):
    """Row dropout for CPU training, drawn from numpy PCG64 streams: faster than torch's CPU dropout (drawing random
    numbers is most of a tiny model's training step; 16-bit draws from numpy are about 4x faster).

    A unit is dropped when its 16-bit draw is below round(p * 65536) (probability p to within 2**-17); kept units
    are scaled by 1 / (1 - p), as torch's dropout does.
    """

    def __init__(self, p: float, plan: RowDropoutPlan):
        super().__init__(p, plan)
        self.threshold = round(p * 65536)
        self.scale = np.float32(1.0 / (1.0 - p))

    def drops(self) -> bool:
        return self.threshold > 0

    def masked(self, x: torch.Tensor, rows: list) -> torch.Tensor:
        mask = np.zeros(x.shape, dtype=np.float32)
        for b, (generator, length) in enumerate(rows):
            draws = generator.integers(0, 65536, size=(length, x.shape[-1]), dtype=np.uint16)
            np.multiply(draws >= self.threshold, self.scale, out=mask[b, :length])
        return x * torch.from_numpy(mask).to(x.dtype)


class DeviceRowDropout(RowDropout):
    """Row dropout drawn from torch generators on the device (CUDA). The scale 1 / (1 - p) and the product are
    computed in fp32 and rounded once to the activations' dtype (a bf16 scale would be 1.109375, not 1.1111)."""

    def masked(self, x: torch.Tensor, rows: list) -> torch.Tensor:
        mask = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for b, (generator, length) in enumerate(rows):
            keep = torch.rand((length, x.shape[-1]), generator=generator, device=x.device) >= self.p
            mask[b, :length] = keep.to(torch.float32) * (1.0 / (1.0 - self.p))
        return (x.float() * mask).to(x.dtype)


def use_row_dropout(peft_model: torch.nn.Module, p: float, seed: int, device: torch.device) -> RowDropoutPlan:
    """Replace the LoRA dropout of every adapter layer with masks keyed by row: `HostDropout` on the host devices,
    `DeviceRowDropout` on the others; returns the plan they share."""
    from peft.tuners.lora import LoraLayer

    plan = RowDropoutPlan(seed, device)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name in list(module.lora_dropout.keys()):
                module.lora_dropout[name] = (HostDropout(p, plan) if plan.device is None
                                             else DeviceRowDropout(p, plan))
    return plan


def use_host_dropout(peft_model: torch.nn.Module, p: float, seed: int) -> RowDropoutPlan:
    """Replace the LoRA dropout of every adapter layer with `HostDropout`; returns the plan they share."""
    return use_row_dropout(peft_model, p, seed, torch.device("cpu"))


def dropout_plan(model: torch.nn.Module) -> RowDropoutPlan | None:
    return next((m.plan for m in model.modules() if isinstance(m, RowDropout)), None)


@contextlib.contextmanager
def fresh_lora(base: BaseModel, recipe: TrainRecipe):
    """The base model wrapped in a new, seeded LoRA adapter; the adapter is removed on exit."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                        target_modules=recipe.target_modules, task_type="CAUSAL_LM")
    torch.manual_seed(recipe.seed)
    peft_model = get_peft_model(base.model, config)
    if recipe.lora_dropout > 0:  # every device: a row's masks never depend on how the rows are batched
        use_row_dropout(peft_model, recipe.lora_dropout, recipe.seed, base.device)
    try:
        yield peft_model
    finally:
        restored = peft_model.unload()  # drops the LoRA layers; the frozen base weights were never changed
        restored.eval()
        base.model = restored


@contextlib.contextmanager
def merged_weights(peft_model: torch.nn.Module):
    """Evaluate with the adapter folded into the weights (one matmul per layer, as the reference's merge does).

    Each LoRA layer's base weight is swapped for a new tensor W + BA·scale for the duration; the original base
    tensors are never written to, so swapping them back restores the shared base model exactly.
    """
    from peft.tuners.lora import LoraLayer

    swapped: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    try:
        with torch.no_grad():
            for module in peft_model.modules():
                if not isinstance(module, LoraLayer) or not module.active_adapters:
                    continue
                linear = module.get_base_layer()
                original = linear.weight
                merged = original.float()
                for adapter in module.active_adapters:
                    merged = merged + module.get_delta_weight(adapter).float()
                linear.weight = torch.nn.Parameter(merged.to(original.dtype), requires_grad=False)
                swapped.append((linear, original))
        with peft_model.disable_adapter():
            yield peft_model
    finally:
        for linear, original in swapped:
            linear.weight = original


def epoch_orders(n_rows: int, epochs: int, seed: int) -> list[list[int]]:
    """The row order of each epoch: a seeded shuffle per epoch (same seed -> same orders)."""
    shuffle = random.Random(seed)
    orders = []
    for _ in range(epochs):
        order = list(range(n_rows))
        shuffle.shuffle(order)
        orders.append(order)
    return orders


def _accumulate_step(model: torch.nn.Module, batch: Sequence[TokenizedRow], n_labels: int, budget: int, chunk: int,
                     pad_id: int, device: torch.device, plan: RowDropoutPlan | None = None,
                     keys: Sequence[tuple[int, int]] = ()) -> float:
    """Forward + backward of one optimizer step's sequences in micro-batches; gradients of sum(loss) / n_labels.

    `keys` are the (epoch, row index) of each sequence: with a `plan`, they key each row's dropout masks."""
    total = 0.0
    generators = [plan.generator(*key) for key in keys] if plan is not None else []
    for micro in _micro_batches(batch, budget):
        if plan is not None:
            plan.set_rows([(generators[i], len(batch[i].input_ids)) for i in micro])
        ids, labels, mask = _pad([batch[i] for i in micro], pad_id, device)
        sums, _ = token_losses(model, ids, labels, mask, chunk, recompute=True)
        loss = sums.sum() / n_labels
        loss.backward()
        total += float(loss.detach())
    return total


StepFn = Callable[[Sequence, Sequence[tuple[int, int]], int], float]


def train_lora(model: torch.nn.Module, rows: Sequence, recipe: TrainRecipe, *, pad_id: int,
               device: torch.device, on_step: Callable[[int, int], None] | None = None,
               accumulate: StepFn | None = None) -> list[float]:
    """Fine-tune the LoRA parameters of `model` in place; returns the loss of each optimizer step.

    `accumulate(batch, keys, token_budget)` runs forward + backward of one optimizer step's items (keys: their
    (epoch, index) for the dropout streams) and returns the step's loss; default: the SFT loss of TokenizedRows.
    Items with `n_labels == 0` contribute nothing; a step without any labelled item only advances the schedule.
    `on_step(done, total)` is called after each optimizer step (progress bars)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "paged_adamw_8bit":
        from flock_pipeline.core.qlora import paged_adamw_8bit

        optimizer = paged_adamw_8bit(params, recipe.learning_rate, recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(rows) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    losses: list[float] = []
    model.train()
    step = 0
    budget = recipe.train_micro_tokens  # halved on out-of-memory (kept for the rest of the run)
    plan = dropout_plan(model)
    if accumulate is None:
        def accumulate(batch, keys, budget):
            return _accumulate_step(model, batch, sum(r.n_labels for r in batch), budget, recipe.logits_chunk,
                                    pad_id, device, plan, keys)
    for epoch, order in enumerate(epoch_orders(len(rows), recipe.epochs, recipe.seed)):
        for start in range(0, len(order), recipe.batch_size):
            indices = order[start:start + recipe.batch_size]
            batch = [rows[i] for i in indices]
            n_labels = sum(r.n_labels for r in batch)
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate * linear_schedule(step, recipe.warmup_steps, total)
            step_loss = 0.0
            if n_labels > 0:
                while True:
                    try:
                        step_loss = accumulate(batch, [(epoch, i) for i in indices], budget)
                        break
                    except RuntimeError as exc:  # out of memory: redo the step in smaller micro-batches
                        if not _is_oom(exc) or budget // 2 < MIN_TOKEN_BUDGET:
                            raise
                        optimizer.zero_grad(set_to_none=True)
                        _free_cache(device)
                        budget //= 2
                if recipe.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            step += 1
            if on_step is not None:
                on_step(step, total)
    if plan is not None:
        plan.set_rows(None)
    model.eval()
    return losses


def train_and_evaluate(base: BaseModel, train_rows: Sequence[ChatRow], eval_rows: Sequence[ChatRow],
                       recipe: TrainRecipe, on_step: Callable[[int, int], None] | None = None) -> EvalOutcome:
    """LoRA-train a fresh adapter on `train_rows` (capped at recipe.max_train_rows), then score `eval_rows`."""
    if not train_rows:
        raise ValueError("no training rows")
    if not eval_rows:
        raise ValueError("no eval rows")
    train_tok = recipe_tokens(train_rows, base.tokenizer, recipe, train=True)
    eval_tok = recipe_tokens(eval_rows, base.tokenizer, recipe, train=False)
    return train_and_evaluate_tokens(base, train_tok, eval_tok, recipe, on_step)


def train_and_evaluate_tokens(base: BaseModel, train_tok: Sequence[TokenizedRow], eval_tok: Sequence[TokenizedRow],
                              recipe: TrainRecipe, on_step: Callable[[int, int], None] | None = None) -> EvalOutcome:
    """The evaluator on already tokenised rows (what train_and_evaluate and the benchmarks call)."""
    if not train_tok or not eval_tok:
        raise ValueError("no training rows" if not train_tok else "no eval rows")
    set_determinism(recipe.deterministic)
    pad_id = _pad_id(base.tokenizer)
    train_tok = list(train_tok[: recipe.max_train_rows])
    trained_state = None
    t0 = time.perf_counter()
    if recipe.quantization == "nf4":  # train on the 4-bit copy, evaluate on this (unquantised) base
        from peft import get_peft_model_state_dict

        from flock_pipeline.core.qlora import quantized_base

        with fresh_lora(quantized_base(base), recipe) as qmodel:
            losses = train_lora(qmodel, train_tok, recipe, pad_id=pad_id, device=base.device, on_step=on_step)
            trained_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(qmodel).items()}
    with fresh_lora(base, recipe) as model:
        if trained_state is None:
            losses = train_lora(model, train_tok, recipe, pad_id=pad_id, device=base.device, on_step=on_step)
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, trained_state)
        _sync(base.device)
        t1 = time.perf_counter()
        with merged_weights(model):
            per_row = evaluate_loss(model, eval_tok, pad_id=pad_id, device=base.device,
                                    batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk)
        _sync(base.device)
        t2 = time.perf_counter()
    return EvalOutcome(eval_loss=mean_loss(per_row), per_row_losses=per_row, train_losses=losses,
                       train_rows=len(train_tok), train_tokens=sum(len(r.input_ids) for r in train_tok),
                       eval_tokens=sum(len(r.input_ids) for r in eval_tok), optimizer_steps=len(losses),
                       train_seconds=t1 - t0, eval_seconds=t2 - t1)


def base_eval_loss(base: BaseModel, eval_rows: Sequence[ChatRow], recipe: TrainRecipe) -> EvalOutcome:
    """The eval loss of the base model without fine-tuning (the floor every miner is compared to)."""
    set_determinism(recipe.deterministic)
    eval_tok = recipe_tokens(eval_rows, base.tokenizer, recipe, train=False)
    t0 = time.perf_counter()
    per_row = evaluate_loss(base.model, eval_tok, pad_id=_pad_id(base.tokenizer), device=base.device,
                            batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk)
    return EvalOutcome(eval_loss=mean_loss(per_row), per_row_losses=per_row,
                       eval_tokens=sum(len(r.input_ids) for r in eval_tok), eval_seconds=time.perf_counter() - t0)


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
