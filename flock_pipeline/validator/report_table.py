"""The epoch's table: one entry per committing miner (and per uid rewarded without a submission) with its status,
reason, rows kept, score and weight, as `flock epoch run`, `flock demo` and the epoch report print it."""

from __future__ import annotations

from flock_pipeline.resources.store import StoreResource


def epoch_report(epoch: int, store: StoreResource, labels: dict[str, str] | None = None,
                 quality: dict[str, float | None] | None = None) -> list[dict]:
    """One entry per committing miner (and per uid rewarded without a submission: a kept winner, the burn uid):
    uid, hotkey, label, quality, competition, status, reason, rows_kept, eval_loss, score (and its old name
    win_rate), weight, sent (the weight as the chain took it, `sent_shares`; None when nothing was sent) (quality:
    the demo generator's level for honest miners, None for the others and outside a demo)."""
    labels, quality = labels or {}, quality or {}
    sent = sent_shares(store, epoch)
    report = []
    for r in store.epoch_report_rows(epoch):
        report.append({"uid": int(r.uid), "hotkey": r.hotkey, "label": labels.get(r.hotkey),
                       "quality": quality.get(r.hotkey), "competition": r.competition,
                       "status": r.score_status if r.score_status is not None else r.commitment_status,
                       "reason": r.reason,
                       "rows_kept": 0 if r.rows_kept is None else int(r.rows_kept),
                       "eval_loss": None if _missing(r.eval_loss) else round(float(r.eval_loss), 6),
                       "score": 0.0 if _missing(r.score) else float(r.score),
                       "win_rate": 0.0 if _missing(r.score) else float(r.score),  # the score's old name, kept for
                       # readers of the JSON for one release
                       "weight": 0.0 if _missing(r.weight) else float(r.weight),
                       "sent": None if sent is None else sent.get(int(r.uid), 0.0),
                       "explanation": r.explanation or r.reason})
    return report


def miner_account(epoch: int, store: StoreResource, hotkey: str, labels: dict[str, str] | None = None) -> dict | None:
    """The miner's entry in the epoch's report with `comparisons`: every pairwise comparison its explanation counts
    and names only the closest of (the recorded detail, one phrase each; empty when the explanation lists them all).
    None when the hotkey has no entry in the epoch."""
    entry = next((m for m in epoch_report(epoch, store, labels) if m["hotkey"] == hotkey), None)
    if entry is None:
        return None
    detail = store.score_detail(epoch, hotkey)
    return {**entry, "comparisons": detail.detail.split("; ") if detail is not None and detail.detail else []}


def format_account(epoch: int, account: dict) -> str:
    """`miner_account` as text: the miner's line, how its weight came about, then every comparison, one a line."""
    loss = "-" if account["eval_loss"] is None else f"{account['eval_loss']:.4f}"
    lines = [f"epoch {epoch}: uid {account['uid']} {account['hotkey']}"
             + (f" ({account['label']})" if account.get("label") else "")
             + f", {account['competition'] or '-'}: {account['status']}, eval loss {loss}, "
             f"score {account['score']:.3f}, weight {account['weight']:.6f}",
             f"how the weight came about: {account['explanation'] or '-'}"]
    if account["comparisons"]:
        lines.append(f"every comparison ({len(account['comparisons'])}):")
        lines += [f"  {c}" for c in account["comparisons"]]
    return "\n".join(lines)


def sent_shares(store: StoreResource, epoch: int) -> dict[int, float] | None:
    """uid -> its share of the u16 vector the chain took for `epoch` (each value over their sum: what the weight
    becomes on chain, after the SDK's conversion to u16 and the chain's limits); None when nothing was sent."""
    record = store.weight_submission(epoch)
    if record is None or not record.success or not record.weights:
        return None
    total = float(sum(record.weights))
    return {int(u): (float(v) / total if total else 0.0) for u, v in zip(record.uids, record.weights)}


def _missing(value) -> bool:
    return value is None or value != value  # NULL, or NaN (a row without a loss)


def format_report(report: list[dict], competitions: bool | None = None) -> str:
    """The report as a table; the competition column appears when the epoch ran anything but one curation game.
    `weight` is the computed weight, `sent` the share the chain took (after the u16 conversion; "-": not sent)."""
    if competitions is None:
        competitions = {m.get("competition") for m in report} - {None} not in ({"curation"}, set())
    header = ["uid", "hotkey", "label", "status", "rows", "eval_loss", "win_rate", "weight", "sent", "reason"]
    if competitions:
        header.insert(3, "competition")
    rows = []
    for m in report:
        row = [str(m["uid"]), m["hotkey"], m["label"] or "", m["status"], str(m["rows_kept"]),
               "" if m["eval_loss"] is None else f"{m['eval_loss']:.4f}", f"{m['score']:.3f}",
               f"{m['weight']:.6f}", "-" if m.get("sent") is None else f"{m['sent']:.6f}", m["reason"] or ""]
        if competitions:
            row.insert(3, m.get("competition") or "")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
