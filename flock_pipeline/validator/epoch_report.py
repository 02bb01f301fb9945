"""The epoch report: per competition, what the validator decided and why, as figures (PNG, matplotlib) and one
self-contained HTML page, written next to the corpus releases (`corpus_dir/reports/epoch-N/`).

Per competition: every evaluated miner's eval loss against the base model's, the weights, the pairwise win matrix
(the comparisons the win rates count, with the earlier commitment's advantage), every miner's rows kept and dropped
by reason, and each miner's loss and weight over the last epochs; then the table of every miner with its status,
reason and the explanation of its weight.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from flock_pipeline.core.competitions import Contender

TREND_EPOCHS = 8  # epochs shown in the trends


@dataclass
class CompetitionReport:
    name: str
    kind: str
    rows: list[dict]  # the epoch report's entries of this competition
    base_loss: float | None
    verdicts: dict[tuple[int, int], int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # hotkey -> reason -> rows
    trends: dict[str, list[tuple[int, float | None, float]]] = field(default_factory=dict)  # hotkey -> (epoch,
    # loss, weight)
    png: bytes = b""


def collect(epoch: int, settings, store, base_losses: dict[str, float | None],
            labels: dict[str, str] | None = None) -> list[CompetitionReport]:
    """What the report shows, from the store (no model, no chain); `labels`: hotkey -> a name to show."""
    from flock_pipeline.validator.report_table import epoch_report

    competitions = settings.competition_set()
    entries = epoch_report(epoch, store, labels)
    shards = {s.hotkey: s for s in store.epoch_shards(epoch)}
    blocks = {c.hotkey: int(c.commit_block) for c in store.epoch_commitments(epoch)}
    history = {e: {r.hotkey: r for r in store.scores(e)} for e in range(max(0, epoch - TREND_EPOCHS + 1),
                                                                                 epoch + 1)}
    recent = [e for e, rows in history.items() if rows]
    out = []
    for c in competitions:
        rows = [m for m in entries if (m["competition"] or competitions.competitions[0].name) == c.name]
        if not rows:
            continue
        out.append(_competition_report(c, rows, base_losses.get(c.name), shards, blocks, history, recent))
    return out


def _competition_report(c, rows: list[dict], base_loss: float | None, shards: dict, blocks: dict[str, int],
                        history: dict, recent: list[int]) -> CompetitionReport:
    """The competition's report: its entries, pairwise verdicts, rows dropped by reason and trends."""
    report = CompetitionReport(c.name, c.kind, rows, base_loss)
    scored = [m for m in rows if m["status"] == "scored" and m["eval_loss"] is not None]
    report.verdicts = c.pairwise_verdicts(
        [Contender(m["uid"], m["hotkey"], m["eval_loss"], blocks.get(m["hotkey"], 0)) for m in scored]) or {}
    for m in rows:
        s = shards.get(m["hotkey"])
        if s is not None and int(s.rows_in or 0):
            report.dropped[m["hotkey"]] = _rows_by_reason(s)
        report.trends[m["hotkey"]] = _trend(history, recent, m["hotkey"])
    return report


def _rows_by_reason(s) -> dict[str, int]:
    """reason -> the shard's rows: kept, or dropped for that reason."""
    counted = int(s.duplicates_within or 0) + int(s.duplicates_earlier or 0) + int(s.eval_leaks or 0)
    return {
        "kept": int(s.rows_kept or 0), "repeated in its file": int(s.duplicates_within or 0),
        "copied from an earlier miner": int(s.duplicates_earlier or 0),
        "eval-set rows": int(s.eval_leaks or 0),
        "ineligible miner": max(0, int(s.rows_in) - int(s.rows_kept or 0) - counted)}


def _trend(history: dict, recent: list[int], hotkey: str) -> list[tuple[int, float | None, float]]:
    """(epoch, eval loss, weight) of the miner in each recent epoch it was scored in."""
    return [(e, _finite(history[e][hotkey].eval_loss), float(history[e][hotkey].weight or 0.0))
            for e in recent if hotkey in history[e]]


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


LEADERS = 10  # the miners a competition's figure names (by weight, then loss), each in its own colour of the ten;
# a competition of more miners has the others drawn together


def leaders(report: CompetitionReport) -> tuple[list[dict], list[dict]]:
    """(the miners the figure names, the others it draws together): every miner up to LEADERS; above, the LEADERS
    with the most weight (then the lowest loss) and the rest."""
    if len(report.rows) <= LEADERS:
        return list(report.rows), []
    ranked = sorted(report.rows, key=lambda m: (-m["weight"], _loss_or_inf(m), m["uid"]))
    named = {id(m) for m in ranked[:LEADERS]}
    return ranked[:LEADERS], [m for m in report.rows if id(m) not in named]


