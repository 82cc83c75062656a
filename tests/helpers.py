"""What the tests share besides fixtures: synthetic candles, the liveness timeout and a wait
that polls until it, what a store must hold after a run of closes, the candles a page drew. (What the bench needs too, such as free ports, a fake clock and the gunicorn
harness, is in chronoprice/testing/.)"""

from __future__ import annotations

import time

import pandas as pd

from chronoprice.market.candles import find_gaps
from chronoprice.market.demo import demo_candles
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.store.records import read_candles

SERIES_START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC
MINUTE_MS = 60_000


LIVENESS_SECONDS = 120  # how long a wait may last before it counts as hung: generous for a machine 3x slower


def wait_until(condition, liveness_seconds: float = LIVENESS_SECONDS, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true (True) or the liveness timeout passes (False)."""
    deadline = time.monotonic() + liveness_seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def make_candles(minutes: int, symbol: str = "BTC/USDT", start_ms: int = SERIES_START_MS):
    """`minutes` consecutive synthetic 1-minute candles (the demo market), deterministic."""
    return demo_candles(symbol, start_ms, start_ms + minutes * MINUTE_MS)


def forecast_origins(db, market: Market) -> pd.DataFrame:
    """Origins with a forecast, oldest first, and how many steps each has (per model version)."""
    return pd.DataFrame(db.execute(
        "select origin_ts, count(*) from forecasts where exchange = ? and symbol = ? and timeframe = ? "
        "group by origin_ts, model_version order by origin_ts", [market.exchange, market.symbol, market.timeframe]).fetchall(),
        columns=["origin_ts", "steps"])


def assert_one_whole_forecast_per_closed_candle(db, exchange, symbol: str, timeframe: str, window: int) -> pd.DataFrame:
    """The market's stored candles are the exchange's closed ones with no gap, and exactly one
    whole forecast (10 steps) was made from each after the first window; returns the candles."""
    market = Market("binance", symbol, timeframe)
    stored = read_candles(db, market)
    assert stored["ts"].is_unique and find_gaps(stored["ts"].to_numpy(), timeframe_ms(timeframe)).empty
    assert stored["ts"].iloc[-1] == exchange.closed_candles(symbol, timeframe)["ts"].iloc[-1]
    origins = forecast_origins(db, market)
    assert origins["origin_ts"].tolist() == stored["ts"].iloc[window - 1:].tolist(), \
        f"{symbol} {timeframe}: exactly one forecast from every closed candle"
    assert (origins["steps"] == 10).all(), "every forecast whole"
    return stored


# The candles the page has drawn in Chromium (closed ones; the forming candle is its own trace).
CANDLES_DRAWN = """() => {
    const plot = document.querySelector('#price-chart .js-plotly-plot');
    if (!plot || !plot.data) { return 0; }
    return plot.data.filter(trace => trace.type === 'candlestick' && trace.name !== 'forming (not closed)')
        .reduce((sum, trace) => sum + trace.x.length, 0);
}"""
