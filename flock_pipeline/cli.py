"""`flock`: the command line (demo network, epochs, local chain utilities).

Exit codes: 0 ok, 1 a run or check failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def _instance():
    """The Dagster instance of DAGSTER_HOME when set (so the UI shows the runs), else an ephemeral one."""
    import dagster as dg

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _quiet_torch() -> None:
    """The embedded network needs no hub; library progress bars and deprecation chatter stay off the console."""
    import warnings

    if os.environ.get("FLOCK_NETWORK", "local") == "local":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub resource of the real networks decides for itself
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def cmd_demo(args) -> int:
    from flock_pipeline.defs.epoch import run_epoch
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
    epoch = seed_demo_network(home, seed=args.seed, network=args.network, force=args.force)
    if args.no_run:
        print(json.dumps({"epoch": epoch, "home": str(home)}) if args.json else
              f"seeded the demo network in {home}; epoch {epoch} is open")
        return 0
    resources = build_resources(home)
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    cycle = run_cycle(home, resources, _instance(), run_epoch, progress=log)
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
        print(json.dumps(doc, indent=1))
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
    run_epoch(epoch, resources, _instance(), progress=lambda m: print(m, file=sys.stderr))
    report = epoch_report(epoch, resources["store"])
    print(json.dumps({"epoch": epoch, "miners": report}, indent=1) if args.json else format_report(report))
    return 0


def cmd_epoch_open(args) -> int:
    """Register the current (or given) epoch as a Dagster partition and print its key."""
    from flock_pipeline.defs.assets import epochs_partitions
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    chain = build_resources()["chain"]
    epoch = args.epoch if args.epoch is not None else chain.epoch_of(chain.current_block())
    instance = _instance()
    if not instance.has_dynamic_partition(epochs_partitions.name, str(epoch)):
        instance.add_dynamic_partitions(epochs_partitions.name, [str(epoch)])
    print(epoch)
    return 0


def cmd_epoch_miners(args) -> int:
    """Hotkeys with an accepted commitment in the epoch: the `miners` partitions to materialize for it."""
    from flock_pipeline.resources import build_resources

    commitments = build_resources()["store"].epoch_commitments(args.epoch)
    print("\n".join(c.hotkey for c in commitments if c.status == "ok"))
    return 0


def cmd_epoch_batches(args) -> int:
    """The epoch's accepted miners as `miners` partition ranges of at most --size miners (FLOCK_MINER_BATCH), one
    `FIRST...LAST` per line: what `dagster asset materialize --partition-range` takes, in the batches the sensors
    launch."""
    from flock_pipeline.defs.planner import miner_batches
    from flock_pipeline.resources import batch_settings, build_resources

    size = args.size or batch_settings()[0]
    commitments = build_resources()["store"].epoch_commitments(args.epoch)
    hotkeys = [c.hotkey for c in commitments if c.status == "ok"]
    for batch in miner_batches(_instance(), hotkeys, size):
        print(f"{batch[0]}...{batch[-1]}")
    return 0


def cmd_epoch_report(args) -> int:
    from flock_pipeline.validator.report_table import epoch_report, format_report
    from flock_pipeline.resources import build_resources, flock_home

    labels_file = flock_home() / "demo.json"
    demo = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    resources = build_resources()
    if args.html:
        from flock_pipeline.validator.epoch_report import build_epoch_report

        _quiet_torch()
        paths, _ = build_epoch_report(args.epoch, resources["settings"], resources["store"],
                                      resources["evaluator"], labels=demo.get("labels"))
        print(paths["html"])
        return 0
    report = epoch_report(args.epoch, resources["store"], demo.get("labels"), demo.get("quality"))
    print(json.dumps({"epoch": args.epoch, "miners": report}, indent=1) if args.json else format_report(report))
    return 0


def cmd_chain_status(args) -> int:
    from flock_pipeline.resources import build_resources

    chain = build_resources()["chain"]
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
    from flock_pipeline.validator.scoring import weights_of

    resources = build_resources()
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
    print(json.dumps(doc, indent=1, default=str))
    return code


def cmd_chain_register(args) -> int:
    from flock_pipeline.resources import LocalChainResource, build_resources

    chain = build_resources()["chain"]
    if not isinstance(chain, LocalChainResource):
        print("flock: registration on a real network is done with btcli", file=sys.stderr)
        return 2
    neuron = chain.register(args.hotkey, validator_permit=args.validator)
    print(json.dumps({"uid": neuron.uid, "hotkey": neuron.hotkey, "registration_block": neuron.registration_block}))
    return 0


def cmd_chain_advance(args) -> int:
    from flock_pipeline.resources import build_resources

    chain = build_resources()["chain"]
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


def _competition(resources, name):
    """The competition a miner works for: `--competition NAME`, else the validator configuration's first."""
    from flock_pipeline.resources import ConfigError

    competitions = resources["settings"].competition_set()
    if name is None:
        return competitions.competitions[0]
    try:
        return competitions.by_name(name)
    except KeyError:
        raise ConfigError(f"--competition {name!r}: the configured competitions are "
                          f"{', '.join(c.name for c in competitions)} (FLOCK_COMPETITIONS)") from None


