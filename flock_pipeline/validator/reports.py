"""Epoch reports a validator publishes for its miners: a public dataset repo holding `reports.json`, the score table
of its latest epochs (hotkey, uid, status, reason, eval loss, win rate, weight, rank, and for an evaluated miner the
inputs anyone needs to re-run its evaluation from public data: `flock audit --reports REPO`) and the fate of each
epoch's weights. A miner on any machine reads it with `flock miner status --reports REPO`.

One file, rewritten whole at each publication (the latest `MAX_EPOCHS` epochs), so that the hub's latest revision
always has everything. What a validator publishes is untrusted for the reader: it is parsed defensively, with a
size cap, and a malformed report is an error for that repo only.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flock_pipeline.core.untrusted import number_or_none, text_or_none
from flock_pipeline.resources.hub import HubError, HubNotFound, HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.validator.report_table import sent_shares

REPORT_FILE = "reports.json"
MAX_EPOCHS = 24  # epochs kept in the file (a day at the live tempo of 360 blocks)
MAX_REPORT_BYTES = 8 * 2**20
FORMAT = 1


def epoch_report(epoch: int, settings: ValidatorSettingsResource, store: StoreResource) -> dict:
    """The score table of `epoch` as published: rank 1 is the largest weight (ties: the lower loss)."""
    from flock_pipeline.validator.audit import audit_inputs

    scores = store.scores(epoch)
    inputs = audit_inputs(epoch, store, settings)
    ordered = sorted(scores, key=lambda r: (-float(r.weight), _loss(r.eval_loss) if _loss(r.eval_loss) is not None
                                            else math.inf, r.hotkey))
    rank = {r.hotkey: i + 1 for i, r in enumerate(ordered)}
    sent = store.weight_submission(epoch)
    shares = sent_shares(store, epoch)
    return {
        "epoch": epoch,
        "validator": settings.validator_hotkey,
        "weights": None if sent is None else {"state": sent.state, "block": int(sent.block),
                                              "message": sent.message, "detail": sent.detail},
        "miners": [{"hotkey": r.hotkey, "uid": int(r.uid), "status": r.status, "reason": r.reason,
                    "competition": r.competition, "eval_loss": _loss(r.eval_loss), "score": float(r.score),
                    "win_rate": float(r.score),
                    "weight": float(r.weight), "sent": None if shares is None else shares.get(int(r.uid), 0.0),
                    "rank": rank[r.hotkey],
                    **({"audit": inputs[r.hotkey]} if r.hotkey in inputs and _loss(r.eval_loss) is not None
                       else {})} for r in ordered],
    }


def publish_epoch_report(epoch: int, hub: HubResource, settings: ValidatorSettingsResource,
                         store: StoreResource) -> str | None:
    """Put `epoch`'s report into `settings.report_repo` (public), beside the latest earlier epochs; returns the new
    revision, or None when the repo already holds exactly this (nothing is uploaded). HubError when the hub fails."""
    repo = settings.report_repo
    try:
        current = _parse(hub.download(repo, hub.head(repo), REPORT_FILE, max_bytes=MAX_REPORT_BYTES))
    except HubNotFound:
        current = {"format": FORMAT, "validator": settings.validator_hotkey, "epochs": []}
    except (HubError, ValueError):  # our own earlier file is unreadable: start it again rather than stop publishing
        current = {"format": FORMAT, "validator": settings.validator_hotkey, "epochs": []}
    report = epoch_report(epoch, settings, store)
    kept = [e for e in current["epochs"] if e.get("epoch") != epoch]
    epochs = sorted(kept + [report], key=lambda e: e["epoch"])[-MAX_EPOCHS:]
    document = {"format": FORMAT, "validator": settings.validator_hotkey, "epochs": epochs}
    if document == current:
        return None
    return hub.upload(repo, json.dumps(document, sort_keys=True, indent=1).encode(), filename=REPORT_FILE,
                      private=False)


def read_miner_report(hub: HubResource, repo: str, hotkey: str) -> dict:
    """What the validator publishing to `repo` recorded for `hotkey` in its latest epoch that has it:
    {"repo", "validator", "epoch", "status", "reason", "eval_loss", "score", "win_rate" (the score's old name, kept
    for one release), "weight", "sent" (the weight as the chain took it), "rank", "of"}, or
    {"repo", "error"} when the repo cannot be read or its file is malformed, or {"repo", "epoch": None} when the
    hotkey is in none of its epochs."""
    try:
        document = _parse(hub.download(repo, hub.head(repo), REPORT_FILE, max_bytes=MAX_REPORT_BYTES))
    except (HubError, ValueError) as exc:
        return {"repo": repo, "error": str(exc)[:300]}
    for entry in reversed(document["epochs"]):
        row = next((m for m in entry["miners"] if m.get("hotkey") == hotkey), None)
        if row is not None:  # another validator's file: only fields of the expected types, strings cut
            score = number_or_none(row.get("score", row.get("win_rate")))
            return {"repo": repo, "validator": text_or_none(document["validator"]), "epoch": entry["epoch"],
                    "status": text_or_none(row.get("status")), "reason": text_or_none(row.get("reason")),
                    "eval_loss": number_or_none(row.get("eval_loss")), "score": score, "win_rate": score,
                    "weight": number_or_none(row.get("weight")), "sent": number_or_none(row.get("sent")),
                    "rank": number_or_none(row.get("rank")), "of": len(entry["miners"])}
    return {"repo": repo, "validator": text_or_none(document["validator"]), "epoch": None}


def published_entry(hub: HubResource, repo: str, hotkey: str, epoch: int | None = None) -> dict:
    """The row another validator published for `hotkey` in `repo`'s `reports.json` (`epoch`: default the latest
    that has it), with its "epoch"; UsageError naming the repo when there is none or the file is malformed."""
    from flock_pipeline.errors import UsageError

    try:
        document = _parse(hub.download(repo, hub.head(repo), REPORT_FILE, max_bytes=MAX_REPORT_BYTES))
    except (HubError, ValueError) as exc:
        raise UsageError(f"{repo}: {str(exc)[:300]}") from None
    for entry in reversed(document["epochs"]):
        if epoch is not None and entry["epoch"] != epoch:
            continue
        row = next((m for m in entry["miners"] if m.get("hotkey") == hotkey), None)
        if row is not None:
            loss = number_or_none(row.get("eval_loss"))
            return {**row, "epoch": entry["epoch"], "eval_loss": loss}
    where = f"epoch {epoch}" if epoch is not None else "any epoch"
    raise UsageError(f"{repo} publishes no score for {hotkey} in {where}")


def _parse(data: bytes) -> dict:
    """A reports document, checked (ValueError with the reason): the keys a reader relies on, with their types."""
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{REPORT_FILE} is not JSON: {exc}") from None
    except RecursionError:  # a hostile file nested thousands deep
        raise ValueError(f"{REPORT_FILE} is nested too deeply to be a reports document") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{REPORT_FILE} is not a format {FORMAT} reports document")
    epochs = document.get("epochs")
    if not isinstance(epochs, list) or not isinstance(document.get("validator"), str):
        raise ValueError(f"{REPORT_FILE} has no epochs list or validator")
    for entry in epochs:
        if (not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int)
                or not isinstance(entry.get("miners"), list)
                or not all(isinstance(m, dict) for m in entry["miners"])):
            raise ValueError(f"{REPORT_FILE} has a malformed epoch entry")
    return document


def _loss(value) -> float | None:
    return None if value is None or value != value else float(value)
