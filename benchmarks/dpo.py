"""Our DPO evaluator next to TRL's DPOTrainer: the same pairs, the same recipe, the same machine, the same run.

Both sides train a fresh LoRA adapter (r16 / alpha 32 on every linear layer, the same seeded initialisation) on the
DPO network's best honest miner's 80 pairs with DPO's sigmoid loss (beta 0.1, the frozen base as the reference:
TRL's default for a PEFT model without `ref_model`), AdamW, linear warm-up + decay, clipping at 1.0, batch 8, two
epochs, in the same row order (TRL's sampler is made sequential over our epoch orders). Then both adapters are
scored by the same code on the network's 150 eval pairs. With `--dropout 0` (the default here) the two runs are the
same computation, so their step losses and eval losses must agree to float rounding; with dropout on (TRL's own
default turns dropout off; here it is kept on, as the recipe says), the masks come from different generators and
only the eval loss is comparable (within seed noise).

TRL is a benchmark-only dependency: `pip install trl==1.16.0` (pulls nothing else into this project's venv).

    python benchmarks/dpo.py --json            # the tiny embedded model, CPU, one thread
    python benchmarks/dpo.py --dropout 0.1     # the recipe's LoRA dropout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pairs(seed: int):
    from flock_pipeline.core.rowformats import PREFERENCE
    from flock_pipeline.core.schema import DatasetLimits, validate_bytes
    from flock_pipeline.demo import dpo_eval_pairs, dpo_miners

    best = next(m for m in dpo_miners(seed) if m.label == "honest-q100")
    train = [r.row for r in validate_bytes(best.data, DatasetLimits(), PREFERENCE).valid_rows]
    return train, dpo_eval_pairs(seed)


def _trl_rows(rows, order):
    return [{"prompt": [{"role": "system", "content": rows[i].system}]
             + [{"role": t.role, "content": t.content} for t in rows[i].prompt],
             "chosen": [{"role": "assistant", "content": rows[i].chosen}],
             "rejected": [{"role": "assistant", "content": rows[i].rejected}]} for i in order]


def run_trl(model_dir: str, train_rows, eval_pairs, recipe) -> dict:
    """TRL's DPOTrainer on the rows in our epoch orders; the trained adapter scored by our eval code."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from flock_pipeline.core.dpo import evaluate_pairs
    from flock_pipeline.core.evaluator import _pad_id, epoch_orders

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(recipe.seed)
    model = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                             lora_dropout=recipe.lora_dropout,
                                             target_modules=recipe.target_modules, task_type="CAUSAL_LM"))
    order = [i for epoch in epoch_orders(len(train_rows), recipe.epochs, recipe.seed) for i in epoch]
    data = datasets.Dataset.from_list(_trl_rows(train_rows, order))
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, beta=recipe.dpo_beta, learning_rate=recipe.learning_rate,
                         num_train_epochs=1, per_device_train_batch_size=recipe.batch_size,
                         gradient_accumulation_steps=1, lr_scheduler_type="linear", warmup_steps=recipe.warmup_steps,
                         max_grad_norm=recipe.max_grad_norm, weight_decay=recipe.weight_decay, logging_steps=1,
                         report_to=[], save_strategy="no", seed=recipe.seed, use_cpu=True, bf16=False,
                         max_length=recipe.max_seq_len, dataloader_num_workers=0, disable_tqdm=True,
                         disable_dropout=False)  # TRL turns dropout off by default; the recipe's LoRA dropout holds
        trainer = InOrder(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the step losses are read from the log history instead
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    model.eval()
    per_pair, metrics = evaluate_pairs(model, eval_pairs, recipe, pad_id=_pad_id(tokenizer),
                                       device=torch.device("cpu"))
    finite = [x for x in per_pair if not math.isnan(x)]
    return {"train_seconds": round(seconds, 3), "step_losses": losses, "eval_loss": sum(finite) / len(finite),
            "reward_accuracy": metrics["reward_accuracy"], "mean_margin": metrics["mean_margin"],
            "per_pair": per_pair}


def run_ours(model_dir: str, train_rows, eval_pairs, recipe) -> dict:
    from flock_pipeline.core.dpo import pair_tokens, train_and_evaluate_pair_tokens
    from flock_pipeline.core.evaluator import load_base_model

    base = load_base_model(model_dir, device="cpu")
    outcome = train_and_evaluate_pair_tokens(base, pair_tokens(train_rows, base.tokenizer, recipe, train=True),
                                             eval_pairs, recipe)
    return {"train_seconds": round(outcome.train_seconds, 3), "step_losses": outcome.train_losses,
            "eval_loss": outcome.eval_loss, "reward_accuracy": outcome.metrics["reward_accuracy"],
            "mean_margin": outcome.metrics["mean_margin"], "per_pair": outcome.per_row_losses}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout of both runs (default 0: exact)")
    parser.add_argument("--seed", type=int, default=7, help="the demo network's data seed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from flock_pipeline.core.dpo import pair_tokens, with_reference
    from flock_pipeline.core.evaluator import load_base_model
    from flock_pipeline.core.recipe import TINY_RECIPE
    from flock_pipeline.core.tiny_model import ensure_tiny_model

    model_dir = str(ensure_tiny_model(Path(os.environ.get("FLOCK_HOME", ".flock")) / "models"))
    recipe = TINY_RECIPE.with_overrides(objective="dpo", lora_dropout=args.dropout)
    train_rows, eval_rows = _pairs(args.seed)
    base = load_base_model(model_dir, device="cpu")
    eval_pairs = with_reference(base, pair_tokens(eval_rows, base.tokenizer, recipe, train=False), recipe)
    ours = run_ours(model_dir, train_rows, eval_pairs, recipe)
    trl = run_trl(model_dir, train_rows, eval_pairs, recipe)
    n = min(len(ours["step_losses"]), len(trl["step_losses"]))
    pair_diff = max(abs(a - b) for a, b in zip(ours["per_pair"], trl["per_pair"]))
    doc = {"pairs": len(train_rows), "eval_pairs": len(eval_rows), "steps": [len(ours["step_losses"]),
                                                                             len(trl["step_losses"])],
           "lora_dropout": args.dropout, "device": "cpu", "threads": torch.get_num_threads(),
           "ours": {k: v for k, v in ours.items() if k not in ("per_pair", "step_losses")},
           "trl": {k: v for k, v in trl.items() if k not in ("per_pair", "step_losses")},
           "max_step_loss_diff": max(abs(a - b) for a, b in zip(ours["step_losses"][:n], trl["step_losses"][:n])),
           "max_eval_pair_loss_diff": pair_diff,
           "speedup": round(trl["train_seconds"] / ours["train_seconds"], 2)}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(f"{doc['pairs']} pairs x {recipe.epochs} epochs, {doc['eval_pairs']} eval pairs, "
              f"LoRA dropout {args.dropout}, CPU x{doc['threads']}")
        for side in ("ours", "trl"):
            r = doc[side]
            print(f"  {side:4s}  train {r['train_seconds']:7.2f} s   eval DPO loss {r['eval_loss']:.6f}   "
                  f"reward accuracy {r['reward_accuracy']:.3f}   mean margin {r['mean_margin']:.4f}")
        print(f"  step losses differ by at most {doc['max_step_loss_diff']:.2e}, eval pair losses by at most "
              f"{pair_diff:.2e}; TRL / ours train time: {doc['speedup']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
