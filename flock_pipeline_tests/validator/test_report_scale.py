"""At the subnet's size (256 miners), without training: the scoring step's explanations are summarised (wins and
losses counted, the closest comparisons named) with every comparison kept in the store for `flock epoch report N
--miner HOTKEY`; every metadata value the scoring and report assets attach is bounded; the report's figure names the
leaders and draws the others together."""

import json
import random
import re

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from flock_pipeline.core.scoring import CLOSEST, LISTED_COMPARISONS
from flock_pipeline.resources import EvaluatorResource, ValidatorSettingsResource
from flock_pipeline.resources.chain import LocalChainResource
from flock_pipeline.resources.hub import LocalHubResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import (CommitmentRecord, EpochRecord, EvalResultRecord, ScoreDetailRecord, ScoreRecord,
                                  ShardRecord, StoreOps)
from flock_pipeline.validator.evaluation import BASE_SHARD, cache_key
from flock_pipeline.validator.scoring import compute_epoch_scores

MINERS, EPOCH, EVAL_REVISION = 256, 3, "e" * 40
METADATA_LIMIT = 256 * 1024
PROVENANCE = {"base_model": "tiny", "base_revision": "r1", "recipe_hash": "h1", "versions": {}}


class RecordedEvaluator:
    """What the scoring step asks of the evaluator when every result is already recorded: the provenance (the cache
    keys' part), no model."""

    def provenance(self, build: bool = True, recipe: dict | None = None) -> dict:
        return PROVENANCE


