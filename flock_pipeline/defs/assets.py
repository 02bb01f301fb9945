"""The nine software-defined assets of an epoch. Each reads its resources, calls one validator step
and reports metadata; the results themselves live in the store, so nothing computed is lost on failure.

Partitions: epoch-level assets use the dynamic `epochs` partitions (key = epoch number); per-miner assets use the
dynamic `miners` partitions (key = hotkey) and work on the epoch of the run's `flock/epoch` tag (default: the latest
epoch the miner committed in). A per-miner run covers one miner or a range of them: the sensors and `flock epoch
run` launch batches, and each miner gets its own materialization with its own metadata.
"""

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

from flock_pipeline.core.commitment import Commitment, CommitmentError
from flock_pipeline.resources import batch_settings
from flock_pipeline.resources.chain import ChainResource
from flock_pipeline.resources.evaluator import EvaluatorResource
from flock_pipeline.resources.hub import HubError, HubResource
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import CommitmentRecord, ScoreRecord, frame as records_frame
from flock_pipeline.store.backends import store_dialect
from flock_pipeline.defs.stages import name_the_stage
from flock_pipeline.validator.commitments import snapshot_commitments
from flock_pipeline.validator.datasets import fetch_miner_dataset
from flock_pipeline.validator.evaluation import MinerDone, evaluate_miners
from flock_pipeline.core.stop import Stopped
from flock_pipeline.core.weights import u16_shares
from flock_pipeline.errors import FlockError, ValidatorFault
from flock_pipeline.validator.corpus import build_epoch_corpus
from flock_pipeline.validator.scoring import compute_epoch_scores
from flock_pipeline.validator.weights import submit_epoch_weights
from flock_pipeline.validator.reports import publish_epoch_report
from flock_pipeline.validator.shards import build_miner_shards

epochs_partitions = dg.DynamicPartitionsDefinition(name="epochs")
miners_partitions = dg.DynamicPartitionsDefinition(name="miners")

# The UI's kind tag of assets that write to the store: the database FLOCK_STORE names.
STORE_KIND = "postgres" if store_dialect() == "postgresql" else "duckdb"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"  # a batch run
EPOCH_TAG = "flock/epoch"  # on per-miner runs: the epoch they work for (sensors and the epoch runner set it)
GPU_POOL = "gpu"  # size it to the number of GPUs: `dagster instance concurrency set gpu N`
CELERY_QUEUE_TAG, GPU_QUEUE = "dagster-celery/queue", "gpu"  # with Celery, evaluations go to the GPU workers' queue
TRANSIENT_RETRIES = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)  # 2 s, then 4 s


def miners_in_range(instance: dg.DagsterInstance, start: str, end: str) -> list[str]:
    """The `miners` partitions from `start` to `end` inclusive, in partition order (what a batch run covers)."""
    keys = list(instance.get_dynamic_partitions(miners_partitions.name))
    if start not in keys or end not in keys:
        return []
    return keys[keys.index(start):keys.index(end) + 1]


def epoch_of_run(context) -> int | None:
    """The epoch a per-miner run works for: its `flock/epoch` tag; None (= the miner's latest epoch) without one,
    e.g. a partition materialized by hand in the UI."""
    value = context.run.tags.get(EPOCH_TAG)
    return int(value) if value is not None else None


@contextlib.contextmanager
def validator_faults_stop_the_step():
    """A ValidatorFault (the device, the model, the eval set) fails the step at once, without retries: retrying
    cannot fix the machine, and nothing was recorded against the miner."""
    try:
        yield
    except ValidatorFault as exc:
        raise dg.Failure(description=f"validator fault (fix it and run again; no miner was judged): {exc}",
                         allow_retries=False) from exc
    except Stopped as exc:  # a signal asked for a stop: what was finished is recorded, nothing is retried
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


# Every table a materialization carries is bounded, whatever the number of miners: its first TABLE_ROWS rows (each
# cell at most CELL_CHARS characters) within TABLE_BYTES, then one row that counts the rest and says where they are.
TABLE_ROWS, CELL_CHARS, TABLE_BYTES = 64, 2000, 200 * 1024


