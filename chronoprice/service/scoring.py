"""Live scores: stored forecasts against the candles that came, beside the naive forecaster, and
the interval adapted to the latest matured errors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import (
    ADAPTIVE_MIN_ERRORS,
    ADAPTIVE_WINDOW,
    VOLATILITY_WINDOW,
    live_quantiles,
    matured_scores,
)
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import LSTMForecaster, NaiveBandForecaster, NaiveForecaster
from chronoprice.store.records import read_candles, read_matured_forecasts
from chronoprice.store.schema import Database


def with_naive(matured: pd.DataFrame) -> pd.DataFrame:
    """Matured rows with `naive`: what the naive forecaster predicted for that step from the
    origin (the origin's close, for every step)."""
    if matured.empty:
        return matured.assign(naive=pd.Series(dtype="float64"))
    horizon = int(matured["step"].max())
    paths = NaiveForecaster(horizon).forecast(matured["origin_close"].to_numpy()[:, None])["mean"]
    return matured.assign(naive=paths[np.arange(len(matured)), matured["step"].to_numpy() - 1])


def read_scored(db: Database, market: Market, **window) -> pd.DataFrame:
    """read_matured_forecasts (same keyword arguments) with the naive forecaster's prediction."""
    return with_naive(read_matured_forecasts(db, market, **window))


def adapted_quantiles(db: Database, market: Market, forecaster: LSTMForecaster) -> np.ndarray:
    """Interval quantiles adapted to this model's latest matured errors on this market; the
    calibration saved with the model until enough have matured."""
    matured = _newest_matured(db, market, forecaster.version, forecaster.horizon)
    return _quantiles_of(db, market, matured, forecaster.level, forecaster.calibrated_quantiles)


def last_close_quantiles(db: Database, market: Market, model_version: str, naive: NaiveBandForecaster) -> np.ndarray:
    """The same adaptation for the last close served in a model's place (the skill guard): the
    errors of the last close at the origins of that model's latest matured forecasts."""
    matured = _newest_matured(db, market, model_version, naive.horizon)
    return _quantiles_of(db, market, matured.assign(predicted=matured["origin_close"]), naive.level, naive.calibrated_quantiles)


def _newest_matured(db: Database, market: Market, model_version: str, horizon: int) -> pd.DataFrame:
    return read_matured_forecasts(db, market, limit=(ADAPTIVE_WINDOW + 1) * horizon, model_version=model_version)


def _quantiles_of(db: Database, market: Market, matured: pd.DataFrame, level: float, fallback: np.ndarray) -> np.ndarray:
    if len(matured) < ADAPTIVE_MIN_ERRORS:
        return fallback
    step_ms = timeframe_ms(market.timeframe)
    candles = read_candles(db, market, start=int(matured["origin_ts"].min()) - VOLATILITY_WINDOW * step_ms,
                           end=int(matured["origin_ts"].max()))
    scores = matured_scores(matured, candles, step_ms)
    by_step = {int(step): group.to_numpy() for step, group in scores.groupby(matured["step"])}
    return live_quantiles(by_step, level, fallback)
