"""Tests for flock_pipeline.core.evaluator (and recipe) on the embedded tiny model, on CPU.

The tiny model is built once per module (~20 s on one core); everything else here runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flock_pipeline.core.chat import IGNORE_INDEX, TokenizedRow  # noqa: E402
from flock_pipeline.core.evaluator import (  # noqa: E402
    _micro_batches,
    _pad,
    _pad_id,
    attention_weight,
    base_eval_loss,
    evaluate_loss,
    fresh_lora,
    linear_schedule,
    load_base_model,
    mean_loss,
    token_losses,
    tokenize_rows,
    train_and_evaluate,
)
from flock_pipeline.core.recipe import TINY_RECIPE, TrainRecipe  # noqa: E402
from flock_pipeline.core.schema import ChatRow, Turn  # noqa: E402
from flock_pipeline.core.synthetic import eval_rows, honest_rows, make_atlas, off_domain_rows  # noqa: E402

CPU = torch.device("cpu")
ATLAS = make_atlas(7)
# A small, fast recipe for the behavioural tests: 1 epoch of 4 steps of 4 rows.
FAST = TrainRecipe(learning_rate=1e-2, max_seq_len=256, max_train_rows=16, epochs=1, batch_size=4, warmup_steps=1)


@pytest.fixture(scope="module")
def tiny_path(tiny_model_dir):
    return tiny_model_dir  # the session's tiny model (conftest.py)


@pytest.fixture(scope="module")
def base(tiny_path):
    return load_base_model(str(tiny_path), device="cpu")


def mixed_rows() -> list[ChatRow]:
    """Rows of clearly different lengths, including a two-pair conversation."""
    rows = [eval_rows(ATLAS)[0], eval_rows(ATLAS)[2], off_domain_rows(1, 2)[0]]
    rows.append(ChatRow("You are a helpful assistant.", (
        Turn("user", "What is the capital of " + ATLAS[3].name + "? Please answer in a full sentence."),
        Turn("assistant", "The capital of " + ATLAS[3].name + " is " + ATLAS[3].capital + "."),
        Turn("user", "And which river flows through it?"),
        Turn("assistant", "The " + ATLAS[3].river + " flows through " + ATLAS[3].name + ", past its capital."))))
    return rows


def _perturb_lora_b(model, seed: int = 0) -> None:
    """LoRA B starts at zero (so A gets no gradient); give it small random values to test every gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def reference_loss(model, ids, labels, mask):
    """The plain recipe: full logits, shift by one, cross-entropy over all labelled tokens of the batch."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


def reference_row_losses(model, rows: list[TokenizedRow]) -> list[float]:
    """Each row alone through the plain recipe: its mean loss over its labelled tokens."""
    out = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r.input_ids])
            labels = torch.tensor([r.labels])
            out.append(float(reference_loss(model, ids, labels, torch.ones_like(ids))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# (1) token_losses against a plain reference implementation, loss and LoRA gradients


@pytest.mark.parametrize("chunk, recompute", [(4096, True), (5, True), (1, False), (7, False)])
def test_token_losses_loss_and_grads_match_reference(base, chunk, recompute):
    recipe = TrainRecipe(lora_dropout=0.0, max_seq_len=512)
    tok = tokenize_rows(mixed_rows(), base.tokenizer, recipe.max_seq_len)
    lengths = [len(r.input_ids) for r in tok]
    assert len(set(lengths)) == len(lengths)  # all different: the batch is padded
    ids, labels, mask = _pad(tok, _pad_id(base.tokenizer), CPU)
    assert int(mask.sum()) < mask.numel()

    with fresh_lora(base, recipe) as model:
        _perturb_lora_b(model)
        model.train()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        assert params and all("lora_" in n for n in names)

        sums, counts = token_losses(model, ids, labels, mask, chunk, recompute=recompute)
        loss = sums.sum() / counts.sum()
        grads = torch.autograd.grad(loss, params)

        ref = reference_loss(model, ids, labels, mask)
        ref_grads = torch.autograd.grad(ref, params)

        # per-row counts and sums
        assert counts.tolist() == [r.n_labels for r in tok]  # labels[0] is never labelled (system prompt)
        with torch.no_grad():
            per_row_ref = reference_row_losses(model, tok)
        assert (sums / counts).tolist() == pytest.approx(per_row_ref, abs=1e-5)

    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert 1.0 < loss.item() < 10.0
    for name, g, rg in zip(names, grads, ref_grads):
        assert torch.allclose(g, rg, rtol=1e-4, atol=1e-7), name
    # the check is not vacuous: both LoRA factors get a gradient
    assert any(float(g.abs().max()) > 0 for n, g in zip(names, grads) if "lora_A" in n)
    assert any(float(g.abs().max()) > 0 for n, g in zip(names, grads) if "lora_B" in n)


def test_token_losses_batch_without_labels(base):
    row = TokenizedRow((1, 2, 3), (IGNORE_INDEX,) * 3)
    ids, labels, mask = _pad([row], 0, CPU)
    with torch.no_grad():
        sums, counts = token_losses(base.model, ids, labels, mask, 16, recompute=False)
    assert sums.tolist() == [0.0] and counts.tolist() == [0]


# ---------------------------------------------------------------------------------------------------------------
# (2) padding and batching never let one row influence another


@pytest.mark.parametrize("batch_tokens, chunk", [(1_000_000, 4096), (1_000_000, 3), (300, 4096), (1, 11)])
def test_eval_row_loss_same_alone_and_batched(base, batch_tokens, chunk):
    rows = mixed_rows() + eval_rows(ATLAS)[5:9]
    tok = tokenize_rows(rows, base.tokenizer, 512)
    pad = _pad_id(base.tokenizer)
    batched = evaluate_loss(base.model, tok, pad_id=pad, device=CPU, batch_tokens=batch_tokens, chunk=chunk)
    alone = [evaluate_loss(base.model, [r], pad_id=pad, device=CPU, batch_tokens=10**6, chunk=4096)[0] for r in tok]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert alone == pytest.approx(reference_row_losses(base.model, tok), abs=1e-5)
    assert len(set(round(x, 6) for x in alone)) == len(alone)  # distinct rows, distinct losses


def test_eval_loss_independent_of_pad_id_and_order(base):
    tok = tokenize_rows(mixed_rows(), base.tokenizer, 512)
    kwargs = dict(device=CPU, batch_tokens=10**6, chunk=4096)
    with_pad0 = evaluate_loss(base.model, tok, pad_id=0, **kwargs)
    with_pad7 = evaluate_loss(base.model, tok, pad_id=7, **kwargs)
    assert with_pad0 == pytest.approx(with_pad7, abs=1e-5)
    reversed_ = evaluate_loss(base.model, tok[::-1], pad_id=0, **kwargs)
    assert reversed_[::-1] == pytest.approx(with_pad0, abs=1e-5)  # results come back in input order


def test_eval_row_without_labels_is_nan(base):
    tok = tokenize_rows(mixed_rows()[:2], base.tokenizer, 512)
    empty = TokenizedRow(tok[0].input_ids, (IGNORE_INDEX,) * len(tok[0].input_ids))
    out = evaluate_loss(base.model, [tok[0], empty, tok[1]], pad_id=0, device=CPU, batch_tokens=10**6, chunk=64)
    assert math.isnan(out[1])
    assert all(math.isfinite(x) for x in (out[0], out[2]))


@pytest.mark.parametrize(
    "lengths, budget, expected",
    [
        ([5, 10, 3], 1000, [[1, 0, 2]]),
        ([5, 10, 3], 20, [[1, 0], [2]]),
        ([5, 10, 3], 1, [[1], [0], [2]]),
        ([4, 4, 4, 4], 8, [[0, 1], [2, 3]]),
    ],
)
def test_micro_batches(lengths, budget, expected):
    rows = [TokenizedRow((1,) * n, (1,) * n) for n in lengths]
    groups = _micro_batches(rows, budget)
    assert groups == expected
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))


def test_pad_right_pads_with_mask_and_ignored_labels():
    rows = [TokenizedRow((5, 6, 7), (IGNORE_INDEX, 6, 7)), TokenizedRow((8,), (8,))]
    ids, labels, mask = _pad(rows, 0, CPU)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------------------------------------------------------
# (3) train_and_evaluate: reproducible, independent of history, base model untouched


def _exact(losses: list[float]) -> list[float | None]:
    """For exact comparison of loss lists that may hold NaN (NaN != NaN)."""
    return [None if math.isnan(x) else x for x in losses]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_and_evaluate_reproducible_and_isolated(base):
    miner_a = off_domain_rows(16, 1)
    miner_b = honest_rows(ATLAS, 16, 3)
    # the last eval row is truncated inside its system prompt: no labelled token -> NaN, left out of the mean
    long_system = ChatRow("You are " + "a very careful and thorough assistant " * 20, eval_rows(ATLAS)[0].turns)
    evals = eval_rows(ATLAS)[:20] + [long_system]
    before = _snapshot(base.model)
    base_before = base_eval_loss(base, evals, FAST)

    b_alone = train_and_evaluate(base, miner_b, evals, FAST)
    torch.manual_seed(1234)  # disturb the global RNGs in between: results must not depend on them
    torch.rand(100)
    a = train_and_evaluate(base, miner_a, evals, FAST)
    b_again = train_and_evaluate(base, miner_b, evals, FAST)

    assert b_again.eval_loss == b_alone.eval_loss
    assert _exact(b_again.per_row_losses) == _exact(b_alone.per_row_losses)
    assert b_again.train_losses == b_alone.train_losses
    assert a.eval_loss != b_alone.eval_loss  # the data matters, so equality above is not trivial

    # NaN row excluded from the mean
    assert math.isnan(b_alone.per_row_losses[-1])
    assert b_alone.eval_loss == pytest.approx(sum(b_alone.per_row_losses[:-1]) / 20, abs=1e-12)
    assert len(b_alone.per_row_losses) == len(evals)

    # bookkeeping
    assert b_alone.train_rows == 16
    assert b_alone.optimizer_steps == len(b_alone.train_losses) == 4
    assert all(math.isfinite(x) and x > 0 for x in b_alone.train_losses)

    # the base model is exactly as before: same weights, no adapter left, still frozen
    after = _snapshot(base.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in name for name, _ in base.model.named_modules())
    assert not any(p.requires_grad for p in base.model.parameters())
    assert _exact(base_eval_loss(base, evals, FAST).per_row_losses) == _exact(base_before.per_row_losses)


def test_train_rows_capped_at_max_train_rows(base):
    evals = eval_rows(ATLAS)[:10]
    rows = honest_rows(ATLAS, 24, 4)
    capped = train_and_evaluate(base, rows, evals, FAST)
    first = train_and_evaluate(base, rows[:16], evals, FAST)
    assert capped.train_rows == 16
    assert capped.eval_loss == first.eval_loss


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(dict(train_micro_tokens=64), id="one-row-micro-batches"),
        pytest.param(dict(eval_batch_tokens=64, logits_chunk=7), id="small-eval-batches-and-chunks"),
    ],
)
def test_performance_only_fields_do_not_change_result_without_dropout(base, overrides):
    recipe = FAST.with_overrides(lora_dropout=0.0)
    rows = honest_rows(ATLAS, 16, 3)
    evals = eval_rows(ATLAS)[:20]
    ref = train_and_evaluate(base, rows, evals, recipe)
    small = recipe.with_overrides(**overrides)
    out = train_and_evaluate(base, rows, evals, small)
    assert out.eval_loss == pytest.approx(ref.eval_loss, abs=1e-5)
    assert out.train_losses == pytest.approx(ref.train_losses, abs=1e-5)


def test_cpu_dropout_masks_do_not_depend_on_the_micro_batches(base):
    """On CPU each row draws its LoRA dropout masks from its own (seed, epoch, row) stream: one row per micro-batch
    and the whole step in one micro-batch train the same adapter."""
    assert FAST.lora_dropout > 0
    rows, evals = honest_rows(ATLAS, 16, 3), eval_rows(ATLAS)[:20]
    whole = train_and_evaluate(base, rows, evals, FAST)
    split = train_and_evaluate(base, rows, evals, FAST.with_overrides(train_micro_tokens=64))
    assert split.train_losses == pytest.approx(whole.train_losses, abs=1e-5)
    assert split.eval_loss == pytest.approx(whole.eval_loss, abs=1e-5)
    other_seed = train_and_evaluate(base, rows, evals, FAST.with_overrides(seed=7))
    assert abs(other_seed.eval_loss - whole.eval_loss) > 1e-4  # the masks (and LoRA init) do follow the seed


def test_host_dropout_rate_scale_and_modes():
    import numpy as np

    from flock_pipeline.core.evaluator import HostDropout, RowDropoutPlan

    plan = RowDropoutPlan(seed=3)
    drop = HostDropout(0.1, plan).train()
    x = torch.ones(2, 500, 64)
    plan.set_rows([(plan.generator(0, 0), 500), (plan.generator(0, 1), 300)])
    y = drop(x)
    kept = y[0] != 0
    assert 0.09 < 1 - kept.float().mean().item() < 0.11
    assert torch.allclose(y[0][kept], torch.full_like(y[0][kept], 1 / 0.9))
    assert torch.all(y[1, 300:] == 0)  # padding carries no signal
    plan.set_rows([(plan.generator(0, 1), 300)])
    alone = drop(torch.ones(1, 300, 64))
    assert torch.equal(alone[0], y[1, :300])  # row 1's masks are its own, batched or alone
    assert isinstance(plan.generator(0, 0), np.random.Generator)
    plan.set_rows(None)
    with pytest.raises(RuntimeError, match="set_rows"):
        drop(x)
    assert drop.eval()(x) is x


def test_eval_with_merged_weights_restores_the_base_exactly(base):
    from flock_pipeline.core.evaluator import merged_weights

    rows = tokenize_rows(eval_rows(ATLAS)[:12], base.tokenizer, 256)
    before = _snapshot(base.model)
    with fresh_lora(base, FAST) as model:
        _perturb_lora_b(model)
        unmerged = evaluate_loss(model, rows, pad_id=0, device=CPU, batch_tokens=1 << 15, chunk=4096)
        with merged_weights(model):
            merged = evaluate_loss(model, rows, pad_id=0, device=CPU, batch_tokens=1 << 15, chunk=4096)
        again = evaluate_loss(model, rows, pad_id=0, device=CPU, batch_tokens=1 << 15, chunk=4096)
    assert merged == pytest.approx(unmerged, abs=1e-5)
    assert abs(mean_loss(merged) - mean_loss(base_eval_loss(base, eval_rows(ATLAS)[:12], FAST).per_row_losses)) > 1e-4
    assert again == unmerged  # the adapter is back in use after the merged evaluation
    after = _snapshot(base.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_as_the_reference_trainer_recipe_with_the_same_dropout_masks(tiny_path, base):
    """The benchmark's reference (Hugging Face Trainer, batch 1 x gradient accumulation, merge, evaluate at batch
    1), given our row-keyed dropout masks, lands on our loss: batching changes the layout, not the result."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "evaluator.py"
    spec = importlib.util.spec_from_file_location("flock_bench_evaluator", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train = tokenize_rows(honest_rows(ATLAS, 16, 3), base.tokenizer, FAST.max_seq_len)
    evals = tokenize_rows(eval_rows(ATLAS)[:20], base.tokenizer, FAST.max_seq_len)
    reference = bench.run_reference(tiny_path, FAST, train, evals, "cpu", matched=True)
    ours = train_and_evaluate(base, honest_rows(ATLAS, 16, 3), eval_rows(ATLAS)[:20], FAST)
    assert ours.eval_loss == pytest.approx(reference["eval_loss"], rel=1e-5)


def test_train_micro_tokens_is_part_of_the_cache_key():
    """On GPU the LoRA dropout is torch's, whose masks depend on the micro-batch split (on CPU they do not, see
    above), so two splits must never share a cached result."""
    assert FAST.lora_dropout > 0
    assert FAST.with_overrides(train_micro_tokens=64).recipe_hash() != FAST.recipe_hash()
    assert FAST.with_overrides(eval_batch_tokens=64, logits_chunk=7).recipe_hash() == FAST.recipe_hash()


@pytest.mark.parametrize("train, evals", [([], eval_rows(ATLAS)[:2]), (honest_rows(ATLAS, 2, 1), [])])
def test_train_and_evaluate_requires_rows(base, train, evals):
    with pytest.raises(ValueError, match="no (training|eval) rows"):
        train_and_evaluate(base, train, evals, FAST)


# ---------------------------------------------------------------------------------------------------------------
# (4) mean_loss: the mean over rows of each row's mean


@pytest.mark.parametrize(
    "per_row, expected",
    [
        ([2.0], 2.0),
        ([1.0, 2.0, 3.0], 2.0),
        ([1.0, math.nan, 3.0], 2.0),
        ([math.nan, 0.5, math.nan, 1.5, 4.0], 2.0),
        ([0.25, 0.75], 0.5),
    ],
)
def test_mean_loss(per_row, expected):
    assert mean_loss(per_row) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("per_row", [[], [math.nan], [math.nan, math.nan]])
def test_mean_loss_without_finite_rows_raises(per_row):
    with pytest.raises(ValueError, match="no eval row has a labelled token"):
        mean_loss(per_row)


def test_eval_loss_is_row_mean_not_token_mean(base):
    # a row with 2 labelled tokens summing to 4 nats (mean 2) and one with 10 summing to 10 (mean 1): 1.5, not 14/12
    assert mean_loss([4 / 2, 10 / 10]) == pytest.approx(1.5)
    rows = [eval_rows(ATLAS)[0], mixed_rows()[3]]  # a short answer and a long two-pair row
    tok = tokenize_rows(rows, base.tokenizer, 512)
    out = base_eval_loss(base, rows, TrainRecipe(max_seq_len=512))
    ids, labels, mask = _pad(tok, 0, CPU)
    with torch.no_grad():
        sums, counts = token_losses(base.model, ids, labels, mask, 4096, recompute=False)
    row_means = (sums / counts).tolist()
    token_mean = float(sums.sum() / counts.sum())
    assert counts[0] != counts[1]
    assert out.eval_loss == pytest.approx(sum(row_means) / 2, abs=1e-5)
    assert abs(out.eval_loss - token_mean) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# (5) linear_schedule


@pytest.mark.parametrize(
    "step, warmup, total, expected",
    [
        (0, 5, 20, 0.0),
        (1, 5, 20, 0.2),
        (4, 5, 20, 0.8),
        (5, 5, 20, 1.0),
        (6, 5, 20, 14 / 15),
        (19, 5, 20, 1 / 15),
        (20, 5, 20, 0.0),
        (25, 5, 20, 0.0),
        (0, 0, 10, 1.0),
        (9, 0, 10, 0.1),
        (0, 1, 1, 0.0),
    ],
)
def test_linear_schedule_values(step, warmup, total, expected):
    assert linear_schedule(step, warmup, total) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("warmup, total", [(5, 20), (2, 3), (0, 7), (5, 10)])
def test_linear_schedule_shape(warmup, total):
    values = [linear_schedule(s, warmup, total) for s in range(total)]
    assert values[0] == (0.0 if warmup else 1.0)
    if warmup < total:
        assert values[warmup] == 1.0
    assert values[-1] > 0
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup + 1]))  # rising during warm-up
    assert all(a > b for a, b in zip(values[warmup:], values[warmup + 1:]))  # then strictly decreasing
    assert linear_schedule(total, warmup, total) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# (6) pinned loss on the tiny model

