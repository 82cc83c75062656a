"""One contract, every forecaster: the LSTM on each engine and the naive, drift and
moving-average baselines answer `forecast(windows)` the same way."""

import numpy as np
import pytest

from chronoprice.model.features import candle_rows, walk_forward_windows
from chronoprice.model.forecasters import (
    DriftForecaster,
    MovingAverageForecaster,
    NaiveForecaster,
    load_forecaster,
)
from tests.helpers import make_candles

HORIZON = 10


@pytest.fixture(scope="module", params=["lstm-keras", "lstm-litert", "lstm-onnx", "lstm-native", "naive", "drift", "moving_average"])
def forecaster(request, tiny_model):
    baselines = {"naive": NaiveForecaster, "drift": DriftForecaster, "moving_average": MovingAverageForecaster}
    if request.param in baselines:
        return baselines[request.param](HORIZON)
    return load_forecaster(tiny_model, request.param.split("-")[1])


@pytest.fixture(scope="module")
def windows():
    """Twelve 60-candle windows of high, low, close, volume, spread over 900 minutes."""
    return walk_forward_windows(candle_rows(make_candles(900)))[0][::70]


@pytest.mark.slow
def test_forecast_gives_a_price_path_and_band_per_window(forecaster, windows):
    before = windows.copy()
    forecast = forecaster.forecast(windows)
    assert set(forecast) == {"mean", "lower", "upper"}
    for values in forecast.values():
        assert values.shape == (len(windows), forecaster.horizon) == (len(windows), HORIZON)
        assert np.isfinite(values).all() and (values > 0).all()
    assert (forecast["lower"] <= forecast["mean"]).all() and (forecast["mean"] <= forecast["upper"]).all()
    np.testing.assert_array_equal(windows, before, err_msg="the windows are not changed")


def test_forecast_stays_near_the_last_close(forecaster, windows):
    """Ten minutes ahead, a BTC-like market moves a few tenths of a percent: a path 5 % away
    from the last close is a bug (scaling, units, a wrong channel), not a forecast."""
    last_close = windows[:, -1:, 2]
    assert np.abs(forecaster.forecast(windows)["mean"] / last_close - 1).max() < 0.05


@pytest.mark.slow
def test_a_batch_forecasts_each_window_as_if_alone(forecaster, windows):
    together = forecaster.forecast(windows)
    for row in (0, len(windows) - 1):
        alone = forecaster.forecast(windows[row : row + 1])
        for key in together:
            np.testing.assert_allclose(alone[key][0], together[key][row], rtol=1e-6)


def test_forecasts_scale_with_the_price_level(forecaster, windows):
    """Every forecaster is scale-free: the same market at ten times the price gets ten times the
    forecast (volume unchanged)."""
    scaled = windows.copy()
    scaled[..., :3] *= 10.0
    original, tenfold = forecaster.forecast(windows), forecaster.forecast(scaled)
    for key in original:
        np.testing.assert_allclose(tenfold[key], 10.0 * original[key], rtol=1e-5)
