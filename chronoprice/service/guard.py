"""The skill guard (docs/MODEL.md): after each tick, whether the market's model is still served,
from its live record against the last close; and the forecast every reader serves, which is
the last close with its calibrated band while the model is guarded. The model goes on
forecasting and being scored meanwhile, so the record that lifts the guard keeps growing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def guard_text(skill: dict) -> str:
    """What the page and the status say while the guard is on."""
    return (f"skill guard: the model's last {skill['origins']:,} matured forecasts were worse than the last close "
            f"(MAE {skill['mae_ratio']:.4f} of it, p {skill['p_value']:.3f}), so the last close is served until they are not")


def last_close_band(db: Database, market: Market, model_version: str, horizon: int, level: float, origin_ts: int) -> dict:
    """What is served from `origin_ts` while the model is guarded, worked out once per tick: the
    last close at every step with NaiveBandForecaster's band, calibrated on the last close's
    errors at the model's latest matured origins."""
    naive = NaiveBandForecaster(horizon, level=level)
    closes = read_candles(db, market, end=origin_ts, limit=naive.window)["close"].to_numpy()
    band = naive.forecast(closes[None], last_close_quantiles(db, market, model_version, naive))
    return {"origin_ts": origin_ts, "close": float(closes[-1]),
            "lower": band["lower"][0].round(8).tolist(), "upper": band["upper"][0].round(8).tolist()}


def served_forecast(db: Database, market: Market, status: TickStatus) -> pd.DataFrame:
    """The newest forecast as served: the model's, or while the model is guarded the last close
    with its band (status.last_close_band); nothing when the guard has no band for that origin,
    rather than a forecast the model's own record says is worse than the last close."""
    steps = read_latest_forecast(db, market)
    if steps.empty or not status.guarded:
        return steps
    band = status.last_close_band
    if band is None or band["origin_ts"] != int(steps["origin_ts"].iloc[0]):
        return steps.iloc[:0]
    return steps.assign(predicted=band["close"], lower=band["lower"], upper=band["upper"])
