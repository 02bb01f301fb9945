"""`flock miner ...`: validate, score, submit a dataset and see what validators recorded for a hotkey."""

from __future__ import annotations

import os
import sys

from flock_pipeline.cli.common import _quiet_torch


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
        raise ConfigError(f"cannot load the eval set {competition.eval_repo}: {exc} ({_eval_hint(competition)})"
                          ) from exc


def _eval_hint(competition) -> str:
    """What to do when a competition's eval set (a pool, for a selection game) cannot be loaded, for the network and
    game in use."""
    role = "pool" if competition.eval_set_role == "pool" else "eval set"
    if os.environ.get("FLOCK_NETWORK", "local") != "local":
        where = ("FLOCK_COMPETITIONS names it (its eval_repo)" if competition.kind != "curation"
                 else "set FLOCK_EVAL_REPO to the validators' eval set")
        return (f"check that the hub serves the {role} and that HF_TOKEN may read it; {where}"
                + ("; --no-eval-check skips the eval-set overlap check" if role == "eval set" else ""))
    network = {"selection": "selection", "dpo": "dpo"}.get(competition.kind, "default")
    seed = "flock demo --no-run" + ("" if network == "default" else f" --network {network}")
    return (f"seed the local network with `{seed}`"
            + ("; --no-eval-check skips the eval-set overlap check" if role == "eval set" else ""))


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
        if reason is None:
            chosen = min(len(rows), competition.selection_size)
            report.selection_note = (f"{chosen} distinct pool rows" + (
                f" (fewer than {competition.selection_size} is allowed: validators train on these {chosen})"
                if chosen < competition.selection_size else
                f" (the first {competition.selection_size} rows of the file are the selection)"))
        if reason is not None:
            report.valid, report.reason = False, report.reason or reason
        rows = rows[: competition.selection_size]
    return report, rows


def cmd_miner_validate(args) -> int:
    from flock_pipeline.miner import dumps, format_validation, read_input
    from flock_pipeline.resources import build_resources

    _quiet_torch()
    read_input(args.file)  # missing, a directory, unreadable: a usage error (exit 2) before anything loads
    resources = build_resources(training=False)
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
                        "seconds": round(outcome.train_seconds + outcome.eval_seconds, 2),
                        **({"metrics": dict(outcome.metrics)} if getattr(outcome, "metrics", None) else {})})
    base = evaluator.base_loss(eval_rows, recipe=recipe, objective=competition.objective).eval_loss
    sign = -1.0 if competition.objective.higher_is_better else 1.0  # win rates compare lower-is-better numbers
    epsilon = resources["settings"].scoring_config().epsilon
    rates = win_rates_among({p: sign * v for p, v in losses.items()}, epsilon) if losses else {}
    for r in results:
        r["win_rate"] = rates.get(r["file"])
    doc = {"competition": competition.name, "base_model": evaluator.model_name(), "base_eval_loss": base,
           "eval_rows": len(eval_rows),
           "results": results}
    print(dumps(doc) if args.json else _scores_text(doc))
    return 0 if results[0]["eval_loss"] is not None else 1


def _scores_text(doc: dict) -> str:
    """`flock miner score`'s table: the base model's loss, then each file's loss, win rate and the objective's own
    metrics (DPO: reward accuracy, mean margin)."""
    lines = [f"base model {doc['base_model']} without fine-tuning: eval loss {doc['base_eval_loss']:.4f} "
             f"({doc['eval_rows']} rows)"]
    for r in doc["results"]:
        loss = "invalid: " + (r.get("reason") or "") if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        rate = "" if r["win_rate"] is None else f"  win rate {r['win_rate']:.2f}"
        extra = "".join(f"  {k.replace('_', ' ')} {v:.4g}" for k, v in (r.get("metrics") or {}).items()
                        if isinstance(v, (int, float)) and k != "pairs")
        lines.append(f"{r['file']}: eval loss {loss}{rate}{extra}")
    return "\n".join(lines)


