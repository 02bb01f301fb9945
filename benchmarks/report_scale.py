"""What an epoch of many miners leaves behind: Dagster's event storage per epoch, the largest metadata value, the
explanations, and `flock epoch report --html`'s time and memory.

The network is `benchmarks/epoch.py`'s (a local chain + hub, N honest miners with disjoint rows, the tiny model),
recorded in a Dagster instance configured by the repository's dagster.yaml (SQLite on disk, as a validator has out of
the box), or with --postgres URL by deploy/postgres/dagster.yaml on that (empty) database, by `flock epoch run`'s own
runner (`run_epoch`: every asset, every per-miner batch, the checks), epoch after epoch. Only the training is left out:
the evaluator answers each miner with a loss drawn from its rows' digest (and per-row losses around it), so the
scores, weights, explanations, corpus and report are made from N distinct losses exactly as from trained ones.

Reported per epoch: the growth of Dagster's storage (the files under DAGSTER_HOME, plus the database's size with
--postgres), the largest metadata value written in it (its asset and key), the longest explanation and the longest
recorded detail (every comparison); then `flock epoch report LAST --html` in a fresh process, run --reports times:
wall seconds and the peak RSS of that process. The event storage is also broken down by event type
(`events_by_type`: count and bytes of the epoch's events as serialized, one copy each), by run (`run_db_bytes`: each
run's own SQLite file, by stage) and the asset index (`index_db_bytes`), where Dagster's SQLite storage keeps a second
copy of every asset event.

    python benchmarks/report_scale.py [--miners 256] [--epochs 4] [--rows 20] [--reports 3] [--json]
    python benchmarks/report_scale.py --postgres postgresql://USER@HOST:5432/EMPTY_DATABASE ...
    python benchmarks/report_scale.py --keep DIR ...; python benchmarks/report_scale.py --keep DIR --epochs 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from epoch import _environment, seed_network  # noqa: E402  (the same network as the epoch benchmark)


def synthetic_losses(train_sets: list[list], eval_rows: list) -> list:
    """One outcome per training set without training: a loss in [1.6, 2.4) from the rows' digest, and per-row losses
    around it (what the scoring, the corpus and the report read)."""
    from flock_pipeline.core.evaluator import EvalOutcome

    out = []
    for rows in train_sets:
        digest = hashlib.sha256(repr(rows).encode()).digest()
        loss = 1.6 + 0.8 * int.from_bytes(digest[:4], "big") / 2 ** 32
        per_row = [loss + 0.05 * ((digest[i % 32] / 255) - 0.5) for i in range(len(eval_rows))]
        out.append(EvalOutcome(eval_loss=sum(per_row) / len(per_row), per_row_losses=per_row,
                               train_rows=len(rows), train_seconds=0.0, eval_seconds=0.0))
    return out


def without_training() -> None:
    """The evaluator resource answers from `synthetic_losses` (the base model's bar: 2.5); the model is still
    built, checked and loaded by the preflight, as in a real epoch."""
    from flock_pipeline.core.evaluator import EvalOutcome
    from flock_pipeline.resources.evaluator import EvaluatorResource

    def evaluate_many(self, train_sets, eval_rows, recipe=None, objective=None, finished=None):
        outcomes = synthetic_losses(train_sets, eval_rows)
        for i, outcome in enumerate(outcomes):
            if finished is not None:
                finished(i, outcome)
        return outcomes

    def base_loss(self, eval_rows, recipe=None, objective=None):
        return EvalOutcome(eval_loss=2.5, per_row_losses=[2.5] * len(eval_rows))

    EvaluatorResource.evaluate_many = evaluate_many
    EvaluatorResource.base_loss = base_loss


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def storage_bytes(dagster_home: Path, postgres: str | None) -> int:
    """What Dagster's storage holds: the files under DAGSTER_HOME, and with --postgres the database's size."""
    if not postgres:
        return folder_bytes(dagster_home)
    import psycopg

    with psycopg.connect(postgres) as con:
        return folder_bytes(dagster_home) + con.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def table_bytes(postgres: str | None) -> dict[str, int]:
    """With --postgres: each table's size with its indexes and TOAST data (where the growth lands)."""
    if not postgres:
        return {}
    import psycopg

    with psycopg.connect(postgres) as con:
        return dict(con.execute("SELECT relname::text, pg_total_relation_size(relid) "
                                "FROM pg_catalog.pg_statio_user_tables").fetchall())


def instance_config(dagster_home: Path, env: dict, postgres: str | None) -> None:
    """The instance a validator runs: the repository's dagster.yaml, or deploy/postgres/dagster.yaml on `postgres`."""
    if postgres:
        env["FLOCK_DAGSTER_POSTGRES_URL"] = postgres
    source = ROOT / "deploy" / "postgres" / "dagster.yaml" if postgres else ROOT / "dagster.yaml"
    (dagster_home / "dagster.yaml").write_text(source.read_text())


def _metadata_of(event) -> dict | None:
    data = event.event_specific_data
    payload = getattr(data, "materialization", None) or getattr(data, "asset_observation", None) or data
    metadata = getattr(payload, "metadata", None)
    return metadata if isinstance(metadata, dict) else None


def event_sizes(instance, run_ids: list[str]) -> tuple[tuple[int, str], dict[str, list[int]]]:
    """Of the runs' events: (bytes, "asset · key") of the largest metadata value (serialized as Dagster stores it:
    materializations, observations, check evaluations, step outputs), and per event type (LOG: a log line) [count,
    bytes] of the events as serialized (one copy each: SQLite stores asset events twice, checks three times)."""
    from dagster._serdes import serialize_value

    best, by_type = (0, ""), {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            kind = by_type.setdefault(event.event_type_value if event is not None else "LOG", [0, 0])
            kind[0], kind[1] = kind[0] + 1, kind[1] + len(serialize_value(entry).encode())
            metadata = _metadata_of(event) if event is not None else None
            if not metadata:
                continue
            asset = event.asset_key.to_user_string() if event.asset_key is not None else event.event_type_value
            for key, value in metadata.items():
                size = len(serialize_value(value).encode())
                if size > best[0]:
                    best = (size, f"{asset} · {key}")
    return best, dict(sorted(by_type.items(), key=lambda kv: -kv[1][1]))


MEASURE = ("import resource, subprocess, sys, time\n"
           "started = time.perf_counter()\n"
           "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
           "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def report_once(env: dict, epoch: int) -> tuple[float, float]:
    """`flock epoch report EPOCH --html` in a fresh process: (wall seconds, its peak RSS in MiB). It is started by a
    small interpreter that reports both: a child forked from this (large) process would count its pages too."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(Path(sys.executable).parent / "flock"), "epoch",
                           "report", str(epoch), "--html"], env=env, cwd=ROOT, check=True, capture_output=True,
                          text=True)
    wall, kib = done.stdout.split()
    return round(float(wall), 2), round(int(kib) / 1024, 1)


def run(workdir: Path, miners: int, epochs: int, rows: int, reports: int, models: Path | None,
        postgres: str | None = None) -> dict:
    home, dagster_home = workdir / "home", workdir / "dagster"
    kept = ("FLOCK_HOME", "DAGSTER_HOME", "FLOCK_NETWORK") + (("FLOCK_DAGSTER_POSTGRES_URL",) if postgres else ())
    if epochs == 0:  # the report alone, of a home kept by an earlier run (--keep)
        env = _environment(home, dagster_home)
        instance_config(dagster_home, env, postgres)
        os.environ.update({k: env[k] for k in kept})
        from flock_pipeline.resources import build_resources

        last = build_resources(home, training=False)["store"].latest_epoch()
        return {"miners": miners, "epochs": [], "report_html": _time_report(env, home, last, reports)}
    first = seed_network(home, miners, rows, models)
    env = _environment(home, dagster_home)
    instance_config(dagster_home, env, postgres)
    os.environ.update({k: env[k] for k in kept})
    without_training()
    import dagster as dg

    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.resources import build_resources
    from flock_pipeline.store import ScoreDetailRecord

    resources = build_resources(home)
    chain, store = resources["chain"], resources["store"]
    out = []
    with dg.DagsterInstance.get() as instance:
        for epoch in range(first, first + epochs):
            if chain.epoch_of(chain.current_block()) < epoch:
                chain.advance(chain.epoch_start(epoch) - chain.current_block())
            index = dagster_home / "history" / "runs" / "index.db"
            before, runs_before = storage_bytes(dagster_home, postgres), {r.run_id for r in instance.get_runs()}
            index_before = index.stat().st_size if index.is_file() else 0
            tables_before = table_bytes(postgres)
            started = time.perf_counter()
            run_epoch(epoch, resources, instance)
            wall = time.perf_counter() - started
            runs = [r for r in instance.get_runs() if r.run_id not in runs_before]
            new_runs = [r.run_id for r in runs]
            by_stage: dict[str, int] = {}
            for r in runs:
                own = dagster_home / "history" / "runs" / f"{r.run_id}.db"
                stage = r.tags.get("flock/stage", "?")
                by_stage[stage] = by_stage.get(stage, 0) + (own.stat().st_size if own.is_file() else 0)
            (size, where), by_type = event_sizes(instance, new_runs)
            scores = store.scores(epoch)
            details = store.rows(ScoreDetailRecord, epoch=epoch)
            out.append({"epoch": epoch, "wall_s": round(wall, 1), "runs": len(new_runs),
                        "event_storage_growth_bytes": storage_bytes(dagster_home, postgres) - before,
                        "events_by_type": by_type, "run_db_bytes": by_stage,
                        "index_db_bytes": (index.stat().st_size if index.is_file() else 0) - index_before,
                        "table_bytes": {k: v - tables_before.get(k, 0) for k, v in table_bytes(postgres).items()
                                        if v != tables_before.get(k, 0)},
                        "largest_metadata_bytes": size, "largest_metadata": where,
                        "scored": sum(r.status == "scored" for r in scores),
                        "longest_explanation_chars": max(len(r.explanation or "") for r in scores),
                        "longest_detail_chars": max((len(d.detail) for d in details), default=0)})
            print(json.dumps(out[-1]), file=sys.stderr)
    return {"miners": miners, "epochs": out, "report_html": _time_report(env, home, first + epochs - 1, reports)}


def _time_report(env: dict, home: Path, epoch: int, reports: int) -> dict:
    timings = [report_once(env, epoch) for _ in range(reports)]
    html = home / "corpus" / "reports" / f"epoch-{epoch}" / "report.html"
    return {"epoch": epoch, "wall_s": [t for t, _ in timings],
            "median_wall_s": statistics.median(t for t, _ in timings), "peak_rss_mib": [m for _, m in timings],
            "html_bytes": html.stat().st_size if html.is_file() else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4, help="0: only time the report of the home in --keep")
    parser.add_argument("--rows", type=int, default=20, help="rows per miner's dataset")
    parser.add_argument("--reports", type=int, default=3, help="runs of `flock epoch report --html`")
    parser.add_argument("--models", default=".flock/models", help="a model cache to copy (the tiny model)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (an empty folder) and keep the home and instance")
    parser.add_argument("--postgres", metavar="URL", help="Dagster's storage on this (empty) PostgreSQL database, as "
                                                         "deploy/postgres/dagster.yaml configures it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for name, value in (("OMP_NUM_THREADS", "1"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(name, value)
    models = (ROOT / args.models).resolve()
    with tempfile.TemporaryDirectory(prefix="flock-report-scale-") as tmp:
        report = run(Path(args.keep or tmp), args.miners, args.epochs, args.rows, args.reports,
                     models if models.is_dir() else None, args.postgres)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for e in report["epochs"]:
            print(f"epoch {e['epoch']}: {e['runs']} runs, {e['wall_s']} s, event storage +"
                  f"{e['event_storage_growth_bytes'] / 2 ** 20:.2f} MiB, largest metadata value "
                  f"{e['largest_metadata_bytes'] / 1024:.1f} KiB ({e['largest_metadata']}), longest explanation "
                  f"{e['longest_explanation_chars']} chars, longest detail {e['longest_detail_chars']} chars")
        r = report["report_html"]
        print(f"flock epoch report {r['epoch']} --html: {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB, "
              f"{r['html_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
