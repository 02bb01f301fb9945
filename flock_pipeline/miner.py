"""The miner's tools: validate a data.jsonl with the validators' rules, score it with their evaluator, submit it
(private upload -> on-chain commitment -> public), and see what validators recorded for a hotkey.

Everything here uses the same code as the validator pipeline (schema, dedup against the eval set, evaluator), so a
miner's numbers agree with the validators'.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flock_pipeline.core.commitment import Commitment, CommitmentError, validate_repo_id
from flock_pipeline.core.rowformats import CHAT, RowFormat
from flock_pipeline.core.schema import DatasetLimits, validate_bytes
from flock_pipeline.core.scoring import Contender, compute_win_rates
from flock_pipeline.errors import UsageError

MAX_READ_BYTES = 2**31  # refuse to even read larger inputs (the file-size limit then reports them as too big)


class MinerInputError(UsageError, ValueError):
    """The input cannot be read at all (missing, a directory, unreadable); the message says why (exit 2)."""


@dataclass
class ValidationReport:
    path: str
    valid: bool
    reason: str | None
    rows_total: int
    rows_valid: int
    rows_used: int
    rejected: list[dict] = field(default_factory=list)  # {"line", "reason"}
    duplicates: list[dict] = field(default_factory=list)  # {"line", "duplicate_of"} within the file
    eval_overlap: list[int] = field(default_factory=list)  # lines (among used rows) that are eval-set rows
    tokens_used: int = 0  # tokens of the used rows with the base tokenizer
    max_row_tokens: int = 0
    size_bytes: int = 0
    competition: str | None = None  # the competition it was checked for
    selection: str | None = None  # a selection game's verdict on the submission ("ok", or why not)
    selection_note: str | None = None  # with "ok": what the selection is (how many rows; what a short one means)
    warnings: list[dict] = field(default_factory=list)  # {"line", "warning"}: text validators read differently

    def to_json(self) -> dict:
        return asdict(self)


def read_input(path: str | Path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise MinerInputError(f"{p}: no such file")
    if p.is_dir():
        raise MinerInputError(f"{p}: is a directory, not a data.jsonl file")
    size = p.stat().st_size
    if size > MAX_READ_BYTES:
        raise MinerInputError(f"{p}: {size} bytes, far over any dataset limit")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise MinerInputError(f"{p}: cannot read ({exc.strerror})") from None


def validate_file(path: str | Path, limits: DatasetLimits, tokenizer=None, eval_rows: list | None = None,
                  row_format: RowFormat = CHAT) -> tuple[ValidationReport, list]:
    """The validators' checks on one file of `row_format` rows (a competition's `RowFormat`); returns the report and
    the rows validators would train on."""
    data = read_input(path)
    report = validate_bytes(data, limits, row_format)
    used = report.used_rows(limits)
    first_line: dict[str, int] = {}
    duplicates = []
    for r in report.valid_rows:
        h = r.row.row_hash
        if h in first_line:
            duplicates.append({"line": r.line, "duplicate_of": first_line[h]})
        else:
            first_line[h] = r.line
    eval_hashes = {row.row_hash for row in eval_rows or []}
    overlap = [r.line for r in used if r.row.row_hash in eval_hashes]
    tokens = []
    if tokenizer is not None and used:
        tokens = [row_format.count_tokens(r.row, tokenizer) for r in used]
    dropped = {d["line"] for d in duplicates} | set(overlap)
    train_rows = [r.row for r in used if r.line not in dropped]
    reason = report.reason()
    if reason is None and not train_rows:
        reason = "every used row is a duplicate or an eval-set row: nothing left to train on"
    out = ValidationReport(path=str(path), valid=reason is None and not report.rejected_rows, reason=reason,
                           rows_total=len(report.rows), rows_valid=len(report.valid_rows), rows_used=len(used),
                           rejected=[{"line": r.line, "reason": r.reason} for r in report.rejected_rows],
                           duplicates=duplicates, eval_overlap=overlap, tokens_used=sum(tokens),
                           max_row_tokens=max(tokens, default=0), size_bytes=report.size_bytes,
                           warnings=text_warnings([(r.line, r.row) for r in used], row_format))
    return out, train_rows


def text_warnings(rows: list[tuple[int, object]], row_format: RowFormat = CHAT) -> list[dict]:
    """Rows with text a reader cannot see (zero-width and other invisible characters) or words mixing scripts
    (look-alike letters): validators match copies on the text as it reads, without them, so such rows are
    compared as if they were not there; an honest row that happens to match an earlier miner's is dropped."""
    from flock_pipeline.core.textnorm import invisible_characters, mixed_script_words

    out = []
    for line, row in rows:
        text = row_format.full_text(row)
        hidden = invisible_characters(text)
        if hidden:
            out.append({"line": line, "warning": f"invisible characters ({', '.join(hidden[:3])}"
                                                 f"{', ...' if len(hidden) > 3 else ''}): validators ignore them"})
        mixed = mixed_script_words(text, limit=3)
        if mixed:
            out.append({"line": line, "warning": f"words mixing scripts ({', '.join(map(repr, mixed))}): "
                                                 "validators read look-alike letters as Latin ones"})
    return out


