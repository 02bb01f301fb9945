"""LoRA dropout keyed by row on every device: a miner's loss never depends on how a step's rows are split into
micro-batches (a smaller token budget, or an out-of-memory re-split). On the CPU the host streams do it; the CUDA
path's `DeviceRowDropout` (torch generators on the device) is checked here on the CPU too."""

from __future__ import annotations

import pytest
import torch

from flock_pipeline.core import evaluator
from flock_pipeline.core.evaluator import DeviceRowDropout, HostDropout, RowDropoutPlan, load_base_model
from flock_pipeline.core.recipe import TrainRecipe
from flock_pipeline.core.synthetic import eval_rows, honest_rows, make_atlas

ATLAS = make_atlas(7)
RECIPE = TrainRecipe(learning_rate=1e-2, max_seq_len=256, max_train_rows=16, epochs=1, batch_size=4, warmup_steps=1,
                     lora_dropout=0.1)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("device_path", [False, True], ids=["host streams (CPU)", "device generators (CUDA path)"])
def test_the_loss_is_the_same_whatever_the_micro_batch_split(base, monkeypatch, device_path):
    if device_path:
        monkeypatch.setattr(evaluator, "HOST_DROPOUT_DEVICES", ())  # the CPU draws like a GPU would
    losses = []
    for budget in (1_000_000, 200, 100):  # one micro-batch per step, then about 2 and 4 of the 4 rows
        recipe = RECIPE.with_overrides(train_micro_tokens=budget)
        outcome = evaluator.train_and_evaluate(base, honest_rows(ATLAS, 16, 3), eval_rows(ATLAS)[:20], recipe)
        losses.append(outcome.eval_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] == pytest.approx(losses[2], rel=1e-6)


def test_the_device_path_installs_its_own_dropout_and_scales_in_fp32(monkeypatch):
    plan = RowDropoutPlan(seed=3, device=torch.device("cpu"))
    assert plan.device is None and not isinstance(plan.generator(0, 1), torch.Generator)  # host: numpy streams
    monkeypatch.setattr(evaluator, "HOST_DROPOUT_DEVICES", ())
    plan = RowDropoutPlan(seed=3, device=torch.device("cpu"))
    drop = DeviceRowDropout(0.1, plan).train()
    x = torch.full((1, 4, 1000), 7.0, dtype=torch.bfloat16)
    plan.set_rows([(plan.generator(0, 1), 4)])
    y = drop(x)
    kept = y[y != 0].float()
    # 7 / 0.9 = 7.777... rounds once to bf16 7.78125; with the scale itself in bf16 (1.109375) it would be 7.75
    assert kept.numel() > 0 and torch.all(kept == 7.78125)
    assert 0.85 < kept.numel() / x.numel() < 0.95  # about 10 % dropped
    plan.set_rows([(plan.generator(0, 1), 4)])
    assert torch.equal(drop(x), y)  # the same row, the same stream: the same mask
    assert not isinstance(drop, HostDropout)
