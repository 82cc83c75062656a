import numpy as np
import pytest

from chronoprice.evaluation import conformal_halfwidths, step_metrics, walk_forward
from chronoprice.forecast import NaiveForecaster


def test_step_metrics_on_hand_computed_values():
    result = {
        "origin_close": np.array([[100.0], [100.0]]),
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
    with pytest.raises(ValueError, match="at least 70 closes"):
        walk_forward(NaiveForecaster(10), closes[:60])


def test_conformal_halfwidths_cover_the_requested_share():
    errors = np.random.default_rng(5).standard_t(4, size=(5000, 3)) * np.array([1.0, 2.0, 3.0])
    table = conformal_halfwidths(errors)
    for level, widths in table.items():
        coverage = (np.abs(errors) <= np.array(widths)).mean(axis=0)
        assert np.all(coverage >= float(level)) and np.all(coverage < float(level) + 0.01)
    assert table["0.90"][0] < table["0.90"][1] < table["0.90"][2]
