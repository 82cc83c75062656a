"""The skill guard (docs/MODEL.md): after each tick, whether the market's model is still served,
from its live record against the last close; and the forecast every reader serves, which is
the last close with its calibrated band while the model is guarded. The model goes on
forecasting and being scored meanwhile, so the record that lifts the guard keeps growing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import DEFAULT_LEVEL
from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS, compare_errors, guarded
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import LSTMForecaster, NaiveBandForecaster
from chronoprice.service.scoring import last_close_quantiles
from chronoprice.service.status import TickStatus
from chronoprice.store.records import origin_mean_errors, read_candles, read_latest_forecast
from chronoprice.store.schema import Database


def check_skill(db: Database, market: Market, forecaster: LSTMForecaster, newest_ts: int, guarded_now: bool,
                required: dict[str, int] = REQUIRED_ORIGINS) -> dict:
    """The guard's state after a tick, as the status carries it: guarded, and the comparison of
    the model's newest matured origins with the last close that decided it."""
    needed = required[market.timeframe]
    since = newest_ts - (needed + 2 * forecaster.horizon) * timeframe_ms(market.timeframe)
    errors = origin_mean_errors(db, market, forecaster.version, forecaster.horizon, since, needed)
    comparison = compare_errors(errors[:, 0], errors[:, 1], forecaster.horizon)
    return {
        "guarded": guarded(comparison, needed, guarded_now),
        "origins": comparison.origins, "required": needed,
        "mae_ratio": None if np.isnan(comparison.mae_ratio) else round(comparison.mae_ratio, 5),
        "p_value": round(comparison.p_value, 5),
    }


def is_guarded(status: TickStatus) -> bool:
    return bool(status.skill and status.skill["guarded"])


def guard_text(skill: dict) -> str:
    """What the page and the status say while the guard is on."""
    return (f"skill guard: the model's last {skill['origins']:,} matured forecasts were worse than the last close "
            f"(MAE {skill['mae_ratio']:.4f} of it, p {skill['p_value']:.3f}), so the last close is served until they are not")


def last_close_steps(steps: pd.DataFrame, window_closes: np.ndarray, quantiles: np.ndarray) -> pd.DataFrame:
    """A stored forecast's steps re-served as the last close with its band (NaiveBandForecaster's
    rule), the model's version kept so readers can say whose record it is."""
    band = NaiveBandForecaster(len(steps)).forecast(window_closes[None], quantiles)
    return steps.assign(predicted=band["mean"][0], lower=band["lower"][0], upper=band["upper"][0])


def served_forecast(db: Database, market: Market, status: TickStatus, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """The newest forecast as served: the model's, or while the model is guarded the last close
    with the band calibrated on the model's own record of the last close's errors."""
    steps = read_latest_forecast(db, market)
    if steps.empty or not is_guarded(status):
        return steps
    naive = NaiveBandForecaster(len(steps), level=level)
    window = read_candles(db, market, end=int(steps["origin_ts"].iloc[0]), limit=naive.window)
    quantiles = last_close_quantiles(db, market, str(steps["model_version"].iloc[0]), naive)
    return last_close_steps(steps, window["close"].to_numpy(), quantiles)
