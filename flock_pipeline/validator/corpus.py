"""Epoch step: the corpus release of the epoch (the selected miners' rows with provenance, derived pairs) and the
cumulative `latest` release."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from flock_pipeline.core.corpus import (DPO, JSONL_FILES, SFT, BaseAnswerCache, Candidate, CorpusPolicy,
                                        CorpusShard, build_release_records, dataset_card, greedy_answers,
                                        make_dir, merge_releases, read_release, release_files, release_sha256,
                                        replace_latest, select_miners, single_turn, write_release)
from flock_pipeline.core.corpus.release import ReleaseError, parquet_name
from flock_pipeline.core.schema import ChatRow, RowError, parse_preference_row
from flock_pipeline.core.tiny_model import model_revision
from flock_pipeline.errors import ResultsKept
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.resources.hub import HubResource
from flock_pipeline.store import (CorpusRecord, EvalResultRecord, utcnow)
from flock_pipeline.validator.games import epoch_setups


def build_epoch_corpus(epoch: int, settings: ValidatorSettingsResource, store: StoreResource,
                       evaluator: EvaluatorResource | None = None, hub: HubResource | None = None) -> CorpusRecord:
    """The epoch's corpus release, the cumulative `latest` release, and (with `corpus_repo`) its publication.

    Rows: per competition that puts rows in the corpus (not the selection game: its rows are the pool's own), the
    miners the corpus policy selects (by weight), their deduplicated shards with provenance; chat rows go to the
    `sft` config, a preference competition's pairs to `dpo`, plus (policy `derive_dpo`) pairs derived from the SFT
    rows and the base model's own answers, which needs `evaluator`. Releases are immutable: the first one of an
    epoch is `epoch-N/`, a different later one goes beside it as `epoch-N-<sha12>/`, a smaller one only with
    `replace_results`, and rebuilding the same one writes nothing. `latest/` holds every row once across the
    recorded epochs. With `corpus_repo` set, `latest/` is uploaded there (one commit) through `hub`; the release
    is recorded before the upload, so a failed upload loses nothing (its HubError is raised; the next run
    publishes)."""
    policy = settings.corpus_policy_config()
    if settings.corpus_repo and hub is None:
        raise ValueError("corpus_repo is set: building the corpus needs the hub resource to publish it")
    shards = _selected_shards(epoch, settings.competition_set(), policy, store)
    if policy.derive_dpo:
        shards += _derived_shards(shards, evaluator, settings, policy)
    records = build_release_records(shards)
    rows = {c: len(records[c]) for c in records}
    total = sum(rows.values())
    previous = store.corpus(epoch)
    if previous is not None and total < int(previous.rows) and not settings.replace_results:
        raise ResultsKept(f"epoch {epoch}'s published corpus has {int(previous.rows)} rows; this run built "
                          f"{total}: the published release is kept. To publish the smaller one beside it set "
                          "FLOCK_SETTINGS='{\"replace_results\": true}'")
    sha = release_sha256(records)
    corpus_dir = Path(settings.corpus_dir)
    if previous is not None and previous.sha256 == sha and Path(previous.jsonl_path).is_file():
        corpus = previous  # the same release: nothing is rewritten
    else:
        folder = _write_epoch_release(epoch, records, sha, corpus_dir, previous is None, policy)
        corpus = CorpusRecord(epoch=epoch, rows=total, miners=len({s.hotkey for s in shards if not s.derived}),
                              sha256=sha, jsonl_path=str(folder / JSONL_FILES[SFT]),
                              parquet_path=str(folder / parquet_name(SFT, records.get(SFT, []))),
                              created_at=utcnow(), sft_rows=rows[SFT],
                              dpo_rows=rows[DPO], release_dir=str(folder))
        store.record_corpus(corpus)
    latest, changed = _update_latest(corpus_dir, store, policy, settings)
    if corpus.latest_dir != str(latest):
        corpus = corpus.replace(latest_dir=str(latest))
        store.record_corpus(corpus)
    if settings.corpus_repo and (changed or corpus.published_repo != settings.corpus_repo
                                 or not corpus.published_revision):
        revision = hub.upload_files(settings.corpus_repo, release_files(latest), private=False,
                                    message=f"FLock OFF corpus as of epoch {epoch}")
        corpus = corpus.replace(published_repo=settings.corpus_repo, published_revision=revision)
        store.record_corpus(corpus)
    return corpus


BASE_ANSWERS_FILE = "base-answers.jsonl"  # under corpus_dir: the base model's answers of derived pairs


def _selected_shards(epoch: int, competitions, policy: CorpusPolicy, store: StoreResource,
                     ) -> list[CorpusShard]:
    """The policy's miners of every corpus competition, with their rows and provenance."""
    scores = {r.hotkey: r for r in store.scores(epoch)}
    shards = {s.hotkey: s for s in store.epoch_shards(epoch)}
    games = {c.name: c for c in competitions if c.in_corpus}
    setups, info = epoch_setups(store, epoch, competitions), store.epoch_info(epoch)
    candidates = _candidates(scores, shards, games, competitions)
    out = []
    for c in select_miners(candidates, policy):
        r, s = scores[c.hotkey], shards[c.hotkey]
        game = games[c.competition]
        eval_repo, eval_revision = _eval_set_of(setups.get(c.competition), info)
        out.append(_corpus_shard(epoch, c.competition, game, r, s, store, eval_repo, eval_revision))
    return out


def _candidates(scores: dict, shards: dict, games: dict, competitions) -> list[Candidate]:
    """The scored miners of the corpus competitions whose shard is eligible, as the corpus policy's candidates."""
    candidates = []
    for r in scores.values():
        game = r.competition or competitions.competitions[0].name  # rows from before competitions: the first
        s = shards.get(r.hotkey)
        if game not in games or s is None or s.status != "eligible" or not s.shard_hash:
            continue
        weight = r.competition_weight if r.competition_weight is not None else r.weight
        candidates.append(Candidate(game, r.hotkey, int(r.uid), r.status, float(weight), int(s.commit_block)))
    return candidates


def _eval_set_of(setup, info) -> tuple[str | None, str | None]:
    """(repo, revision) of the eval set a competition was scored on: its setup's, else the epoch's recorded one."""
    eval_repo = setup.eval_repo if setup is not None else (info.eval_repo if info is not None else None)
    eval_revision = setup.eval_revision if setup is not None else (info.eval_revision if info else None)
    return eval_repo, eval_revision


def _corpus_shard(epoch: int, competition: str, game, r, s, store: StoreResource, eval_repo: str | None,
                  eval_revision: str | None) -> CorpusShard:
    """The selected miner's shard: its rows, parsed in the game's row format, with their provenance."""
    parse = game.row_format.from_json_obj
    base_model, base_revision = _base_model_of(store, s.shard_hash, r.eval_loss)
    return CorpusShard(
        hotkey=r.hotkey, uid=int(r.uid), repo=s.repo or "", revision=s.revision or "",
        commit_block=int(s.commit_block), miner_weight=float(r.weight), eval_loss=r.eval_loss,
        rows=tuple((x.row_hash, parse(json.loads(x.row_json))) for x in store.shard_rows(s.shard_hash)),
        competition=competition, epoch=epoch, base_model=base_model, base_revision=base_revision,
        eval_repo=eval_repo or "", eval_revision=eval_revision or "")


def _base_model_of(store: StoreResource, shard_hash: str, eval_loss: float | None) -> tuple[str, str]:
    """(name, revision) of the base model the shard's recorded evaluation used (the one that gave its score)."""
    results = [e for e in store.rows(EvalResultRecord, shard_hash=shard_hash)
               if e.status == "ok" and isinstance(e.provenance, dict)]
    scored = [e for e in results if eval_loss is not None and e.eval_loss == eval_loss] or results
    if not scored:
        return "", ""
    found = max(scored, key=lambda e: (e.created_at is not None, e.created_at or 0, e.cache_key))
    return str(found.provenance.get("base_model", "")), str(found.provenance.get("base_revision", ""))


def _derived_shards(shards: list[CorpusShard], evaluator: EvaluatorResource | None,
                    settings: ValidatorSettingsResource, policy: CorpusPolicy) -> list[CorpusShard]:
    """DPO pairs from the selected miners' single-turn SFT rows: chosen = the miner's answer, rejected = the base
    model's greedy answer, read from the answer cache or generated now (the model is loaded only for answers the
    cache lacks). A pair is left out when the two answers are the same, the base answer is empty or breaks a row
    limit, or the prompt does not fit the model. Provenance: the miner's, with `derived` true and the base model
    that wrote `rejected`."""
    sources = [s for s in shards if any(_single_turn_chat(row) for _, row in s.rows)]
    if not sources:
        return []
    if evaluator is None:
        raise ValueError("corpus_policy.derive_dpo is on: building the corpus needs the evaluator resource (the "
                         "base model writes the rejected answers)")
    name, revision = evaluator.model_name(), model_revision(evaluator.verified_model_path())
    budget = policy.derive_max_new_tokens
    cache = BaseAnswerCache(Path(settings.corpus_dir) / BASE_ANSWERS_FILE)
    known = cache.load()
    todo = _unanswered_prompts(sources, cache, known, name, revision, budget)
    if todo:
        keys = list(todo)
        fresh = dict(zip(keys, greedy_answers(evaluator.load(), [todo[k] for k in keys], budget)))
        cache.add(fresh)
        known.update(fresh)
    limits = settings.dataset_limits()
    out = []
    for s in sources:
        pairs = _derived_pairs(s, cache, known, name, revision, budget, limits)
        if pairs:
            out.append(replace(s, rows=tuple(pairs), derived=True, base_model=name, base_revision=revision))
    return out


def _single_turn_chat(row) -> bool:
    """Whether the row is a single-turn chat row (the rows pairs are derived from)."""
    return isinstance(row, ChatRow) and single_turn(row)


def _unanswered_prompts(sources: list[CorpusShard], cache: BaseAnswerCache, known: dict, name: str, revision: str,
                        budget: int) -> dict[tuple, ChatRow]:
    """cache key -> the prompt (system and first turn) of every single-turn row the answer cache has no answer of."""
    todo: dict[tuple, ChatRow] = {}
    for s in sources:
        for row_hash, row in s.rows:
            key = cache.key(row_hash, name, revision, budget)
            if _single_turn_chat(row) and key not in known:
                todo[key] = ChatRow(system=row.system, turns=row.turns[:1])
    return todo


def _derived_pairs(s: CorpusShard, cache: BaseAnswerCache, known: dict, name: str, revision: str, budget: int,
                   limits) -> list[tuple]:
    """(row hash, preference row) of every pair derived from the shard's single-turn rows that passes the limits."""
    pairs = []
    for row_hash, row in s.rows:
        answer = known.get(cache.key(row_hash, name, revision, budget))
        if not _single_turn_chat(row) or answer is None:
            continue
        obj = {"system": row.system, "prompt": [{"role": "user", "content": row.turns[0].content}],
               "chosen": [{"role": "assistant", "content": row.turns[1].content}],
               "rejected": [{"role": "assistant", "content": answer}]}
        try:
            pair = parse_preference_row(obj, limits)
        except RowError:  # the same answer as the miner's (nothing to prefer), an empty one, over a limit
            continue
        pairs.append((pair.row_hash, pair))
    return pairs


def _write_epoch_release(epoch: int, records: dict, sha: str, corpus_dir: Path, first: bool,
                         policy: CorpusPolicy) -> Path:
    """The epoch's release folder: `epoch-N/` for the epoch's first release, else `epoch-N-<sha12>/`; a folder
    already holding exactly these rows (a run that stopped before recording it) is taken as it is."""
    base = corpus_dir / f"epoch-{epoch}"
    named = corpus_dir / f"epoch-{epoch}-{sha[:12]}"
    for folder in (base, named):
        held = read_release(folder) if folder.is_dir() else None
        if held is not None and release_sha256(held) == sha:
            return folder
    target = base if first and not base.exists() else named
    card = dataset_card(records, title=f"FLock OFF corpus, epoch {epoch}", policy=policy,
                        note=f"The release of epoch {epoch} (`sha256` {sha}).")
    write_release(records, target, card)
    return target


def _recorded_release(record: CorpusRecord, corpus_dir: Path, replace: bool) -> dict | None:
    """The records of an epoch release the store recorded (`latest` is rebuilt from what was recorded, never from
    whatever folders are on disk). A recorded release that is missing, incomplete or garbled stops the step with an
    error naming it, so `latest` never shrinks silently; with `replace_results` it is left out instead."""
    if not record.release_dir:
        return None  # written before release folders: not in `latest`
    folder = Path(record.release_dir)
    if not folder.is_dir():  # a moved or copied home: the same release under this corpus_dir
        folder = corpus_dir / folder.name
    try:
        held = read_release(folder)
    except ReleaseError:
        if replace:
            return None
        raise
    if held is None and not replace:
        raise ResultsKept(f"epoch {record.epoch}'s recorded release {folder} is missing or incomplete: `latest` is "
                          "kept as it is. Restore the folder, or set FLOCK_SETTINGS='{\"replace_results\": true}' "
                          "to rebuild `latest` without it")
    return held


def _update_latest(corpus_dir: Path, store: StoreResource, policy: CorpusPolicy,
                   settings: ValidatorSettingsResource) -> tuple[Path, bool]:
    """`corpus_dir/latest` from every recorded epoch release (each row once, its best-weighted copy), under a lock
    (two epochs' runs may finish together): (its path, whether it changed)."""
    import contextlib
    import fcntl
    import os

    make_dir(corpus_dir)
    with open(corpus_dir / ".latest.lock", "a") as lock:
        with contextlib.suppress(OSError):  # another user's lock file stays as it is
            os.fchmod(lock.fileno(), 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)
        releases = [held for record in store.rows(CorpusRecord)
                    if (held := _recorded_release(record, corpus_dir, settings.replace_results)) is not None]
        merged = merge_releases(releases)
        card = dataset_card(merged, title="FLock OFF corpus", policy=policy, where=settings.corpus_repo,
                            note="The cumulative release: every row once across the epochs below, with the "
                                 "provenance of its best-weighted copy (the highest miner weight; tie: the latest "
                                 f"epoch). `sha256` {release_sha256(merged)}.")
        return replace_latest(merged, corpus_dir, card)