# TINY_RECIPE (lr 5e-3), honest_rows(make_atlas(7), 40, 8), eval_rows(...)[:60], row-keyed CPU dropout masks
PINNED_TINY_LOSS = 2.1545099437236788


def test_pinned_loss_tiny_model(base):
    atlas = make_atlas(7)
    evals = eval_rows(atlas)[:60]
    out = train_and_evaluate(base, honest_rows(atlas, 40, 8), evals, TINY_RECIPE)
    assert out.eval_loss == pytest.approx(PINNED_TINY_LOSS, abs=1e-3)
    assert out.optimizer_steps == 10  # 40 rows / batch 8 x 2 epochs
    assert out.train_rows == 40
    assert len(out.per_row_losses) == 60 and all(math.isfinite(x) for x in out.per_row_losses)
    floor = base_eval_loss(base, evals, TINY_RECIPE)
    assert out.eval_loss < floor.eval_loss


# ---------------------------------------------------------------------------------------------------------------
# TrainRecipe


@pytest.mark.parametrize(
    "kwargs, reason_part",
    [
        ({"lora_r": 0}, "lora_r must be positive"),
        ({"lora_alpha": -1}, "lora_alpha must be positive"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"max_seq_len": 0}, "max_seq_len must be positive"),
        ({"max_train_rows": 0}, "max_train_rows must be positive"),
        ({"train_micro_tokens": 0}, "train_micro_tokens must be positive"),
        ({"eval_batch_tokens": -5}, "eval_batch_tokens must be positive"),
        ({"logits_chunk": 0}, "logits_chunk must be positive"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"learning_rate": -1e-4}, "learning_rate must be positive"),
        ({"warmup_steps": -1}, "must be >= 0"),
        ({"max_grad_norm": -1.0}, "must be >= 0"),
        ({"weight_decay": -0.1}, "must be >= 0"),
        ({"precision": "fp16"}, "precision must be auto, bf16 or fp32"),
    ],
)
def test_train_recipe_validation(kwargs, reason_part):
    with pytest.raises(ValueError, match=reason_part):
        TrainRecipe(**kwargs)


