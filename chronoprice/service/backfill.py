"""Forecasts from stored history: every gap-free origin that lacks one, batched, one transaction
a chunk, so a cold start or `backfill` has a day of scores at once."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.features import candle_rows
from chronoprice.model.forecasters import LSTMForecaster
from chronoprice.store.records import forecast_origins_since, read_candles, write_forecasts
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
HISTORY_CHUNK = 200  # origins a transaction: short, rare write locks leave room for the live ticks


def forecast_rows(origins_ts: np.ndarray, step_ms: int, forecast: dict[str, np.ndarray]) -> pd.DataFrame:
    """Forecasts from `origins_ts` (one per forecast row) as store rows, one per origin and step:
    origin_ts, step 1..horizon, target_ts, predicted, lower, upper."""
    count, horizon = forecast["mean"].shape
    origins = np.repeat(np.asarray(origins_ts, dtype="int64"), horizon)
    steps = np.tile(np.arange(1, horizon + 1), count)
    return pd.DataFrame(
        {
            "origin_ts": origins,
            "step": steps,
            "target_ts": origins + steps * step_ms,
            "predicted": forecast["mean"].ravel(),
            "lower": forecast["lower"].ravel(),
            "upper": forecast["upper"].ravel(),
        }
    )


def missing_origins(db: Database, market: Market, ts: np.ndarray, start_ts: int, forecaster: LSTMForecaster) -> list[int]:
    """Positions in `ts` (stored candle times, oldest first) of origins at or after `start_ts`
    with a full gap-free window and no forecast of this model version yet."""
    window, step_ms = forecaster.window, timeframe_ms(market.timeframe)
    done = forecast_origins_since(db, market, forecaster.version, start_ts)
    return [
        index for index in range(window - 1, len(ts))
        if ts[index] >= start_ts
        and ts[index] - ts[index - window + 1] == (window - 1) * step_ms
        and int(ts[index]) not in done
    ]


def forecast_history(db: Database, market: Market, forecaster: LSTMForecaster, start_ts: int,
                     progress: bool = True, chunk: int = HISTORY_CHUNK, quantiles: np.ndarray | None = None) -> int:
    """Forecast from every stored origin at or after `start_ts` that lacks one (missing_origins);
    returns the count. Shows a progress bar on stderr. `quantiles` replaces the forecaster's
    interval calibration (LSTMForecaster.forecast)."""
    window, step_ms = forecaster.window, timeframe_ms(market.timeframe)
    candles = read_candles(db, market, start=start_ts - window * step_ms)
    ts, rows = candles["ts"].to_numpy(), candle_rows(candles)
    origins = missing_origins(db, market, ts, start_ts, forecaster)
    if len(origins) > 1:  # one is a routine tick, not history
        log.info("forecasting %d historical origins", len(origins), extra=market.key())
    with tqdm(total=len(origins), desc=f"forecasting {market.symbol} history", unit="origin", file=sys.stderr,
              disable=not progress, mininterval=2.0) as bar:
        for start in range(0, len(origins), chunk):
            batch = origins[start : start + chunk]
            forecast = forecaster.forecast(np.stack([rows[index - window + 1 : index + 1] for index in batch]), quantiles)
            write_forecasts(db, market, forecast_rows(ts[batch], step_ms, forecast), forecaster.version)
            bar.update(len(batch))
    return len(origins)