def check_selection(path: str | Path, limits: DatasetLimits, competition, pool) -> str | None:
    """A selection game's own rules on a file (the first `selection_size` rows must be distinct pool rows, as written,
    keys sorted): None when it is a valid submission, else why not. `pool` is the competition's `EvalSet`."""
    from flock_pipeline.core.competitions import Entry
    from flock_pipeline.core.schema import raw_row_keys

    data = read_input(path)
    report = validate_bytes(data, limits, competition.row_format)
    used = report.used_rows(limits)
    keys = raw_row_keys(data, [r.line for r in used], limits, competition.row_format)
    entry = Entry("me", 0, 0, tuple(r.row.row_hash for r in used), raw_keys=tuple(keys[r.line] for r in used),
                  row_lines=tuple(r.line for r in used),
                  rejected_lines=tuple((r.line, r.reason or "") for r in report.rejected_rows),
                  file_facts=report.facts)
    return competition.plan([entry], pool)["me"].reason


def format_validation(report: ValidationReport, max_lines: int = 20) -> str:
    lines = [f"{report.path}: {'VALID' if report.valid else 'INVALID'}"
             + (f" ({report.reason})" if report.reason else ""),
             f"  rows: {report.rows_total} total, {report.rows_valid} valid, {report.rows_used} used "
             f"(validators train on the first valid rows up to the size cap)",
             f"  tokens in used rows: {report.tokens_used} (longest row {report.max_row_tokens})",
             f"  duplicates within the file: {len(report.duplicates)}; eval-set rows among used rows: "
             f"{len(report.eval_overlap)} (validators drop both)"]
    if report.selection is not None:
        lines.append(f"  {report.competition}: " + (f"a valid selection of {report.selection_note or 'pool rows'}"
                                                     if report.selection == "ok"
                                                     else f"not a valid submission: {report.selection}"))
    lines += _grouped([(r["line"], r["reason"]) for r in report.rejected], "", "rejected rows", max_lines)
    if report.warnings:
        lines.append(f"  warnings (the file is still valid): {len(report.warnings)}")
    lines += _grouped([(w["line"], w["warning"]) for w in report.warnings], "warning: ", "warnings", max_lines)
    return "\n".join(lines)


def _grouped(items: list[tuple[int, str]], prefix: str, what: str, max_lines: int) -> list[str]:
    """One line per distinct reason, in order of first appearance: its lines (the first few) and how many rows."""
    groups: dict[str, list[int]] = {}
    for line, reason in items:
        groups.setdefault(reason, []).append(line)
    out = []
    for reason, lines in list(groups.items())[:max_lines]:
        where = f"line {lines[0]}" if len(lines) == 1 else \
            f"{len(lines)} rows (lines {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
        out.append(f"  {where}: {prefix}{reason}")
    if len(groups) > max_lines:
        out.append(f"  ... and {len(groups) - max_lines} more reasons among the {what} (--json lists all)")
    return out