def _loss_or_inf(m: dict) -> float:
    return m["eval_loss"] if m["eval_loss"] is not None else math.inf


def figure(report: CompetitionReport, epoch: int) -> bytes:
    """The competition's six panels as one PNG (`draw_figure`)."""
    import matplotlib.pyplot as plt

    fig = draw_figure(report, epoch)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def draw_figure(report: CompetitionReport, epoch: int):
    """The competition's six panels (a matplotlib Figure). With more than LEADERS miners, the LEADERS are named and
    drawn each on its own, and the others together: one bar (their median loss and range, their summed weight,
    their mean rows), one row and column of the win matrix, grey lines in the trends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named, others = leaders(report)
    labels = [_label(m) for m in named] + ([f"{len(others)} others"] if others else [])
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    fig.suptitle(f"epoch {epoch}: competition {report.name!r} ({report.kind})"
                 + (f": the {len(named)} leaders by weight, the other {len(others)} miners together" if others
                    else ""), fontsize=14)
    colours = _draw_losses(axes[0][0], report, named, others, labels)
    _draw_weights(axes[0][1], named, others, labels, colours)
    _draw_pairwise(axes[0][2], report, named, others)
    _draw_rows(axes[1][0], report, named, others, labels)
    for ax, index, title in ((axes[1][1], 1, "eval loss over epochs"), (axes[1][2], 2, "weight over epochs")):
        _draw_trend(ax, report, named, others, index, title)
    # fixed margins, room for the rotated labels (tight_layout would lay every text out once more before saving)
    fig.subplots_adjust(left=0.045, right=0.99, top=0.9, bottom=0.13, wspace=0.2, hspace=0.55)
    return fig


OTHERS_COLOUR = "#b0bec5"


def _draw_losses(ax, report: CompetitionReport, named: list[dict], others: list[dict], labels: list[str]
                 ) -> list[str]:
    """Draws every named miner's eval loss against the base model's (and the others' median, with their range);
    returns the bars' colours."""
    losses = [m["eval_loss"] if m["eval_loss"] is not None else 0.0 for m in named]
    colours = [_colour(m["status"]) for m in named]
    ax.bar(range(len(named)), losses, color=colours)
    title = "eval loss (no bar: not evaluated)"
    evaluated = sorted(m["eval_loss"] for m in others if m["eval_loss"] is not None)
    if others:
        colours.append(OTHERS_COLOUR)
        title = "eval loss (the others: median, line from lowest to highest)"
    if evaluated:
        median = evaluated[len(evaluated) // 2]
        ax.bar([len(named)], [median], color=OTHERS_COLOUR,
               yerr=[[median - evaluated[0]], [evaluated[-1] - median]], capsize=4)
    if report.base_loss is not None:
        ax.axhline(report.base_loss, color="black", linestyle="--", label=f"base model {report.base_loss:.4f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    _ticks(ax, labels)
    return colours


def _draw_weights(ax, named: list[dict], others: list[dict], labels: list[str], colours: list[str]) -> None:
    """Draws every named miner's weight (and the others' together)."""
    weights = [m["weight"] for m in named] + ([sum(m["weight"] for m in others)] if others else [])
    ax.bar(range(len(weights)), weights, color=colours)
    ax.set_title("weight" + (" (the others: their sum)" if others else ""))
    _ticks(ax, labels)


def _draw_pairwise(ax, report: CompetitionReport, named: list[dict], others: list[dict]) -> None:
    """Draws the pairwise win matrix of the scored named miners (the others as one row and column: the mean
    verdict against them), or says why there is none."""
    scored = [m["uid"] for m in named if m["status"] == "scored" and m["eval_loss"] is not None]
    rest = [m["uid"] for m in others if m["status"] == "scored" and m["eval_loss"] is not None]
    if report.verdicts and scored:
        def verdict(a: int, b: int) -> float:
            return report.verdicts.get((a, b), -report.verdicts.get((b, a), 0))

        grid = [[math.nan if a == b else verdict(a, b) for b in scored] for a in scored]
        ticks = [f"uid {u}" for u in scored]
        if rest:
            for a, row in zip(scored, grid):
                row.append(sum(verdict(a, b) for b in rest) / len(rest))
            grid.append([-row[-1] for row in grid] + [math.nan])
            ticks.append(f"{len(rest)} others (mean)")
        ax.imshow(grid, cmap="RdYlGn", vmin=-1, vmax=1)
        ax.set_xticks(range(len(ticks)), ticks, rotation=60, fontsize=8)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_title("pairwise: row beat column (green), lost (red)")
    else:
        ax.text(0.5, 0.5, "no pairwise comparisons\n(fewer than two scored miners,\nor not a win-rate game)",
                ha="center", va="center")
        ax.set_axis_off()


def _draw_rows(ax, report: CompetitionReport, named: list[dict], others: list[dict], labels: list[str]) -> None:
    """Draws every named miner's rows kept and dropped, stacked by reason (and the others' mean)."""
    reasons = ["kept", "repeated in its file", "copied from an earlier miner", "eval-set rows", "ineligible miner"]
    bottom = [0] * len(labels)
    for reason, colour in zip(reasons, ["#4caf50", "#ffb74d", "#e57373", "#ba68c8", "#9e9e9e"]):
        values = [report.dropped.get(m["hotkey"], {}).get(reason, 0) for m in named]
        if others:
            values.append(sum(report.dropped.get(m["hotkey"], {}).get(reason, 0) for m in others) / len(others))
        ax.bar(range(len(labels)), values, bottom=bottom, color=colour, label=reason)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("rows kept and dropped, by reason" + (" (the others: their mean)" if others else ""))
    ax.legend(fontsize=7, loc="upper right")
    _ticks(ax, labels)


def _draw_trend(ax, report: CompetitionReport, named: list[dict], others: list[dict], index: int,
                title: str) -> None:
    """Draws every named miner's trend value `index` (1: eval loss, 2: weight) over the recent epochs, each in its
    colour and named in the legend, and the others' as thin grey lines (one collection, one legend entry)."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    drawn = False
    grey = [run for m in others for run in _runs(_points(report, m, index))]
    if grey:
        ax.add_collection(LineCollection(grey, colors=OTHERS_COLOUR, linewidths=0.6, alpha=0.6, zorder=1,
                                         label=f"{len(others)} others"))
        ax.autoscale_view()
        drawn = True
    for m in named:
        points = _points(report, m, index)
        if any(not math.isnan(v) for _, v in points):
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o", label=_label(m), zorder=3)
            drawn = True
    if index == 1 and report.base_loss is not None:
        ax.axhline(report.base_loss, color="black", linestyle="--", linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    shown = [p[0] for m in report.rows for p in report.trends.get(m["hotkey"], [])]
    if shown:
        ax.set_xlim(min(shown) - 0.5, max(shown) + 0.5)
    if drawn:
        ax.legend(fontsize=7, loc="best")


def _points(report: CompetitionReport, m: dict, index: int) -> list[tuple[int, float]]:
    """The miner's (epoch, trend value `index`); an epoch without a value (a failed evaluation) is NaN: a gap in
    the line, not a straight segment over it."""
    return [(p[0], math.nan if p[index] is None else p[index]) for p in report.trends.get(m["hotkey"], [])]


def _runs(points: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive values between the gaps (a lone value is a stretch of one: no line)."""
    runs, current = [], []
    for e, v in points:
        if math.isnan(v):
            runs, current = runs + ([current] if current else []), []
        else:
            current.append((e, v))
    return runs + ([current] if current else [])


def _label(m: dict) -> str:
    return f"{m['uid']} {m.get('label') or m['hotkey']}"[:22]


def _ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)


STATUS_COLOURS = {"scored": "#2e7d32", "reward": "#2e7d32", "burn": "#757575", "no_improvement": "#f9a825",
                  "ineligible": "#ef6c00", "rejected": "#ef6c00", "pending": "#90a4ae", "failed": "#c62828"}


def _colour(status: str) -> str:
    return STATUS_COLOURS.get(status, "#90a4ae")


def value_figure(values: list) -> bytes:
    """The held-out loss of each release over epochs, one panel per config: the release, the random submitted rows
    (mean, with the draws' range), the previous release and the base model (`CorpusValueRecord`s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({v.config for v in values})
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4), squeeze=False)
    for ax, config in zip(axes[0], configs):
        mine = sorted((v for v in values if v.config == config), key=lambda v: v.epoch)
        epochs = [v.epoch for v in mine]
        ax.plot(epochs, [v.release_loss for v in mine], marker="o", label="this release")
        randoms = [(v.epoch, list(v.random_losses)) for v in mine if v.random_losses]
        if randoms:
            ax.errorbar([e for e, _ in randoms], [sum(r) / len(r) for _, r in randoms],
                        yerr=[[sum(r) / len(r) - min(r) for _, r in randoms], [max(r) - sum(r) / len(r)
                                                                               for _, r in randoms]],
                        marker="s", capsize=3, label="random submitted rows")
        base = [(v.epoch, v.base_loss) for v in mine if v.base_loss is not None]
        if base:
            ax.plot([e for e, _ in base], [b for _, b in base], linestyle="--", marker="x", color="black",
                    label="base model")
        ax.set_xticks(epochs)
        ax.set_title(f"held-out loss after training on the release ({config})")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def value_table(values: list) -> list[str]:
    """The releases' values as Markdown table lines (empty without any)."""
    if not values:
        return []
    lines = ["| epoch | config | rows | release | random rows (mean of draws) | previous release | base model |",
             "|---|---|---|---|---|---|---|"]
    for v in sorted(values, key=lambda v: (v.epoch, v.config)):
        randoms = list(v.random_losses)
        lines.append(f"| {v.epoch} | {v.config} | {v.rows} | {v.release_loss:.4f} | "
                     + (f"{sum(randoms) / len(randoms):.4f}" if randoms else "") + " | "
                     + (f"{v.previous_loss:.4f}" if v.previous_loss is not None else "") + " | "
                     + (f"{v.base_loss:.4f}" if v.base_loss is not None else "") + " |")
    return lines


def page(epoch: int, reports: list[CompetitionReport], values: list | None = None, value_png: bytes = b"") -> str:
    """One self-contained HTML page (figures inline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>FLock OFF epoch {epoch}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}th{background:#eee}"
             ".scored{color:#2e7d32}.failed{color:#c62828}.ineligible,.rejected,.no_improvement{color:#ef6c00}"
             "</style></head><body>", f"<h1>FLock OFF: epoch {epoch}</h1>"]
    for r in reports:
        parts.append(f"<h2>competition {html.escape(r.name)} ({html.escape(r.kind)})</h2>")
        if r.base_loss is not None:
            parts.append(f"<p>base model's eval loss: {r.base_loss:.4f}</p>")
        parts.append(f"<img alt='epoch {epoch} {html.escape(r.name)}' style='max-width:100%' "
                     f"src='data:image/png;base64,{base64.b64encode(r.png).decode()}'>")
        parts.append("<table><tr><th>uid</th><th>hotkey</th><th>status</th><th>rows</th><th>eval loss</th>"
                     "<th>win rate</th><th>weight</th><th>sent</th><th>how the weight came about</th></tr>")
        for m in r.rows:
            loss = "" if m["eval_loss"] is None else f"{m['eval_loss']:.4f}"
            parts.append(f"<tr><td>{m['uid']}</td><td>{html.escape(m['hotkey'])}</td>"
                         f"<td class='{html.escape(m['status'])}'>{html.escape(m['status'])}</td>"
                         f"<td>{m['rows_kept']}</td><td>{loss}</td><td>{m['score']:.3f}</td>"
                         f"<td>{m['weight']:.6f}</td><td>{_sent(m)}</td>"
                         f"<td>{html.escape(m.get('explanation') or '')}</td></tr>")
        parts.append("</table>")
    if values:
        parts.append("<h2>What training on the release is worth (held-out loss, lower is better)</h2>")
        if value_png:
            parts.append(f"<img alt='held-out loss per release' style='max-width:100%' "
                         f"src='data:image/png;base64,{base64.b64encode(value_png).decode()}'>")
        rows = value_table(values)
        parts.append("<table>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
            for i, line in enumerate(rows) if i != 1) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


MARKDOWN_ROWS = 32  # miners per competition in the Markdown summary (by weight; the page and the CLI list all)
MARKDOWN_BYTES = 200 * 1024  # the whole summary, whatever the number of miners and competitions
WHY_CHARS = 1500  # one explanation in the summary


def markdown(epoch: int, reports: list[CompetitionReport], values: list | None = None) -> str:
    """The report's tables as Markdown (the Dagster UI shows it beside the materialization), bounded: per
    competition the MARKDOWN_ROWS miners with the most weight, then a row that counts the others and names the
    command that lists them; at most MARKDOWN_BYTES in all."""
    lines = [f"# Epoch {epoch}"]
    if values:
        lines += ["", "## What training on the release is worth (held-out loss)", "", *value_table(values)]
    more = f"`flock epoch report {epoch}` (and `--html`)"
    for r in reports:
        base = f" (base model {r.base_loss:.4f})" if r.base_loss is not None else ""
        lines += ["", f"## {r.name}{base}", "", "| uid | hotkey | status | eval loss | weight | sent | why |",
                  "|---|---|---|---|---|---|---|"]
        ranked = r.rows if len(r.rows) <= MARKDOWN_ROWS else sorted(
            r.rows, key=lambda m: (-m["weight"], _loss_or_inf(m), m["uid"]))[:MARKDOWN_ROWS]
        for m in ranked:
            loss = "" if m["eval_loss"] is None else f"{m['eval_loss']:.4f}"
            why = (m.get("explanation") or "").replace("|", "/").replace("\n", " ")
            why = why if len(why) <= WHY_CHARS else why[:WHY_CHARS - 1] + "…"
            lines.append(f"| {m['uid']} | {m['hotkey']} | {m['status']} | {loss} | {m['weight']:.6f} | {_sent(m)} "
                         f"| {why} |")
        if len(r.rows) > len(ranked):
            lines.append(f"| {len(r.rows) - len(ranked)} more in {more} | | | | | | |")
    return _bounded(lines, more) + "\n"


def _bounded(lines: list[str], more: str) -> str:
    """The lines joined, cut at the last whole line within MARKDOWN_BYTES (saying where the rest is)."""
    text = "\n".join(lines)
    if len(text.encode()) <= MARKDOWN_BYTES:
        return text
    kept, size = [], 0
    for line in lines:
        size += len(line.encode()) + 1
        if size > MARKDOWN_BYTES - 200:
            break
        kept.append(line)
    return "\n".join([*kept, "", f"(cut here: the rest is in {more})"])


def _sent(m: dict) -> str:
    """The weight as the chain took it (after the u16 conversion), beside the computed one; "-": not sent."""
    return "-" if m.get("sent") is None else f"{m['sent']:.6f}"


def write_report(epoch: int, reports: list[CompetitionReport], out_dir: Path,
                 values: list | None = None) -> dict[str, str]:
    """report.html and one PNG per competition (and the releases' value, when measured) into out_dir (atomically,
    readable by everyone); returns paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)
    paths = {}
    for r in reports:
        r.png = r.png or figure(r, epoch)
        paths[f"png:{r.name}"] = str(_atomic(out_dir / f"{r.name}.png", r.png))
    value_png = value_figure(values) if values else b""
    if value_png:
        paths["png:value"] = str(_atomic(out_dir / "value.png", value_png))
    paths["html"] = str(_atomic(out_dir / "report.html", page(epoch, reports, values, value_png).encode()))
    return paths


def _atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def recorded_base_losses(epoch: int, settings, store, evaluator) -> dict[str, float | None]:
    """competition -> the base model's eval loss recorded for its eval set and recipe (None when not computed).

    Read from the store alone, without the model or torch (the report is a quick command): among the base model's
    recorded results, those with this validator's model and recipe for the competition whose cache key is the one
    of the epoch's eval revision under their own recorded provenance; the latest of them."""
    import json

    from flock_pipeline.store import EvalResultRecord
    from flock_pipeline.validator.evaluation import BASE_SHARD, cache_key, competition_recipe
    from flock_pipeline.validator.games import epoch_setups

    def canonical(value) -> str:
        return json.dumps(value, sort_keys=True, default=list)

    recorded = [r for r in store.rows(EvalResultRecord, shard_hash=BASE_SHARD)
                if r.status == "ok" and isinstance(r.provenance, dict)]
    out: dict[str, float | None] = {}
    setups = epoch_setups(store, epoch, settings.competition_set())
    for c in settings.competition_set():
        setup = setups.get(c.name)
        recipe = canonical(evaluator.train_recipe(competition_recipe(settings, c.name)).to_dict())
        found = [r for r in recorded if setup is not None
                 and r.provenance.get("base_model") == evaluator.model_name()
                 and canonical(r.provenance.get("recipe")) == recipe
                 and cache_key(BASE_SHARD, r.provenance, setup.eval_revision) == r.cache_key]
        latest = max(found, key=lambda r: (r.created_at is not None, r.created_at or 0), default=None)
        out[c.name] = float(latest.eval_loss) if latest is not None else None
    return out


def build_epoch_report(epoch: int, settings, store, evaluator,
                       labels: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """Write the epoch's report; returns (paths, the Markdown summary)."""
    reports = collect(epoch, settings, store, recorded_base_losses(epoch, settings, store, evaluator), labels)
    values = [v for v in store.corpus_values() if v.epoch <= epoch]
    paths = write_report(epoch, reports, Path(settings.corpus_dir) / "reports" / f"epoch-{epoch}", values)
    return paths, markdown(epoch, reports, values)