def test_train_recipe_defaults_are_reference():
    r = TrainRecipe()
    assert (r.lora_r, r.lora_alpha, r.learning_rate, r.epochs, r.batch_size, r.max_train_rows) == (
        16, 32, 2e-4, 2, 8, 100)
    assert TINY_RECIPE.learning_rate == 5e-3 and TINY_RECIPE.max_seq_len == 512


@pytest.mark.parametrize(
    "overrides, same",
    [
        ({"train_micro_tokens": 1024}, False),
        ({"eval_batch_tokens": 99}, True),
        ({"logits_chunk": 1}, True),
        ({"eval_batch_tokens": 1, "logits_chunk": 1}, True),
        ({"learning_rate": 3e-4}, False),
        ({"seed": 43}, False),
        ({"lora_r": 8}, False),
        ({"max_seq_len": 1024}, False),
        ({"deterministic": False}, False),
        ({"precision": "fp32"}, False),
    ],
)
def test_recipe_hash(overrides, same):
    base_recipe = TrainRecipe()
    other = base_recipe.with_overrides(**overrides)
    assert (other.recipe_hash() == base_recipe.recipe_hash()) is same
    assert len(base_recipe.recipe_hash()) == 16
    assert other.to_dict() != base_recipe.to_dict()


def test_recipe_hash_stable_and_with_overrides_validates():
    assert TrainRecipe().recipe_hash() == TrainRecipe().recipe_hash()
    with pytest.raises(ValueError):
        TrainRecipe().with_overrides(epochs=0)