def win_rates_among(losses: dict[str, float], epsilon: float) -> dict[str, float]:
    """Win rates among named losses as if all were committed in the same block (no earlier-block advantage)."""
    names = list(losses)
    rates = compute_win_rates([Contender(i, losses[n], 0) for i, n in enumerate(names)], epsilon)
    return {n: rates[i] for i, n in enumerate(names)}


@dataclass
class SubmitResult:
    repo: str
    revision: str
    commitment: str
    block: int | None
    committed_now: bool
    public: bool


def submit(data: bytes, repo: str, hotkey: str, competition_id: str, hub, chain) -> SubmitResult:
    """Upload privately, commit on-chain, then make public. Safe to re-run after a failure at any point: the same
    content is not committed twice (an existing commitment to identical content is reused)."""
    validate_repo_id(repo)
    current = next((c for c in chain.commitments() if c.hotkey == hotkey), None)
    if current is not None:
        try:
            committed = Commitment.from_compressed_str(current.data)
        except CommitmentError:
            committed = None
        if committed is not None and committed.repo_id == repo:
            try:
                same = hub.download(repo, committed.revision) == data
            except Exception:  # noqa: BLE001 - the committed revision is gone or unreadable: submit anew
                same = False
            if same:
                hub.set_private(repo, False)
                return SubmitResult(repo, committed.revision, current.data, current.block, False, True)
    from flock_pipeline.resources.hub import HubError

    try:
        revision = hub.upload(repo, data, private=True)
    except HubError as exc:
        exc.hint = "nothing was committed; run the same command again"
        raise
    text = Commitment(repo, competition_id, revision).to_compressed_str()
    block = chain.set_commitment(hotkey, text)  # the data stays private until this exists
    try:
        hub.set_private(repo, False)
    except HubError as exc:
        exc.hint = (f"committed at block {block}, but the repo is still private and validators cannot read it: run "
                    "the same command again to make it public (the commitment is reused)")
        raise
    return SubmitResult(repo, revision, text, block, True, True)


def miner_hotkey() -> str:
    hotkey = os.environ.get("FLOCK_MINER_HOTKEY", "")
    if not hotkey:
        raise MinerInputError("set FLOCK_MINER_HOTKEY (or --hotkey) to the miner's hotkey")
    return hotkey


def _validator_weights(rows) -> tuple[list[dict], float | None]:
    """Each validator's weight on the uid, and the stake-weighted weight over them (the plain mean when no validator
    has stake; None without validators)."""
    validators = [{"hotkey": v.hotkey, "uid": v.uid, "stake": v.stake, "value_u16": v.value, "weight": v.share}
                  for v in rows]
    if not rows:
        return validators, None
    stake = sum(max(v.stake, 0.0) for v in rows)
    if not stake:
        return validators, sum(v.share for v in rows) / len(rows)
    return validators, sum(max(v.stake, 0.0) * v.share for v in rows) / stake


def _recorded(r) -> dict:
    """The latest score this machine's store recorded for the hotkey (nothing when it has none)."""
    if r is None:
        return {}
    loss = None if r.eval_loss is None or r.eval_loss != r.eval_loss else float(r.eval_loss)
    return {"latest_epoch": r.epoch, "status": r.status, "reason": r.reason, "eval_loss": loss,
            "score": float(r.score), "win_rate": float(r.score),  # win_rate: the score's old name, one more release
            "recorded_weight": float(r.weight), "explanation": r.explanation}


