"""`flock demo`, `flock epoch ...`, `flock chain ...` and `flock worker`: the validator's commands."""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from pathlib import Path

from flock_pipeline.cli.common import _instance, _quiet_torch, run_stoppable
from flock_pipeline.core.untrusted import finite


def cmd_demo(args) -> int:
    from flock_pipeline.defs.epoch import RunnerBusy, run_epoch, runner_lock
    from flock_pipeline.errors import UsageError
    from flock_pipeline.demo import (DemoHomeError, check_demo_home, epoch_report, format_report, quality_spearman,
                                     run_cycle, seed_demo_network)
    from flock_pipeline.resources import ConfigError, build_resources

    _quiet_torch()
    home = Path(args.home or os.environ.get("FLOCK_HOME") or ".flock").resolve()
    network = os.environ.get("FLOCK_NETWORK", "local")
    if network != "local":
        raise ConfigError(f"flock demo runs on the embedded local network only, and FLOCK_NETWORK={network}: "
                          "unset it (nothing was changed)")
    try:
        check_demo_home(home, args.force)
    except DemoHomeError as exc:
        raise ConfigError(str(exc)) from exc
    os.environ["FLOCK_HOME"] = str(home)
    started = time.perf_counter()
    build_resources(home)  # a configuration error exits 2 here, before the home is wiped (this creates nothing)
    try:
        with runner_lock(home):  # one writer per home: never wipe a home an epoch runner is working on
            epoch = seed_demo_network(home, seed=args.seed, network=args.network, force=args.force)
    except RunnerBusy as exc:
        raise UsageError(str(exc).replace("nothing was started", "nothing was changed")) from exc
    if args.no_run:
        print(json.dumps({"epoch": epoch, "home": str(home)}) if args.json else
              f"seeded the demo network in {home}; epoch {epoch} is open")
        return 0
    resources = build_resources(home)
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    instance = _instance()
    runner = functools.partial(run_epoch, verbose=args.verbose)  # -v, -vv: the runs' own log lines too
    cycle = run_stoppable(lambda: run_cycle(home, resources, instance, runner, progress=log))
    demo = json.loads((home / "demo.json").read_text())
    report = epoch_report(epoch, resources["store"], demo["labels"], demo.get("quality"))
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    daily = len(cycle) > 1
    if args.json:
        doc = {"network": args.network, "epoch": epoch, "miners": report, "wall_s": round(elapsed, 2),
               "peak_rss_mib": round(peak_mib, 1)}
        if quality_spearman(report) is not None:
            doc["honest_spearman"] = quality_spearman(report)
        if daily:
            doc["cycle"] = cycle
        print(json.dumps(finite(doc), indent=1, allow_nan=False))
    else:
        if daily:
            for entry in cycle:
                rounds = ", ".join(f"{name} round {r['round']} ({r['phase']})" for name, r in entry["rounds"].items())
                weights = "; ".join(f"uid {uid} {w:g}: {entry['why'][uid]}" for uid, w in entry["weights"].items())
                print(f"epoch {entry['epoch']} (block {entry['block']}, {entry['time']}): {rounds}\n    weights: "
                      f"{weights or 'none'}")
            print()
        print(format_report(report))
        print(f"\nepoch {epoch}: {elapsed:.1f} s wall, peak RSS {peak_mib:.0f} MiB; home {home}")
    return 0


def cmd_epoch_run(args) -> int:
    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.validator.report_table import epoch_report, format_report
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    resources = build_resources()
    chain = resources["chain"]
    epoch = args.epoch if args.epoch is not None else chain.epoch_of(chain.current_block())
    instance = _instance()
    # stage lines and a line per finished miner on stderr (stdout is the report, or the JSON document); -v adds
    # each step's info lines (every miner's outcome in every step), -vv Dagster's debug lines
    run_stoppable(lambda: run_epoch(epoch, resources, instance, progress=lambda m: print(m, file=sys.stderr),
                                    verbose=args.verbose))
    report = epoch_report(epoch, resources["store"])
    print(json.dumps(finite({"epoch": epoch, "miners": report}), indent=1, allow_nan=False) if args.json
          else format_report(report))
    return 0


