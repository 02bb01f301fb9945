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
    monkeypatch.setattr(evaluator, "attention_weight", lambda config: 0.0)  # pack as long as the budget allows
    losses = []
    rows = honest_rows(ATLAS, 16, 3)
    lengths = [len(r.input_ids) for r in evaluator.tokenize_rows(rows, base.tokenizer, RECIPE.max_seq_len)]
    for budget, splits in ((1_000_000, 1), (200, 2), (100, 4)):  # the 4 rows of a step in 1, 2 or 4 micro-batches
        recipe = RECIPE.with_overrides(train_micro_tokens=budget)
        layouts = [evaluator._train_packs([lengths[i] for i in order[s:s + 4]], budget)
                   for order in evaluator.epoch_orders(16, 1, RECIPE.seed) for s in range(0, 16, 4)]
        assert recipe.packing and {len(batches) for batches in layouts} == {splits}
        assert {len(packs[0]) for batches in layouts for packs in batches} == {4 // splits}  # rows per packed row
        outcome = evaluator.train_and_evaluate(base, rows, eval_rows(ATLAS)[:20], recipe)
        losses.append(outcome.eval_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] == pytest.approx(losses[2], rel=1e-6)


@pytest.mark.parametrize("device_path", [False, True], ids=["host streams (CPU)", "device generators (CUDA path)"])
def test_a_packed_row_holds_each_sequences_own_masks(monkeypatch, device_path):
    """Sequences laid end to end in one packed row draw the masks they draw alone; the padding after them is
    zeroed."""
    if device_path:
        monkeypatch.setattr(evaluator, "HOST_DROPOUT_DEVICES", ())
    plan = RowDropoutPlan(seed=5, device=torch.device("cpu"))
    drop = (DeviceRowDropout if device_path else HostDropout)(0.1, plan).train()
    alone = []
    for row, length in ((3, 50), (8, 30)):
        plan.set_rows([(plan.generator(1, row), length)])
        alone.append(drop(torch.ones(1, length, 16)))
    plan.set_packed([[(plan.generator(1, 8), 30), (plan.generator(1, 3), 50)], [(plan.generator(1, 3), 50)]])
    packed = drop(torch.ones(2, 90, 16))
    assert torch.equal(packed[0, :30], alone[1][0]) and torch.equal(packed[0, 30:80], alone[0][0])
    assert torch.equal(packed[1, :50], alone[0][0])
    assert not packed[0, 80:].any() and not packed[1, 50:].any()
    plan.set_rows(None)
    with pytest.raises(RuntimeError, match="set_rows"):
        drop(torch.ones(1, 4, 16))


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
