"""Who was paid and why, as the `epoch_report` materialization shows it on the asset's page.

What Dagster 1.13's UI draws inline (its Metadata section, and a partition's page): a table value always, as a
table; a Markdown value only under 1,000 characters, and a longer one behind a "[Show Markdown]" link that opens a
dialog. So the table is a `MetadataValue.table`, bounded (the paid miners first, by the share the chain took, then
one row per status for the rest), and the figures are Markdown with the PNG embedded (a browser cannot open a path
on the validator's disk): one click, and the paths stay beside them.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import dagster as dg

from flock_pipeline.core.untrusted import printable

PAID_ROWS = 30  # paid miners listed one by one; the others paid are one row, the unpaid one row per status
WHY_CHARS = 200  # an explanation's first characters (`flock epoch report N` and the HTML page have it whole)
EMBEDDED_FIGURE_BYTES = 180_000  # PNGs up to this size in all are embedded (as base64: under 256 KiB of metadata);
# larger ones are left to their paths

COLUMNS = [
    dg.TableColumn("uid", "int"),
    dg.TableColumn("hotkey", "string"),
    dg.TableColumn("competition", "string"),
    dg.TableColumn("status", "string"),
    dg.TableColumn("eval_loss", "float"),
    dg.TableColumn("weight", "float", description="the weight computed"),
    dg.TableColumn("sent", "float", description="the weight as sent: its share of the u16 vector the chain took "
                                                "(empty: nothing was sent)"),
    dg.TableColumn("why", "string"),
]


def _share(m: dict) -> float:
    """What a miner was paid: the share sent, or the weight computed when nothing was sent."""
    return float(m["sent"]) if m.get("sent") is not None else float(m["weight"] or 0.0)


def _round(value) -> float | None:
    return None if value is None else round(float(value), 6)


def _row(m: dict) -> dg.TableRecord:
    return dg.TableRecord({
        "uid": int(m["uid"]), "hotkey": printable(m["hotkey"], 64), "competition": m.get("competition") or "",
        "status": m["status"] or "", "eval_loss": _round(m.get("eval_loss")), "weight": _round(m["weight"]),
        "sent": _round(m.get("sent")),
        "why": printable(m.get("explanation") or m.get("reason") or "", WHY_CHARS),
    })


def _summary(label: str, status: str, members: list[dict], why: str) -> dg.TableRecord:
    sent = [m["sent"] for m in members if m.get("sent") is not None]
    return dg.TableRecord({
        "uid": None, "hotkey": label, "competition": ", ".join(sorted({m.get("competition") or "" for m in members}
                                                                       - {""})),
        "status": status, "eval_loss": None, "weight": _round(sum(float(m["weight"] or 0.0) for m in members)),
        "sent": _round(sum(sent)) if sent else None, "why": why,
    })


def paid_table(entries: list[dict], epoch: int) -> dg.TableMetadataValue:
    """The epoch's entries (`report_table.epoch_report`) as a bounded table: the PAID_ROWS best-paid miners, one row
    for any other paid ones, and one row per status of the unpaid (a miner alone in its status: its own row), with
    its most common reasons."""
    paid = sorted((m for m in entries if _share(m) > 0), key=lambda m: (-_share(m), int(m["uid"])))
    rows = [_row(m) for m in paid[:PAID_ROWS]]
    if len(paid) > PAID_ROWS:
        rest = paid[PAID_ROWS:]
        rows.append(_summary(f"{len(rest)} more paid miners", "paid", rest,
                             f"each one: flock epoch report {epoch}"))
    unpaid: dict[str, list[dict]] = {}
    for m in entries:
        if _share(m) <= 0:
            unpaid.setdefault(m["status"] or "", []).append(m)
    for status, members in sorted(unpaid.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(members) == 1:
            rows.append(_row(members[0]))
            continue
        reasons = Counter(printable(m.get("reason") or "no reason recorded", 80) for m in members).most_common(3)
        why = "; ".join(f"{count} x {reason}" for reason, count in reasons)
        rows.append(_summary(f"{len(members)} miners, weight 0", status, members,
                             f"{printable(why, WHY_CHARS)} (each one: flock epoch report {epoch})"))
    return dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=COLUMNS))


def figures_markdown(paths: dict[str, str]) -> dg.MetadataValue | None:
    """The report's figures (`png:NAME` paths) as one Markdown value with the PNGs embedded; None when there is
    none, or when together they exceed EMBEDDED_FIGURE_BYTES (the paths still say where they are)."""
    figures = {k.split(":", 1)[1]: Path(v) for k, v in paths.items() if k.startswith("png:") and Path(v).is_file()}
    if not figures or sum(p.stat().st_size for p in figures.values()) > EMBEDDED_FIGURE_BYTES:
        return None
    parts = []
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"### {name}\n\n![{name}](data:image/png;base64,{data})")
    return dg.MetadataValue.md("\n\n".join(parts))
