import numpy as np
import pytest

from chronoprice.evaluation.metrics import (
    INTERVAL_LEVELS,
    conformal_quantiles,
    step_metrics,
)
from chronoprice.evaluation.walkforward import evaluate_forecaster
from chronoprice.model.forecasters import NaiveForecaster, walk_forward


def test_step_metrics_on_hand_computed_values():
    result = {
        "origin_close": np.array([[100.0], [100.0]]),
        "naive": np.array([[100.0, 100.0], [100.0, 100.0]]),
        "actual": np.array([[101.0, 99.0], [99.0, 100.0]]),
        "mean": np.array([[100.5, 100.0], [100.5, 100.0]]),
        "lower": np.array([[100.0, 98.0], [100.0, 98.0]]),
        "upper": np.array([[102.0, 102.0], [102.0, 102.0]]),
    }
    rows = step_metrics(result, 0.9).to_dict("records")
    assert rows[0]["mae_model"] == pytest.approx(1.0) and rows[0]["mae_naive"] == pytest.approx(1.0)
    assert rows[1]["mae_model"] == pytest.approx(0.5) and rows[1]["mae_naive"] == pytest.approx(0.5)
    assert rows[0]["rmse_model"] == pytest.approx(np.sqrt((0.25 + 2.25) / 2))
    assert rows[0]["direction_accuracy"] == pytest.approx(0.5)  # up called right, down called wrong
    assert rows[1]["direction_accuracy"] == pytest.approx(0.0)  # flat moves are left out
    assert rows[0]["coverage"] == pytest.approx(0.5) and rows[1]["coverage"] == pytest.approx(1.0)
    assert rows[0]["mape_naive"] == pytest.approx(100 * (1 / 101 + 1 / 99) / 2)


def test_walk_forward_of_the_naive_baseline_has_ratio_one():
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.001, 500)))
    metrics = step_metrics(walk_forward(NaiveForecaster(10), closes), 0.9)
    assert len(metrics) == 10
    np.testing.assert_allclose(metrics["mae_ratio"], 1.0)
    with pytest.raises(ValueError, match="at least 70 candles"):
        walk_forward(NaiveForecaster(10), closes[:60])


class UpOneEachStep:
    """A hand-checkable forecaster: the last close plus 1, 2, ... for steps 1, 2, ..., with static
    intervals wide enough to cover everything (1e4 recent standard deviations)."""

    window, horizon = 3, 2
    metadata = {"intervals": {"score_quantile": {f"{level:.2f}": [1e4, 1e4] for level in INTERVAL_LEVELS}}}

    def forecast(self, windows):
        mean = np.asarray(windows)[:, -1:] + np.array([[1.0, 2.0]])
        return {"mean": mean, "lower": mean, "upper": mean}


def test_evaluate_forecaster_on_a_hand_computed_case():
    closes = np.array([100.0, 101.0, 102.0, 101.0, 100.0, 101.0, 103.0])
    # origins end at 102, 101, 100; the model says [103, 104], [102, 103], [101, 102];
    # naive says [102, 102], [101, 101], [100, 100]; what came: [101, 100], [100, 101], [101, 103].
    table, arrays = evaluate_forecaster(UpOneEachStep(), closes, scored_from=0, level=0.9)
    rows = table.to_dict("records")
    assert [row["mae_model"] for row in rows] == pytest.approx([4 / 3, 7 / 3])
    assert [row["mae_naive"] for row in rows] == pytest.approx([1.0, 5 / 3])
    assert [row["mae_ratio"] for row in rows] == pytest.approx([4 / 3, 7 / 5])
    assert [row["direction_accuracy"] for row in rows] == pytest.approx([1 / 3, 1 / 2]), "the flat move is left out"
    assert rows[1]["rmse_naive"] == pytest.approx(np.sqrt((4 + 0 + 9) / 3))
    assert all(row["coverage"] == row["coverage_0.90"] == row["coverage_static_0.90"] == 1.0 for row in rows)
    assert arrays["actual"].tolist() == [[101, 100], [100, 101], [101, 103]]
    later, _ = evaluate_forecaster(UpOneEachStep(), closes, scored_from=1, level=0.9)
    assert later["mae_model"].tolist() == pytest.approx([1.0, 1.5]) and later["mae_naive"].tolist() == pytest.approx([1.0, 1.5])


