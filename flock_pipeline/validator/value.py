"""Epoch step: what training on the epoch's corpus release is worth, measured on a held-out set no miner is scored
against, against the base model, rows drawn at random from everything submitted that epoch, and the previous
release (core/corpus/value.py has the rules); recorded, and written into the release's card."""

from __future__ import annotations

import time
from pathlib import Path

from flock_pipeline.core.corpus import CARD_FILE, CONFIGS, read_release
from flock_pipeline.core.corpus.value import random_draws, row_object, with_value_section
from flock_pipeline.errors import UsageError, ValidatorFault
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import CorpusValueRecord, utcnow
from flock_pipeline.validator.datasets import rows_from_json
from flock_pipeline.validator.eval_sets import load_eval_rows
from flock_pipeline.validator.games import competition_of

ROW_KEYS = {"sft": ("system", "conversations"), "dpo": ("system", "prompt", "chosen", "rejected")}


def corpus_value(epoch: int, settings: ValidatorSettingsResource, store: StoreResource, evaluator: EvaluatorResource,
                 hub: HubResource, again: bool = False) -> tuple[list[CorpusValueRecord], dict[str, str]]:
    """(the value of each config of `epoch`'s release that has rows and a held-out set, why the others were not
    measured). A config measured before is read back unless `again`. The release's card gets the section."""
    record = store.corpus(epoch)
    if record is None or not record.release_dir:
        raise UsageError(f"epoch {epoch} has no corpus release: materialize final_corpus for it first")
    release = read_release(Path(record.release_dir))
    if release is None:
        raise UsageError(f"epoch {epoch}'s release folder {record.release_dir} is not a complete release")
    competitions = settings.competition_set()
    recorded = {v.config: v for v in store.corpus_values(epoch)}
    values, skipped = [], {}
    for config in CONFIGS:
        game = next((c for c in competitions if c.in_corpus and c.row_format.corpus_config == config), None)
        if not release.get(config):
            skipped[config] = "the release has no rows of this config"
        elif game is None or not game.heldout_repo:
            skipped[config] = (f"no held-out set configured for the {config} config (the `heldout_repo` of its "
                               "competition; FLOCK_HELDOUT_REPO for the curation game)")
        elif config in recorded and not again:
            values.append(recorded[config])
        else:
            values.append(_measure(epoch, config, game, release[config], settings, store, evaluator, hub))
            store.record_corpus_value(values[-1])
    if values:
        card = Path(record.release_dir) / CARD_FILE
        if card.is_file():
            text = card.read_text(encoding="utf-8")
            updated = with_value_section(text, values)
            if updated != text:
                _atomic_text(card, updated)
    return values, skipped


def _measure(epoch: int, config: str, game, records: list[dict], settings: ValidatorSettingsResource,
             store: StoreResource, evaluator: EvaluatorResource, hub: HubResource) -> CorpusValueRecord:
    """Train every arm (the release, the random draws, the previous release) on the held-out set, in one batch."""
    started = time.monotonic()
    fmt, limits = game.row_format, settings.value_config()
    heldout_revision = hub.head(game.heldout_repo)
    heldout = load_eval_rows(hub, game.heldout_repo, heldout_revision, fmt)
    n = min(len(records), limits.max_rows)
    arms = [_rows(records[:n], config, fmt)]
    draws = random_draws(_submitted_rows(epoch, config, settings, store), n, limits.draws, epoch, config)
    arms += draws
    previous_epoch, previous = _previous_release(epoch, config, store)
    if previous:
        arms.append(_rows(previous[:n], config, fmt))
    recipe = game.recipe_overrides()
    outcomes = evaluator.evaluate_many(arms, list(heldout), recipe=recipe, objective=game.objective)
    failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failed is not None:
        raise ValidatorFault(f"measuring epoch {epoch}'s {config} release failed: {type(failed).__name__}: {failed}")
    losses = [float(o.eval_loss) for o in outcomes]
    base = evaluator.base_loss(list(heldout), recipe=recipe, objective=game.objective)
    provenance = evaluator.provenance(recipe=recipe) or {}
    return CorpusValueRecord(
        epoch=epoch, config=config, competition=game.name, objective=game.objective.name,
        heldout_repo=game.heldout_repo, heldout_revision=heldout_revision, heldout_rows=len(heldout), rows=n,
        release_loss=losses[0], random_losses=tuple(losses[1:1 + len(draws)]), base_loss=float(base.eval_loss),
        previous_epoch=previous_epoch if previous else None, previous_loss=losses[-1] if previous else None,
        recipe_hash=str(provenance.get("recipe_hash", "")), seconds=round(time.monotonic() - started, 3),
        created_at=utcnow())


def _rows(records: list[dict], config: str, fmt) -> list:
    return [fmt.from_json_obj(row_object(r, ROW_KEYS[config])) for r in records]


def _submitted_rows(epoch: int, config: str, settings: ValidatorSettingsResource, store: StoreResource) -> list:
    """Every valid row the miners of `epoch` submitted to the games whose rows go to `config` (copies, junk and
    leaks included: what a buyer would get without the validators)."""
    competitions = settings.competition_set()
    games = {c.name: c for c in competitions if c.in_corpus and c.row_format.corpus_config == config}
    hotkeys = [c.hotkey for c in store.epoch_commitments(epoch)
               if c.status == "ok" and competition_of(c, competitions) in games]
    texts = store.epoch_row_json(epoch, hotkeys)
    fmt = next(iter(games.values())).row_format if games else None
    return [row for hotkey in sorted(texts) for row in rows_from_json(texts[hotkey], fmt)] if fmt else []


def _previous_release(epoch: int, config: str, store: StoreResource) -> tuple[int | None, list[dict]]:
    """(epoch, records) of the latest earlier release with rows of `config`; (None, []) without one."""
    for earlier in store.corpora_before(epoch):
        if earlier.release_dir:
            release = read_release(Path(earlier.release_dir))
            if release and release.get(config):
                return int(earlier.epoch), release[config]
    return None, []


def _atomic_text(path: Path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
