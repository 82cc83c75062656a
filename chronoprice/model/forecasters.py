"""Forecasters, all of one shape: the recursive LSTM on a choice of engine and the baselines.

Every forecaster has `horizon` and `forecast(windows) -> {"mean", "lower", "upper"}`: `windows`
is [B, W] closes (or one window of W closes) or [B, W, 4] candle rows (features.CANDLE_COLUMNS;
models with range or volume channels need these), and each returned array is [B, horizon]
prices. The naive baseline (the last close) is a forecaster like any other: live scoring,
evaluation and the dashboard all take it from here.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from chronoprice.evaluation.metrics import DEFAULT_LEVEL, INTERVAL_LEVELS, VOLATILITY_WINDOW, recent_volatility
from chronoprice.model.artifact import ModelArtifact, artifact_at, read_metadata
from chronoprice.model.engines import SERVING_RUN_ORIGINS, PathEngine, feature_name, load_engine
from chronoprice.model.features import (
    HORIZON,
    WINDOW,
    input_scales,
    model_input,
    walk_forward_windows,
    window_closes,
)


def _as_batch(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows, dtype="float64")
    return windows[None, :] if windows.ndim == 1 else windows


def score_quantiles(metadata: dict, level: float) -> np.ndarray:
    """Per-step interval size for `level` in units of recent volatility, as calibrated on the
    validation split when the model was trained."""
    table = metadata["intervals"]["score_quantile"]
    key = f"{level:.2f}"
    if key not in table:
        raise ValueError(f"interval level {level} not calibrated; available: {', '.join(sorted(table))}")
    return np.asarray(table[key], dtype="float64")


class LSTMForecaster:
    """The recursive LSTM forecast, its move weighted per step against the last close (the
    metadata's `shrinkage`, fitted on validation), with split-conformal intervals scaled by
    recent volatility."""

    name = "lstm"

    def __init__(self, engine: PathEngine, metadata: dict, level: float = DEFAULT_LEVEL, artifact: ModelArtifact | None = None):
        self.engine, self.metadata, self.level = engine, metadata, level
        self.artifact = artifact  # where it was loaded from, for the registry
        self.version = metadata["version"]
        self.window, self.horizon = metadata["window"], metadata["horizon"]
        self._feature = feature_name(metadata)
        self.calibrated_quantiles = score_quantiles(metadata, level)
        self._shrinkage = np.asarray(metadata.get("shrinkage", [1.0] * self.horizon), dtype="float64")

    def forecast(self, windows: np.ndarray, quantiles: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """`quantiles` ([horizon] score quantiles) replaces the calibration saved with the model,
        e.g. with one adapted to the latest matured errors."""
        windows = _as_batch(windows)
        if windows.shape[1] != self.window:
            raise ValueError(f"a forecast needs windows of {self.window} candles, got {windows.shape[1]}")
        scales = input_scales(windows, self.metadata["feature"])
        raw_path = self.engine.path(model_input(windows, scales, self._feature)).astype("float64")
        log_path = raw_path * scales[:, None] * self._shrinkage
        closes = window_closes(windows)
        origin = closes[:, -1:]
        widths = (self.calibrated_quantiles if quantiles is None else quantiles) * recent_volatility(closes)
        return {
            "mean": origin * np.exp(log_path),
            "lower": origin * np.exp(log_path - widths),
            "upper": origin * np.exp(log_path + widths),
        }


class NaiveBandForecaster:
    """The last close with a band: the forecast of a timeframe the model has shown no skill on.

    Until a market has matured errors of its own to calibrate it (service.scoring), the band is
    the random walk's: the step-h change is about sqrt(h) recent volatilities, so the level's
    normal quantile times sqrt(h).
    """

    name = "naive"
    version = "naive"

    def __init__(self, horizon: int = HORIZON, window: int = VOLATILITY_WINDOW + 1, level: float = DEFAULT_LEVEL):
        self.horizon, self.window, self.level = horizon, window, level
        random_walk = {f"{each:.2f}": NormalDist().inv_cdf(0.5 + each / 2) * np.sqrt(np.arange(1, horizon + 1)) for each in INTERVAL_LEVELS}
        # In a model's metadata form, so `evaluate` scores this band as it scores a model's.
        self.metadata = {"version": self.version, "intervals": {"score_quantile": {key: list(value) for key, value in random_walk.items()}}}
        self.calibrated_quantiles = score_quantiles(self.metadata, level)

    def forecast(self, windows: np.ndarray, quantiles: np.ndarray | None = None) -> dict[str, np.ndarray]:
        closes = window_closes(_as_batch(windows))
        origin = closes[:, -1:]
        widths = (self.calibrated_quantiles if quantiles is None else quantiles) * recent_volatility(closes)
        return {"mean": np.repeat(origin, self.horizon, axis=1), "lower": origin * np.exp(-widths), "upper": origin * np.exp(widths)}


class PointBaseline:
    """A baseline with no interval: each subclass maps [B, W] closes to a [B, horizon] path."""

    name = "baseline"

    def __init__(self, horizon: int = HORIZON):
        self.horizon = horizon

    def forecast(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        mean = self.path(window_closes(_as_batch(windows)))
        return {"mean": mean, "lower": mean, "upper": mean}

    def path(self, closes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NaiveForecaster(PointBaseline):
    """The last close, repeated: the baseline every model must beat."""

    name = "naive"

    def path(self, closes: np.ndarray) -> np.ndarray:
        return np.repeat(closes[:, -1:], self.horizon, axis=1)


class DriftForecaster(PointBaseline):
    """The last close moved along the window's average log return: a trend-following baseline."""

    name = "drift"

    def path(self, closes: np.ndarray) -> np.ndarray:
        drift = np.log(closes[:, -1:] / closes[:, :1]) / (closes.shape[1] - 1)
        return closes[:, -1:] * np.exp(drift * np.arange(1, self.horizon + 1))


class MovingAverageForecaster(PointBaseline):
    """The mean close of the window, repeated: a mean-reverting baseline."""

    name = "moving_average"

    def path(self, closes: np.ndarray) -> np.ndarray:
        return np.repeat(closes.mean(axis=1, keepdims=True), self.horizon, axis=1)


AUTOREGRESSION_ORDER = 5


def fit_autoregression(close_runs: list[np.ndarray], order: int = AUTOREGRESSION_ORDER) -> np.ndarray:
    """Least-squares coefficients of a linear autoregression on log returns, no intercept, over
    gap-free runs of closes (no lag reaches from one run into the next). [order], newest lag first."""
    lagged, targets = [], []
    for closes in close_runs:
        returns = np.diff(np.log(np.asarray(closes, dtype="float64")))
        if len(returns) <= order:
            continue
        lags = np.lib.stride_tricks.sliding_window_view(returns[:-1], order)[:, ::-1]
        lagged.append(lags)
        targets.append(returns[order:])
    if not lagged:
        raise ValueError(f"an AR({order}) needs a run of more than {order + 1} closes")
    coefficients, *_ = np.linalg.lstsq(np.concatenate(lagged), np.concatenate(targets), rcond=None)
    return coefficients


class AutoregressiveForecaster(PointBaseline):
    """AR(p) on log returns, run recursively: the first thing a quant tries."""

    name = "ar"

    def __init__(self, coefficients: np.ndarray, horizon: int = HORIZON):
        super().__init__(horizon)
        self.coefficients = np.asarray(coefficients, dtype="float64")

    def path(self, closes: np.ndarray) -> np.ndarray:
        order = len(self.coefficients)
        recent = list(np.diff(np.log(closes[:, -(order + 1):]), axis=1)[:, ::-1].T)  # newest lag first
        log_path, level = [], np.zeros(len(closes))
        for _ in range(self.horizon):
            step = sum(weight * lag for weight, lag in zip(self.coefficients, recent))
            recent = [step, *recent[:-1]]
            level = level + step
            log_path.append(level)
        return closes[:, -1:] * np.exp(np.stack(log_path, axis=1))


PEERS_INSTALL = "pip install --no-deps -r requirements-peers.txt"


class PeersUnavailable(RuntimeError):
    """statsforecast, the peers' library, is not installed (an optional extra)."""


class StatisticalPeer(PointBaseline):
    """A statsforecast model fitted afresh at every origin on the window's closes: what a
    statistician would try before a network. `failures` counts windows it could not fit, which
    get the last close instead (so a failed fit is never an invented advantage)."""

    def __init__(self, name: str, make_model, horizon: int = HORIZON):
        super().__init__(horizon)
        self.name, self.make_model, self.failures = name, make_model, 0

    def path(self, closes: np.ndarray) -> np.ndarray:
        paths = np.repeat(closes[:, -1:], self.horizon, axis=1)
        for row, window in enumerate(closes):
            try:
                paths[row] = self.make_model().forecast(y=window, h=self.horizon)["mean"]
            except (ValueError, ArithmeticError, np.linalg.LinAlgError):
                self.failures += 1
        return paths


def statistical_peers(horizon: int = HORIZON) -> list[StatisticalPeer]:
    """statsforecast's AutoETS and AutoTheta (non-seasonal); PeersUnavailable without the extra."""
    try:
        from statsforecast.models import AutoETS, AutoTheta
    except ImportError as error:
        raise PeersUnavailable(f"the peers (AutoETS, AutoTheta) need statsforecast: {PEERS_INSTALL}") from error
    return [StatisticalPeer("AutoETS", lambda: AutoETS(season_length=1), horizon),
            StatisticalPeer("AutoTheta", lambda: AutoTheta(season_length=1), horizon)]


def load_forecaster(model_path, engine: str = "auto", level: float = DEFAULT_LEVEL,
                    run_origins: int = SERVING_RUN_ORIGINS) -> LSTMForecaster:
    """Read the artifact at `model_path` and make its forecaster; raises ModelUnavailable with the
    reason. `run_origins`: see engines.SERVING_RUN_ORIGINS."""
    artifact = artifact_at(model_path)
    metadata = read_metadata(artifact)
    return LSTMForecaster(load_engine(engine, artifact, metadata, run_origins), metadata, level, artifact)


def walk_forward(forecaster, series: np.ndarray, window: int = WINDOW, horizon: int = HORIZON) -> dict[str, np.ndarray]:
    """Forecast from every origin of `series` (closes [N] or candle rows [N, 4]) that has
    `horizon` actual closes after it, beside the naive baseline.

    Returns arrays [M, horizon]: mean, lower, upper, actual, naive; and origin_close [M, 1].
    """
    windows, actual = walk_forward_windows(series, window, horizon)
    if len(windows) == 0:
        raise ValueError(f"walk-forward needs at least {window + horizon} candles, got {len(series)}")
    forecast = forecaster.forecast(windows)
    naive = NaiveForecaster(horizon).forecast(windows)["mean"]
    return {**forecast, "actual": actual, "naive": naive, "origin_close": window_closes(windows)[:, -1:]}