def status(hotkey: str, chain, store, hub=None, report_repos: tuple[str, ...] = (), competitions=None) -> dict:
    """What validators see for a hotkey, from the chain (works on any machine): its commitment and block, each
    validator's weight on its uid as the chain stores it, the stake-weighted `weight` over those validators, and
    the chain's incentive; plus, where this machine has a validator's store, the latest recorded loss, win rate,
    status and reason; and, from each report repo a validator publishes to, the loss, rank and reason it recorded
    (`reports`)."""
    neuron = next((n for n in chain.metagraph() if n.hotkey == hotkey), None)
    current = next((c for c in chain.commitments() if c.hotkey == hotkey), None)
    out = {"hotkey": hotkey, "registered": neuron is not None, "uid": neuron.uid if neuron else None,
           "commitment": current.data if current else None, "commit_block": current.block if current else None,
           "weight": None, "incentive": neuron.incentive if neuron else None, "validators": [],
           "latest_epoch": None, "status": None, "reason": None, "eval_loss": None, "score": None, "win_rate": None,
           "recorded_weight": None, "explanation": None}
    if neuron is not None:
        out["validators"], out["weight"] = _validator_weights(chain.validator_weights(neuron.uid))
    out.update(_recorded(store.latest_score(hotkey)))
    if competitions is not None:
        game = _game_of(current, competitions)
        if game is not None:
            out["next"] = what_next(chain, game)
            if current is not None:
                out["counts"] = when_it_counts(current.block, game, chain)
    if report_repos:
        from flock_pipeline.validator.reports import read_miner_report

        out["reports"] = [read_miner_report(hub, repo, hotkey) for repo in report_repos]
    return out


def _game_of(commitment, competitions):
    """The game a chain commitment names (the first configured game without one)."""
    if commitment is not None:
        try:
            return competitions.for_commitment(Commitment.from_compressed_str(commitment.data, short=True)
                                               .competition_id)
        except CommitmentError:
            return None
    return competitions.competitions[0]


def dumps(obj) -> str:
    """JSON for the command line's --json output: never NaN or Infinity (null instead: a score that does not exist)."""
    from flock_pipeline.core.untrusted import finite

    return json.dumps(finite(obj), indent=1, default=str, allow_nan=False)


def when_it_counts(block: int, competition, chain) -> str:
    """In words, what a commitment written at `block` counts for in `competition`: the epoch it is first read at,
    or, for a daily game, the round whose submission window it is in (a commitment after the window is late for
    that round and counts for the next one, if it is still the hotkey's commitment then)."""
    from datetime import timedelta

    if not competition.daily_rounds:
        epoch = chain.epoch_of(block) + 1
        start = chain.epoch_start(epoch)
        return (f"counts from epoch {epoch}, which opens at block {start} "
                f"({max(start - chain.current_block(), 0)} blocks from now)")
    clock = chain.clock()
    when = clock.time_of(block)
    day = competition.round_day(when)
    _, closes, reward = competition.windows(day)
    if when < closes:
        return (f"counts for round {day:%Y%m%d}: its submission window closes at {closes:%Y-%m-%d %H:%M} UTC "
                f"(block {clock.last_block_before(closes)}); the round is decided from {reward:%Y-%m-%d %H:%M} UTC")
    following = day + timedelta(days=1)
    opens, closes_next, reward_next = competition.windows(following)
    return (f"is late for round {day:%Y%m%d} (its submission window closed at {closes:%Y-%m-%d %H:%M} UTC) and counts "
            f"for round {following:%Y%m%d} if it is still this hotkey's commitment when that round's window "
            f"({opens:%Y-%m-%d %H:%M}-{closes_next:%H:%M} UTC) closes; decided from {reward_next:%Y-%m-%d %H:%M} "
            "UTC")


def what_next(chain, competition) -> str:
    """In words, when the validators next look: the next epoch's opening block, or the current daily round's phase
    and when it is decided."""
    block = chain.current_block()
    if not competition.daily_rounds:
        epoch = chain.epoch_of(block) + 1
        start = chain.epoch_start(epoch)
        return f"the next epoch, {epoch}, opens at block {start} ({start - block} blocks from now)"
    clock = chain.clock()
    round_id, phase = competition.phase_at(clock.time_of(block))
    _, closes, reward = competition.windows(competition.round_day(clock.time_of(block)))
    return (f"round {round_id} of {competition.name} is in its {phase} phase (submissions close at "
            f"{closes:%Y-%m-%d %H:%M} UTC); it is decided from {reward:%Y-%m-%d %H:%M} UTC")
