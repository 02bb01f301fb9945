"""The first command to run on a GPU machine, and how an operator sizes a validator.

    python benchmarks/gpu_check.py --json --out gpu_check.json      # on the GPU machine (about 8 minutes, one H100)
    python benchmarks/gpu_check.py --dry --json                     # every phase with the tiny model on the CPU

It needs only this checkout installed with a CUDA torch (`pip install -e .[cuda]` for the live 4-bit recipe) and no
network: the Qwen2.5-0.5B and -1.5B shapes are built from their configurations with random weights, the miners and
the eval set are synthetic token rows of realistic lengths (the live pool's rows are about 413-438 tokens). Each
phase's numbers are written to `--out` (and kept in the JSON printed at the end) as soon as they are measured, so a
run cut off by a time limit still reports what it measured. Phases, per size:

- `ours`: one miner (100 rows, 2 epochs) trained and scored on 1,000 eval rows by our evaluator: seconds, peak GPU
  memory, the loss;
- `ours_padded`: the same with packing off (every step padded to its longest row): the seconds packing saves, and
  the loss difference (rounding only);
- `ours_live`: the same with the live selection game's recipe (4-bit nf4 base, paged 8-bit AdamW; CUDA and
  bitsandbytes only);
- `multi_lora`: K = 4 miners side by side against the same four trained one at a time: seconds each way, and the
  largest loss difference;
- `reference`: the live validator's own recipe (Hugging Face Trainer at batch 1, `benchmarks/evaluator.py`'s
  reference side) on the same inputs (0.5B only by default: it is slow);
- `eval_scaling`: our eval alone at 600 and 2,400 eval rows (the live game evaluates its whole pool).

`--dry` runs every phase's code with the embedded tiny model and a few rows on the CPU (the test suite does); the
4-bit phase reports why it did not run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    """`benchmarks/evaluator.py` as a module: its workload builder and the reference recipe."""
    spec = importlib.util.spec_from_file_location("flock_bench_evaluator", ROOT / "benchmarks" / "evaluator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Report:
    """The check's JSON, written to `out` after every phase."""

    def __init__(self, out: Path | None):
        self.out, self.doc = out, {"phases": {}}

    def put(self, key: str, value) -> None:
        self.doc[key] = value
        self._write()

    def phase(self, size: str, name: str, value) -> None:
        self.doc["phases"].setdefault(size, {})[name] = value
        self._write()

    def _write(self) -> None:
        if self.out is not None:
            tmp = self.out.with_suffix(self.out.suffix + ".tmp")
            tmp.write_text(json.dumps(self.doc, indent=1, default=str))
            tmp.replace(self.out)


def environment() -> dict:
    import torch

    from flock_pipeline.core.model import nvidia_driver

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "driver": nvidia_driver(),
            "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None}


def _timed(fn):
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return value, round(seconds, 3), (round(peak, 3) if peak is not None else None)