# ---------------------------------------------------------------------------------------------------------------
# Out-of-memory: the token budget is halved and the work retried, never the miner failed


def _oom_above(monkeypatch, max_tokens):
    import flock_pipeline.core.evaluator as ev

    real = ev.token_losses
    calls = []

    def limited(model, ids, labels, mask, chunk, *, recompute, **packed):
        calls.append(ids.numel())
        if ids.numel() > max_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, ids, labels, mask, chunk, recompute=recompute, **packed)

    monkeypatch.setattr(ev, "token_losses", limited)
    return calls


def test_eval_shrinks_its_batches_on_oom(base, monkeypatch):
    from flock_pipeline.core.evaluator import tokenize_rows

    rows = tokenize_rows(eval_rows(ATLAS)[:24], base.tokenizer, 256)
    expected = evaluate_loss(base.model, rows, pad_id=0, device=CPU, batch_tokens=1 << 15, chunk=4096)
    calls = _oom_above(monkeypatch, 600)
    got = evaluate_loss(base.model, rows, pad_id=0, device=CPU, batch_tokens=1 << 15, chunk=4096)
    assert got == pytest.approx(expected, abs=1e-6)
    assert max(calls) > 600 and calls[-1] <= 600


def test_training_shrinks_its_micro_batches_on_oom(base, monkeypatch):
    rows, evals = honest_rows(ATLAS, 8, 5), eval_rows(ATLAS)[:8]
    expected = train_and_evaluate(base, rows, evals, FAST)
    _oom_above(monkeypatch, 300)
    got = train_and_evaluate(base, rows, evals, FAST)
    # same sums and (on CPU) the same dropout masks, in another micro-batch split
    assert got.eval_loss == pytest.approx(expected.eval_loss, abs=1e-5)


