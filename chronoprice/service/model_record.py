"""Every registered model with its live record on the watched markets of its timeframe, for
GET /api/v1/models and the models page: per market, over the last ERROR_WINDOW_HOURS of matured
forecasts, its per-step MAE beside the last close's, the Diebold-Mariano p-value of its mean
MAE over the steps against the last close's (the skill guard's and the promotion rule's test),
its interval coverage, and a backtest after costs of trading on those forecasts."""

from __future__ import annotations

import dataclasses

from chronoprice.evaluation.backtest import backtest
from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS
from chronoprice.evaluation.verdicts import compare_errors
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.store.records import (
    forecast_paths,
    matured_error_sums,
    matured_step_sums,
    newest_candle_ts,
    origin_mean_errors,
)
from chronoprice.store.registry import ModelEntry, StatusChange, read_changes
from chronoprice.store.schema import Database
from chronoprice.store.watchlist import read_watchlist


def _rounded(value, digits: int = 6):
    return None if value is None or value != value else round(float(value), digits)


def live_record(db: Database, market: Market, version: str, horizon: int, newest_ts: int) -> dict:
    """The model's record on `market` over the matured forecasts of the window ending at its
    newest candle."""
    since = newest_ts - ERROR_WINDOW_HOURS * 3_600_000
    sums = matured_error_sums(db, market, since, version)
    every_origin = ERROR_WINDOW_HOURS * 60  # of the window, at the shortest timeframe
    origins = origin_mean_errors(db, market, version, horizon, since - 1, every_origin)
    comparison = compare_errors(origins[:, 1], origins[:, 2], horizon)
    return {
        "exchange": market.exchange, "symbol": market.symbol, "timeframe": market.timeframe, "since_ms": since,
        "matured_forecasts": sums["count"], "matured_origins": comparison.origins,
        "mae": _rounded(sums["mae"]), "mae_last_close": _rounded(sums["mae_origin_close"]),
        "mae_ratio": _rounded(comparison.mae_ratio, 5),
        "dm_p_value": _rounded(comparison.p_value, 5) if comparison.origins > 1 else None,
        "coverage": _rounded(sums["coverage"], 4),
        "steps": [{"step": int(step), "count": int(count), "mae": _rounded(mae), "mae_last_close": _rounded(naive),
                   "mae_ratio": _rounded(mae / naive if naive else None, 5)}
                  for step, count, mae, naive in matured_step_sums(db, market, since, version)],
        "backtest": live_backtest(db, market, version, horizon, since),
    }


def live_backtest(db: Database, market: Market, version: str, horizon: int, since_ts: int) -> dict | None:
    """evaluate --backtest on the model's live forecasts of the window (signal: the move at its
    last step, the default fee): would trading on them have paid? None before two origins have
    their next candle."""
    paths = forecast_paths(db, market, version, since_ts, horizon)
    if len(paths) < 2:
        return None
    result = backtest(paths[:, 1], paths[:, 2], paths[:, 3:], horizon, timeframe_minutes=timeframe_ms(market.timeframe) // 60_000)
    return {key: value for key, value in result.items() if key != "curves"}


def change_entry(change: StatusChange) -> dict:
    return dataclasses.asdict(change)


def model_entry(ticker, entry: ModelEntry, with_changes: bool = False) -> dict:
    """What the API and the page say of a registered model: the registry's entry, whether this
    process serves it, why it cannot be loaded if so, and its live record per watched market."""
    db = ticker.db()
    served = ticker.forecaster(entry.timeframe)
    markets = [ticker.market(symbol, ticker.stored_status(symbol, timeframe).exchange, timeframe)
               for symbol, timeframe in read_watchlist(db) if timeframe == entry.timeframe]
    newest = {market: newest_candle_ts(db, market) for market in markets}
    payload = {
        "version": entry.version, "timeframe": entry.timeframe, "status": entry.status, "status_since_ms": entry.status_since_ms,
        "registered_ms": entry.registered_ms, "artifact": entry.artifact, **entry.details,
        "serving": served is not None and served.version == entry.version,
        "load_error": ticker.models.errors.get(entry.version),
        "live": [live_record(db, market, entry.version, entry.details["horizon"], newest[market])
                 for market in markets if newest[market] is not None],
    }
    if with_changes:
        payload["changes"] = [change_entry(change) for change in read_changes(db, version=entry.version)]
    return payload