def _table(frame: pd.DataFrame, columns: list[str], more: str = "") -> dg.MetadataValue:
    """`frame`'s columns as a Markdown table, bounded (see TABLE_ROWS); `more`: the command that prints every row."""
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"  # 6 significant digits: a weight of 0.000004 shows
        text = "" if v is None else str(v).replace("|", "/").replace("\n", " ")
        return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    size = sum(len(line.encode()) + 1 for line in lines)
    for _, row in frame.head(TABLE_ROWS).iterrows():
        line = "| " + " | ".join(fmt(row[c]) for c in columns) + " |"
        size += len(line.encode()) + 1
        if size > TABLE_BYTES:
            break
        lines.append(line)
    left = len(frame) - (len(lines) - 2)
    if left:
        lines.append(f"| {left} more" + (f" in `{more}`" if more else "") + " |" + " |" * (len(columns) - 1))
    return dg.MetadataValue.md("\n".join(lines))


def materialized(context: dg.AssetExecutionContext, metadata: dict) -> dg.MaterializeResult:
    """The step's result with `metadata` on its materialization alone. (Metadata returned in a MaterializeResult is
    also put on the step's output event, so every value, the report's tables and figures included, would be stored
    twice.)"""
    context.add_asset_metadata(metadata)
    return dg.MaterializeResult()