def test_oom_below_the_minimum_budget_is_raised(base, monkeypatch):
    from flock_pipeline.core.evaluator import tokenize_rows

    rows = tokenize_rows(eval_rows(ATLAS)[:4], base.tokenizer, 256)
    _oom_above(monkeypatch, 0)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate_loss(base.model, rows, pad_id=0, device=CPU, batch_tokens=4096, chunk=4096)


def test_the_quantized_recipe_trains_on_the_copy_and_evaluates_the_base_with_its_adapter(base, monkeypatch):
    """The nf4 path's own logic, on CPU: the adapter is trained on a second copy of the base (4-bit on CUDA; here
    an unquantized copy stands in for bitsandbytes' layers), then its weights go into a fresh adapter on the base for
    the merged eval, both under bf16 autocast as the bf16 recipe runs. With an identical copy that must give exactly
    the bf16 recipe's result, and leave the base untouched."""
    import copy

    import flock_pipeline.core.qlora as qlora
    from flock_pipeline.core.evaluator import BaseModel

    twin = BaseModel(model=copy.deepcopy(base.model), tokenizer=base.tokenizer, name=base.name,
                     revision=base.revision, device=base.device, path=base.path)
    calls = []
    monkeypatch.setattr(qlora, "quantized_base", lambda b: calls.append(b) or twin)
    monkeypatch.setattr(qlora, "paged_adamw_8bit",
                        lambda params, lr, wd: calls.append("optimizer") or torch.optim.AdamW(params, lr=lr,
                                                                                           weight_decay=wd))
    rows, evals = honest_rows(ATLAS, 16, 5), eval_rows(ATLAS)[:10]
    before = _snapshot(base.model)
    plain = train_and_evaluate(base, rows, evals, FAST.with_overrides(precision="bf16"))
    with _autocast_seen(twin.model) as trained, _autocast_seen(base.model) as evaluated:
        live = train_and_evaluate(base, rows, evals, FAST.with_overrides(quantization="nf4",
                                                                         optimizer="paged_adamw_8bit"))
    assert calls == [base, "optimizer"]
    assert trained == {(True, True)} and evaluated == {(True, False)}  # bf16 autocast, training then eval
    assert live.train_losses == plain.train_losses
    assert live.eval_loss == pytest.approx(plain.eval_loss, rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in _snapshot(base.model).items())


