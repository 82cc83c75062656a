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
from chronoprice.store.registry import ModelEntry, StatusChange, read_changes, read_model, read_models
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


def _registry(ticker) -> Database:
    """The store, its registry holding the configured model once that has loaded (it registers
    itself on its first load)."""
    ticker.forecaster()
    return ticker.db()


def registered(ticker, timeframe: str | None = None) -> list[ModelEntry]:
    """The registry's models (of `timeframe`)."""
    return read_models(_registry(ticker), timeframe)


def registered_model(ticker, version: str) -> ModelEntry | None:
    return read_model(_registry(ticker), version)


def watched_markets(ticker) -> dict[str, list[tuple[Market, int]]]:
    """Per timeframe, the watched markets with a stored candle and their newest one."""
    db, markets = ticker.db(), {}
    for symbol, timeframe in read_watchlist(db):
        market = ticker.stored_market(symbol, timeframe)
        newest = newest_candle_ts(db, market)
        if newest is not None:
            markets.setdefault(timeframe, []).append((market, newest))
    return markets


def model_entry(ticker, entry: ModelEntry, markets: dict[str, list[tuple[Market, int]]]) -> dict:
    """What the API and the page say of a registered model: the registry's entry, whether this
    process serves it, why it cannot be loaded if so, and its live record on each of the
    `markets` (watched_markets) of its timeframe."""
    served = ticker.forecaster(entry.timeframe)
    return {
        "version": entry.version, "timeframe": entry.timeframe, "status": entry.status, "status_since_ms": entry.status_since_ms,
        "registered_ms": entry.registered_ms, "artifact": entry.artifact, **entry.details,
        "serving": served is not None and served.version == entry.version,
        "load_error": ticker.models.errors.get(entry.version),
        "live": [live_record(ticker.db(), market, entry.version, entry.details["horizon"], newest)
                 for market, newest in markets.get(entry.timeframe, [])],
    }


def model_entries(ticker, entries: list[ModelEntry]) -> list[dict]:
    """model_entry of each, the watched markets read once."""
    markets = watched_markets(ticker)
    return [model_entry(ticker, entry, markets) for entry in entries]


def model_with_changes(ticker, entry: ModelEntry) -> dict:
    """model_entry with the model's history of status changes."""
    changes = [change_entry(change) for change in read_changes(ticker.db(), version=entry.version)]
    return {**model_entry(ticker, entry, watched_markets(ticker)), "changes": changes}
