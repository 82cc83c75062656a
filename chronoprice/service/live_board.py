"""The forming candle of each streamed market, shared by the process that streams it (the
scheduler's) with every web instance that shows it, through the deployment's shared cache
(store/shared_cache.py): this process's memory when one process does both, Redis across
machines. An entry is one small candle that expires two candles after its last update; it is
never stored with the candles and never a model input."""

from __future__ import annotations

import logging
import time

import cachelib
import redis

from chronoprice.market.candles import COLUMNS
from chronoprice.market.markets import market_key
from chronoprice.market.stream import Forming
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.metrics import record_live_board_update

log = logging.getLogger(__name__)
SHARED_CACHE_ERRORS = (redis.RedisError, OSError)
# After a failure the board rests this long: each try at a Redis that is gone can take its whole
# timeout, which must not hold up the stream's events or every viewer's poll.
REST_SECONDS = 10.0


class LiveBoard:
    """Forming candles by market, on a cachelib cache every process of the deployment reaches."""

    def __init__(self, cache: cachelib.BaseCache | None = None, clock=time.monotonic):
        self._cache = cache if cache is not None else cachelib.SimpleCache()
        self._clock = clock
        self._resting_until = 0.0

    def publish(self, symbol: str, timeframe: str, forming: Forming) -> None:
        """Show this candle as the market's forming one (called on every stream event)."""
        if self._resting():
            return
        expires = 2 * timeframe_ms(timeframe) // 1000
        try:
            self._cache.set(market_key(symbol, timeframe), [list(forming.candle), forming.received_ms], timeout=expires)
        except SHARED_CACHE_ERRORS as error:
            self._rest("publish", error)
            return
        record_live_board_update()

    def read(self, symbol: str, timeframe: str) -> Forming | None:
        """The market's forming candle as last streamed; None if none is (or the cache is down)."""
        if self._resting():
            return None
        try:
            entry = self._cache.get(market_key(symbol, timeframe))
        except SHARED_CACHE_ERRORS as error:
            self._rest("read", error)
            return None
        return None if entry is None else Forming(tuple(entry[0]), int(entry[1]))

    def _resting(self) -> bool:
        return self._clock() < self._resting_until

    def _rest(self, what: str, error: Exception) -> None:
        self._resting_until = self._clock() + REST_SECONDS
        log.warning("live board: cannot %s forming candles (%s: %s); trying again in %.0f s, pages show the last tick's",
                    what, type(error).__name__, error, REST_SECONDS)


def candle_fields(candle) -> dict:
    """A candle as a [ts, open, high, low, close, volume] row gives it, by column name."""
    return dict(zip(COLUMNS, candle))

