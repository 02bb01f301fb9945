"""Small operations per miner-step of multi-LoRA training, at K = 1, 4 and 8 adapters side by side, on the CPU.

A "small op" is one ATen operator dispatched (counted with a `TorchDispatchMode`: every kernel call, in-place update
and view, forward and backward); on a GPU each one that computes is a kernel launch. The count is that of one
optimizer step (a 2-step run's count minus a 1-step run's) of K synthetic miners on the embedded tiny model with the
live recipe (LoRA r16 on every linear layer, dropout 0.1, clipping at 1.0, batch 8), divided by K. It is given for
both dropout paths: `host` (the CPU's numpy streams) and `device` (the CUDA path's torch generators, run on the CPU;
their draws are per row and layer, so that path keeps one op per row and layer).

    python benchmarks/multilora_ops.py [--k 1 4 8] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class OpCounter:
    """Counts the ATen operators dispatched while it is active (a `TorchDispatchMode`)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts = Counter()

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counts[str(func)] += 1
                return func(*args, **(kwargs or {}))

        self.mode = _Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def bench_recipe():
    from flock_pipeline.core.recipe import TrainRecipe

    return TrainRecipe(epochs=1, max_seq_len=256)


@contextlib.contextmanager
def dropout_path(device: bool):
    """With `device`, the LoRA dropout draws as on CUDA (torch generators per row) although the tensors are on the
    CPU, as the row-dropout tests do."""
    from flock_pipeline.core import evaluator

    saved = evaluator.HOST_DROPOUT_DEVICES
    evaluator.HOST_DROPOUT_DEVICES = () if device else saved
    try:
        yield
    finally:
        evaluator.HOST_DROPOUT_DEVICES = saved


def _run_ops(base, recipe, k: int, steps: int) -> int:
    """Ops dispatched by `train_multi_lora` for K miners of `steps` optimizer steps each (one epoch)."""
    from flock_pipeline.core.evaluator import _pad_id, tokenize_rows
    from flock_pipeline.core.multilora import multi_lora, train_multi_lora
    from flock_pipeline.core.synthetic import honest_rows, make_atlas

    atlas = make_atlas(7)
    sets = [tokenize_rows(honest_rows(atlas, recipe.batch_size * steps, 100 + i), base.tokenizer, recipe.max_seq_len)
            for i in range(k)]
    with multi_lora(base, recipe, k) as layers, OpCounter() as counter:
        train_multi_lora(layers, base.model, sets, recipe, pad_id=_pad_id(base.tokenizer), device=base.device)
    return counter.total


def ops_per_miner_step(base, k: int, recipe=None, *, device_dropout: bool = False) -> float:
    """Ops of one multi-LoRA optimizer step of K miners, divided by K."""
    recipe = recipe or bench_recipe()
    with dropout_path(device_dropout):
        return (_run_ops(base, recipe, k, 2) - _run_ops(base, recipe, k, 1)) / k


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.k):
        parser.error("--k: every K must be at least 1")

    import torch

    from flock_pipeline.core.evaluator import load_base_model
    from flock_pipeline.core.tiny_model import ensure_tiny_model, shipped_model

    torch.set_num_threads(1)
    model_dir = shipped_model() or ensure_tiny_model(ROOT / ".flock" / "models")
    base = load_base_model(str(model_dir), device="cpu")
    doc = {"model": "tiny", "recipe": "live (r16 all-linear, dropout 0.1, clip 1.0, batch 8), 1 epoch",
           "ops_per_miner_step": {}, "k8_over_k1": {}}
    for path in ("host", "device"):
        counts = {str(k): round(ops_per_miner_step(base, k, device_dropout=path == "device"), 1) for k in args.k}
        doc["ops_per_miner_step"][path] = counts
        if "1" in counts and "8" in counts:
            doc["k8_over_k1"][path] = round(counts["8"] / counts["1"], 3)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for path, counts in doc["ops_per_miner_step"].items():
            print(f"{path:6} " + "  ".join(f"K={k}: {n:g}" for k, n in counts.items())
                  + (f"  K8/K1 = {doc['k8_over_k1'][path]}" if path in doc["k8_over_k1"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
