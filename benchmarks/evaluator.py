"""Our evaluator next to the reference recipe, same workload, same machine, same run.

The reference recipe is the live subnet validator's way (FLock-io/FLock-subnet's trainer, re-implemented
here from its description): the base model loaded from disk for the miner, Hugging Face Trainer with batch 1 x
gradient accumulation 8, 2 epochs, LoRA r16/alpha32/dropout0.1 on all linear layers, then the adapter merged and
Trainer.evaluate() at batch 1. Ours is flock_pipeline.core.evaluator (the one the pipeline and the CLI use).
Both get the same rows, the same recipe numbers and the same seed. Each side runs in its own subprocess, so its
peak memory is its own (RSS on CPU, torch's max allocated on GPU). Timings are train + eval; loading is reported
apart (ours loads the base model once per process and reuses it across miners).

    python benchmarks/evaluator.py --size tiny --json          # CPU: the embedded tiny model on atlas data
    python benchmarks/evaluator.py --size 1.5b --json          # GPU: random-weight Qwen2.5 shape, synthetic ids

`--size tiny` uses the embedded (pre-trained) tiny model and structured chat data, so the two eval losses are
comparable; the Qwen2.5 shapes use random weights and random token ids (speed and memory only), as the reference
benchmark does.

Ours also runs with packing off (`"packing": false`: each micro-batch padded to its longest row, the layout before
packing) and with whole steps packed into one row (`long_rows`: what packing does for a model whose attention work is
negligible; on the tiny model, whose attention is a large part of its work, packing keeps short rows about one to a
row): `padded_eval_loss`, `packed_vs_padded_rel_diff` and `long_rows_vs_padded_rel_diff` show that packing changes the
layout, not the result.

Token counts (`layout`, counted without running a model): the tokens the forward passes hold, real / padded / packed,
for the workload and for `live_mix`, rows of the live pool's lengths (log-normal, median 350, about 420 tokens a row,
`synthetic_rows`) under the reference recipe's budgets, packed as for Qwen2.5-0.5B and -1.5B (packing weighs padding
against the attention work of longer rows, which depends on the model's shape): `train_padded_over_real` is what
padding cost, `train_packed_over_real` what packing leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # Qwen2.5 published shapes (hidden, layers, heads, kv heads, MLP)
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960),
    "3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008),
}
QWEN_VOCAB = 151_936


def _setup_threads() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def synthetic_rows(n: int, vocab: int, max_len: int, seed: int, median: int = 350):
    """Token rows with log-normal lengths; the first 40 % of each row (prompt) carries no label."""
    import torch

    from flock_pipeline.core.chat import IGNORE_INDEX, TokenizedRow

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(min(max_len, max(32, math.exp(math.log(median) + 0.6 * torch.randn(1, generator=g).item()))))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        prompt = max(8, int(length * 0.4))
        rows.append(TokenizedRow(tuple(ids), tuple([IGNORE_INDEX] * prompt + ids[prompt:])))
    return rows


def workload(size: str, train_n: int, eval_n: int, work_dir: Path, overrides: dict | None = None):
    """(model dir, recipe, train rows, eval rows) for a size; tokenised rows are TokenizedRow."""
    from flock_pipeline.core import synthetic
    from flock_pipeline.core.evaluator import tokenize_rows
    from flock_pipeline.core.recipe import TINY_RECIPE, TrainRecipe
    from flock_pipeline.core.tiny_model import ensure_tiny_model

    if size == "tiny":
        model_dir = ensure_tiny_model(work_dir / "models")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        atlas = synthetic.make_atlas(7)
        recipe = TINY_RECIPE.with_overrides(**(overrides or {}))
        train = tokenize_rows(synthetic.honest_rows(atlas, train_n, 8), tok, recipe.max_seq_len)
        evals = tokenize_rows((synthetic.eval_rows(atlas) * math.ceil(eval_n / 200))[:eval_n], tok,
                              recipe.max_seq_len)
        return model_dir, recipe, train, evals
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    model_dir = work_dir / f"qwen2.5-{size}-random"
    if not (model_dir / "config.json").exists():
        config = Qwen2Config(vocab_size=QWEN_VOCAB, tie_word_embeddings=True, max_position_embeddings=32768,
                             rope_theta=1e6, **SIZES[size])
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(model_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(ensure_tiny_model(work_dir / "models")).save_pretrained(model_dir)
    recipe = TrainRecipe().with_overrides(**(overrides or {}))
    return (model_dir, recipe, synthetic_rows(train_n, QWEN_VOCAB, recipe.max_seq_len, 1),
            synthetic_rows(eval_n, QWEN_VOCAB, recipe.max_seq_len, 2))


def live_mix_layout(size: str, train_n: int = 100, eval_n: int = 1000) -> dict:
    """`token_layout` (real / padded / packed tokens) of rows of the live pool's lengths under the reference
    recipe's budgets, packed for the Qwen2.5 shape `size`, with the ratios to the real tokens."""
    from types import SimpleNamespace

    from flock_pipeline.core.evaluator import attention_weight, token_layout
    from flock_pipeline.core.recipe import TrainRecipe

    recipe = TrainRecipe()
    layout = token_layout(synthetic_rows(train_n, QWEN_VOCAB, recipe.max_seq_len, 1),
                          synthetic_rows(eval_n, QWEN_VOCAB, recipe.max_seq_len, 2), recipe,
                          attention_weight(SimpleNamespace(**SIZES[size])))
    return {**layout, **_ratios(layout)}