def cmd_epoch_open(args) -> int:
    """Register the current (or given) epoch as a Dagster partition and print its key."""
    from flock_pipeline.defs.assets import epochs_partitions
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    chain = build_resources(training=False)["chain"]
    epoch = args.epoch if args.epoch is not None else chain.epoch_of(chain.current_block())
    instance = _instance()
    if not instance.has_dynamic_partition(epochs_partitions.name, str(epoch)):
        instance.add_dynamic_partitions(epochs_partitions.name, [str(epoch)])
    print(epoch)
    return 0


def cmd_epoch_miners(args) -> int:
    """Hotkeys with an accepted commitment in the epoch: the `miners` partitions to materialize for it."""
    from flock_pipeline.resources import build_resources

    commitments = build_resources(training=False)["store"].epoch_commitments(args.epoch)
    print("\n".join(c.hotkey for c in commitments if c.status == "ok"))
    return 0


def cmd_epoch_batches(args) -> int:
    """The epoch's accepted miners as `miners` partition ranges of at most --size miners (FLOCK_MINER_BATCH), one
    `FIRST...LAST` per line: what `dagster asset materialize --partition-range` takes, in the batches the sensors
    launch."""
    from flock_pipeline.defs.planner import miner_batches
    from flock_pipeline.resources import batch_settings, build_resources

    size = args.size or batch_settings()[0]
    commitments = build_resources(training=False)["store"].epoch_commitments(args.epoch)
    hotkeys = [c.hotkey for c in commitments if c.status == "ok"]
    for batch in miner_batches(_instance(), hotkeys, size):
        print(f"{batch[0]}...{batch[-1]}")
    return 0


def cmd_epoch_report(args) -> int:
    from flock_pipeline.validator.report_table import epoch_report, format_report
    from flock_pipeline.resources import build_resources, flock_home

    labels_file = flock_home() / "demo.json"
    demo = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    resources = build_resources(training=False)
    if args.html:
        from flock_pipeline.validator.epoch_report import build_epoch_report

        _quiet_torch()
        paths, _ = build_epoch_report(args.epoch, resources["settings"], resources["store"],
                                      resources["evaluator"], labels=demo.get("labels"))
        print(paths["html"])
        return 0
    if args.miner:
        return _miner_account(args, resources["store"], demo.get("labels"))
    report = epoch_report(args.epoch, resources["store"], demo.get("labels"), demo.get("quality"))
    print(json.dumps(finite({"epoch": args.epoch, "miners": report}), indent=1, allow_nan=False) if args.json
          else format_report(report))
    return 0


def _miner_account(args, store, labels: dict | None) -> int:
    """`flock epoch report N --miner HOTKEY`: the miner's entry and every comparison behind its score."""
    from flock_pipeline.errors import UsageError
    from flock_pipeline.validator.report_table import format_account, miner_account

    account = miner_account(args.epoch, store, args.miner, labels)
    if account is None:
        raise UsageError(f"{args.miner} has no entry in epoch {args.epoch}",
                         hint=f"`flock epoch report {args.epoch}` lists the epoch's miners")
    print(json.dumps(finite({"epoch": args.epoch, "miner": account}), indent=1, allow_nan=False) if args.json
          else format_account(args.epoch, account))
    return 0


def cmd_chain_status(args) -> int:
    from flock_pipeline.resources import build_resources

    chain = build_resources(training=False)["chain"]
    block = chain.current_block()
    tempo = chain.effective_tempo()
    print(json.dumps({"block": block, "epoch": chain.epoch_of(block), "tempo": tempo,
                      "neurons": len(chain.metagraph()), "commitments": len(chain.commitments())}))
    return 0