def _seed(store: StoreResource) -> None:
    """256 committed, eligible, evaluated miners (distinct losses, a few exactly tied) and the base model's loss."""
    rng = random.Random(5)
    commitments, shards, results = [], [], []
    for uid in range(MINERS):
        hotkey, shard = f"hk-{uid:03d}", f"shard-{uid:03d}"
        loss = round(1.6 + 0.8 * rng.random(), 6) if uid % 50 else 2.0  # uids 0, 50, 100, ...: one loss
        commitments.append(CommitmentRecord(epoch=EPOCH, hotkey=hotkey, uid=uid, repo=f"m{uid}/d", competition_id="1",
                                            revision="a" * 40, commit_block=1000 + uid, registration_block=1,
                                            status="ok", reason=None, competition="curation"))
        shards.append(ShardRecord(epoch=EPOCH, hotkey=hotkey, uid=uid, repo=f"m{uid}/d", revision="a" * 40,
                                  commit_block=1000 + uid, status="eligible", reason=None, rows_in=100,
                                  rows_kept=97, duplicates_earlier=3, shard_hash=shard, competition="curation"))
        results.append(EvalResultRecord(cache_key=cache_key(shard, PROVENANCE, EVAL_REVISION), shard_hash=shard,
                                        status="ok", final=True, error=None, eval_loss=loss,
                                        per_row_losses=(loss,) * 4, provenance=PROVENANCE))
    results.append(EvalResultRecord(cache_key=cache_key(BASE_SHARD, PROVENANCE, EVAL_REVISION),
                                    shard_hash=BASE_SHARD, status="ok", final=True, error=None, eval_loss=2.5,
                                    provenance=PROVENANCE))
    store.record_epoch(EpochRecord(epoch=EPOCH, block=2000, eval_repo="flock/eval-atlas",
                                   eval_revision=EVAL_REVISION), commitments)
    with store._backend().transaction() as tx:  # one transaction, not 512
        StoreOps._replace(tx, ShardRecord, {"epoch": EPOCH}, shards)
        StoreOps._replace(tx, EvalResultRecord, {"shard_hash": [r.shard_hash for r in results]}, results)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A home whose store holds an epoch of 256 miners scored by the scoring step itself (their results recorded,
    nothing trained); (home, settings, store, scores)."""
    home = tmp_path_factory.mktemp("scale")
    store = StoreResource(url=f"duckdb://{home / 'warehouse.duckdb'}")
    settings = ValidatorSettingsResource(corpus_dir=str(home / "corpus"))
    _seed(store)
    with store.session():  # one connection, as the asset holds it
        scores = compute_epoch_scores(EPOCH, RecordedEvaluator(), settings, store, hub=None)
    return home, settings, store, scores


def test_each_explanation_counts_the_comparisons_and_names_the_closest(scored):
    _, _, store, scores = scored
    by_uid = {r.uid: r for r in scores}
    details = {d.hotkey: d.detail.split("; ") for d in store.rows(ScoreDetailRecord, epoch=EPOCH)}
    assert len(scores) == MINERS and all(r.status == "scored" for r in scores)
    for r in scores:
        text = r.explanation
        assert len(text) <= 1500, (r.uid, len(text))  # the pairwise list (~20 KB at this size) is not in it
        won = round(r.score * (MINERS - 1))
        counted = re.search(rf"win rate {r.score:.3f} = (\d+) of {MINERS - 1} comparisons won, (\d+) lost", text)
        assert counted and int(counted[1]) == won, text
        assert f"every comparison: `flock epoch report {EPOCH} --miner {r.hotkey}`" in text
        detail = details[r.hotkey]
        assert len(detail) == MINERS - 1 and sum(p.startswith("beat ") for p in detail) == won
        assert sum(p.startswith("lost to ") for p in detail) == int(counted[2])
    # the closest are the smallest margins between the losses as compared (the earlier commitment's x 0.96)
    text = by_uid[7].explanation
    named = re.findall(r"(?:beat|lost to|tied with) uid (\d+) \([^)]*, by ([\d.]+)\)", text.split("closest: ")[1])
    assert len(named) == CLOSEST > 0
    margins = sorted(abs(_compared(by_uid[7], o) - _compared(o, by_uid[7])) for o in scores if o.uid != 7)
    assert [float(m) for _, m in named] == [round(m, 4) for m in margins[:CLOSEST]]


def _compared(a: ScoreRecord, b: ScoreRecord) -> float:
    return a.eval_loss * 0.96 if a.uid < b.uid else a.eval_loss  # commit block 1000 + uid: the lower uid is earlier


def test_a_handful_of_miners_still_get_every_comparison_listed(scored):
    from flock_pipeline.core.scoring import Contender, ScoringConfig, explain_scores_in_detail, score_epoch

    few = [Contender(u, 1.5 + u / 100, 10 + u) for u in range(LISTED_COMPARISONS + 1)]
    scores, weights = score_epoch(few, {}, ScoringConfig())
    texts, details = explain_scores_in_detail(few, {}, ScoringConfig(), scores, weights)
    assert details == {} and all(texts[u].count("uid ") == LISTED_COMPARISONS for u in texts)


def _sizes(metadata: dict) -> dict[str, int]:
    """key -> bytes of the value as Dagster stores it."""
    from dagster._core.definitions.metadata import normalize_metadata

    return {k: len(serialize_value(v).encode()) for k, v in normalize_metadata(metadata).items()}


def test_every_metadata_value_of_the_scoring_and_report_assets_is_bounded(scored, monkeypatch):
    from flock_pipeline.defs import assets
    from flock_pipeline.validator import epoch_report

    home, settings, store, scores = scored
    monkeypatch.setattr(assets, "compute_epoch_scores", lambda *args, **kwargs: scores)  # scored above
    monkeypatch.setattr(epoch_report, "figure", lambda report, epoch: b"\x89PNG")  # the figure's own test below
    evaluator = EvaluatorResource(cache_dir=str(home / "models"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(assets.epochs_partitions.name, [str(EPOCH)])
    stage = [assets.win_rates, assets.miner_history, assets.epoch_report]
    result = dg.materialize(stage, partition_key=str(EPOCH), instance=instance, resources={
        "evaluator": evaluator, "settings": settings, "store": store,
        "hub": LocalHubResource(root=str(home / "hub")), "chain": LocalChainResource(path=str(home / "chain.json"))})
    metadata = {a.key.to_user_string(): result.asset_materializations_for_node(a.key.to_user_string())[0].metadata
                for a in stage}
    sizes = {f"{asset} · {k}": n for asset, values in metadata.items() for k, n in _sizes(values).items()}
    assert max(sizes.values()) <= METADATA_LIMIT, max(sizes.items(), key=lambda kv: kv[1])
    assert sum(sizes.values()) <= 1024 * 1024, sum(sizes.values())  # the epoch's scoring stage: bounded in all
    table = metadata["win_rates"]["scores_table"].value
    assert "win_rates" in metadata and len(metadata) == len(stage)
    assert f"| {MINERS - assets.TABLE_ROWS} more in `flock epoch report {EPOCH}` |" in table
    top = max(scores, key=lambda r: r.weight)
    assert table.splitlines()[2].startswith(f"| {top.uid} | {top.hotkey} |")  # the most weight first
    report = metadata["epoch_report"]["report"].value
    assert f"{MINERS - epoch_report.MARKDOWN_ROWS} more in `flock epoch report {EPOCH}`" in report
    page = (home / "corpus" / "reports" / f"epoch-{EPOCH}" / "report.html").read_text()
    assert all(f"<td>{r.hotkey}</td>" in page for r in scores)  # the page lists every miner


def test_the_figure_names_the_leaders_and_draws_the_others_together(scored):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flock_pipeline.validator.epoch_report import LEADERS, collect, draw_figure

    _, settings, store, scores = scored
    (report,) = collect(EPOCH, settings, store, {"curation": 2.5})
    fig = draw_figure(report, EPOCH)
    try:
        losses, weights, pairwise, rows, loss_trend, weight_trend = fig.axes[:6]
        leaders = sorted(scores, key=lambda r: (-r.weight, r.eval_loss))[:LEADERS]
        named = [f"{r.uid} {r.hotkey}" for r in leaders] + [f"{MINERS - LEADERS} others"]
        for ax in (losses, weights, rows):
            assert [t.get_text() for t in ax.get_xticklabels()] == named
        assert weights.patches[-1].get_height() == pytest.approx(sum(r.weight for r in scores) -
                                                                 sum(r.weight for r in leaders))
        assert len(pairwise.get_xticklabels()) == LEADERS + 1  # the others: one row and one column
        for ax in (loss_trend, weight_trend):
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend == [f"{MINERS - LEADERS} others", *named[:-1]]  # no 256-entry legend
            assert len(ax.get_lines()) == LEADERS + (ax is loss_trend)  # (+ the base model's line)
            (grey,) = ax.collections  # the others' lines, one each
            assert len(grey.get_segments()) == MINERS - LEADERS
    finally:
        plt.close(fig)


def test_epoch_report_miner_prints_every_comparison(scored, monkeypatch, capsys):
    from flock_pipeline.cli import main

    home, _, _, scores = scored
    monkeypatch.setenv("FLOCK_HOME", str(home))
    monkeypatch.setenv("FLOCK_NETWORK", "local")
    assert main(["epoch", "report", str(EPOCH), "--miner", "hk-007"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"epoch {EPOCH}: uid 7 hk-007, curation: scored")
    assert out[2] == f"every comparison ({MINERS - 1}):" and len(out) == 3 + MINERS - 1
    assert out[3].startswith("  ") and re.match(r"  (beat|lost to|tied with) uid 0 \(", out[3])
    assert main(["epoch", "report", str(EPOCH), "--miner", "hk-007", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["miner"]["comparisons"]) == MINERS - 1 and doc["miner"]["hotkey"] == "hk-007"
    assert main(["epoch", "report", str(EPOCH), "--miner", "nobody"]) == 2
    assert "nobody has no entry in epoch 3" in capsys.readouterr().err
