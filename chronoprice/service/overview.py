"""One summary per watched market for the overview page: price, 24 h change, recent closes and
the forecast, live accuracy against the naive forecaster, freshness and status."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS, diebold_mariano
from chronoprice.market.timeframes import HOUR_MS, timeframe_ms
from chronoprice.service.guard import served_forecast
from chronoprice.service.status import TickStatus
from chronoprice.service.tick import Ticker
from chronoprice.store.records import matured_error_sums, matured_step_errors, read_candles

SPARK_CANDLES = 30  # closes drawn before the forecast in the overview's sparkline


@dataclasses.dataclass(frozen=True)
class MarketSummary:
    symbol: str
    timeframe: str
    status: str
    error: str | None
    newest_ts: int | None
    last_price: float | None
    change_24h_pct: float | None
    closes: list[float]
    forecast: list[float]
    lower: float | None
    upper: float | None
    mae_ratio: float | None
    dm_p_value: float | None
    coverage: float | None
    model_version: str | None
    matured_origins: int = 0
    guarded: bool = False  # the skill guard serves the last close in the model's place


def market_status(status: TickStatus, now_ms: int, length_ms: int) -> str:
    """One word for a watched market: waiting (no tick yet), unknown_symbol, failing (the last
    tick could not fetch), stale (the newest candle is over two candles old) or ok."""
    if status.finished_at_ms == 0:
        return "waiting"
    if status.symbol_unknown:
        return "unknown_symbol"
    newest_closed = (now_ms // length_ms - 1) * length_ms
    behind = newest_closed - (status.newest_ts or 0)
    if status.error and behind > 0:
        return "failing"
    return "stale" if behind >= 2 * length_ms else "ok"


def last_step_p_value(errors: np.ndarray, horizon: int) -> float | None:
    """Diebold-Mariano p-value of the model against naive from the [N, 2] errors (model, naive)
    of the matured last-step forecasts."""
    if len(errors) < 2 * horizon:
        return None
    return diebold_mariano(errors[:, 0], errors[:, 1], horizon)[1]


def change_pct(day_first: pd.DataFrame, now_price: float | None) -> float | None:
    """% change from the open of `day_first` (the candle that began 24 hours before the newest
    candle's close, if stored) to `now_price`."""
    if day_first.empty or now_price is None:
        return None
    return 100 * (now_price / float(day_first["open"].iloc[0]) - 1)


def summarise_market(ticker: Ticker, symbol: str, timeframe: str) -> MarketSummary:
    """What the overview shows of one watched market, from the store and its saved tick status."""
    status = ticker.stored_status(symbol, timeframe)
    market = ticker.market(symbol, status.exchange, timeframe)
    db, length = ticker.db(), timeframe_ms(timeframe)
    candles = read_candles(db, market, limit=SPARK_CANDLES)
    newest = int(candles["ts"].iloc[-1]) if not candles.empty else None
    forecast = served_forecast(db, market, status)
    if newest is not None and not forecast.empty and forecast["origin_ts"].iloc[0] != newest:
        forecast = forecast.iloc[:0]
    last = float(candles["close"].iloc[-1]) if not candles.empty else None
    since = (newest or 0) - ERROR_WINDOW_HOURS * HOUR_MS
    day_began = (newest or 0) + length - 24 * HOUR_MS
    # The naive forecast is the origin close at every step (NaiveForecaster), so its error sums in the database.
    sums = matured_error_sums(db, market, since)
    mae_ratio = sums["mae"] / sums["mae_origin_close"] if sums["count"] and sums["mae_origin_close"] else None
    forecaster = ticker.forecaster(timeframe)
    horizon = forecaster.horizon if forecaster else None
    return MarketSummary(
        symbol=symbol, timeframe=timeframe, status=market_status(status, ticker.now_ms(), length), error=status.error,
        newest_ts=newest, last_price=last,
        change_24h_pct=change_pct(read_candles(db, market, start=day_began, end=day_began), last),
        closes=candles["close"].tolist(), forecast=forecast["predicted"].tolist(),
        lower=float(forecast["lower"].iloc[-1]) if not forecast.empty else None,
        upper=float(forecast["upper"].iloc[-1]) if not forecast.empty else None,
        mae_ratio=mae_ratio, coverage=sums["coverage"] if sums["count"] else None,
        dm_p_value=last_step_p_value(matured_step_errors(db, market, since, horizon), horizon) if horizon else None,
        model_version=str(forecast["model_version"].iloc[0]) if not forecast.empty else status.model_version,
        guarded=status.guarded, matured_origins=sums["origins"] or 0,
    )


def summarise_watchlist(ticker: Ticker, watched: list[tuple[str, str]]) -> list[MarketSummary]:
    return [summarise_market(ticker, symbol, timeframe) for symbol, timeframe in watched]
