"""Epoch throughput: one epoch of N synthetic miners, through the Dagster-launched path and the in-process path.

Each path gets a freshly seeded embedded network (local chain + hub, N honest miners with disjoint rows, the tiny
model) and its own Dagster instance on disk (SQLite, as a validator has out of the box):

- `dagster`: what the sensors launch, as separate processes. The epoch is opened with `dagster asset materialize
  --select chain_commitments`, then the epoch sensor's own request logic (`next_epoch_requests`) is asked for the
  next stage until it says "done", and every run it requests is executed with `dagster asset materialize`
  (a partition or a `--partition-range`), one fresh process per run, as the run launcher would.
- `in_process`: `flock epoch run` in this process (`run_epoch`).

Reported per path: runs launched, wall seconds (total and per miner), the share of wall time inside LoRA training +
eval (the evaluator's own timers, summed over miners), the miners evaluated, and peak RSS (this process for
`in_process`; the largest child for `dagster`).

    python benchmarks/epoch.py [--miners 8] [--paths dagster in_process] [--rows 40] [--json]
    python benchmarks/epoch.py --size 1.5b --miners 64 --json     # GPU: a random-weight Qwen2.5-1.5B shape

With `--size 0.5b|1.5b|3b` the base model is a random-weight Qwen2.5 shape (built once under --work-dir) on CUDA,
with the live recipe (lr 2e-4, bf16, max_seq_len 2048) and multi-LoRA on (the CUDA default).

Numbers are from whatever machine runs it; on a shared 2-core machine they vary by 10-20 % run to run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 7


def seed_network(home: Path, miners: int, rows: int, models: Path | None) -> int:
    """A local chain + hub with a validator and `miners` honest miners (each its own atlas, so no two share a row);
    returns the epoch that opens after the commitments."""
    from flock_pipeline.core import synthetic
    from flock_pipeline.core.commitment import DEFAULT_COMPETITION_ID, Commitment
    from flock_pipeline.core.schema import rows_to_jsonl
    from flock_pipeline.demo import EVAL_REPO, VALIDATOR_HOTKEY
    from flock_pipeline.resources.chain import LocalChainResource
    from flock_pipeline.resources.hub import LocalHubResource

    home.mkdir(parents=True, exist_ok=True)
    if models is not None and models.is_dir():
        shutil.copytree(models, home / "models", symlinks=True)
    chain = LocalChainResource(path=str(home / "chain.json"))
    hub = LocalHubResource(root=str(home / "hub"), as_owner=True)
    hub.upload(EVAL_REPO, rows_to_jsonl(synthetic.eval_rows(synthetic.make_atlas(SEED))).encode(), private=False)
    chain.register(VALIDATOR_HOTKEY, stake=1000.0, validator_permit=True)
    for i in range(miners):
        chain.register(f"hk-miner-{i:04d}")
    for i in range(miners):
        data = rows_to_jsonl(synthetic.honest_rows(synthetic.make_atlas(1000 + i), rows, SEED + i)).encode()
        repo = f"miner{i:04d}/atlas"
        revision = hub.upload(repo, data, private=False)
        commitment = Commitment(repo, DEFAULT_COMPETITION_ID, revision)
        chain.set_commitment(f"hk-miner-{i:04d}", commitment.to_compressed_str())
    epoch = chain.epoch_of(chain.current_block()) + 1
    chain.advance(chain.epoch_start(epoch) - chain.current_block())
    return epoch


def _environment(home: Path, dagster_home: Path) -> dict:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "FLOCK_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "FLOCK_NETWORK": "local"}


def _training_seconds(store, epoch: int) -> float:
    """The evaluator's own train + eval seconds, summed over the epoch's evaluated shards."""
    from flock_pipeline.store import EvalResultRecord

    hashes = {s.shard_hash for s in store.epoch_shards(epoch) if s.status == "eligible"}
    return sum(float(r.seconds or 0.0) for h in hashes for r in store.rows(EvalResultRecord, shard_hash=h)
               if r.status == "ok")


def _report(epoch: int, home: Path, wall: float, miners: int, runs: int, peak_kib: int) -> dict:
    from flock_pipeline.resources.store import StoreResource

    store = StoreResource(url=f"duckdb://{home / 'warehouse.duckdb'}")
    scores = store.scores(epoch)
    train = _training_seconds(store, epoch)
    return {"runs": runs, "miners": miners, "evaluated": sum(1 for r in scores if r.eval_loss is not None),
            "wall_s": round(wall, 2), "s_per_miner": round(wall / miners, 3),
            "training_share": round(train / wall, 3) if wall else 0.0, "training_s": round(train, 2),
            "peak_rss_mib": round(peak_kib / 1024)}


def run_in_process(workdir: Path, miners: int, rows: int, models: Path | None) -> dict:
    home = workdir / "in_process"
    epoch = seed_network(home, miners, rows, models)
    env = _environment(home, workdir / "in_process-dagster")
    os.environ.update({k: env[k] for k in ("FLOCK_HOME", "DAGSTER_HOME")})
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.resources import build_resources

    resources = build_resources(home)
    resources["evaluator"].model_path()  # the tiny model is built (or copied) before the clock starts; importing
    # torch and loading the model are part of the epoch, as for `flock epoch run`
    instance = dg.DagsterInstance.get()
    runs_before = len(instance.get_run_records())
    started = time.perf_counter()
    run_epoch(epoch, resources, instance)
    wall = time.perf_counter() - started
    runs = len(instance.get_run_records()) - runs_before
    return _report(epoch, home, wall, miners, runs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _materialize(env: dict, request) -> float:
    start = request.tags.get("dagster/asset_partition_range_start")
    where = (["--partition-range", f"{start}...{request.tags['dagster/asset_partition_range_end']}"]
             if start is not None else ["--partition", request.partition_key])
    select = ",".join(k.to_user_string() for k in request.asset_selection)
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                    "flock_pipeline.definitions", "--select", select, *where], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return round(time.perf_counter() - started, 2)


def run_dagster(workdir: Path, miners: int, rows: int, models: Path | None) -> dict:
    home = workdir / "dagster"
    epoch = seed_network(home, miners, rows, models)
    env = _environment(home, workdir / "dagster-dagster")
    # the tiny model is built before the clock starts, in a process of its own
    subprocess.run([sys.executable, "-c", "from flock_pipeline.resources import build_resources; "
                    "build_resources()['evaluator'].model_path()"], env=env, cwd=ROOT, check=True)
    import dagster as dg

    started = time.perf_counter()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:  # what new_block_sensor does
        instance.add_dynamic_partitions("epochs", [str(epoch)])
    first = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                    "flock_pipeline.definitions", "--select", "chain_commitments", "--partition", str(epoch)],
                   env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_seconds = [round(time.perf_counter() - first, 2)]
    for _ in range(4 * miners + 10):  # a bound: every stage makes progress or the loop stops
        requests = _next_requests(epoch, env)
        if not requests:
            break
        run_seconds += [_materialize(env, request) for request in requests]
    wall = time.perf_counter() - started
    report = _report(epoch, home, wall, miners, len(run_seconds),
                     resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {**report, "run_seconds": run_seconds}


def _next_requests(epoch: int, env: dict) -> list:
    """The epoch sensor's next requests, computed as the sensor computes them (its resources, this instance)."""
    saved = {k: os.environ.get(k) for k in ("FLOCK_HOME", "DAGSTER_HOME")}
    os.environ.update({k: env[k] for k in saved})
    try:
        import dagster as dg

        from flock_pipeline.core.schema import verdict_key
        from flock_pipeline.defs.planner import next_epoch_requests
        from flock_pipeline import resources as flock_resources
        from flock_pipeline.resources import build_resources
        from flock_pipeline.validator.games import competition_recipe

        resources = build_resources(Path(env["FLOCK_HOME"]))
        evaluator, settings = resources["evaluator"], resources["settings"]
        batched = "batch" in inspect.signature(next_epoch_requests).parameters
        batching = {"batch": flock_resources.batch_settings()[0]} if batched \
            else {}  # (commits before batching: one run per miner)
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            requests, _stage = next_epoch_requests(
                epoch, resources["store"], instance,
                lambda c: evaluator.provenance(build=False, recipe=competition_recipe(settings, c)),
                resources["chain"].current_block(), 0, verdict_key(settings.dataset_limits()), **batching)
        return requests
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=8)
    parser.add_argument("--rows", type=int, default=40, help="rows per miner's dataset")
    parser.add_argument("--paths", nargs="+", default=["dagster", "in_process"], choices=["dagster", "in_process"])
    parser.add_argument("--models", default=".flock/models", help="a model cache to copy (the tiny model)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "0.5b", "1.5b", "3b"],
                        help="tiny (CPU, the embedded model) or a random-weight Qwen2.5 shape (CUDA)")
    parser.add_argument("--work-dir", default="/tmp/flock-epoch-bench-models", help="where --size models are built")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models = (ROOT / args.models).resolve()
    report = {"miners": args.miners, "rows_per_miner": args.rows, "size": args.size}
    if args.size != "tiny":
        import torch

        if not torch.cuda.is_available():
            print(f"--size {args.size} runs on a CUDA device, and none is visible", file=sys.stderr)
            return 2
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from evaluator import workload  # the same random-weight shapes as the evaluator benchmark

        model_dir, *_ = workload(args.size, 1, 1, Path(args.work_dir))
        os.environ.update({"FLOCK_BASE_MODEL": str(model_dir), "FLOCK_DEVICE": "cuda"})
        models = None
    with tempfile.TemporaryDirectory(prefix="flock-epoch-bench-") as tmp:
        for path in args.paths:
            run = run_dagster if path == "dagster" else run_in_process
            report[path] = run(Path(tmp), args.miners, args.rows, models if models and models.is_dir() else None)
    if "dagster" in report and "in_process" in report:
        report["dagster_vs_in_process"] = round(report["dagster"]["s_per_miner"]
                                                / report["in_process"]["s_per_miner"], 2)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for path in args.paths:
            r = report[path]
            print(f"{path:>10}: {r['runs']} runs, {r['wall_s']} s ({r['s_per_miner']} s/miner), training "
                  f"{r['training_share']:.0%} of wall, {r['evaluated']}/{r['miners']} evaluated, "
                  f"peak {r['peak_rss_mib']} MiB")
        if "dagster_vs_in_process" in report:
            print(f"dagster / in_process per miner: {report['dagster_vs_in_process']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