def _eval_source(resources, competition):
    """(repo, revision) of a competition's eval set (its pool, for a selection game)."""
    hub = resources["hub"]
    return competition.eval_repo, competition.eval_revision or hub.head(competition.eval_repo)


def _eval_rows(resources, competition=None):
    """The competition's eval set from the hub; a ConfigError (exit 2) saying why when it cannot be loaded."""
    from flock_pipeline.resources import ConfigError
    from flock_pipeline.resources.hub import HubError
    from flock_pipeline.validator.eval_sets import load_eval_rows

    competition = competition or _competition(resources, None)
    try:
        return load_eval_rows(resources["hub"], *_eval_source(resources, competition), competition.row_format)
    except (HubError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot load the eval set {competition.eval_repo}: {exc} (seed the local network with "
                          "`flock demo --no-run`, or set FLOCK_EVAL_REPO; --no-eval-check skips the eval-set "
                          "overlap check)") from exc


def _validate(path, resources, with_tokens=True, eval_check=True, competition=None):
    """The validators' checks on a file for a competition: the row rules, the game's own rules on the file alone,
    and its eval set's (held out: no eval-set rows; a pool: the rows must be distinct pool rows)."""
    from flock_pipeline.miner import check_selection, validate_file
    from flock_pipeline.validator.datasets import load_tokenizer
    from flock_pipeline.validator.eval_sets import load_eval_set

    competition = competition or _competition(resources, None)
    pool = competition.eval_set_role == "pool"
    eval_rows = _eval_rows(resources, competition) if eval_check or pool else None
    tokenizer = load_tokenizer(str(resources["evaluator"].model_path())) if with_tokens else None
    limits = resources["settings"].dataset_limits()
    report, rows = validate_file(path, limits, tokenizer, None if pool else eval_rows, competition.row_format)
    report.competition = competition.name
    if report.reason is None:
        reason = competition.rows_reason(rows)
        if reason is not None:
            report.valid, report.reason = False, reason
    if pool:
        pool_set = load_eval_set(resources["hub"], *_eval_source(resources, competition))
        reason = check_selection(path, limits, competition, pool_set)
        report.selection = reason or "ok"
        if reason is not None:
            report.valid, report.reason = False, report.reason or reason
        rows = rows[: competition.selection_size]
    return report, rows


def cmd_miner_validate(args) -> int:
    from flock_pipeline.miner import dumps, format_validation, read_input
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    read_input(args.file)  # missing, a directory, unreadable: a usage error (exit 2) before anything loads
    resources = build_resources()
    report, _ = _validate(args.file, resources, eval_check=not args.no_eval_check,
                          competition=_competition(resources, args.competition))
    print(dumps(report.to_json()) if args.json else format_validation(report))
    return 0 if report.valid else 1


def _first_rejection(report) -> str:
    """The first rejected row of a validation report, as text."""
    first = report.rejected[0] if report.rejected else None
    return (f"{len(report.rejected)} rejected row(s); line {first['line']}: {first['reason']}" if first
            else "it fails the validators' checks")


def cmd_miner_score(args) -> int:
    from flock_pipeline.errors import FlockError
    from flock_pipeline.miner import dumps, win_rates_among
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    resources = build_resources()
    competition = _competition(resources, args.competition)
    eval_rows = _eval_rows(resources, competition)
    recipe = competition.recipe_overrides()
    evaluator = resources["evaluator"]
    results, losses = [], {}
    checked = [(path, *_validate(path, resources, with_tokens=False, competition=competition))
               for path in [args.file, *args.against]]  # a missing or unreadable file: exit 2 before any training
    invalid = [(path, report) for path, report, _ in checked if not report.valid]
    if invalid and not args.force:
        path, report = invalid[0]
        raise FlockError(f"{path} is invalid: {report.reason or _first_rejection(report)}",
                         hint="fix it (flock miner validate shows every row's reason), or pass --force to score "
                              "its valid rows anyway")
    for path, report, train_rows in checked:
        if not train_rows:
            results.append({"file": path, "eval_loss": None, "reason": report.reason})
            continue
        from tqdm import tqdm

        with tqdm(desc=f"training on {path} ({len(train_rows)} rows)", unit="step", file=sys.stderr,
                  disable=not sys.stderr.isatty()) as bar:
            def on_step(done, total):
                bar.total = total
                bar.update(done - bar.n)

            outcome = evaluator.evaluate(train_rows, eval_rows, on_step=on_step, recipe=recipe,
                                         objective=competition.objective)
        losses[path] = outcome.eval_loss
        results.append({"file": path, "eval_loss": outcome.eval_loss, "rows_trained": outcome.train_rows,
                        "seconds": round(outcome.train_seconds + outcome.eval_seconds, 2)})
    base = evaluator.base_loss(eval_rows, recipe=recipe, objective=competition.objective).eval_loss
    sign = -1.0 if competition.objective.higher_is_better else 1.0  # win rates compare lower-is-better numbers
    epsilon = resources["settings"].scoring_config().epsilon
    rates = win_rates_among({p: sign * v for p, v in losses.items()}, epsilon) if losses else {}
    for r in results:
        r["win_rate"] = rates.get(r["file"])
    doc = {"competition": competition.name, "base_model": evaluator.model_name(), "base_eval_loss": base,
           "eval_rows": len(eval_rows),
           "results": results}
    if args.json:
        print(dumps(doc))
    else:
        print(f"base model {doc['base_model']} without fine-tuning: eval loss {base:.4f} ({len(eval_rows)} rows)")
        for r in results:
            loss = "invalid: " + (r.get("reason") or "") if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
            rate = "" if r["win_rate"] is None else f"  win rate {r['win_rate']:.2f}"
            print(f"{r['file']}: eval loss {loss}{rate}")
    return 0 if results[0]["eval_loss"] is not None else 1


def cmd_miner_submit(args) -> int:
    from flock_pipeline.core.commitment import validate_repo_id
    from flock_pipeline.miner import dumps, format_validation, miner_hotkey, read_input, submit
    from flock_pipeline.resources import LocalHubResource, build_resources
    from flock_pipeline.resources.chain import ChainError
    from flock_pipeline.resources.hub import HubError

    _quiet_torch()
    validate_repo_id(args.repo)  # a usage error (exit 2) before anything is read or sent
    hotkey = args.hotkey or miner_hotkey()
    resources = build_resources()
    competition = _competition(resources, args.competition)
    report, _ = _validate(args.file, resources, eval_check=not args.no_eval_check, competition=competition)
    data = read_input(args.file)
    if not report.valid and not args.force:
        print(format_validation(report), file=sys.stderr)
        print("flock: refusing to submit invalid data (--force submits it anyway)", file=sys.stderr)
        return 1
    hub = resources["hub"]
    if isinstance(hub, LocalHubResource):
        hub = LocalHubResource(root=hub.root, as_owner=True)  # the miner's own view of its private repo
    try:
        result = submit(data, args.repo, hotkey, competition.commitment_id, hub, resources["chain"])
    except ChainError as exc:
        if "not registered" in str(exc):
            raise ChainError(f"the chain refused the commitment: {exc}",
                             hint="register the hotkey on the subnet first (btcli subnet register; on the local "
                                  "network: flock chain register HOTKEY), then submit again; the data stays "
                                  "private") from exc
        raise ChainError(f"the chain refused the commitment: {exc}",
                         hint="the data stays private; run the same command again to retry") from exc
    except HubError as exc:
        failed = HubError(f"the hub failed: {exc}", transient=exc.transient)
        failed.hint = exc.hint or "run the same command again: a commitment already made to this content is reused"
        raise failed from exc
    doc = {**result.__dict__, "hotkey": hotkey}
    if args.json:
        print(dumps(doc))
    else:
        what = "committed" if result.committed_now else "already committed (nothing sent)"
        print(f"{args.repo}@{result.revision}: {what} at block {result.block}; the repo is public")
    return 0


def cmd_miner_status(args) -> int:
    from flock_pipeline.core.commitment import CommitmentError, validate_repo_id
    from flock_pipeline.miner import dumps, miner_hotkey, status
    from flock_pipeline.resources import build_resources

    resources = build_resources()
    repos = tuple(args.reports or [r.strip() for r in os.environ.get("FLOCK_REPORT_REPOS", "").split(",")
                                   if r.strip()])
    for repo in repos:
        try:
            validate_repo_id(repo)
        except CommitmentError as exc:
            print(f"flock: {'--reports' if args.reports else 'FLOCK_REPORT_REPOS'}: {exc}", file=sys.stderr)
            return 2
    doc = status(args.hotkey or miner_hotkey(), resources["chain"], resources["store"], resources["hub"], repos)
    if args.json:
        print(dumps(doc))
    else:
        for k, v in doc.items():
            if k == "validators":
                v = "; ".join(f"{x['hotkey']} (uid {x['uid']}, stake {x['stake']:g}): {x['weight']:.6f}"
                              for x in v) or "none has set weights on this uid"
            elif k == "reports":
                v = "; ".join(_report_line(r) for r in v)
            elif isinstance(v, float):
                v = f"{v:.6f}" if k in ("weight", "incentive", "recorded_weight") else f"{v:.4f}"
            print(f"{k:>15}: {v}")
    return 0 if doc["registered"] else 1


def _report_line(report: dict) -> str:
    """One report repo's entry of `flock miner status`, as text."""
    if report.get("error"):
        return f"{report['repo']}: {report['error']}"
    if report.get("epoch") is None:
        return f"{report['repo']}: no entry for this hotkey"
    why = f" ({report['reason']})" if report.get("reason") else ""
    return (f"{report['repo']}: epoch {report['epoch']} {report['status']}, loss {report['eval_loss']}, "
            f"rank {report['rank']} of {report['of']}{why}")


EXAMPLES = {
    "": ["flock demo                          # seed the embedded network and run one epoch",
         "flock demo --network dpo --json     # the DPO game's demo, as JSON",
         "flock miner validate data.jsonl     # the validators' checks on a file",
         "flock epoch run                     # the current epoch, in this process"],
    "demo": ["flock demo", "flock demo --network adversarial --json",
             "flock demo --no-run --home /tmp/net   # seed only; then: FLOCK_HOME=/tmp/net flock epoch run"],
    "epoch run": ["flock epoch run", "flock epoch run 12 --json"],
    "epoch open": ["flock epoch open", "flock epoch open 12"],
    "epoch miners": ["flock epoch miners 12"],
    "epoch batches": ["flock epoch batches 12 --size 16",
                      "dagster asset materialize -m flock_pipeline.definitions --select "
                      "deduplicated_shards,miner_eval_losses --partition-range FIRST...LAST"],
    "epoch report": ["flock epoch report 12", "flock epoch report 12 --json",
                     "xdg-open $(flock epoch report 12 --html)"],
    "miner validate": ["flock miner validate data.jsonl", "flock miner validate pairs.jsonl --competition dpo",
                       "flock miner validate data.jsonl --no-eval-check --json"],
    "miner score": ["flock miner score data.jsonl", "flock miner score data.jsonl --against other.jsonl",
                    "flock miner score pairs.jsonl --competition dpo --json"],
    "miner submit": ["FLOCK_MINER_HOTKEY=5F... flock miner submit data.jsonl --repo me/my-data",
                     "flock miner submit pairs.jsonl --repo me/my-pairs --competition dpo --hotkey 5F..."],
    "miner status": ["flock miner status --hotkey 5F...",
                     "flock miner status --hotkey 5F... --reports some-validator/flock-reports --json"],
    "worker": ["FLOCK_EXECUTOR=celery DAGSTER_HOME=/srv/dagster flock worker --name gpu0 --queues gpu"],
    "chain status": ["flock chain status"],
    "chain weights": ["flock chain weights"],
    "chain register": ["flock chain register hk-alice", "flock chain register validator --validator"],
    "chain advance": ["flock chain advance 10", "flock chain advance --to-next-epoch"],
}


def _with_examples(parser: argparse.ArgumentParser, path: str = "") -> argparse.ArgumentParser:
    """Every command's help: its one-line help as the description, and its examples."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if path in EXAMPLES:
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[path])
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                child.description = child.description or helps.get(name)
                _with_examples(child, f"{path} {name}".strip())
    return parser


def build_parser() -> argparse.ArgumentParser:
    return _with_examples(_build_parser())


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flock", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show the libraries' and our own log lines: -v warnings and progress notes (retries, "
                             "steps), -vv everything down to debug (default: errors only)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="seed the local demo network and run one epoch through the assets")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument("--home", help="where the demo network lives (default: $FLOCK_HOME or ./.flock); wiped first "
                      "when the demo created it")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic data")
    demo.add_argument("--network", choices=["default", "adversarial", "selection", "mixed", "dpo"], default="default",
                      help="default: six miners; adversarial: honest miners at five quality levels and every kind "
                      "of attacker; selection: the live SN96 selection game over a daily cycle; mixed: curation "
                      "and selection side by side (shares 0.5 / 0.5); dpo: the DPO game with honest miners at three "
                      "label-quality levels, swapped labels, trivial rejected answers, a copier and a leaker")
    demo.add_argument("--no-run", action="store_true", help="only seed the network (then run the epoch yourself)")
    demo.add_argument("--force", action="store_true", help="wipe the home even if the demo did not create it")
    demo.set_defaults(func=cmd_demo)

    epoch = sub.add_parser("epoch", help="run or inspect an epoch").add_subparsers(dest="epoch_cmd", required=True)
    run = epoch.add_parser("run", help="materialize a whole epoch in this process (default: the current one)")
    run.add_argument("epoch", type=int, nargs="?")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_epoch_run)
    opened = epoch.add_parser("open", help="add the epoch's Dagster partition and print its key")
    opened.add_argument("epoch", type=int, nargs="?")
    opened.set_defaults(func=cmd_epoch_open)
    miners = epoch.add_parser("miners", help="hotkeys (miners partitions) to materialize for the epoch")
    miners.add_argument("epoch", type=int)
    miners.set_defaults(func=cmd_epoch_miners)
    batches = epoch.add_parser("batches", help="the epoch's miners as partition ranges (FIRST...LAST) of at most "
                               "--size miners, for dagster asset materialize --partition-range")
    batches.add_argument("epoch", type=int)
    batches.add_argument("--size", type=int, default=0, help="miners per range (default: FLOCK_MINER_BATCH, 64)")
    batches.set_defaults(func=cmd_epoch_batches)
    report = epoch.add_parser("report", help="the epoch's table (or --json), or its HTML report with figures (--html)")
    report.add_argument("epoch", type=int)
    report.add_argument("--json", action="store_true")
    report.add_argument("--html", action="store_true",
                        help="write the epoch's report (HTML + one PNG per competition, next to the corpus) and "
                             "print the HTML's path")
    report.set_defaults(func=cmd_epoch_report)

    miner = sub.add_parser("miner", help="miner tools: validate, score, submit, status").add_subparsers(
        dest="miner_cmd", required=True)
    validate = miner.add_parser("validate", help="check a data.jsonl with the validators' rules")
    validate.add_argument("file")
    validate.add_argument("--competition", help="the competition to check for (default: the first configured)")
    validate.add_argument("--no-eval-check", action="store_true",
                          help="skip the eval-set overlap check (when no eval set is reachable)")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=cmd_miner_validate)
    score = miner.add_parser("score", help="the validators' evaluator on this machine: eval loss and win rates")
    score.add_argument("file")
    score.add_argument("--against", nargs="*", default=[], help="other data files to compare with")
    score.add_argument("--competition", help="whose eval set and recipe (default: the first configured)")
    score.add_argument("--force", action="store_true",
                       help="score a file validation calls invalid (its valid rows), instead of refusing it")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_miner_score)
    submitp = miner.add_parser("submit", help="upload privately, commit on-chain, then make the repo public")
    submitp.add_argument("file")
    submitp.add_argument("--repo", required=True, help="namespace/name of the dataset repo")
    submitp.add_argument("--hotkey", help="the miner hotkey (default: $FLOCK_MINER_HOTKEY)")
    submitp.add_argument("--force", action="store_true", help="submit even if validation fails")
    submitp.add_argument("--no-eval-check", action="store_true", help="skip the eval-set overlap check")
    submitp.add_argument("--competition", help="the competition to commit to (default: the first configured)")
    submitp.add_argument("--json", action="store_true")
    submitp.set_defaults(func=cmd_miner_submit)
    statusp = miner.add_parser("status", help="what validators recorded for a hotkey")
    statusp.add_argument("--hotkey", help="default: $FLOCK_MINER_HOTKEY")
    statusp.add_argument("--json", action="store_true")
    statusp.add_argument("--reports", action="append", metavar="REPO",
                         help="a validator's report repo (repeatable; default: $FLOCK_REPORT_REPOS)")
    statusp.set_defaults(func=cmd_miner_status)

    workerp = sub.add_parser("worker", help="start a Celery worker for the validator's steps (FLOCK_EXECUTOR=celery)")
    workerp.add_argument("--name", default="flock", help="the worker's name (unique per host)")
    workerp.add_argument("--queues", default="dagster,gpu",
                         help="comma-separated queues: dagster (every other step), gpu (evaluations)")
    workerp.add_argument("--concurrency", type=int, default=1, help="steps at once (one per GPU for the gpu queue)")
    workerp.add_argument("celery_args", nargs="*", help="more celery worker options, after --")
    workerp.set_defaults(func=cmd_worker)

    chain = sub.add_parser("chain", help="the local chain").add_subparsers(dest="chain_cmd", required=True)
    chain.add_parser("status", help="block, epoch, neurons, commitments").set_defaults(func=cmd_chain_status)
    chain.add_parser("weights", help="the chain's weight rules for the validator hotkey, the latest submission "
                                     "and what sending now would do").set_defaults(func=cmd_chain_weights)
    reg = chain.add_parser("register", help="register a hotkey on the local subnet")
    reg.add_argument("hotkey")
    reg.add_argument("--validator", action="store_true", help="give it a validator permit")
    reg.set_defaults(func=cmd_chain_register)
    adv = chain.add_parser("advance", help="move the local block clock on")
    adv.add_argument("blocks", type=int, nargs="?", default=1)
    adv.add_argument("--to-next-epoch", action="store_true")
    adv.set_defaults(func=cmd_chain_advance)
    return parser


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


def _log_level(verbose: int) -> None:
    """Quiet by default: log records below ERROR (retry notes, library warnings, debug lines) and the libraries'
    progress bars stay off the console; -v shows warnings and info, -vv debug."""
    import logging

    level = logging.ERROR if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.disable(level - 10)  # records at or below this level are dropped, whatever their logger
    if verbose > 0:
        os.environ.setdefault("FLOCK_VERBOSE", str(verbose))  # the libraries' progress bars are shown again
    if verbose <= 0:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn every FlockError into one line on stderr and its exit code (nothing heavy is imported
    before the command runs: `flock --help` answers at once)."""
    from flock_pipeline.errors import FlockError

    import logging

    args = build_parser().parse_args(argv)
    before = logging.root.manager.disable
    _log_level(args.verbose)
    try:
        return args.func(args)
    except FlockError as exc:  # the top of the CLI: one line for the user, not a traceback
        print(f"flock: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    finally:
        logging.disable(before)  # main() may run inside another program (the tests): leave its logging as it was


if __name__ == "__main__":
    sys.exit(main())