@dg.asset(partitions_def=epochs_partitions, group_name="chain", kinds={"python", STORE_KIND})
def chain_commitments(context: dg.AssetExecutionContext, chain: ChainResource, hub: HubResource,
                      settings: ValidatorSettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """Every miner's latest dataset commitment at the epoch's opening block: uid, hotkey, repo, revision, commit
    block and registration block. Undecodable commitments, other competitions, unregistered hotkeys and
    commitments older than the hotkey's registration are kept with status "rejected" and the reason.
    Registers a `miners` partition for every new hotkey."""
    name_the_stage(context)
    epoch = int(context.partition_key)
    frame = records_frame(snapshot_commitments(epoch, chain, hub, settings, store), CommitmentRecord)
    new = [h for h in frame["hotkey"] if not context.instance.has_dynamic_partition(miners_partitions.name, h)]
    if new:
        context.instance.add_dynamic_partitions(miners_partitions.name, new)
    return materialized(context, {
        "block": chain.epoch_start(epoch), "commitments": len(frame),
        "accepted": int((frame["status"] == "ok").sum()), "new_miners": len(new),
        "commitments_table": _table(frame, ["uid", "hotkey", "repo", "revision", "commit_block", "status", "reason"],
                                    more=f"flock epoch report {epoch}"),
    })


def _chain_revisions(chain: ChainResource, settings: ValidatorSettingsResource) -> dict[str, list[tuple[str, str]]]:
    """hotkey -> [(repo, revision)] of its current on-chain commitment, when it decodes and names a competition
    this validator runs (one read of the chain for a whole batch)."""
    out: dict[str, list[tuple[str, str]]] = {}
    competitions = settings.competition_set()
    for raw in chain.commitments():
        try:
            c = Commitment.from_compressed_str(raw.data)
        except CommitmentError:
            continue
        if competitions.for_commitment(c.competition_id) is not None:
            out[raw.hotkey] = [(c.repo_id, c.revision)]
    return out


# Backfill policies on assets are a beta parameter of Dagster's: the warning is known and accepted here.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


def _backfill_policy() -> dg.BackfillPolicy:
    """FLOCK_BACKFILL: single_run (a UI backfill of miners is one run, and Dagster's CLI accepts partition ranges,
    which it does only for single-run policies) or multi_run (UI backfills in runs of FLOCK_MINER_BATCH miners)."""
    batch, kind = batch_settings()
    return dg.BackfillPolicy.single_run() if kind == "single_run" else dg.BackfillPolicy.multi_run(batch)


MINER_BACKFILL = _backfill_policy()


class BatchFailed(FlockError, RuntimeError):
    """Some miners of a batch run failed without a record (a crash outside the evaluator's own recording); the
    others' results are recorded, and a retry redoes only these (the rest come from the store)."""


def for_each_miner(context: dg.AssetExecutionContext, store: StoreResource,
                   work: Callable[[str], dict], log_each: bool = True) -> dg.MaterializeResult:
    """Run `work(hotkey)` for every miner partition of the run (one key, or a partition range: the sensors and
    `flock epoch run` launch batches) and put each miner's metadata on its own partition's materialization.

    One miner's failure does not stop the others: each is recorded (or raised) on its own. Errors that leave no
    record are raised together after the batch, so the step's retry redoes just those miners; a ValidatorFault
    stops the batch at once (nothing is judged on a broken validator). The store keeps one connection for the
    batch. `log_each`: an info line per miner with its metadata (off where the step logged each miner already)."""
    name_the_stage(context)
    hotkeys = list(context.partition_keys)
    failed: list[tuple[str, Exception]] = []
    with validator_faults_stop_the_step(), store.session():
        for hotkey in hotkeys:
            try:
                metadata = work(hotkey)
            except ValidatorFault:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded below, raised after the batch
                if len(hotkeys) == 1:
                    raise
                failed.append((hotkey, exc))
                context.log.warning(f"{hotkey}: {type(exc).__name__}: {exc}")
                continue
            # an empty value is left out: each metadata entry is stored with every event (per miner and epoch)
            metadata = {k: v for k, v in metadata.items() if isinstance(v, dg.MetadataValue) or v != ""}
            context.add_asset_metadata(metadata, partition_key=hotkey)
            if log_each:
                context.log.info(f"{hotkey}: " + ", ".join(f"{k} {v}" for k, v in metadata.items()
                                                           if not isinstance(v, dg.MetadataValue)))
    if failed:
        listed = "; ".join(f"{h}: {type(e).__name__}: {e}" for h, e in failed)
        raise BatchFailed(f"{len(failed)} of {len(hotkeys)} miners failed: {listed}"[:4000]) from failed[0][1]
    return dg.MaterializeResult()  # (metadata here would be repeated on every miner's materialization)


@dg.asset(partitions_def=miners_partitions, group_name="miners", kinds={"python", STORE_KIND},
          deps=[dg.AssetDep(chain_commitments, partition_mapping=dg.LastPartitionMapping())],
          retry_policy=TRANSIENT_RETRIES, backfill_policy=MINER_BACKFILL)
def miner_datasets(context: dg.AssetExecutionContext, chain: ChainResource, hub: HubResource,
                   evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
                   store: StoreResource) -> dg.MaterializeResult:
    """The miner's `data.jsonl` at its committed revision (the latest epoch's, and the chain's current one when it
    differs), downloaded once per revision after a size check, validated row by row. Records every rejected row's
    line and reason, the rows used (the first 100 valid rows: the size cap) and their token counts. A run covers
    one miner or a range of miners."""
    final_try = context.retry_number >= TRANSIENT_RETRIES.max_retries
    epoch = epoch_of_run(context)
    current = _chain_revisions(chain, settings)

    def fetch(hotkey: str) -> dict:
        outcome = fetch_miner_dataset(hotkey, hub, evaluator, settings, store, epoch=epoch,
                                      give_up_on_transient=final_try)
        others = [fetch_miner_dataset(hotkey, hub, evaluator, settings, store, repo=repo, revision=rev,
                                      give_up_on_transient=final_try, row_format=outcome.row_format)
                  for repo, rev in current.get(hotkey, []) if (repo, rev) != (outcome.repo, outcome.revision)]
        rejected = pd.DataFrame(list(outcome.rejected)[:20], columns=["line", "reason"])
        return {
            "epoch": epoch if epoch is not None else -1,
            "status": outcome.status, "reason": outcome.reason or "", "repo": outcome.repo or "",
            "revision": outcome.revision or "", "rows_total": outcome.rows_total, "rows_valid": outcome.rows_valid,
            "rows_used": outcome.rows_used, "size_bytes": outcome.size_bytes, "sha256": outcome.sha256,
            "from_cache": outcome.cached, "also_fetched": ", ".join(f"{o.revision}: {o.status}" for o in others),
            "rejected_rows": _table(rejected, ["line", "reason"]),
        }

    return for_each_miner(context, store, fetch)


@dg.asset(partitions_def=miners_partitions, group_name="miners", kinds={"python", STORE_KIND},
          deps=[dg.AssetDep(miner_datasets, partition_mapping=dg.AllPartitionMapping())],
          backfill_policy=MINER_BACKFILL)
def deduplicated_shards(context: dg.AssetExecutionContext, hub: HubResource, settings: ValidatorSettingsResource,
                        store: StoreResource) -> dg.MaterializeResult:
    """The miner's used rows (latest epoch) minus exact copies of rows that an earlier commitment (block, then uid)
    already contributed, minus rows of the eval set. A miner whose rows are mostly copies or leaks is ineligible,
    with the reason. Depends on every miner's dataset: who keeps a row depends on all commitments of the epoch
    (the epoch's plan is made once and reused by every miner of it)."""
    epoch = epoch_of_run(context)
    with validator_faults_stop_the_step(), store.session():
        shards = build_miner_shards(list(context.partition_keys), hub, settings, store, epoch=epoch)

    def shard_of(hotkey: str) -> dict:
        shard = shards[hotkey]
        if shard is None:
            return {"status": "no_commitment", "reason": "no recorded commitment"}
        return {
            "epoch": shard.epoch, "competition": shard.competition or "", "status": shard.status,
            "reason": shard.reason or "", "rows_in": shard.rows_in,
            "rows_kept": shard.rows_kept, "duplicates_within": shard.duplicates_within,
            "duplicates_earlier": shard.duplicates_earlier, "eval_leaks": shard.eval_leaks,
            "shard_hash": shard.shard_hash or "",
        }

    return for_each_miner(context, store, shard_of)


def miner_progress(context: dg.AssetExecutionContext, total: int) -> Callable[[MinerDone], None]:
    """What an evaluation step tells the run's event log as each miner of its batch finishes, while the step runs:
    one log line, `miner K/N uid U HOTKEY: loss L (R rows, S s; ...)` (or `skipped: REASON`, `failed: ERROR`), in
    the run's log in the UI as it arrives, on the console with `flock epoch run -v`, and read back by the epoch
    runner for its per-miner lines (`MinerDone.of_line`). A log line, not an asset event: the miner's numbers land
    on its partition with the step's materializations, and an event per miner that repeated them would be stored
    again with the asset index (about 2.3 KB each, 0.6 MB an epoch at 256 miners)."""
    done = 0

    def report(miner: MinerDone) -> None:
        nonlocal done
        done += 1
        context.log.info(miner.line(done, total))

    return report


@dg.asset(partitions_def=miners_partitions, group_name="miners", kinds={"pytorch", STORE_KIND}, pool=GPU_POOL,
          deps=[deduplicated_shards], retry_policy=TRANSIENT_RETRIES, op_tags={CELERY_QUEUE_TAG: GPU_QUEUE},
          backfill_policy=MINER_BACKFILL)
def miner_eval_losses(context: dg.AssetExecutionContext, evaluator: EvaluatorResource, hub: HubResource,
                      settings: ValidatorSettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """LoRA fine-tune of the base model on the miner's shard (latest epoch), then the eval loss: mean over eval
    rows of each row's mean assistant-token cross-entropy (nats/token); per-row losses are kept. Cached by
    (shard hash, base model + revision, recipe hash, eval revision). A crash is recorded as a failure with its
    error and retried; it never becomes a loss. A batch run loads the base model once for all its miners and, with
    multi-LoRA (on by default on CUDA), trains them side by side."""
    epoch = epoch_of_run(context)
    hotkeys = list(context.partition_keys)
    with validator_faults_stop_the_step(), store.session():
        records = evaluate_miners(hotkeys, evaluator, hub, store, settings, epoch=epoch,
                                  on_done=miner_progress(context, len(hotkeys)))

    def evaluate(hotkey: str) -> dict:
        record = records[hotkey]
        if isinstance(record, Exception):
            raise record
        return {
            "epoch": epoch if epoch is not None else -1,
            "status": record.status, "reason": record.reason or "",
            "eval_loss": record.eval_loss if record.eval_loss is not None else float("nan"),
            "cache_key": record.cache_key or "", "from_cache": record.cached, "attempts": record.attempts,
            "seconds": record.seconds, "train_tokens": record.train_tokens,
            "competition": record.competition or "",
            "base_loss": record.base_loss if record.base_loss is not None else float("nan"),
            **{k: float(v) for k, v in (record.metrics or {}).items() if k != "pairs"},
        }

    return for_each_miner(context, store, evaluate, log_each=False)  # each miner's progress line said it


@dg.asset(partitions_def=epochs_partitions, group_name="scoring", kinds={"python", STORE_KIND},
          deps=[dg.AssetDep(miner_eval_losses, partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep(deduplicated_shards, partition_mapping=dg.AllPartitionMapping())])
def win_rates(context: dg.AssetExecutionContext, evaluator: EvaluatorResource, settings: ValidatorSettingsResource,
              store: StoreResource, hub: HubResource, chain: ChainResource) -> dg.MaterializeResult:
    """Pairwise comparison of the eligible miners' eval losses (the earlier commitment gets a (1 - epsilon)
    advantage), win rate = wins / (n - 1), weights = softmax(win rate / temperature) blended with the previous
    epoch's weights (or the curve / top-k mode the settings select). A miner whose loss does not beat the base
    model's scores nothing. Every other miner is listed with weight 0 and the reason."""
    name_the_stage(context)
    with validator_faults_stop_the_step(), store.session():
        frame = records_frame(compute_epoch_scores(int(context.partition_key), evaluator, settings, store, hub,
                                                   chain), ScoreRecord)
    as_u16 = u16_shares({int(u): float(w) for u, w in zip(frame["uid"], frame["weight"])})
    frame["as_u16"] = [as_u16.get(int(u), 0.0) for u in frame["uid"]]  # the weight after the u16 conversion
    return materialized(context, {
        "scored": int((frame["status"] == "scored").sum()), "miners": len(frame),
        "competitions": ", ".join(sorted({c for c in frame["competition"] if isinstance(c, str)})),
        "scores_table": _table(frame.sort_values("weight", ascending=False),
                               ["uid", "hotkey", "competition", "status", "eval_loss", "score", "weight",
                                "as_u16", "reason", "explanation"], more=f"flock epoch report {context.partition_key}"),
    })


@dg.asset(partitions_def=epochs_partitions, group_name="scoring", kinds={"python"}, deps=[win_rates])
def submitted_weights(context: dg.AssetExecutionContext, chain: ChainResource, hub: HubResource,
                      settings: ValidatorSettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """The epoch's weight vector over every uid, exactly as the chain receives it (u16, after the SDK's conform
    step), and its fate: refused before sending (with the reason), rate limited (and when to retry), included or
    committed, then applied or not applied, read back from the chain's stored weights. Sent once per epoch: a
    re-materialization confirms or reports the recorded answer. With `report_repo` set, the epoch's score table
    and the weights' state are published there for miners (a hub failure is a warning: the next run publishes)."""
    name_the_stage(context)
    epoch = int(context.partition_key)
    result = submit_epoch_weights(epoch, chain, settings, store)
    sent = result.submission
    if sent.state not in ("applied", "included", "committed"):
        context.log.warning(f"weights {sent.state}: {sent.message}{'; ' + sent.detail if sent.detail else ''}")
    report = ""
    if settings.report_repo:
        try:
            revision = publish_epoch_report(epoch, hub, settings, store)
            report = f"{settings.report_repo}@{revision}" if revision else f"{settings.report_repo}: unchanged"
        except HubError as exc:
            report = f"not published: {exc}"
            context.log.warning(f"epoch report {report}")
    return materialized(context, {
        "report": report,
        "state": sent.state or "", "success": bool(sent.success), "block": int(sent.block), "message": sent.message,
        "detail": sent.detail or "", "version_key": int(sent.version_key or 0),
        "chain_epoch": int(sent.chain_epoch) if sent.chain_epoch is not None else -1,
        "reveal_epoch": int(sent.reveal_epoch) if sent.reveal_epoch is not None else -1,
        "uids": str(list(sent.uids)), "weights_u16": str(list(sent.weights)), "sent_now": result.sent_now,
    })


@dg.asset(partitions_def=epochs_partitions, group_name="scoring", kinds={"python"}, deps=[win_rates])
def miner_history(context: dg.AssetExecutionContext, settings: ValidatorSettingsResource,
                  store: StoreResource, evaluator: EvaluatorResource) -> dg.MaterializeResult:
    """Every miner of the epoch side by side (the table) and as series: one metadata value per leading miner and
    measure (eval loss, rank in its competition, weight at full precision), under the same key in every epoch, and
    the base model's loss per competition (the UI draws at most 100 plots: the 30 leading miners by weight are
    plotted, and `flock miner history HOTKEY` prints any miner's). The UI's plots of its metadata (Overview,
    Metadata, Plots, by Partitions) draw each as a line over the epochs: one miner's loss, rank and weight over
    time. (The per-miner assets are partitioned by miner alone, so that a later epoch's result supersedes an
    earlier failure; the epoch dimension of their history is here.)"""
    name_the_stage(context)
    from flock_pipeline.validator.history import PLOTTED_MINERS, epoch_history, plotted_note

    epoch = int(context.partition_key)
    with store.session():
        series, table = epoch_history(epoch, settings, store, evaluator)
    return materialized(context, {
        # as text, so that the plots are the series
        "epoch": dg.MetadataValue.text(str(epoch)), "miners": dg.MetadataValue.text(str(len(table))),
        "plotted": dg.MetadataValue.text(plotted_note(min(PLOTTED_MINERS, len(table)), len(table))),
        "competitions": ", ".join(sorted({c for c in table["competition"] if isinstance(c, str)})),
        "miners_table": _table(table, list(table.columns), more=f"flock epoch report {epoch}"),
        **series,
    })


@dg.asset(partitions_def=epochs_partitions, group_name="corpus", kinds={"parquet"},
          deps=[win_rates, dg.AssetDep(deduplicated_shards, partition_mapping=dg.AllPartitionMapping())])
def final_corpus(context: dg.AssetExecutionContext, settings: ValidatorSettingsResource,
                 store: StoreResource, evaluator: EvaluatorResource, hub: HubResource) -> dg.MaterializeResult:
    """The selected miners' deduplicated rows as a Hugging Face dataset with two configs, `sft` (chat rows) and
    `dpo` (preference pairs), each row with its provenance (hotkey, uid, repo, revision, commit block, row hash,
    competition, epoch, miner weight, eval loss, base model and eval set): the epoch's release folder
    (`corpus_dir/epoch-N/`: Parquet per config, JSONL, a dataset card) and the cumulative `corpus_dir/latest/`
    (every row once across epochs). The miners are those the corpus policy selects (by default the scored ones
    holding 95 % of their competition's weight). The evaluator is used only for derived pairs (`derive_dpo`);
    with `corpus_repo`, `latest/` is uploaded there (a transient hub failure retries this step; the written
    release is kept either way)."""
    name_the_stage(context)
    try:
        with store.session():
            corpus = build_epoch_corpus(int(context.partition_key), settings, store, evaluator=evaluator,
                                        hub=hub)
    except HubError as exc:
        if exc.transient:
            raise dg.RetryRequested(max_retries=2, seconds_to_wait=5) from exc
        raise
    card_path = Path(corpus.release_dir or "") / "README.md"
    return materialized(context, {
        "rows": corpus.rows, "sft_rows": int(corpus.sft_rows or 0), "dpo_rows": int(corpus.dpo_rows or 0),
        "miners": corpus.miners, "sha256": corpus.sha256,
        "release": dg.MetadataValue.path(corpus.release_dir or ""),
        "latest": dg.MetadataValue.path(corpus.latest_dir or ""),
        "jsonl": dg.MetadataValue.path(corpus.jsonl_path), "parquet": dg.MetadataValue.path(corpus.parquet_path),
        "published": f"{corpus.published_repo}@{corpus.published_revision}" if corpus.published_revision else "",
        "card": dg.MetadataValue.md(card_path.read_text(encoding="utf-8") if card_path.is_file() else ""),
    })


@dg.asset(partitions_def=epochs_partitions, group_name="corpus", kinds={"pytorch", STORE_KIND}, pool=GPU_POOL,
          deps=[final_corpus])
def corpus_value(context: dg.AssetExecutionContext, settings: ValidatorSettingsResource, store: StoreResource,
                 evaluator: EvaluatorResource, hub: HubResource) -> dg.MaterializeResult:
    """What training on the epoch's release is worth: the base model fine-tuned with the competition's recipe on the
    release's rows, scored on a held-out set no miner is scored against (each competition's `heldout_repo`), against
    the base model, rows drawn at random from everything submitted that epoch (seeded draws) and the previous
    release, the same number of rows each (`FLOCK_SETTINGS` `value`: max_rows, draws). Recorded, and written into
    the release's card. Not part of the epoch's own run (it trains several models): materialize it on demand, on a
    schedule, or with `flock corpus value`."""
    name_the_stage(context)
    from statistics import mean

    from flock_pipeline.validator.value import corpus_value as measure

    with store.session():
        values, skipped = measure(int(context.partition_key), settings, store, evaluator, hub)
    metadata: dict = {f"not measured · {config}": why for config, why in skipped.items()}
    for v in values:
        metadata[f"release loss · {v.config}"] = float(v.release_loss)
        if v.random_losses:
            metadata[f"random rows loss · {v.config}"] = float(mean(v.random_losses))
        if v.previous_loss is not None:
            metadata[f"previous release loss · {v.config}"] = float(v.previous_loss)
        if v.base_loss is not None:
            metadata[f"base model loss · {v.config}"] = float(v.base_loss)
        metadata[f"rows · {v.config}"] = int(v.rows)
    return materialized(context, metadata)


@dg.asset(partitions_def=epochs_partitions, group_name="corpus", kinds={"html"},
          deps=[win_rates, submitted_weights, final_corpus, miner_history])
def epoch_report(context: dg.AssetExecutionContext, settings: ValidatorSettingsResource,
                 store: StoreResource, evaluator: EvaluatorResource) -> dg.MaterializeResult:
    """Per competition, what the validator decided and why: every miner's eval loss against the base model's, the
    weights, the pairwise win matrix, rows kept and dropped by reason, each miner's loss and weight over the last
    epochs (one PNG per competition, matplotlib), and every miner's status and the explanation of its weight; one
    self-contained HTML page in `corpus_dir/reports/epoch-N/`."""
    name_the_stage(context)
    from flock_pipeline.defs.paid import figures_markdown, paid_table
    from flock_pipeline.validator.epoch_report import build_epoch_report
    from flock_pipeline.validator.report_table import epoch_report as report_entries

    epoch = int(context.partition_key)
    with store.session():
        paths, summary = build_epoch_report(epoch, settings, store, evaluator)
        paid = paid_table(report_entries(epoch, store), epoch)  # first: the asset's page shows the table inline
    figures = figures_markdown(paths)
    return materialized(context, {
        "who was paid and why": paid, **({"figures": figures} if figures is not None else {}),
        "epoch": int(context.partition_key), "html": dg.MetadataValue.path(paths["html"]),
        **{f"figure {k.split(':', 1)[1]}": dg.MetadataValue.path(v) for k, v in paths.items() if k.startswith("png:")},
        "report": dg.MetadataValue.md(summary),
    })


ASSETS = [chain_commitments, miner_datasets, deduplicated_shards, miner_eval_losses, win_rates, submitted_weights,
          miner_history, final_corpus, epoch_report, corpus_value]
# an epoch's own stage, in one run
SCORING_STAGE = [win_rates, submitted_weights, miner_history, final_corpus, epoch_report]