def check_size(size: str, report: Report, bench, work: Path, dry: bool, reference: bool) -> None:
    """Every phase for one model size."""
    import torch

    from flock_pipeline.core.evaluator import load_base_model, train_and_evaluate_tokens
    from flock_pipeline.core.multilora import train_and_evaluate_many

    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_n, eval_n = (16, 20) if dry else (100, 1000)
    model_dir, recipe, train, evals = bench.workload(size, train_n, eval_n, work)
    base = load_base_model(str(model_dir), device=device, precision=recipe.precision)
    outcome, seconds, peak = _timed(lambda: train_and_evaluate_tokens(base, train, evals, recipe))
    report.phase(size, "ours", {"seconds": seconds, "train_s": round(outcome.train_seconds, 3),
                                "eval_s": round(outcome.eval_seconds, 3), "peak_gib": peak,
                                "eval_loss": outcome.eval_loss, "train_tokens": outcome.train_tokens,
                                "eval_tokens": outcome.eval_tokens})
    padded, p_seconds, p_peak = _timed(lambda: train_and_evaluate_tokens(base, train, evals,
                                                                         recipe.with_overrides(packing=False)))
    report.phase(size, "ours_padded", {"seconds": p_seconds, "peak_gib": p_peak, "eval_loss": padded.eval_loss,
                                       "packing_speedup": round(p_seconds / seconds, 2) if seconds else None,
                                       "loss_rel_diff": abs(padded.eval_loss - outcome.eval_loss) / abs(
                                           padded.eval_loss) if padded.eval_loss else None})
    report.phase(size, "ours_live", _live(base, model_dir, recipe, train, evals, device))
    sets = [train] + [bench.workload(size, train_n, eval_n, work)[2] if dry else
                      bench.synthetic_rows(train_n, bench.QWEN_VOCAB, recipe.max_seq_len, seed)
                      for seed in (11, 12, 13)]
    together, k_seconds, k_peak = _timed(lambda: train_and_evaluate_many(base, sets, evals, recipe))
    singles, s_seconds, _ = _timed(lambda: [train_and_evaluate_tokens(base, rows, evals, recipe)
                                            for rows in sets])
    report.phase(size, "multi_lora", {"k": len(sets), "together_s": k_seconds, "singles_s": s_seconds,
                                      "peak_gib": k_peak, "max_loss_diff": max(
                                          abs(a.eval_loss - b.eval_loss) for a, b in zip(together, singles))})
    if reference:
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its own metrics: keep stdout the JSON
            ref = bench.run_reference(model_dir, recipe, train, evals, device)
        report.phase(size, "reference", {**{k: round(v, 3) if isinstance(v, float) else v for k, v in ref.items()},
                                         "speedup": round((ref["train_s"] + ref["eval_s"]) / seconds, 2)})
    else:
        report.phase(size, "reference", {"skipped": "--reference-sizes leaves this size out"})
    scaling = {}
    for n in ((20, 40) if dry else (600, 2400)):
        rows = bench.workload(size, train_n, n, work)[3]
        result, s, peak = _timed(lambda rows=rows: train_and_evaluate_tokens(base, train, rows, recipe))
        scaling[str(n)] = {"eval_s": round(result.eval_seconds, 3), "seconds": s, "peak_gib": peak}
    report.phase(size, "eval_scaling", scaling)


def _live(base, model_dir, recipe, train, evals, device: str) -> dict:
    """Our evaluator with the live game's 4-bit recipe, where it can run."""
    if device != "cuda":
        return {"skipped": "the 4-bit nf4 base and the paged 8-bit AdamW need CUDA"}
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed (pip install -e '.[cuda]')"}
    from flock_pipeline.core.evaluator import train_and_evaluate_tokens

    live = recipe.with_overrides(quantization="nf4", optimizer="paged_adamw_8bit")
    try:
        outcome, seconds, peak = _timed(lambda: train_and_evaluate_tokens(base, train, evals, live))
    except Exception as exc:  # noqa: BLE001 - reported: the check goes on with the other phases
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"seconds": seconds, "peak_gib": peak, "eval_loss": outcome.eval_loss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"], choices=["0.5b", "1.5b", "3b"])
    parser.add_argument("--reference-sizes", nargs="*", default=["0.5b"],
                        help="sizes the (slow) reference recipe runs for")
    parser.add_argument("--dry", action="store_true", help="every phase with the tiny model on the CPU")
    parser.add_argument("--out", help="a JSON file rewritten after every phase")
    parser.add_argument("--work-dir", default=None, help="where the models are built (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = Report(Path(args.out) if args.out else None)
    report.put("environment", environment())
    report.put("dry", args.dry)
    bench = _bench()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in (["tiny"] if args.dry else args.sizes):
            try:
                check_size(size, report, bench, work, args.dry, args.dry or size in args.reference_sizes)
            except Exception as exc:  # noqa: BLE001 - one size's failure is reported; the next size still runs
                report.phase(size, "error", f"{type(exc).__name__}: {exc}"[:1000])
            _free_device()
    print(json.dumps(report.doc, indent=1, default=str) if args.json else _text(report.doc))
    return 0 if not any("error" in p for p in report.doc["phases"].values()) else 1


def _free_device() -> None:
    """The last size's model is gone with its frame: give its cached blocks back before the next size loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _text(doc: dict) -> str:
    lines = [f"environment: {doc['environment']}"]
    for size, phases in doc["phases"].items():
        for name, value in phases.items():
            lines.append(f"{size} {name}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
