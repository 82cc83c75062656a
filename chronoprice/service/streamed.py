"""The stream's closed candle as the stored candle: when a watched market's stream shows that a
candle closed, that candle is stored and forecast at once, with no REST request on the way, if
it is the very candle the market's next fetch would start at (stored, with no hole among its
last candles). REST then checks the last few candles in the background, and a REST candle that
differs revises the stored one (and the closes copied into its forecasts), as any revision
does. Everything else, a cold start, a gap, a reconnect or a failed-over exchange, is a REST
tick as before."""

from __future__ import annotations

import pandas as pd

from chronoprice.market.candles import COLUMNS
from chronoprice.market.source import CandleSource, Fetched, Market, SinceFor
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.store.records import newest_candle_ts, read_candles, upsert_candles
from chronoprice.store.schema import Database

RECONCILE_CANDLES = 5  # checked by REST after each streamed close: exchanges revise within a candle or two
STREAMED_NOTE = "closed candle from the stream"


def streamed_fetch(candle: tuple | None, exchange: str, since_for: SinceFor) -> Fetched | None:
    """The stream's closed `candle` ([ts, open, high, low, close, volume]) as a fetch from
    `exchange` when it is the candle the market's next fetch starts at; None: REST fetches."""
    if candle is None or since_for(exchange) != candle[0]:
        return None
    return Fetched(exchange, pd.DataFrame([candle], columns=COLUMNS), note=STREAMED_NOTE)


def differing_candles(stored: pd.DataFrame, fetched: pd.DataFrame) -> pd.DataFrame:
    """The fetched candles (COLUMNS) not stored exactly as they are: new ones, or revised."""
    merged = fetched[COLUMNS].merge(stored[COLUMNS], on="ts", how="left", suffixes=("", "_stored"))
    same = pd.concat([merged[column] == merged[f"{column}_stored"] for column in COLUMNS[1:]], axis=1).all(axis=1)
    return fetched[COLUMNS][~same.to_numpy()].reset_index(drop=True)


def reconcile_market(db: Database, source: CandleSource, market: Market, candles: int = RECONCILE_CANDLES) -> int:
    """Fetch the market's last `candles` stored candles over REST and store those that differ;
    how many did. A candle closed since is left to the market's tick. Raises the source's errors."""
    newest = newest_candle_ts(db, market)
    if newest is None:
        return 0
    start = newest - (candles - 1) * timeframe_ms(market.timeframe)
    fetched = source.fetch_closed(market.symbol, market.timeframe, lambda exchange: start)
    if fetched.exchange != market.exchange:  # failed over meanwhile: another exchange's candles are another market's
        return 0
    checked = fetched.candles[fetched.candles["ts"] <= newest]
    revised = differing_candles(read_candles(db, market, start=start), checked)
    upsert_candles(db, market, revised)
    return len(revised)
