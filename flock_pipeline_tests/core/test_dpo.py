"""The DPO evaluator (flock_pipeline.core.dpo) on the embedded tiny model, on CPU: its loss and LoRA gradients against
a plain implementation of the DPO formula, the base model's ln 2, label masks, and what training on good and on
swapped pairs does to the eval loss."""

from __future__ import annotations

import math

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flock_pipeline.core import synthetic  # noqa: E402
from flock_pipeline.core.chat import IGNORE_INDEX, tokenize_pair  # noqa: E402
from flock_pipeline.core.dpo import (TokenizedPair, _pair_groups, base_dpo_loss, dpo_step, evaluate_pairs,  # noqa: E402
                                     pair_tokens, train_and_evaluate_dpo, with_reference)
from flock_pipeline.core.evaluator import _pad_id, fresh_lora, load_base_model, merged_weights  # noqa: E402
from flock_pipeline.core.recipe import TINY_RECIPE, TrainRecipe  # noqa: E402
from flock_pipeline.core.schema import PreferenceRow, Turn  # noqa: E402
from flock_pipeline_tests.core.test_evaluator import _perturb_lora_b  # noqa: E402 - LoRA B away from zero

CPU = torch.device("cpu")
ATLAS = synthetic.make_atlas(7)
DPO = TINY_RECIPE.with_overrides(objective="dpo")


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), device="cpu")


def _pairs(n: int = 6) -> list[PreferenceRow]:
    rows = synthetic.eval_pairs(ATLAS, 3)[:n]
    # a multi-turn prompt (its assistant turn is context, never labelled) and answers of different lengths
    rows.append(PreferenceRow("You are terse.", (Turn("user", "Name a river."), Turn("assistant", "Which country?"),
                                                 Turn("user", f"In {ATLAS[2].name}.")),
                              f"The {ATLAS[2].river}.", f"I think the capital is {ATLAS[5].capital}, not a river."))
    return rows


def plain_logp(model, seq) -> torch.Tensor:
    """log p(answer | prompt) the plain way: the whole sequence alone, full logits, log-softmax, gather, sum."""
    ids = torch.tensor([seq.input_ids])
    labels = torch.tensor([seq.labels])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = labels[0, 1:]
    keep = targets != IGNORE_INDEX
    return F.log_softmax(logits, dim=-1)[keep].gather(1, targets[keep].unsqueeze(1)).sum()


def plain_dpo_loss(model, pairs, beta: float) -> torch.Tensor:
    """The DPO formula, mean over pairs, with the adapter disabled as the reference policy."""
    with torch.no_grad(), model.disable_adapter():
        refs = [(plain_logp(model, p.chosen), plain_logp(model, p.rejected)) for p in pairs]
    losses = []
    for p, (ref_c, ref_r) in zip(pairs, refs):
        margin = beta * ((plain_logp(model, p.chosen) - ref_c) - (plain_logp(model, p.rejected) - ref_r))
        losses.append(-F.logsigmoid(margin))
    return torch.stack(losses).mean()


def test_tokenize_pair_labels_only_the_answer(base):
    row = _pairs()[-1]
    chosen, rejected = tokenize_pair(row, base.tokenizer, 512)
    prompt = [i for i, label in enumerate(chosen.labels) if label == IGNORE_INDEX]
    n = len(prompt)
    assert prompt == list(range(n))  # the prompt (with its assistant turn) first, unlabelled; then the answer
    assert chosen.input_ids[:n] == rejected.input_ids[:n]
    assert chosen.labels[n:] == chosen.input_ids[n:] and rejected.labels[n:] == rejected.input_ids[n:]
    assert base.tokenizer.decode(chosen.input_ids[n:]) == f"{row.chosen}<|im_end|>\n"
    assert base.tokenizer.decode(rejected.input_ids[n:]) == f"{row.rejected}<|im_end|>\n"
    # truncation inside the prompt leaves no answer: such a pair has nothing to compare
    short = TokenizedPair(*tokenize_pair(row, base.tokenizer, n - 1))
    assert short.n_labels == 0


