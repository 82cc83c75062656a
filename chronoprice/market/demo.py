"""The offline demo market: seeded synthetic BTC-like 1-minute candles on the local clock, and
candles of longer timeframes aggregated from them."""

from __future__ import annotations

import math
import time
import zlib
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from chronoprice.market.candles import COLUMNS, aggregate_candles, empty_candles, forming_candle
from chronoprice.market.source import Fetched, SinceFor, UnknownSymbol
from chronoprice.market.timeframes import cold_start_candles, history_for, timeframe_ms

DEMO_ANCHOR_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC: the demo market's first minute
MINUTES_PER_DAY = 1440
DEMO_START_PRICES = {"BTC": 42_000.0, "ETH": 2_300.0, "SOL": 100.0, "BNB": 310.0}


@lru_cache(maxsize=16)
def _demo_day(seed: int, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One day of demo minutes: log returns, upper and lower wick (log) and volume.

    Volatility clusters: a per-day level plus hourly shocks interpolated across the hour, so
    calm and busy stretches alternate. Returns are Student-t (4 degrees of freedom, fat tails)
    scaled to unit variance, with a base standard deviation of 0.07 % a minute, like BTC.
    """
    rng = np.random.default_rng([seed, day])
    hourly = rng.normal(0.0, 0.45, 25)
    minutes = np.arange(MINUTES_PER_DAY)
    log_sigma = math.log(0.0007) + rng.normal(0.0, 0.25) + np.interp(minutes / 60.0, np.arange(25), hourly)
    sigma = np.exp(log_sigma)
    returns = sigma * rng.standard_t(4, MINUTES_PER_DAY) / math.sqrt(2.0)
    wick_up = np.abs(rng.normal(0.0, 0.45, MINUTES_PER_DAY)) * sigma
    wick_down = np.abs(rng.normal(0.0, 0.45, MINUTES_PER_DAY)) * sigma
    volume = rng.lognormal(math.log(6.0), 0.6, MINUTES_PER_DAY) * (1.0 + np.abs(returns) / sigma)
    return returns, wick_up, wick_down, volume


@lru_cache(maxsize=8)
def _demo_day_opens(seed: int, last_day: int, start_log_price: float) -> np.ndarray:
    """Opening log price of days 0..last_day (cumulative, computed once per seed and cached)."""
    totals = [0.0] + [float(_demo_day(seed, day)[0].sum()) for day in range(last_day)]
    return start_log_price + np.cumsum(totals)


def demo_candles(symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The demo market's 1-minute candles with open time in [start_ms, end_ms), deterministic.

    The same symbol and minute always give the same candle, across restarts, so stored demo
    history stays continuous.
    """
    start_ms = max(DEMO_ANCHOR_MS, start_ms - start_ms % 60_000)
    if end_ms <= start_ms:
        return empty_candles()
    seed = zlib.crc32(symbol.encode())
    start_log_price = math.log(DEMO_START_PRICES.get(symbol.split("/")[0], 100.0))
    first_day = (start_ms - DEMO_ANCHOR_MS) // (MINUTES_PER_DAY * 60_000)
    last_day = (end_ms - 1 - DEMO_ANCHOR_MS) // (MINUTES_PER_DAY * 60_000)
    opens = _demo_day_opens(seed, int(last_day), start_log_price)
    parts = []
    for day in range(int(first_day), int(last_day) + 1):
        returns, wick_up, wick_down, volume = _demo_day(seed, day)
        log_close = opens[day] + np.cumsum(returns)
        log_open = np.concatenate([[opens[day]], log_close[:-1]])
        ts = DEMO_ANCHOR_MS + (day * MINUTES_PER_DAY + np.arange(MINUTES_PER_DAY, dtype="int64")) * 60_000
        parts.append(
            pd.DataFrame(
                {
                    "ts": ts,
                    "open": np.exp(log_open),
                    "high": np.exp(np.maximum(log_open, log_close) + wick_up),
                    "low": np.exp(np.minimum(log_open, log_close) - wick_down),
                    "close": np.exp(log_close),
                    "volume": volume,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[(frame["ts"] >= start_ms) & (frame["ts"] < end_ms)]
    return frame[COLUMNS].round({"open": 2, "high": 2, "low": 2, "close": 2, "volume": 6}).reset_index(drop=True)


class DemoSource:
    """A synthetic market on the local clock, for when no exchange can be reached."""

    exchange = "demo"
    label = "offline demo"

    def __init__(
        self,
        history: int | Mapping[str, int] | None = None,
        max_catch_up_ms: int = 7 * MINUTES_PER_DAY * 60_000,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self._history = cold_start_candles() if history is None else history
        self._max_catch_up_ms, self._now_ms = max_catch_up_ms, now_ms

    def symbols(self) -> list[str]:
        return sorted(f"{base}/USDT" for base in DEMO_START_PRICES)

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched:
        if symbol.split("/")[0] not in DEMO_START_PRICES:
            raise UnknownSymbol(f"the offline demo has no {symbol}; it offers {', '.join(self.symbols())}")
        now, length = self._now_ms(), timeframe_ms(timeframe)
        forming = now // length * length
        since = since_for(self.exchange)
        oldest = forming - (history_for(self._history, timeframe) * length if since is None else self._max_catch_up_ms)
        start = oldest if since is None else max(since, oldest)
        minute = now // 60_000 * 60_000
        so_far = forming_candle(demo_candles(symbol, forming, minute + 60_000), forming, (now - minute) / 60_000)
        return Fetched(self.exchange, aggregate_candles(demo_candles(symbol, start, forming), length), forming=so_far)
