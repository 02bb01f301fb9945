"""LoRA fine-tune on a miner's rows, then the eval loss on the held-out set.

The metric: eval_loss = mean over eval rows of each row's mean next-token cross-entropy over its assistant tokens
(natural log, nats per token). Rows with no labelled token after truncation are left out of the mean.

Semantics kept from the reference recipe (Hugging Face Trainer, batch 1 x gradient accumulation 8): every optimizer
step sees `batch_size` sequences and its loss is the sum of their token losses divided by their labelled-token count
(the Trainer's gradient-accumulation normalisation); AdamW; linear warm-up from 0 then linear decay to 0; gradient
clipping at `max_grad_norm`; a seeded shuffle per epoch; bf16 autocast where the recipe computes in bf16 (its bf16
base, or the nf4 copy), as the Trainer's `bf16=True` does. What differs is only how the work is laid out: the
sequences of a step are packed end to end into a few rows under a token budget instead of run one at a time (each
sequence restarts its positions at 0, so its attention stays within it; no padding), and the output head runs only at
labelled positions, in chunks, so whole-vocabulary logits never exist for a batch. The eval packs shorter rows into
the padding of longer ones.

One base model is loaded per process and reused; each call wraps it in a fresh LoRA adapter and removes it
afterwards, so nothing from one miner can leak into the next.
"""

from __future__ import annotations

import bisect
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

__all__ = ["BaseModel", "EvalOutcome", "base_eval_loss", "load_base_model", "mixed_precision", "resolve_device",
           "resolve_dtype", "token_layout", "train_and_evaluate", "train_and_evaluate_tokens"]


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


PACK_ROW_TOKENS = 4_096  # training: the longest packed row considered (a longer sequence gets a row of its own)


Packs = list[list[int]]  # packed rows: per row, the indices of the sequences laid end to end in it