def _ratios(layout: dict) -> dict:
    return {f"{side}_{kind}_over_real": round(layout[f"{side}_tokens_{kind}"] / layout[f"{side}_tokens_real"], 4)
            for side in ("train", "eval") for kind in ("padded", "packed")}


def run_ours(model_dir, recipe, train, evals, device: str) -> dict:
    import torch

    from flock_pipeline.core.evaluator import load_base_model, train_and_evaluate_tokens

    t0 = time.perf_counter()
    base = load_base_model(str(model_dir), device=device, precision=recipe.precision)
    load_s = time.perf_counter() - t0
    outcome = train_and_evaluate_tokens(base, train, evals, recipe)
    out = {"load_s": load_s, "train_s": outcome.train_seconds, "eval_s": outcome.eval_seconds,
           "eval_loss": outcome.eval_loss}
    if torch.cuda.is_available():
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": list(self.rows[i].input_ids), "labels": list(self.rows[i].labels)}


def _collate(batch):
    import torch

    length = max(len(b["input_ids"]) for b in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class _EpochOrderSampler:
    """Yields a given row order per epoch (the Trainer iterates its sampler once per epoch)."""

    def __init__(self, orders):
        self.orders, self.epoch = orders, 0

    def __len__(self):
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[min(self.epoch, len(self.orders) - 1)]
        self.epoch += 1
        return iter(order)


def _match_dropout(model, recipe, train) -> None:
    """Give the reference the same LoRA dropout masks as ours: our row-keyed CPU dropout, told by a forward hook
    which row (and which epoch of it) each batch-1 forward holds."""
    import torch

    from flock_pipeline.core.evaluator import use_host_dropout

    plan = use_host_dropout(model, recipe.lora_dropout, recipe.seed)
    index = {tuple(r.input_ids): i for i, r in enumerate(train)}
    if len(index) != len(train):
        raise SystemExit("matched dropout needs distinct training rows")
    seen: dict[int, int] = {}

    def hook(_module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if torch.is_grad_enabled():
            row = index[tuple(ids[0].tolist())]
            epoch = seen.get(row, 0)
            seen[row] = epoch + 1
            plan.set_rows([(plan.generator(epoch, row), ids.shape[1])])

    model.register_forward_pre_hook(hook, with_kwargs=True)


def run_reference(model_dir, recipe, train, evals, device: str, matched: bool = False, live: bool = False) -> dict:
    """The live validator's recipe: fresh load, Trainer bs1 x GA8, merge, evaluate at bs1.

    One change: the Trainer visits the rows in the same per-epoch order as ours (its own shuffle would use
    another random stream), so that the two eval losses differ by the method, not by the data order. With
    `matched`, the LoRA dropout masks are ours too (CPU only), so that the losses differ only by float rounding.
    With `live` (CUDA only), the live selection game's QLoRA exactly: the base loaded 4-bit (nf4, bf16 compute) for
    training with paged 8-bit AdamW, then a fresh bf16 base with the saved adapter merged for the evaluation.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from flock_pipeline.core.evaluator import epoch_orders

    train = list(train[: recipe.max_train_rows])
    orders = epoch_orders(len(train), recipe.epochs, recipe.seed)

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return _EpochOrderSampler(orders)

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    if live:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quant, device_map={"": 0},
                                                    attn_implementation="sdpa")
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
        base = base.to(device)
    load_s = time.perf_counter() - t0
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules=recipe.target_modules, task_type="CAUSAL_LM")
    torch.manual_seed(recipe.seed)
    model = get_peft_model(base, lora)
    if matched:
        _match_dropout(model, recipe, train)
    out_dir = tempfile.mkdtemp()
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=1,
                             gradient_accumulation_steps=recipe.batch_size, num_train_epochs=recipe.epochs,
                             learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps,
                             lr_scheduler_type="linear", max_grad_norm=recipe.max_grad_norm, bf16=cuda,
                             save_strategy="no", report_to=[], logging_strategy="no",
                             optim="paged_adamw_8bit" if live else "adamw_torch",
                             per_device_eval_batch_size=1, remove_unused_columns=False, dataloader_num_workers=0,
                             seed=recipe.seed, use_cpu=not cuda, disable_tqdm=True)
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=_Rows(train), data_collator=_collate)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log dicts: --json's stdout stays JSON
        trainer.train()
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if live:
        from peft import PeftModel

        adapter = Path(out_dir) / "adapter"
        model.save_pretrained(adapter)
        eval_base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                         attn_implementation="sdpa").to(device)
        merged = PeftModel.from_pretrained(eval_base, adapter).merge_and_unload()
    else:
        merged = model.merge_and_unload()
    with contextlib.redirect_stdout(sys.stderr):
        result = Trainer(model=merged, args=args, eval_dataset=_Rows(list(evals)),
                         data_collator=_collate).evaluate()
    if cuda:
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    out = {"load_s": load_s, "train_s": train_s, "eval_s": eval_s, "eval_loss": float(result["eval_loss"])}
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


LIVE_RECIPE = {"quantization": "nf4", "optimizer": "paged_adamw_8bit"}  # the live selection game's training


def _child(side: str, size: str, train_n: int, eval_n: int, work_dir: str, overrides: dict, repeat: int,
           queue) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _setup_threads()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, recipe, train, evals = workload(size, train_n, eval_n, Path(work_dir), overrides)
    if side == "reference-matched":
        queue.put(run_reference(model_dir, recipe, train, evals, device, matched=True))
        return
    if side == "ours-padded":
        fn = lambda *a: run_ours(model_dir, recipe.with_overrides(packing=False), train, evals, device)  # noqa: E731
    elif side == "ours-long-rows":  # packed as for a model whose attention work is negligible: whole steps in a row
        from flock_pipeline.core import evaluator

        evaluator.attention_weight = lambda config: 0.0
        fn = run_ours
    elif side == "ours-live":
        fn = lambda *a: run_ours(model_dir, recipe.with_overrides(**LIVE_RECIPE), train, evals, device)  # noqa: E731
    elif side == "reference-live":
        fn = lambda *a: run_reference(model_dir, recipe, train, evals, device, live=True)  # noqa: E731
    else:
        fn = run_ours if side == "ours" else run_reference
    runs = [fn(model_dir, recipe, train, evals, device) for _ in range(repeat)]
    runs.sort(key=lambda r: r["train_s"] + r["eval_s"])
    result = runs[len(runs) // 2]  # the median run: one noisy neighbour on a shared CPU does not decide the figure
    result["all_s"] = [round(r["train_s"] + r["eval_s"], 3) for r in runs]
    if device == "cpu":
        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # RSS, KiB -> GiB
    result.update(train_tokens=sum(len(r.input_ids) for r in train[: recipe.max_train_rows]),
                  eval_tokens=sum(len(r.input_ids) for r in evals))
    if side == "ours":
        from transformers import AutoConfig

        from flock_pipeline.core.evaluator import attention_weight, token_layout

        layout = token_layout(train, evals, recipe, attention_weight(AutoConfig.from_pretrained(model_dir)))
        result["layout"] = {**layout, **_ratios(layout)}
    queue.put(result)


def _run_side(side: str, size: str, train_n: int, eval_n: int, work_dir: str, overrides: dict,
              repeat: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(side, size, train_n, eval_n, work_dir, overrides, repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", *SIZES])
    parser.add_argument("--train", type=int, default=100, help="training rows (the size cap is 100)")
    parser.add_argument("--eval", type=int, default=None, help="eval rows (default: 200 tiny, 1000 otherwise)")
    parser.add_argument("--work-dir", default=".flock/bench", help="where models are built and cached")
    parser.add_argument("--recipe", default="{}", help="JSON of recipe overrides for both sides, e.g. "
                        "'{\"lora_dropout\": 0}' (without dropout the two must agree to float rounding)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median run is reported")
    parser.add_argument("--live", action="store_true", help="also the live selection game's QLoRA recipe (4-bit "
                        "nf4 base, paged 8-bit AdamW; CUDA and bitsandbytes only): the reference's own and ours, and "
                        "how far our plain-LoRA evaluator is from it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = json.loads(args.recipe)
    if args.live:
        import importlib.util

        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            print("benchmarks/evaluator.py: --live needs a CUDA device and bitsandbytes (pip install -e '.[cuda]')",
                  file=sys.stderr)
            return 2
    eval_n = args.eval or (200 if args.size == "tiny" else 1000)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    from flock_pipeline.core.tiny_model import ensure_tiny_model  # built once up front: neither side pays for it

    ensure_tiny_model(Path(args.work_dir) / "models")
    ours = _run_side("ours", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
    padded = _run_side("ours-padded", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
    long_rows = _run_side("ours-long-rows", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
    ref = _run_side("reference", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
    import torch

    matched = None
    if not torch.cuda.is_available():  # ours draws its dropout masks this way only on CPU
        matched = _run_side("reference-matched", args.size, args.train, eval_n, args.work_dir, overrides, 1)

    ours_s, ref_s = ours["train_s"] + ours["eval_s"], ref["train_s"] + ref["eval_s"]
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "size": args.size, "recipe_overrides": overrides, "train_rows": args.train, "eval_rows": eval_n,
        "train_tokens": ours["train_tokens"], "eval_tokens": ours["eval_tokens"],
        "ours_s": round(ours_s, 3), "reference_s": round(ref_s, 3), "speedup": round(ref_s / ours_s, 2),
        "ours_train_s": round(ours["train_s"], 3), "ours_eval_s": round(ours["eval_s"], 3),
        "reference_train_s": round(ref["train_s"], 3), "reference_eval_s": round(ref["eval_s"], 3),
        "ours_runs_s": ours["all_s"], "reference_runs_s": ref["all_s"],
        "ours_load_s": round(ours["load_s"], 3), "reference_load_s": round(ref["load_s"], 3),
        "ours_peak_gib": round(ours["peak_gib"], 3), "reference_peak_gib": round(ref["peak_gib"], 3),
        "peak_kind": "cuda max allocated" if torch.cuda.is_available() else "process peak RSS",
        "ours_eval_loss": ours["eval_loss"], "reference_eval_loss": ref["eval_loss"],
        "loss_rel_diff": abs(ours["eval_loss"] - ref["eval_loss"]) / ref["eval_loss"],
        "padded_s": round(padded["train_s"] + padded["eval_s"], 3), "padded_runs_s": padded["all_s"],
        "padded_eval_loss": padded["eval_loss"],
        "packed_vs_padded_rel_diff": abs(ours["eval_loss"] - padded["eval_loss"]) / padded["eval_loss"],
        "long_rows_s": round(long_rows["train_s"] + long_rows["eval_s"], 3), "long_rows_runs_s": long_rows["all_s"],
        "long_rows_eval_loss": long_rows["eval_loss"],
        "long_rows_vs_padded_rel_diff": abs(long_rows["eval_loss"] - padded["eval_loss"]) / padded["eval_loss"],
        "layout": ours["layout"], "live_mix": {size: live_mix_layout(size) for size in ("0.5b", "1.5b")},
    }
    if args.live:
        ours_live = _run_side("ours-live", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
        ref_live = _run_side("reference-live", args.size, args.train, eval_n, args.work_dir, overrides, args.repeat)
        report.update({
            "live_ours_eval_loss": ours_live["eval_loss"], "live_reference_eval_loss": ref_live["eval_loss"],
            "live_loss_rel_diff": abs(ours_live["eval_loss"] - ref_live["eval_loss"]) / ref_live["eval_loss"],
            "lean_vs_live_rel_diff": abs(ours["eval_loss"] - ref_live["eval_loss"]) / ref_live["eval_loss"],
            "live_ours_s": round(ours_live["train_s"] + ours_live["eval_s"], 3),
            "live_reference_s": round(ref_live["train_s"] + ref_live["eval_s"], 3),
        })
    if matched is not None:
        report["reference_matched_eval_loss"] = matched["eval_loss"]
        report["matched_loss_rel_diff"] = abs(ours["eval_loss"] - matched["eval_loss"]) / matched["eval_loss"]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in report.items():
            print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
