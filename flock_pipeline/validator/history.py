"""An epoch's per-miner numbers as series: one value per miner and measure, keyed so that the same miner gets the
same key in every epoch. On an epoch-partitioned asset these become the UI's plots with the epochs on the x-axis:
one miner's eval loss, rank and weight over epochs, beside the base model's loss of its competition.

Dagster 1.13 draws at most 100 plots per asset, so the series cover the epoch's PLOTTED_MINERS leading miners (by
weight); every miner's history, over all epochs, is `miner_history_rows` (`flock miner history HOTKEY`).
"""

from __future__ import annotations

import math

import pandas as pd

from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord, frame as records_frame
from flock_pipeline.validator.epoch_report import recorded_base_losses
from flock_pipeline.validator.report_table import sent_shares
from flock_pipeline.validator.scoring import WEIGHTED

MEASURES = ("eval loss", "rank", "weight")
PLOTTED_MINERS = 30  # 3 series each, and one per competition's base loss: under the UI's 100 plots
COLUMNS = ["uid", "hotkey", "competition", "status", "eval_loss", "base_loss", "rank", "score", "weight",
           "reason"]


def series_key(uid: int, hotkey: str, measure: str) -> str:
    """The metadata key of one miner's measure: the uid first (how operators and miners name a miner), then the
    hotkey (its start, for an SS58 address), so a uid re-registered by another hotkey starts a new series."""
    short = hotkey if len(hotkey) <= 18 else hotkey[:8] + "…"
    return f"uid {uid} {short} · {measure}"


def ranks(scores: list[ScoreRecord]) -> dict[str, int]:
    """hotkey -> rank in its competition (1 = the largest weight; ties by the lower loss, then the uid) among the
    miners that hold or could hold weight."""
    out: dict[str, int] = {}
    by_competition: dict[str | None, list[ScoreRecord]] = {}
    for r in scores:
        if r.status in WEIGHTED:
            by_competition.setdefault(r.competition, []).append(r)
    for rows in by_competition.values():
        def order(r: ScoreRecord):
            loss = r.eval_loss if r.eval_loss is not None and math.isfinite(r.eval_loss) else math.inf
            return -float(r.competition_weight if r.competition_weight is not None else r.weight), loss, int(r.uid)

        for i, r in enumerate(sorted(rows, key=order), start=1):
            out[r.hotkey] = i
    return out


def leading(scores: list[ScoreRecord], n: int = PLOTTED_MINERS) -> list[ScoreRecord]:
    """The epoch's `n` leading miners: the largest weight first, then the lower loss, then the uid."""
    def order(r: ScoreRecord):
        loss = r.eval_loss if r.eval_loss is not None and math.isfinite(r.eval_loss) else math.inf
        return -float(r.weight or 0.0), loss, int(r.uid)

    return sorted(scores, key=order)[:n]


def plotted_note(plotted: int, miners: int) -> str:
    """What the plots cover, for the asset's metadata."""
    if plotted >= miners:
        return f"every miner of the epoch ({miners})"
    return (f"the {plotted} leading miners of {miners} (by weight; the UI draws at most 100 plots); any miner's "
            "history: flock miner history HOTKEY")


def epoch_history(epoch: int, settings: ValidatorSettingsResource, store: StoreResource,
                  evaluator: EvaluatorResource) -> tuple[dict[str, float | int], pd.DataFrame]:
    """(series, table): the epoch's series (the base model's loss per competition, then per leading miner its eval
    loss when it has one, its rank when it is ranked, and its weight, full precision) and every miner's row; an
    epoch nobody committed in has neither."""
    scores = store.scores(epoch)
    bases = recorded_base_losses(epoch, settings, store, evaluator)
    rank = ranks(scores)
    series: dict[str, float | int] = {f"base loss · {name}": float(loss) for name, loss in sorted(bases.items())
                                if loss is not None and any(r.competition == name for r in scores)}
    for r in sorted(leading(scores), key=lambda r: (int(r.uid), r.hotkey)):
        if r.eval_loss is not None and math.isfinite(r.eval_loss):
            series[series_key(int(r.uid), r.hotkey, "eval loss")] = float(r.eval_loss)
        if r.hotkey in rank:
            series[series_key(int(r.uid), r.hotkey, "rank")] = rank[r.hotkey]
        series[series_key(int(r.uid), r.hotkey, "weight")] = float(r.weight)
    table = records_frame(scores, ScoreRecord)
    if table.empty:
        return series, pd.DataFrame(columns=COLUMNS)
    table["base_loss"] = [bases.get(c) if isinstance(c, str) else None for c in table["competition"]]
    table["rank"] = [rank.get(h) for h in table["hotkey"]]
    return series, table.sort_values(["competition", "rank", "uid"], na_position="last")[COLUMNS]


def miner_history_rows(hotkey: str, store: StoreResource) -> list[dict]:
    """Every epoch the store scored `hotkey` in, oldest first: uid, competition, status, eval loss, rank (and of how
    many ranked in its competition), score, weight, the share the chain took (`sent`, None when nothing was sent)
    and the reason."""
    out = []
    for mine in sorted(store.rows(ScoreRecord, hotkey=hotkey), key=lambda r: int(r.epoch)):
        epoch = int(mine.epoch)
        scores = store.scores(epoch)
        rank = ranks(scores)
        sent = sent_shares(store, epoch)
        loss = mine.eval_loss if mine.eval_loss is not None and math.isfinite(mine.eval_loss) else None
        out.append({"epoch": epoch, "uid": int(mine.uid), "competition": mine.competition, "status": mine.status,
                    "eval_loss": loss, "rank": rank.get(hotkey),
                    "of": sum(1 for r in scores if r.competition == mine.competition and r.hotkey in rank),
                    "score": float(mine.score or 0.0), "weight": float(mine.weight or 0.0),
                    "sent": None if sent is None else sent.get(int(mine.uid), 0.0), "reason": mine.reason})
    return out