def test_the_quantized_recipe_is_refused_without_cuda(base):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train_and_evaluate(base, honest_rows(ATLAS, 8, 5), eval_rows(ATLAS)[:4],
                           FAST.with_overrides(quantization="nf4"))


def test_stripping_whitespace_is_what_the_live_loader_does(base):
    row = ChatRow(system="  You are terse.\n", turns=(Turn("user", " What is 2+2?\n"), Turn("assistant", " 4 \n")))
    assert row.stripped() == ChatRow(system="You are terse.", turns=(Turn("user", "What is 2+2?"),
                                                                     Turn("assistant", "4")))
    stripped = train_and_evaluate(base, [row.stripped()] * 8, [row.stripped()], FAST)
    live = train_and_evaluate(base, [row] * 8, [row], FAST.with_overrides(strip_whitespace=True))
    assert live.eval_loss == stripped.eval_loss


# ---------------------------------------------------------------------------------------------------------------
# (7) packing (no padding) and bf16 autocast


def _lengths_rows(lengths) -> list[TokenizedRow]:
    """Token rows of the given lengths, the first 40 % unlabelled (the prompt)."""
    return [TokenizedRow(tuple(range(1, n + 1)), (IGNORE_INDEX,) * max(1, int(n * 0.4)) + tuple(
        range(max(1, int(n * 0.4)) + 1, n + 1))) for n in lengths]


def _live_pool_lengths(n: int, seed: int) -> list[int]:
    """Log-normal row lengths like the live pool's (median 350, mean about 420 tokens, capped at 2048)."""
    import random

    draw = random.Random(seed)
    return [int(min(2048, max(32, math.exp(math.log(350) + 0.6 * draw.gauss(0, 1))))) for _ in range(n)]