def attention_weight(config) -> float:
    """The attention's work per token per token of context, relative to the per-token work of a decoder layer's
    weights (from a transformers config: 4 x heads x head_dim flops per context token against 2 x the layer's weight
    count). Packing trades padding for longer rows, and the attention (dense under a block-diagonal mask) grows with
    the row: this weighs the two. About 1.2e-4 for Qwen2.5-0.5B, 6.6e-5 for 1.5B, 3.5e-3 for the tiny model."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    mlp = getattr(config, "intermediate_size", None) or 4 * hidden
    weights = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * mlp
    return 2 * heads * head_dim / weights


def _layout_cost(lengths: Sequence[int], batches: Sequence[Packs], attention: float) -> float:
    """The forward work of micro-batches of packed rows: per row of width W (its micro-batch's longest),
    W x (1 + attention x W)."""
    cost = 0.0
    for packs in batches:
        width = max(sum(lengths[i] for i in pack) for pack in packs)
        cost += len(packs) * width * (1 + attention * width)
    return cost


def _train_packs(lengths: Sequence[int], token_budget: int, attention: float = 0.0,
                 row_tokens: int = PACK_ROW_TOKENS) -> list[Packs]:
    """One optimizer step's sequences in micro-batches of packed rows (packed rows x longest <= token_budget): the
    least work (`_layout_cost`) of the padded layout (one sequence a row) and of packed rows of the longest
    sequence's length, twice that, four times... up to min(row_tokens, token_budget) tokens. With `attention` 0
    (tokens alone count) that is the longest rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest = lengths[order[0]] if order else 0
    layouts = [_grouped([[i] for i in order], lengths, token_budget)]
    capacity, top = max(1, longest), max(1, min(row_tokens, token_budget))
    while capacity < top:
        layouts.append(_packed_rows(lengths, order, capacity, token_budget))
        capacity *= 2
    layouts.append(_packed_rows(lengths, order, top, token_budget))
    return min(reversed(layouts), key=lambda batches: _layout_cost(lengths, batches, attention))


def _packed_rows(lengths: Sequence[int], order: Sequence[int], capacity: int, token_budget: int) -> list[Packs]:
    """Sequences (`order`: longest first) in rows of up to `capacity` tokens (a longer one alone in its row): each
    into the least filled of ceil(total / capacity) rows (a new row when none has room), so the rows come out of
    about equal length and the padding to the longest is small; then grouped into micro-batches."""
    packs: Packs = [[i] for i in order if lengths[i] > capacity]
    fitting = [i for i in order if lengths[i] <= capacity]
    first = len(packs)
    packs += [[] for _ in range(math.ceil(sum(lengths[i] for i in fitting) / capacity))]
    loads = [sum(lengths[i] for i in pack) for pack in packs]
    for i in fitting:
        row = min(range(first, len(loads)), key=loads.__getitem__, default=None)
        if row is None or loads[row] + lengths[i] > capacity:
            packs.append([])
            loads.append(0)
            row = len(loads) - 1
        packs[row].append(i)
        loads[row] += lengths[i]
    return _grouped([pack for pack in packs if pack], lengths, token_budget)


def _grouped(packs: Packs, lengths: Sequence[int], token_budget: int) -> list[Packs]:
    """Packed rows, longest first, in micro-batches of (rows x longest) <= token_budget."""
    loads = [sum(lengths[i] for i in pack) for pack in packs]
    groups: list[Packs] = []
    width = 0
    for r in sorted(range(len(packs)), key=lambda r: -loads[r]):
        if groups and (len(groups[-1]) + 1) * width <= token_budget:
            groups[-1].append(packs[r])
        else:
            groups.append([packs[r]])
            width = loads[r]
    return groups


def _eval_packs(lengths: Sequence[int], token_budget: int) -> list[Packs]:
    """Eval rows in micro-batches of packed rows: the padded layout (longest first, each micro-batch padded to its
    longest row under the token budget), with each shorter row moved into the padding of an earlier packed row where
    it fits (the one with the least room that holds it). Never more tokens than padding, and no packed row longer
    than its micro-batch's longest row: the work only shrinks (eval rows have no dropout, so nothing else changes)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[Packs] = []
    widths: list[int] = []
    rooms: list[tuple[int, int, int]] = []  # (free tokens, micro-batch, packed row), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, (n, -1, -1))
        if k < len(rooms):
            room, b, r = rooms.pop(k)
        elif batches and (len(batches[-1]) + 1) * widths[-1] <= token_budget:
            batches[-1].append([])
            room, b, r = widths[-1], len(batches) - 1, len(batches[-1]) - 1
        else:
            batches.append([[]])
            widths.append(n)
            room, b, r = n, len(batches) - 1, 0
        batches[b][r].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, b, r))
    return batches


def _pack(rows: Sequence[TokenizedRow], packs: Packs, pad_id: int, device: torch.device):
    """(ids, labels, positions, owner) [rows, longest] of sequences laid end to end, one packed row per entry of
    `packs`. Each sequence restarts its positions at 0 (so its attention stays within it, see `token_losses`) and
    its first label is ignored (no target crosses from one sequence into the next; a row's first label never counts
    anyway); owner[b, t] is the slot of the sequence at that position, numbered in the order `packs` lists them
    (-1 on the padding at the end of a row, which has positions of its own)."""
    length = max(sum(len(rows[i].input_ids) for i in pack) for pack in packs)
    ids = torch.full((len(packs), length), pad_id, dtype=torch.long)
    labels = torch.full((len(packs), length), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(packs), length), dtype=torch.long)
    owner = torch.full((len(packs), length), -1, dtype=torch.long)
    slot = 0
    for b, pack in enumerate(packs):
        start = 0
        for i in pack:
            n = len(rows[i].input_ids)
            ids[b, start:start + n] = torch.tensor(rows[i].input_ids, dtype=torch.long)
            labels[b, start + 1:start + n] = torch.tensor(rows[i].labels[1:], dtype=torch.long)
            positions[b, start:start + n] = torch.arange(n)
            owner[b, start:start + n] = slot
            slot += 1
            start += n
        positions[b, start:] = torch.arange(length - start)
    return ids.to(device), labels.to(device), positions.to(device), owner.to(device)


def _packed_tokens(lengths: Sequence[int], batches: Sequence[Packs]) -> int:
    """Tokens the forward passes hold for micro-batches of packed rows (each padded to its longest packed row)."""
    return sum(len(packs) * max(sum(lengths[i] for i in pack) for pack in packs) for packs in batches)


def token_layout(train_tok: Sequence[TokenizedRow], eval_tok: Sequence[TokenizedRow], recipe: TrainRecipe,
                 attention: float = 0.0) -> dict[str, int]:
    """The tokens the forward passes hold for these rows under the recipe, without running them: `*_real` (the
    rows' own tokens), `*_padded` (each micro-batch padded to its longest row, the layout before packing) and
    `*_packed` (this module's packing for a model of that `attention_weight`), for training (every step of every
    epoch, as `train_lora` runs them) and for the eval, at the recipe's token budgets."""
    rows = list(train_tok[: recipe.max_train_rows])
    out = {f"{side}_tokens_{kind}": 0 for side in ("train", "eval") for kind in ("real", "padded", "packed")}
    for order in epoch_orders(len(rows), recipe.epochs, recipe.seed):
        for start in range(0, len(order), recipe.batch_size):
            batch = [rows[i] for i in order[start:start + recipe.batch_size]]
            if sum(r.n_labels for r in batch) == 0:
                continue  # such a step runs nothing
            lengths = [len(r.input_ids) for r in batch]
            out["train_tokens_real"] += sum(lengths)
            out["train_tokens_padded"] += _packed_tokens(lengths, [[[i] for i in group] for group in
                                                                   _micro_batches(batch, recipe.train_micro_tokens)])
            out["train_tokens_packed"] += _packed_tokens(lengths, _train_packs(lengths, recipe.train_micro_tokens,
                                                                               attention))
    lengths = [len(r.input_ids) for r in eval_tok]
    out["eval_tokens_real"] = sum(lengths)
    out["eval_tokens_padded"] = _packed_tokens(lengths, [[[i] for i in group] for group in
                                                         _micro_batches(eval_tok, recipe.eval_batch_tokens)])
    out["eval_tokens_packed"] = _packed_tokens(lengths, _eval_packs(lengths, recipe.eval_batch_tokens))
    return out


def _causal_lm_parts(model: torch.nn.Module):
    """(decoder, output head) of a Hugging Face causal LM, through a peft wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def token_losses(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
                 chunk: int, *, recompute: bool, positions: torch.Tensor | None = None,
                 owner: torch.Tensor | None = None, n_out: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses per row [B], labelled-token count per row [B]) for a padded batch; per sequence for a
    packed one.

    The output head runs on the labelled positions only, `chunk` positions at a time; with `recompute` the chunk's
    logits are recomputed in the backward pass instead of being kept (training), so peak memory holds one chunk.

    A packed batch (`_pack`) comes with `positions` (restarting at 0 at each sequence) and no `mask`: transformers
    then attends within each sequence only (a block-diagonal causal mask); `owner` maps each position to its
    sequence's slot and the sums and counts are per slot ([n_out]) instead of per row.
    """
    decoder, head = _causal_lm_parts(model)
    if positions is None:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [B, T, H]
    else:  # no cache either: with one, transformers would not look for packed sequences
        hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    shifted = labels[:, 1:]
    selected = shifted != IGNORE_INDEX  # [B, T-1]
    h = hidden[:, :-1][selected]  # [N, H]
    targets = shifted[selected]  # [N]
    if owner is None:
        row_of, n_out = torch.nonzero(selected, as_tuple=True)[0], ids.shape[0]  # [N]
    else:
        row_of = owner[:, 1:][selected]  # a target's sequence (never the one before it: its first label is ignored)
    sums = torch.zeros(n_out, dtype=torch.float32, device=ids.device)
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start:start + chunk], targets[start:start + chunk]
        if recompute and torch.is_grad_enabled():
            per = checkpoint(_per_position, head, hs, ts, use_reentrant=False)
        else:
            per = _per_position(head, hs, ts)
        sums = sums.index_add(0, row_of[start:start + chunk], per)
    counts = selected.sum(dim=1) if owner is None else torch.bincount(row_of, minlength=n_out)
    return sums, counts


def _per_position(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


MIN_TOKEN_BUDGET = 256  # tokens; below this an out-of-memory error is final (the model itself does not fit)


def mixed_precision(recipe: TrainRecipe, device: torch.device) -> bool:
    """Whether the recipe trains and evaluates under bf16 autocast, as the live recipe (the Trainer's `bf16=True`)
    does: a bf16 base, or the nf4 copy (bf16 compute, its embeddings, norms and head upcast to fp32). fp32 recipes
    run as they are."""
    return recipe.quantization == "nf4" or resolve_dtype(recipe.precision, device) == torch.bfloat16


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` for the forward passes (the backward runs outside it, as torch advises)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, rows: Sequence[TokenizedRow], *, pad_id: int, device: torch.device,
                  batch_tokens: int, chunk: int, packing: bool = True, mixed: bool = False) -> list[float]:
    """Per-row mean assistant-token loss (nats), in input order; NaN for rows without a labelled token.

    On out-of-memory the batch token budget is halved and the remaining rows are retried (rows are independent in
    eval, so the numbers do not depend on the budget). `packing`: shorter rows ride in the padding of longer ones
    (`_eval_packs`); `mixed`: under bf16 autocast (`mixed_precision`).
    """
    sums = evaluate_token_sums(model, rows, pad_id=pad_id, device=device, batch_tokens=batch_tokens, chunk=chunk,
                               packing=packing, mixed=mixed)
    # the mean in float32, as the tensors hold it
    return [float(np.float32(total) / np.float32(count)) if count > 0 else math.nan for total, count in sums]


@torch.no_grad()
def evaluate_token_sums(model: torch.nn.Module, rows: Sequence[TokenizedRow], *, pad_id: int, device: torch.device,
                        batch_tokens: int, chunk: int, packing: bool = True,
                        mixed: bool = False) -> list[tuple[float, int]]:
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
            for group, sums, counts in _eval_batches(model, [rows[i] for i in todo], budget, pad_id, device, chunk,
                                                     packing, mixed):
                for j, g in enumerate(group):
                    out[todo[g]] = (float(sums[j]), int(counts[j]))
                    done[todo[g]] = True
        except RuntimeError as exc:
            if not _is_oom(exc) or budget // 2 < MIN_TOKEN_BUDGET:
                raise
            _free_cache(device)
            budget //= 2
    model.train(was_training)
    return out


def _eval_batches(model: torch.nn.Module, rows: Sequence[TokenizedRow], budget: int, pad_id: int,
                  device: torch.device, chunk: int, packing: bool, mixed: bool):
    """Yields (row indices, their loss sums, their label counts) per eval micro-batch, packed or padded."""
    if not packing:
        for group in _micro_batches(rows, budget):
            ids, labels, mask = _pad([rows[i] for i in group], pad_id, device)
            with bf16_autocast(device, mixed):
                sums, counts = token_losses(model, ids, labels, mask, chunk, recompute=False)
            yield group, sums, counts
        return
    for packs in _eval_packs([len(r.input_ids) for r in rows], budget):
        ids, labels, positions, owner = _pack(rows, packs, pad_id, device)
        members = [i for pack in packs for i in pack]
        with bf16_autocast(device, mixed):
            sums, counts = token_losses(model, ids, labels, None, chunk, recompute=False, positions=positions,
                                        owner=owner, n_out=len(members))
        yield members, sums, counts


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
    """Which rows the next forward pass holds: per row, its mask generator and its real (unpadded) length; for a
    packed batch (`set_packed`), per packed row the (generator, length) of each sequence laid end to end in it.

    `device`: None (or a host device) for numpy streams (`HostDropout`), else torch generators on that device
    (`DeviceRowDropout`); either way each row's stream is keyed by (seed, epoch, row)."""

    def __init__(self, seed: int, device: torch.device | None = None):
        self.seed = seed
        self.device = device if device is not None and device.type not in HOST_DROPOUT_DEVICES else None
        self.rows: list | None = None
        self.packed = False

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
        self.packed = False

    def set_packed(self, packs: Sequence[Sequence[tuple[np.random.Generator, int]]]) -> None:
        """A packed batch: per packed row, the (generator, length) of its sequences in the order they are laid."""
        self.rows = [list(pack) for pack in packs]
        self.packed = True

    def segments(self) -> list[list[tuple]] | None:
        """Per batch row, the (generator, length) of the sequences in it, from its first position on."""
        if self.rows is None or self.packed:
            return self.rows
        return [[row] for row in self.rows]


class RowDropout(torch.nn.Module):
    """LoRA dropout whose masks are drawn per row from that row's own stream (`RowDropoutPlan`: keyed by seed, epoch
    and row index, read in forward order): a row gets the same masks alone at batch 1, in a padded micro-batch,
    packed after other rows, or after an out-of-memory split. Padded positions are zeroed (they carry no label).
    Subclasses draw the masks, per batch row from a list of (generator, length) segments laid end to end."""

    def __init__(self, p: float, plan: RowDropoutPlan):
        super().__init__()
        self.p, self.plan = p, plan

    def drops(self) -> bool:
        return self.p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drops():
            return x
        segments = self.plan.segments()
        if segments is None or len(segments) != x.shape[0]:
            raise RuntimeError(f"{type(self).__name__} needs the rows of the batch (RowDropoutPlan.set_rows) while "
                               "training")
        return self.masked(x, segments)

    def masked(self, x: torch.Tensor, segments: list[list[tuple]]) -> torch.Tensor:
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

    def masked(self, x: torch.Tensor, segments: list[list[tuple]]) -> torch.Tensor:
        mask = np.zeros(x.shape, dtype=np.float32)
        for b, row in enumerate(segments):
            start = 0
            for generator, length in row:
                draws = generator.integers(0, 65536, size=(length, x.shape[-1]), dtype=np.uint16)
                np.multiply(draws >= self.threshold, self.scale, out=mask[b, start:start + length])
                start += length
        return x * torch.from_numpy(mask).to(x.dtype)


class DeviceRowDropout(RowDropout):
    """Row dropout drawn from torch generators on the device (CUDA). The scale 1 / (1 - p) and the product are
    computed in fp32 and rounded once to the activations' dtype (a bf16 scale would be 1.109375, not 1.1111)."""

    def masked(self, x: torch.Tensor, segments: list[list[tuple]]) -> torch.Tensor:
        mask = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for b, row in enumerate(segments):
            start = 0
            for generator, length in row:
                keep = torch.rand((length, x.shape[-1]), generator=generator, device=x.device) >= self.p
                mask[b, start:start + length] = keep.to(torch.float32) * (1.0 / (1.0 - self.p))
                start += length
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
                     keys: Sequence[tuple[int, int]] = (), *, mixed: bool = False) -> float:
    """Forward + backward of one optimizer step's sequences in padded micro-batches; gradients of
    sum(loss) / n_labels. `keys` are the (epoch, row index) of each sequence: with a `plan`, they key each row's
    dropout masks. `mixed`: the forward passes under bf16 autocast."""
    total = 0.0
    generators = [plan.generator(*key) for key in keys] if plan is not None else []
    for micro in _micro_batches(batch, budget):
        if plan is not None:
            plan.set_rows([(generators[i], len(batch[i].input_ids)) for i in micro])
        ids, labels, mask = _pad([batch[i] for i in micro], pad_id, device)
        with bf16_autocast(device, mixed):
            sums, _ = token_losses(model, ids, labels, mask, chunk, recompute=True)
        loss = sums.sum() / n_labels
        loss.backward()
        total += float(loss.detach())
    return total


def _accumulate_packed(model: torch.nn.Module, batch: Sequence[TokenizedRow], n_labels: int, budget: int,
                       chunk: int, pad_id: int, device: torch.device, plan: RowDropoutPlan | None = None,
                       keys: Sequence[tuple[int, int]] = (), *, mixed: bool = False,
                       attention: float = 0.0) -> float:
    """`_accumulate_step` with the sequences packed end to end (`_train_packs` for a model of that
    `attention_weight`, `_pack`): the same sums and the same normalisation, each sequence with its own row-keyed
    dropout masks wherever it lands, and little padding."""
    total = 0.0
    generators = [plan.generator(*key) for key in keys] if plan is not None else []
    for packs in _train_packs([len(r.input_ids) for r in batch], budget, attention):
        if plan is not None:
            plan.set_packed([[(generators[i], len(batch[i].input_ids)) for i in pack] for pack in packs])
        ids, labels, positions, owner = _pack(batch, packs, pad_id, device)
        with bf16_autocast(device, mixed):
            sums, _ = token_losses(model, ids, labels, None, chunk, recompute=True, positions=positions, owner=owner,
                                   n_out=sum(len(pack) for pack in packs))
        loss = sums.sum() / n_labels
        loss.backward()
        total += float(loss.detach())
    return total


StepFn = Callable[[Sequence, Sequence[tuple[int, int]], int], float]


def _sft_accumulate(model: torch.nn.Module, recipe: TrainRecipe, pad_id: int, device: torch.device,
                    plan: RowDropoutPlan | None) -> StepFn:
    """`train_lora`'s default step: the SFT loss of TokenizedRows, packed unless the recipe says otherwise, under
    bf16 autocast where the recipe computes in bf16."""
    mixed = mixed_precision(recipe, device)
    attention = attention_weight(_causal_lm_parts(model)[0].config)

    def accumulate(batch, keys, budget):
        n_labels = sum(r.n_labels for r in batch)
        if recipe.packing:
            return _accumulate_packed(model, batch, n_labels, budget, recipe.logits_chunk, pad_id, device, plan, keys,
                                      mixed=mixed, attention=attention)
        return _accumulate_step(model, batch, n_labels, budget, recipe.logits_chunk, pad_id, device, plan, keys,
                                mixed=mixed)

    return accumulate


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
        accumulate = _sft_accumulate(model, recipe, pad_id, device, plan)
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
                                    batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk,
                                    packing=recipe.packing, mixed=mixed_precision(recipe, base.device))
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
                            batch_tokens=recipe.eval_batch_tokens, chunk=recipe.logits_chunk, packing=recipe.packing,
                            mixed=mixed_precision(recipe, base.device))
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