def cmd_miner_submit(args) -> int:
    from flock_pipeline.core.commitment import validate_repo_id
    from flock_pipeline.miner import dumps, format_validation, miner_hotkey, read_input, submit, when_it_counts
    from flock_pipeline.resources import LocalHubResource, build_resources
    from flock_pipeline.resources.chain import ChainError
    from flock_pipeline.resources.hub import HubError

    _quiet_torch()
    validate_repo_id(args.repo)  # a usage error (exit 2) before anything is read or sent
    hotkey = args.hotkey or miner_hotkey()
    resources = build_resources(training=False)
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
    counts = when_it_counts(result.block, competition, resources["chain"])
    doc = {**result.__dict__, "hotkey": hotkey, "competition": competition.name, "counts": counts}
    if args.json:
        print(dumps(doc))
    else:
        what = "committed" if result.committed_now else "already committed (nothing sent)"
        print(f"{args.repo}@{result.revision}: {what} at block {result.block}; the repo is public; it {counts}")
    return 0


def cmd_miner_status(args) -> int:
    from flock_pipeline.core.commitment import CommitmentError, validate_repo_id
    from flock_pipeline.core.untrusted import printable
    from flock_pipeline.miner import dumps, miner_hotkey, status
    from flock_pipeline.resources import build_resources

    resources = build_resources(training=False)
    repos = tuple(args.reports or [r.strip() for r in os.environ.get("FLOCK_REPORT_REPOS", "").split(",")
                                   if r.strip()])
    for repo in repos:
        try:
            validate_repo_id(repo)
        except CommitmentError as exc:
            print(f"flock: {'--reports' if args.reports else 'FLOCK_REPORT_REPOS'}: {exc}", file=sys.stderr)
            return 2
    doc = status(args.hotkey or miner_hotkey(), resources["chain"], resources["store"], resources["hub"], repos,
                 competitions=resources["settings"].competition_set())
    if args.json:
        print(dumps(doc))
    else:
        for k, v in doc.items():
            if v is None:
                continue  # nothing recorded yet: `next` / `counts` say what happens next
            if k == "validators":
                v = "; ".join(f"{x['hotkey']} (uid {x['uid']}, stake {x['stake']:g}): {x['weight']:.6f}"
                              for x in v) or "none has set weights on this uid"
            elif k == "reports":
                v = "; ".join(_report_line(r) for r in v)
            elif isinstance(v, float):
                v = f"{v:.6f}" if k in ("weight", "incentive", "recorded_weight") else f"{v:.4f}"
            print(f"{k:>15}: {printable(v, limit=4000)}")  # reports and commitments are other people's text
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


def cmd_miner_history(args) -> int:
    """`flock miner history HOTKEY`: the miner's loss, rank, score and weight in every epoch this validator's store
    scored it in (offline: the store alone)."""
    from flock_pipeline.core.untrusted import printable
    from flock_pipeline.miner import dumps
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.history import miner_history_rows

    rows = miner_history_rows(args.hotkey, build_resources(training=False)["store"])
    if args.json:
        print(dumps({"hotkey": args.hotkey, "epochs": rows}))
    elif not rows:
        print(f"flock: {printable(args.hotkey, 80)}: no epoch scored in this validator's store", file=sys.stderr)
    else:
        print(_history_text(rows))
    return 0 if rows else 1


def _history_text(rows: list[dict]) -> str:
    """`flock miner history`'s table: one line per epoch."""
    from flock_pipeline.core.untrusted import printable

    header = ["epoch", "uid", "competition", "status", "eval_loss", "rank", "score", "weight", "sent", "reason"]
    lines = [[str(r["epoch"]), str(r["uid"]), r["competition"] or "", r["status"],
              "" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}",
              "" if r["rank"] is None else f"{r['rank']}/{r['of']}", f"{r['score']:.3f}", f"{r['weight']:.6f}",
              "-" if r["sent"] is None else f"{r['sent']:.6f}", printable(r["reason"] or "", 160)] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *lines])