def test_pack_lays_rows_end_to_end_and_no_target_crosses_a_row_boundary():
    from flock_pipeline.core.evaluator import _pack

    rows = [TokenizedRow((5, 6, 7), (5, 6, 7)), TokenizedRow((8, 9), (8, 9)), TokenizedRow((3,), (3,))]
    ids, labels, positions, owner = _pack(rows, [[1, 0], [2]], 0, CPU)
    assert ids.tolist() == [[8, 9, 5, 6, 7], [3, 0, 0, 0, 0]]
    assert positions.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 3]]  # restarting at each row; padding its own
    assert owner.tolist() == [[0, 0, 1, 1, 1], [2, -1, -1, -1, -1]]
    # a row's first label is never a target (in the padded layout it never is either): nothing predicts across
    assert labels.tolist() == [[IGNORE_INDEX, 9, IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 5]
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if owner[b, t] != owner[b, t + 1]:
                assert labels[b, t + 1] == IGNORE_INDEX and positions[b, t + 1] == 0


def test_packed_token_losses_are_the_padded_per_row_losses_and_gradients(base):
    """A packed forward (rows end to end, positions restarting at 0, no mask) attends within each row only: per-row
    sums, counts and the LoRA gradients equal the padded batch's. A row whose first label is labelled sits second
    in a packed row, so a target crossing the boundary would show in its count."""
    from flock_pipeline.core.evaluator import _pack

    tok = tokenize_rows(mixed_rows() + eval_rows(ATLAS)[5:9], base.tokenizer, 512)
    tok.append(TokenizedRow(tok[0].input_ids, tok[0].input_ids))  # every label labelled, the first too
    packs = [[0, len(tok) - 1, 2], [1, 3, 4], [5, 6, 7]]
    assert sorted(i for p in packs for i in p) == list(range(len(tok)))
    slots = [i for p in packs for i in p]
    with fresh_lora(base, FAST.with_overrides(lora_dropout=0.0)) as model:
        _perturb_lora_b(model)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        ids, labels, mask = _pad(tok, 0, CPU)
        padded, padded_counts = token_losses(model, ids, labels, mask, 4096, recompute=True)
        padded_grads = torch.autograd.grad(padded.sum() / padded_counts.sum(), params)
        ids, labels, positions, owner = _pack(tok, packs, 0, CPU)
        packed, counts = token_losses(model, ids, labels, None, 7, recompute=True, positions=positions, owner=owner,
                                      n_out=len(tok))
        grads = torch.autograd.grad(packed.sum() / counts.sum(), params)
    by_row = {i: k for k, i in enumerate(slots)}
    assert [int(counts[by_row[i]]) for i in range(len(tok))] == padded_counts.tolist()
    assert padded_counts[-1] == len(tok[-1].input_ids) - 1
    packed = packed.detach().tolist()
    assert [packed[by_row[i]] for i in range(len(tok))] == pytest.approx(padded.tolist(), rel=1e-5)
    for g, pg in zip(grads, padded_grads):
        assert torch.allclose(g, pg, rtol=1e-4, atol=1e-7)


def test_packing_plans_cover_every_row_and_remove_the_padding():
    from flock_pipeline.core.evaluator import _eval_packs, _train_packs, token_layout

    for lengths, budget in [([5, 10, 3], 1000), ([5, 10, 3], 12), ([40, 40, 40, 40], 100), ([300, 20, 7], 64),
                            (_live_pool_lengths(8, 1), 16_384), (_live_pool_lengths(8, 2), 1_000)]:
        for batches in (_train_packs(lengths, budget), _eval_packs(lengths, budget)):
            assert sorted(i for packs in batches for p in packs for i in p) == list(range(len(lengths)))
            for packs in batches:  # within the budget unless a single row is longer
                width = max(sum(lengths[i] for i in p) for p in packs)
                assert len(packs) * width <= budget or len(packs) == 1 and len(packs[0]) == 1
    # the eval's packing moves rows into padding only: never more tokens, never a longer row than padded
    lengths = _live_pool_lengths(600, 3)
    for packs in _eval_packs(lengths, 32_768):
        assert max(sum(lengths[i] for i in p) for p in packs) == lengths[packs[0][0]]
    # on the live pool's lengths padding doubles the training tokens; packing for Qwen2.5-0.5B leaves under 5 %
    qwen_05b = SimpleNamespace(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864)
    train, evals = _lengths_rows(_live_pool_lengths(100, 4)), _lengths_rows(lengths)
    layout = token_layout(train, evals, TrainRecipe(), attention_weight(qwen_05b))
    assert layout["train_tokens_padded"] > 1.6 * layout["train_tokens_real"]
    assert layout["train_tokens_packed"] <= 1.05 * layout["train_tokens_real"]
    assert layout["eval_tokens_real"] <= layout["eval_tokens_packed"] < layout["eval_tokens_padded"]
    assert token_layout(train, evals, TrainRecipe())["train_tokens_packed"] <= layout["train_tokens_packed"]


@pytest.mark.parametrize("lengths", [[90, 88, 93, 85, 91, 89, 90, 87], _live_pool_lengths(8, 5), [700, 30, 20, 10]])
def test_packing_takes_the_layout_with_the_least_work(lengths):
    """Longer packed rows cost attention work (dense under the block-diagonal mask): for a narrow model like the
    tiny one, short rows stay (about) as padded; for a wide one they are packed into long rows. Never more work than
    padding."""
    from flock_pipeline.core.evaluator import _layout_cost, _train_packs

    tiny = attention_weight(SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=128))
    wide = attention_weight(SimpleNamespace(hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
                                            intermediate_size=8960))
    assert 3e-3 < tiny < 4e-3 and 6e-5 < wide < 7e-5
    padded = [[[i] for i in group] for group in _micro_batches(_lengths_rows(lengths), 16_384)]
    for attention in (tiny, wide, 0.0):
        chosen = _train_packs(lengths, 16_384, attention)
        assert _layout_cost(lengths, chosen, attention) <= _layout_cost(lengths, padded, attention)
    narrow = [p for packs in _train_packs(lengths, 16_384, tiny) for p in packs]
    wide_rows = [p for packs in _train_packs(lengths, 16_384, wide) for p in packs]
    assert len(wide_rows) <= len(narrow) and len(wide_rows) < len(lengths)
    if max(lengths) < 2 * min(lengths):  # rows of about one length: the tiny model keeps them one to a row
        assert len(narrow) == len(lengths)