def test_conformal_quantiles_cover_the_requested_share():
    errors = np.abs(np.random.default_rng(5).standard_t(4, size=(5000, 3))) * np.array([1.0, 2.0, 3.0])
    table = conformal_quantiles(errors)
    for level, widths in table.items():
        coverage = (np.abs(errors) <= np.array(widths)).mean(axis=0)
        assert np.all(coverage >= float(level)) and np.all(coverage < float(level) + 0.01)
    assert table["0.90"][0] < table["0.90"][1] < table["0.90"][2]


def test_adaptive_quantiles_use_only_matured_scores():
    from chronoprice.evaluation.metrics import adaptive_quantiles

    scores = np.zeros((400, 2))
    scores[300:, :] = 10.0  # the market turns wild at origin 300
    quantiles = adaptive_quantiles(scores, 0.9, fallback=np.array([7.0, 7.0]), window=100, min_errors=50)
    assert quantiles[10, 0] == 7.0, "too few matured scores: the calibration saved with the model"
    assert quantiles[300, 0] == 0.0, "origin 300's own score is not known at origin 300"
    assert quantiles[301, 1] == 0.0 and quantiles[302, 1] == 0.0, "a step-2 score matures two origins later"
    assert quantiles[399, 0] == 10.0, "once most of the window is wild, so is the interval"


def test_live_quantiles_match_the_walk_forward_rule():
    from chronoprice.evaluation.metrics import adaptive_quantiles, live_quantiles

    scores = np.abs(np.random.default_rng(2).normal(size=(700, 3)))
    walk = adaptive_quantiles(scores, 0.8, np.ones(3), window=360, min_errors=120)
    # The next origin (700) sees step k's scores up to origin 700 - k.
    live = live_quantiles({k: scores[: 700 - k + 1, k - 1] for k in (1, 2, 3)}, 0.8, np.ones(3), window=360, min_errors=120)
    extended = adaptive_quantiles(np.vstack([scores, np.zeros((1, 3))]), 0.8, np.ones(3), window=360, min_errors=120)
    np.testing.assert_allclose(live, extended[700])
    assert walk.shape == scores.shape


def test_wilson_interval_known_value():
    from chronoprice.evaluation.metrics import wilson_interval

    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_diebold_mariano_detects_a_better_model_and_not_a_tie():
    from chronoprice.evaluation.metrics import diebold_mariano

    rng = np.random.default_rng(9)
    naive = rng.normal(0, 1, 3000)
    statistic, p_value = diebold_mariano(naive, naive, horizon=3)
    assert statistic == 0.0 and p_value == 1.0
    statistic, p_value = diebold_mariano(naive * 0.8, naive, horizon=3)
    assert statistic < -5 and p_value < 1e-6
    statistic, p_value = diebold_mariano(rng.normal(0, 1, 3000), naive, horizon=1)
    assert p_value > 0.01


def test_baseline_forecasters():
    from chronoprice.model.forecasters import DriftForecaster, MovingAverageForecaster

    windows = np.array([[100.0, 110.0, 121.0]])
    np.testing.assert_allclose(DriftForecaster(2).forecast(windows)["mean"], [[133.1, 146.41]])
    np.testing.assert_allclose(MovingAverageForecaster(2).forecast(windows)["mean"], [[110.333333, 110.333333]])


def test_fit_shrinkage_weights_the_model_by_what_helped():
    from chronoprice.evaluation.metrics import SHRINKAGE_GRID, fit_shrinkage

    rng = np.random.default_rng(4)
    origin = np.full((2000, 1), 100.0)
    signal = rng.normal(0, 0.001, (2000, 3))
    faint = 0.3 * signal[:, 2] + rng.normal(0, 0.001, 2000)
    actual = origin * np.exp(np.column_stack([signal[:, 0], rng.normal(0, 0.001, 2000), faint]))
    weights = fit_shrinkage(signal, actual, origin)
    assert 0.9 <= weights[0] <= 1.0, "a move that comes true keeps its full weight"
    assert weights[1] <= 0.1, "pure noise is shrunk to the last close"
    errors = [np.abs(origin[:, 0] * np.exp(weight * signal[:, 2]) - actual[:, 2]).mean() for weight in SHRINKAGE_GRID]
    assert 0 < weights[2] < SHRINKAGE_GRID[int(np.argmin(errors))], \
        "a faint signal is kept, but only as far as its gain clearly exceeds the noise"
    assert min(weights) >= 0 and max(weights) <= 1