@pytest.mark.parametrize("budget", [100_000, 200])  # one micro-batch; a pair per micro-batch
def test_dpo_loss_and_grads_match_plain_formula(base, budget):
    recipe = DPO.with_overrides(lora_dropout=0.0, dpo_beta=0.3)
    pairs = with_reference(base, pair_tokens(_pairs(), base.tokenizer, recipe, train=True), recipe)
    assert len(_pair_groups(pairs, budget)) == (1 if budget > 10_000 else len(pairs))
    with fresh_lora(base, recipe) as model:
        _perturb_lora_b(model)
        model.train()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        step = dpo_step(model, recipe, pad_id=_pad_id(base.tokenizer), device=CPU)
        loss = step(pairs, [(0, i) for i in range(len(pairs))], budget)
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        ref = plain_dpo_loss(model, pairs, recipe.dpo_beta)
        ref_grads = torch.autograd.grad(ref, params)
    assert loss == pytest.approx(float(ref.detach()), abs=1e-5)
    assert abs(float(ref.detach()) - math.log(2)) > 1e-3  # the policy moved from the reference: not a trivial check
    for name, g, rg in zip(names, grads, ref_grads):
        assert torch.allclose(g, rg, rtol=1e-3, atol=1e-7), name
    assert any(float(g.abs().max()) > 0 for n, g in zip(names, grads) if "lora_A" in n)


def test_eval_losses_match_plain_formula_per_pair(base):
    recipe = DPO.with_overrides(lora_dropout=0.0)
    pairs = with_reference(base, pair_tokens(_pairs(), base.tokenizer, recipe, train=False), recipe)
    with fresh_lora(base, recipe) as model:
        _perturb_lora_b(model, seed=1)
        with merged_weights(model):
            per_pair, metrics = evaluate_pairs(model, pairs, recipe, pad_id=_pad_id(base.tokenizer), device=CPU)
        with torch.no_grad():
            expected = [float(plain_dpo_loss(model, [p], recipe.dpo_beta)) for p in pairs]
    assert per_pair == pytest.approx(expected, abs=1e-5)
    assert metrics["pairs"] == len(pairs)
    assert 0.0 <= metrics["reward_accuracy"] <= 1.0


def test_base_model_scores_ln2(base):
    outcome = base_dpo_loss(base, synthetic.eval_pairs(ATLAS, 3)[:20], DPO)
    assert outcome.per_row_losses == [pytest.approx(math.log(2), abs=1e-12)] * 20
    assert outcome.eval_loss == pytest.approx(math.log(2), abs=1e-12)
    assert outcome.metrics["mean_margin"] == 0.0


def test_good_pairs_beat_the_base_and_swapped_pairs_do_not(base):
    eval_rows = synthetic.eval_pairs(ATLAS, 3)
    groups = synthetic.answer_groups(ATLAS, 5)
    entries = [e for g in groups[:16] for e in g]
    good = train_and_evaluate_dpo(base, synthetic.pairs_of(entries, 1), eval_rows, DPO)
    swapped = train_and_evaluate_dpo(base, synthetic.pairs_of(entries, 1, swapped_share=1.0), eval_rows, DPO)
    assert good.eval_loss < math.log(2) < swapped.eval_loss
    assert good.metrics["reward_accuracy"] > 0.5 > swapped.metrics["reward_accuracy"]
    assert good.optimizer_steps == math.ceil(80 / DPO.batch_size) * DPO.epochs
    again = train_and_evaluate_dpo(base, synthetic.pairs_of(entries, 1), eval_rows, DPO)
    assert again.per_row_losses == good.per_row_losses  # seeded: the same pairs give the same losses


def test_dpo_refuses_a_quantized_recipe(base):
    with pytest.raises(ValueError, match="plain LoRA"):
        train_and_evaluate_dpo(base, _pairs(), _pairs(), DPO.with_overrides(quantization="nf4"))


def test_recipe_checks_dpo_fields():
    with pytest.raises(ValueError, match="objective"):
        TrainRecipe(objective="PPO!")  # a name of an objective (the competition's strategy): a-z, 0-9, _ or -
    from flock_pipeline.core.competitions import CompetitionConfigError, build_competitions

    with pytest.raises(CompetitionConfigError, match="recipe.objective must be dpo"):
        build_competitions([{"kind": "dpo", "recipe": {"objective": "sft"}}])
    with pytest.raises(CompetitionConfigError, match="recipe.objective must be sft"):
        build_competitions([{"kind": "curation", "recipe": {"objective": "dpo"}}])
    with pytest.raises(ValueError, match="dpo_beta"):
        TrainRecipe(dpo_beta=0)
    # the new fields at their defaults leave the SFT recipe's cache key as it was
    assert TrainRecipe().recipe_hash() == TrainRecipe(objective="sft", dpo_beta=0.1).recipe_hash()
    assert TrainRecipe(objective="dpo").recipe_hash() != TrainRecipe().recipe_hash()