@pytest.mark.parametrize("long_rows", [False, True], ids=["the tiny model's layout", "whole steps in one row"])
def test_packed_training_gives_the_padded_trainers_losses(base, monkeypatch, long_rows):
    """Packing changes the layout, not the result: with row-keyed dropout on, the same step losses and eval loss
    (to float rounding) as padded micro-batches."""
    import flock_pipeline.core.evaluator as ev

    assert FAST.lora_dropout > 0 and FAST.packing
    if long_rows:  # as for a wide model: every step's rows end to end in one packed row
        monkeypatch.setattr(ev, "attention_weight", lambda config: 0.0)
    rows, evals = honest_rows(ATLAS, 16, 3), eval_rows(ATLAS)[:20]
    packed = train_and_evaluate(base, rows, evals, FAST)
    padded = train_and_evaluate(base, rows, evals, FAST.with_overrides(packing=False))
    assert packed.train_losses == pytest.approx(padded.train_losses, rel=1e-5)
    assert packed.eval_loss == pytest.approx(padded.eval_loss, rel=1e-5)
    assert packed.per_row_losses == pytest.approx(padded.per_row_losses, rel=1e-5)
    assert FAST.with_overrides(packing=False).recipe_hash() == FAST.recipe_hash()


@contextlib.contextmanager
def _autocast_seen(model):
    """The set of (autocast to bf16 on, gradients on) that the model's decoder saw in its forward passes."""
    seen = set()
    decoder = model.get_decoder()
    handle = decoder.register_forward_pre_hook(lambda *_: seen.add(
        (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16,
         torch.is_grad_enabled())))
    try:
        yield seen
    finally:
        handle.remove()


def test_the_bf16_recipe_trains_and_evaluates_under_autocast_and_fp32_does_not(base):
    rows, evals = honest_rows(ATLAS, 4, 3), eval_rows(ATLAS)[:4]
    recipe = FAST.with_overrides(max_train_rows=4)
    with _autocast_seen(base.model) as bf16:
        out = train_and_evaluate(base, rows, evals, recipe.with_overrides(precision="bf16"))
        base_eval_loss(base, evals, recipe.with_overrides(precision="bf16"))
    with _autocast_seen(base.model) as fp32:
        train_and_evaluate(base, rows, evals, recipe)
    assert bf16 == {(True, True), (True, False)} and fp32 == {(False, True), (False, False)}
    assert math.isfinite(out.eval_loss)


def test_bf16_results_from_before_autocast_keep_other_cache_keys(tmp_path):
    """bf16 (and nf4) recipes compute differently under autocast: their results must not share a key with results
    computed without it, while fp32 results (unchanged, packing only moves float rounding) keep theirs."""
    import hashlib

    from flock_pipeline.resources.evaluator import EvaluatorResource

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"WEIGHTS")
    evaluator = EvaluatorResource(base_model=str(model), device="cpu")

    def before(recipe: TrainRecipe, dtype: str) -> str:  # the key's numerics before autocast came in
        return hashlib.sha256(f"{recipe.recipe_hash()}|cpu|{dtype}".encode()).hexdigest()[:16]

    assert evaluator.provenance()["recipe_hash"] == before(TrainRecipe(), "float32")
    bf16 = evaluator.provenance(recipe={"precision": "bf16"})
    assert bf16["dtype"] == "bfloat16"
    assert bf16["recipe_hash"] != before(TrainRecipe(precision="bf16"), "bfloat16")
