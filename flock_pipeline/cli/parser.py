"""The `flock` argument parser: every command with its help and examples."""

from __future__ import annotations

import argparse

from flock_pipeline.cli.corpus import cmd_audit, cmd_corpus_value
from flock_pipeline.cli.doctor import cmd_doctor
from flock_pipeline.cli.miner import (cmd_miner_history, cmd_miner_score, cmd_miner_status, cmd_miner_submit,
                                      cmd_miner_validate)
from flock_pipeline.cli.validator import (cmd_chain_advance, cmd_chain_register, cmd_chain_status, cmd_chain_weights,
                                          cmd_demo, cmd_epoch_batches, cmd_epoch_miners, cmd_epoch_open,
                                          cmd_epoch_report, cmd_epoch_run, cmd_worker)


DESCRIPTION = """`flock`: the command line (demo network, epochs, local chain utilities).

Exit codes: 0 ok, 1 a run or check failed, 2 usage or configuration error.
"""

EXAMPLES = {
    "": ["flock demo                          # seed the embedded network and run one epoch",
         "flock demo --network dpo --json     # the DPO game's demo, as JSON",
         "flock miner validate data.jsonl     # the validators' checks on a file",
         "flock epoch run                     # the current epoch, in this process",
         "flock doctor                        # what this validator needs, checked, with the fixes"],
    "demo": ["flock demo", "flock demo --network adversarial --json",
             "flock demo --no-run --home /tmp/net   # seed only; then: FLOCK_HOME=/tmp/net flock epoch run"],
    "epoch run": ["flock epoch run", "flock epoch run 12 --json"],
    "epoch open": ["flock epoch open", "flock epoch open 12"],
    "epoch miners": ["flock epoch miners 12"],
    "epoch batches": ["flock epoch batches 12 --size 16",
                      "dagster asset materialize -m flock_pipeline.definitions --select "
                      "deduplicated_shards,miner_eval_losses --partition-range FIRST...LAST"],
    "epoch report": ["flock epoch report 12", "flock epoch report 12 --json",
                     "flock epoch report 12 --miner 5F...   # one miner, every comparison behind its score",
                     "xdg-open $(flock epoch report 12 --html)"],
    "miner validate": ["flock miner validate data.jsonl", "flock miner validate pairs.jsonl --competition dpo",
                       "flock miner validate data.jsonl --no-eval-check --json"],
    "miner score": ["flock miner score data.jsonl", "flock miner score data.jsonl --against other.jsonl",
                    "flock miner score pairs.jsonl --competition dpo --json"],
    "miner submit": ["FLOCK_MINER_HOTKEY=5F... flock miner submit data.jsonl --repo me/my-data",
                     "flock miner submit pairs.jsonl --repo me/my-pairs --competition dpo --hotkey 5F..."],
    "miner status": ["flock miner status --hotkey 5F...",
                     "flock miner status --hotkey 5F... --reports some-validator/flock-reports --json"],
    "miner history": ["flock miner history 5F...          # its loss, rank and weight in every epoch scored",
                      "flock miner history hk-honest-good --json"],
    "corpus value": ["flock corpus value", "flock corpus value 12 --json", "flock corpus value 12 --again"],
    "audit": ["flock audit 12 5F...", "flock audit 12 hk-honest-good --json",
              "flock audit 12 5F... --reports some-validator/flock-reports"],
    "worker": ["FLOCK_EXECUTOR=celery DAGSTER_HOME=/srv/dagster flock worker --name gpu0 --queues gpu"],
    "doctor": ["flock doctor", "flock doctor --json",
               "FLOCK_NETWORK=test FLOCK_COMPETITIONS=sn96 BT_WALLET_NAME=validator BT_WALLET_HOTKEY=default "
               "flock doctor"],
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
                if not any("--verbose" in a.option_strings for a in child._actions):
                    child.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                       help="as before the command: -v warnings and progress notes, -vv debug")
                _with_examples(child, f"{path} {name}".strip())
    return parser


def build_parser() -> argparse.ArgumentParser:
    return _with_examples(_build_parser())


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flock", description=DESCRIPTION,
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
    report.add_argument("--miner", metavar="HOTKEY",
                        help="one miner's entry, how its weight came about and every comparison behind its score")
    report.set_defaults(func=cmd_epoch_report)

    miner = sub.add_parser("miner", help="miner tools: validate, score, submit, status, history").add_subparsers(
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
    historyp = miner.add_parser("history", help="a miner's eval loss, rank, score and weight (computed, and as sent) "
                                "in every epoch this validator scored it, from its store (offline)")
    historyp.add_argument("hotkey")
    historyp.add_argument("--json", action="store_true")
    historyp.set_defaults(func=cmd_miner_history)

    workerp = sub.add_parser("worker", help="start a Celery worker for the validator's steps (FLOCK_EXECUTOR=celery)")
    workerp.add_argument("--name", default="flock", help="the worker's name (unique per host)")
    workerp.add_argument("--queues", default="dagster,gpu",
                         help="comma-separated queues: dagster (every other step), gpu (evaluations)")
    workerp.add_argument("--concurrency", type=int, default=1, help="steps at once (one per GPU for the gpu queue)")
    workerp.add_argument("celery_args", nargs="*", help="more celery worker options, after --")
    workerp.set_defaults(func=cmd_worker)

    corpus = sub.add_parser("corpus", help="the corpus releases").add_subparsers(dest="corpus_cmd", required=True)
    value = corpus.add_parser("value", help="what training on an epoch's release is worth: its held-out loss "
                                            "against random submitted rows, the previous release and the base model")
    value.add_argument("epoch", type=int, nargs="?", help="default: the latest epoch with a release")
    value.add_argument("--json", action="store_true")
    value.add_argument("--again", action="store_true", help="measure again even when recorded")
    value.set_defaults(func=cmd_corpus_value)

    audit = sub.add_parser("audit", help="re-run a miner's recorded evaluation from the inputs it names and compare "
                                         "(exit 0: match, 1: mismatch or an input differs)")
    audit.add_argument("epoch", type=int)
    audit.add_argument("hotkey")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--reports", metavar="REPO", help="audit the score another validator published in REPO's "
                                                         "reports.json, from public data alone")
    audit.set_defaults(func=cmd_audit)

    doctor = sub.add_parser("doctor", help="check what a validator needs, in order (wallet, registration, permit, "
                            "stake, chain, hub token and eval repos, device, base model, disk, store, Dagster), "
                            "each failure with its fix (exit 1: a check failed; 2: the configuration cannot be used)")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)

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