def cmd_chain_weights(args) -> int:
    """The chain parameters the validator's weights must satisfy, the latest epoch's submission (its state) and what
    sending that epoch's weights now would do: the exact vector, or the refusal. Exit 1 when it would be refused."""
    from dataclasses import asdict

    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.weights import weights_of

    resources = build_resources(training=False)
    chain, settings, store = resources["chain"], resources["settings"], resources["store"]
    doc: dict = {"hotkey": settings.validator_hotkey,
                 "rules": chain.weight_rules(settings.validator_hotkey).as_dict()}
    epoch = store.latest_epoch()
    code = 0
    if epoch is not None:
        sent = store.weight_submission(epoch)
        doc["epoch"] = epoch
        doc["submission"] = asdict(sent) if sent is not None else None
        weights = weights_of(store.scores(epoch))
        if weights:
            plan = chain.plan_weights(settings.validator_hotkey, weights, settings.weights_version_key)
            doc["plan"] = {"sendable": plan.sendable, "refusal": plan.refusal, "version_key": plan.version_key,
                           "uids": list(plan.uids), "values_u16": list(plan.values), "notes": list(plan.notes)}
            code = 0 if plan.sendable or plan.retry_after_block is not None else 1
    print(json.dumps(finite(doc), indent=1, default=str, allow_nan=False))
    return code


def cmd_chain_register(args) -> int:
    from flock_pipeline.resources import LocalChainResource, build_resources

    chain = build_resources(training=False)["chain"]
    if not isinstance(chain, LocalChainResource):
        print("flock: registration on a real network is done with btcli", file=sys.stderr)
        return 2
    neuron = chain.register(args.hotkey, validator_permit=args.validator)
    print(json.dumps({"uid": neuron.uid, "hotkey": neuron.hotkey, "registration_block": neuron.registration_block}))
    return 0


def cmd_chain_advance(args) -> int:
    from flock_pipeline.resources import build_resources

    chain = build_resources(training=False)["chain"]
    if not hasattr(chain, "advance"):
        print("flock: only the local chain's block clock can be moved on", file=sys.stderr)
        return 2
    if args.to_next_epoch:
        target = chain.epoch_start(chain.epoch_of(chain.current_block()) + 1)
        blocks = target - chain.current_block()
    else:
        blocks = args.blocks
    print(chain.advance(blocks))
    return 0


def worker_command(home: Path, name: str, queues: str, concurrency: int, extra: list[str]) -> list[str]:
    """Write the workers' Celery config (the executor's own settings, from the environment) into the home and return
    the `dagster-celery worker start` command line that serves `queues`."""
    from flock_pipeline.resources import celery_settings

    config = home / "celery-worker.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"execution": {"config": celery_settings()}}, indent=1) + "\n")  # JSON is YAML
    os.chmod(config, 0o600)  # it holds the broker's URL (and its password, if any)
    bindir = Path(sys.executable).parent
    return [str(bindir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
            "-n", name, "-q", queues, "--", f"--concurrency={concurrency}", *extra]


def cmd_worker(args) -> int:
    """Start a Celery worker for this validator's steps (FLOCK_EXECUTOR=celery runs send them here)."""
    from flock_pipeline.resources import ConfigError, build_resources, flock_home

    os.environ["FLOCK_EXECUTOR"] = "celery"
    build_resources()  # the worker's own configuration is checked before it takes any step
    if not os.environ.get("DAGSTER_HOME"):
        raise ConfigError("DAGSTER_HOME must name the Dagster instance the runs record to (shared with the daemon)")
    argv = worker_command(flock_home(), args.name, args.queues, args.concurrency, args.celery_args)
    # The celery binary is found on PATH: the one next to this interpreter first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    print(" ".join(argv), file=sys.stderr)
    os.execv(argv[0], argv)
    return 0  # not reached
