"""Row-keyed LoRA dropout for a batch of many rows: each layer's masks for all rows come from one set of ops.

The masks are exactly those of the single-miner trainer's `evaluator.HostDropout` / `evaluator.DeviceRowDropout`:
each row draws from its own stream (`evaluator.RowDropoutPlan.generator`, keyed by seed, epoch and row index), layer
after layer in forward order, `length x width` numbers per layer. Only the way the work is laid out differs, so the
number of operations per layer does not grow with the number of rows (multi-LoRA puts K miners' rows in one batch):

- host streams (CPU): a row's numpy stream is drawn once per forward pass, for every LoRA layer at once (one call per
  row, not one per row and layer), then each layer's mask for the whole batch is one gather from those draws. This
  gives the same numbers as drawing layer by layer: numpy makes 16-bit draws from 32-bit ones, two each, low half
  first, starting every call on a fresh 32-bit draw, so a layer whose `length x width` is odd leaves one 16-bit
  number unused, and the offsets here skip it the same way.
- device generators (CUDA): torch draws one generator per call, and one call for a whole pass would not give the
  numbers of the per-layer calls, so each row still draws its part of each layer (one kernel per row and layer);
  joining the parts, the threshold, the scale and placing them in the padded batch are a fixed few ops per layer.

Padded positions get a zero mask, as in the single-miner trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flock_pipeline.core.evaluator import RowDropoutPlan


class PassMasks:
    """The rows of the forward pass under way (`begin`) and the next LoRA layer's masks for all of them (`apply`).

    `widths`: the input width of every layer that applies dropout in one forward pass (each is called once)."""

    def __init__(self, p: float, plan: RowDropoutPlan, widths: Sequence[int]):
        self.p, self.plan, self.widths = p, plan, list(widths)
        self.rows: list | None = None
        self.lengths = np.zeros(0, dtype=np.int64)
        self.valid = np.zeros((0, 0), dtype=bool)  # [B, T]: position t holds a token of row b

    def drops(self) -> bool:
        return self.p > 0

    def begin(self, rows: Sequence[tuple], length: int, device: torch.device) -> None:
        """The next forward pass: per batch row its (generator, real length), padded to `length` positions."""
        self.rows = list(rows)
        self.lengths = np.fromiter((n for _, n in self.rows), dtype=np.int64, count=len(self.rows))
        self.valid = np.arange(length)[None, :] < self.lengths[:, None]
        self._begin(device)

    def end(self) -> None:
        self.rows = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None or self.valid.shape != tuple(x.shape[:2]):
            raise RuntimeError("row dropout needs the rows of the batch (PassMasks.begin) while training")
        return self._apply(x)

    def _begin(self, device: torch.device) -> None:
        raise NotImplementedError

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class HostPassMasks(PassMasks):
    """`evaluator.HostDropout`'s masks: a unit drops when its 16-bit draw is below round(p * 65536); kept units are
    scaled by 1 / (1 - p)."""

    def __init__(self, p: float, plan: RowDropoutPlan, widths: Sequence[int]):
        super().__init__(p, plan, widths)
        self.threshold = round(p * 65536)
        self.scale = np.float32(1.0 / (1.0 - p))
        self.kept = np.zeros(0, dtype=np.float32)  # every row's draws of this pass, as mask values, then a zero block
        self.cursor = self.stop = np.zeros(0, dtype=np.int64)  # per row: its next draw, the end of its draws

    def drops(self) -> bool:
        return self.threshold > 0

    def _begin(self, device: torch.device) -> None:
        # per row: length x width numbers per layer, each layer rounded up to whole 32-bit draws
        odd_widths = sum(w % 2 for w in self.widths)
        counts = self.lengths * sum(self.widths) + (self.lengths % 2) * odd_widths
        draws = [generator.integers(0, 65536, size=int(n), dtype=np.uint16)
                 for (generator, _), n in zip(self.rows, counts)]
        zero_block = max(self.widths, default=0)
        self.kept = np.multiply(np.concatenate(draws + [np.zeros(zero_block, np.uint16)]) >= self.threshold,
                                self.scale, dtype=np.float32)
        self.kept[len(self.kept) - zero_block:] = 0.0  # padded positions read this block
        self.stop = np.cumsum(counts)
        self.cursor = self.stop - counts
        self.zero_at = len(self.kept) - zero_block

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        positions = np.arange(self.valid.shape[1], dtype=np.int64) * width
        starts = np.where(self.valid, self.cursor[:, None] + positions[None, :], self.zero_at)  # [B, T]
        used = self.lengths * width
        self.cursor = self.cursor + used + used % 2
        if width > len(self.kept) - self.zero_at or np.any(self.cursor > self.stop):
            raise RuntimeError("row dropout: a forward pass applied more LoRA dropout than its layers draw")
        mask = self.kept[starts[:, :, None] + np.arange(width, dtype=np.int64)]  # [B, T, width], one gather
        return x * torch.from_numpy(mask).to(x.dtype)


class DevicePassMasks(PassMasks):
    """`evaluator.DeviceRowDropout`'s masks: uniform draws on the device, kept where >= p, scaled by 1 / (1 - p) in
    fp32; the product in fp32, rounded once to the activations' dtype."""

    def __init__(self, p: float, plan: RowDropoutPlan, widths: Sequence[int]):
        super().__init__(p, plan, widths)
        self.slot: torch.Tensor | None = None  # [B, T]: the token's index among the pass's tokens (padding: n_tokens)

    def _begin(self, device: torch.device) -> None:
        first = np.cumsum(self.lengths) - self.lengths
        slot = np.where(self.valid, first[:, None] + np.arange(self.valid.shape[1])[None, :], int(self.lengths.sum()))
        self.slot = torch.from_numpy(slot).to(device)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        width, device = x.shape[-1], x.device
        draws = [torch.rand(n * width, generator=generator, device=device) for generator, n in self.rows]
        uniform = torch.cat(draws + [torch.zeros(width, device=device)])  # the zero block: padding, never kept
        kept = (uniform >= self.p).to(torch.float32) * (1.0 / (1.0 - self.p))
        mask = kept[self.slot.unsqueeze(-1) * width + torch.arange(width, device=device)]  # [B, T, width]
        return (x.float() * mask).to(x.dtype)


class PassDropout(torch.nn.Module):
    """A LoRA layer's dropout: its masks come from the pass's shared `PassMasks`."""

    def __init__(self, masks: PassMasks):
        super().__init__()
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.masks.drops():
            return x
        return self.masks.apply(x)


def pass_masks(p: float, plan: RowDropoutPlan, widths: Sequence[int]) -> PassMasks:
    """Host streams where the plan draws on the host (`plan.device` None), else device generators."""
    return (HostPassMasks if plan.device is None else DevicePassMasks)(p, plan, widths)
