"""`miner_history`'s series from recorded scores, without a model: ranks per competition, gaps, an empty epoch."""

import math

from flock_pipeline.resources import EvaluatorResource, ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import ScoreRecord
from flock_pipeline.validator.history import epoch_history, ranks, series_key


def _score(uid, status, loss, weight, competition="curation", hotkey=None):
    return ScoreRecord(epoch=4, hotkey=hotkey or f"hk{uid}", uid=uid, status=status, reason=None, eval_loss=loss,
                       score=0.0, weight=weight, competition=competition, competition_weight=weight)


def test_ranks_go_by_weight_then_loss_within_each_competition():
    scores = [_score(1, "scored", 1.9, 0.2), _score(2, "scored", 1.7, 0.5), _score(3, "scored", 1.8, 0.2),
              _score(4, "no_improvement", 2.9, 0.0), _score(5, "reward", None, 0.1, "selection"),
              _score(6, "ineligible", None, 0.0, "selection")]
    assert ranks(scores) == {"hk2": 1, "hk3": 2, "hk1": 3, "hk5": 1}  # ties on weight: the lower loss first


def test_series_per_miner_and_an_epoch_without_commitments(tmp_path):
    store = StoreResource(url=f"duckdb://{tmp_path / 'w.duckdb'}")
    settings = ValidatorSettingsResource()
    evaluator = EvaluatorResource(cache_dir=str(tmp_path / "models"))
    assert epoch_history(3, settings, store, evaluator)[0] == {}  # nobody committed: an empty history
    long = "5F" + "x" * 46  # an SS58-length hotkey is shortened in the key
    store.record_scores(4, [_score(1, "scored", 1.75, 0.999996), _score(2, "scored", 1.96, 0.000004),
                                _score(3, "ineligible", math.nan, 0.0, hotkey=long)])
    series, table = epoch_history(4, settings, store, evaluator)
    assert series == {series_key(1, "hk1", "eval loss"): 1.75, series_key(1, "hk1", "rank"): 1,
                      series_key(1, "hk1", "weight"): 0.999996, series_key(2, "hk2", "eval loss"): 1.96,
                      series_key(2, "hk2", "rank"): 2, series_key(2, "hk2", "weight"): 0.000004,
                      series_key(3, long, "weight"): 0.0}
    assert series_key(3, long, "weight") == "uid 3 5Fxxxxxx… · weight"
    assert list(table["hotkey"]) == ["hk1", "hk2", long] and list(table["rank"])[:2] == [1, 2]


def test_only_the_leading_miners_are_plotted_under_the_uis_100_plots(tmp_path):
    from flock_pipeline.validator.history import PLOTTED_MINERS, plotted_note

    store = StoreResource(url=f"duckdb://{tmp_path / 'w.duckdb'}")
    settings = ValidatorSettingsResource()
    evaluator = EvaluatorResource(cache_dir=str(tmp_path / "models"))
    n = PLOTTED_MINERS + 10
    weights = [i + 1.0 for i in range(n)]
    store.record_scores(4, [_score(i, "scored", 2.0 + i / 100, w / sum(weights)) for i, w in enumerate(weights)])
    series, table = epoch_history(4, settings, store, evaluator)
    assert len(table) == n and len(series) == 3 * PLOTTED_MINERS < 100
    plotted = {int(k.split()[1]) for k in series}
    assert plotted == set(range(10, n))  # the largest weights
    assert "flock miner history HOTKEY" in plotted_note(PLOTTED_MINERS, n)
    assert plotted_note(6, 6) == "every miner of the epoch (6)"
