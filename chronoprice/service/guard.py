"""The skill guard (docs/MODEL.md): after each tick, whether the market's model is still served,
from its live record against the last close; and the forecast every reader serves, which is
the last close with its calibrated band while the model is guarded. The model goes on
forecasting and being scored meanwhile, so the record that lifts the guard keeps growing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import DEFAULT_LEVEL
from chronoprice.evaluation.verdicts import compare_errors, guarded
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import NaiveBandForecaster
from chronoprice.service.scoring import last_close_quantiles
from chronoprice.service.status import TickStatus
from chronoprice.store.records import origin_mean_errors, read_candles, read_latest_forecast
from chronoprice.store.schema import Database


class MaturedOrigins:
    """Per market and model, the per-origin errors (store.records.origin_mean_errors) of the
    newest matured origins, kept between ticks: once a market's window is full a tick reads
    only the origins that matured since the last (one, routinely) instead of the whole window.
    An origin whose last step matures late, after a repaired gap older than the newest cached
    origin, joins only when the window is read whole again (in a new process)."""

    def __init__(self):
        self._known: dict[tuple[Market, str], np.ndarray] = {}

    def newest(self, db: Database, market: Market, model_version: str, horizon: int, newest_ts: int, needed: int) -> np.ndarray:
        """[N <= needed, 2]: the model's and the last close's mean absolute errors, oldest first."""
        key = (market, model_version)
        known = self._known.get(key)
        if known is None or len(known) < needed:
            after = newest_ts - (needed + 2 * horizon) * timeframe_ms(market.timeframe)
            known = origin_mean_errors(db, market, model_version, horizon, after, needed)
        else:
            newer = origin_mean_errors(db, market, model_version, horizon, int(known[-1, 0]), needed)
            known = np.concatenate([known, newer])[-needed:]
        self._known[key] = known
        return known[:, 1:]


def skill_state(errors: np.ndarray, needed: int, horizon: int, guarded_now: bool) -> dict:
    """The guard's state after a tick, as the status carries it: guarded, and the comparison of
    the model's newest matured origins ([N, 2] errors: the model's, the last close's) with the
    last close that decided it."""
    comparison = compare_errors(errors[:, 0], errors[:, 1], horizon)
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
