"""The forming candle of the watched markets over the exchange's WebSocket (ccxt.pro's
watch_ohlcv), for the scheduler's process. When a market's stream shows that its candle closed
(a newer one began), `on_closed(symbol, timeframe, final)` asks for that market's tick at once
with the closed candle's final state as this connection saw it (service/streamed.py stores it
and has REST check it), or None where this connection did not see the candle form: the first
event of each market on a new connection, so every (re)connect is a REST tick.

A connection (a ccxt client of its own) carries as many watched markets as the exchange allows
(Binance: 1,024 streams), and there are as many connections as it takes. A watchdog
reconnects a silent or broken stream with growing waits; candles closed meanwhile reach the
store through REST, on that first tick and on the ticks that run regardless. The stream runs
an asyncio loop in a thread of its own, since the rest of ChronoPrice is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from typing import Callable, Iterable

import ccxt

from chronoprice.market.ccxt_rest import rewrite_urls
from chronoprice.market.timeframes import timeframe_ms

log = logging.getLogger(__name__)
STALL_SECONDS = 30.0  # no event for this long on a live connection: reconnect (a forming candle updates every ~2 s)
RECONNECT_SECONDS = (1.0, 2.0, 5.0, 15.0, 60.0)
# Streams a connection may carry: Binance documents 1,024 ("a single connection can listen to a
# maximum of 1024 streams"); elsewhere 200, ccxt's own default subscription limit a stream.
STREAMS_PER_CONNECTION = {"binance": 1024, "binanceus": 1024}
DEFAULT_PER_CONNECTION = 200
SWEEP_SECONDS = 0.1  # how often ccxt's cache is looked through for closes no watch call returned
STREAM_ERRORS = (ccxt.BaseError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError)


def websocket_api():
    """ccxt's WebSocket half (ccxt.pro), imported on first use: 31 MB resident that a process
    which never streams (the offline demo, a web instance, the command line) does not carry."""
    import ccxt.pro

    return ccxt.pro


def supports_streaming(exchange_id: str) -> bool:
    """Whether ccxt's WebSocket API can watch this exchange's candles."""
    exchange_class = getattr(websocket_api(), exchange_id, None)
    return exchange_class is not None and bool(exchange_class().has.get("watchOHLCV"))


@dataclasses.dataclass(frozen=True)
class Forming:
    """The forming candle as last streamed: [ts, open, high, low, close, volume], and when."""

    candle: tuple
    received_ms: int


def valid_candle(row) -> tuple | None:
    """The candle as a tuple if it is a whole, consistent one; None for a malformed event."""
    try:
        ts = int(row[0])
        open_, high, low, close, volume = values = [float(value) for value in row[1:6]]
    except (TypeError, ValueError, IndexError):
        return None
    if not all(math.isfinite(value) for value in values) or low <= 0 or volume < 0 or high < max(open_, close) or low > min(open_, close):
        return None
    return (ts, *values)


def streams_per_connection(exchange_id: str) -> int:
    """Markets one connection may carry: the exchange's documented limit (STREAMS_PER_CONNECTION),
    else DEFAULT_PER_CONNECTION."""
    return STREAMS_PER_CONNECTION.get(exchange_id, DEFAULT_PER_CONNECTION)


def groups_of(markets: list, size: int) -> list[list]:
    return [markets[start:start + size] for start in range(0, len(markets), size)]


def final_candle(last_seen: tuple, earlier_rows: list) -> tuple:
    """The closed candle's final state: its row in the same update where the update carried it
    (the closing event and the next candle's first can come together), else its last event."""
    for row in reversed(earlier_rows):
        candle = valid_candle(row)
        if candle is not None and candle[0] == last_seen[0]:
            return candle
    return last_seen


class CandleStream:
    """Streams the forming candle of the markets given to `watch`, reconnecting as needed."""

    def __init__(self, exchange_id: str, rest_url: str | None, ws_url: str | None,
                 on_closed: Callable[[str, str, tuple | None], None],
                 on_forming: Callable[[str, str, Forming], None] = lambda *_: None,
                 stall_seconds: float = STALL_SECONDS, clock: Callable[[], float] = time.time,
                 per_connection: int | None = None):
        self.exchange_id, self._rest_url, self._ws_url = exchange_id, rest_url, ws_url
        self._per_connection = per_connection  # markets a connection carries; None: the exchange's limit
        self._on_closed, self._on_forming, self._stall, self._clock = on_closed, on_forming, stall_seconds, clock
        self._wanted: frozenset[tuple[str, str]] = frozenset()
        self._forming: dict[tuple[str, str], Forming] = {}
        self._seen_on: dict[tuple[str, str], object] = {}  # the ccxt connection each market's last event came on
        self._live: frozenset[tuple[str, str]] = frozenset()  # subscribed on a connection that answers
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = False
        self.reconnects = self.events = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="chronoprice-stream")
        self._running: asyncio.Task | None = None

    def start(self) -> CandleStream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        return self

    def watch(self, markets: Iterable[tuple[str, str]]) -> None:
        """Stream exactly these (symbol, timeframe) markets from now on."""
        wanted = frozenset(markets)
        with self._lock:
            if wanted != self._wanted:
                self._wanted = wanted
                self._changed.set()

    def forming(self, symbol: str, timeframe: str) -> Forming | None:
        with self._lock:
            return self._forming.get((symbol, timeframe))

    def streaming(self, symbol: str, timeframe: str) -> bool:
        """Whether the market's candle comes over a live stream now (else it is polled)."""
        with self._lock:
            return (symbol, timeframe) in self._live

    def stop(self) -> None:
        """Close the connection and end the loop, without waiting for the next event; once."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._cancel(), self._loop).result(timeout=10)
            except Exception as error:  # the loop is going away; say why it ended badly
                log.warning("stream stopped: %s", error)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _cancel(self) -> None:
        if self._running is None:  # not started yet: it will see _stopping
            return
        self._running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._running

    # ------------------------------------------------------------------------ the loop
    def _client(self):
        client = getattr(websocket_api(), self.exchange_id)({"enableRateLimit": True, "timeout": 10_000})
        if self._rest_url:
            client.urls["api"] = rewrite_urls(client.urls["api"], self._rest_url)
        if self._ws_url:
            client.urls["api"]["ws"] = {key: self._ws_url for key in client.urls["api"]["ws"]}
        return client

    async def _run(self) -> None:
        self._running = asyncio.current_task()
        failures = 0
        while not self._stopping:
            with self._lock:
                markets = sorted(self._wanted)
                self._changed.clear()
            if not markets:
                await asyncio.sleep(0.5)
                continue
            limit = self._per_connection or streams_per_connection(self.exchange_id)
            groups, events_before = groups_of(markets, limit), self.events
            clients = [self._client() for _ in groups]  # a ccxt client is one connection
            try:
                await self._follow(zip(clients, groups))
                failures = 0
            except STREAM_ERRORS as error:
                failures = 1 if self.events > events_before else failures + 1  # waits grow only while nothing comes
                self.reconnects += 1
                log.warning("candle stream of %s: %s; reconnecting (attempt %d)", self.exchange_id,
                            f"{type(error).__name__}: {error}"[:300], failures)
            finally:
                with self._lock:
                    self._live = frozenset()
                    # A candle seen forming before the drop may have changed unseen: never a final one.
                    self._forming.clear()
                await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
            if failures and not self._stopping:
                await asyncio.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS)) - 1])

    async def _follow(self, connections) -> None:
        """Follow each (client, markets) group on its own connection, until the watched markets
        change or one group's stream fails or falls silent (then all reconnect)."""
        followers = [asyncio.ensure_future(self._follow_group(client, group)) for client, group in connections]
        try:
            done, _ = await asyncio.wait(followers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
        for follower in done:
            if follower.exception() is not None:
                raise follower.exception()

    async def _follow_group(self, client, markets: list[tuple[str, str]]) -> None:
        subscription = [list(market) for market in markets]
        sweeper = asyncio.ensure_future(self._sweep_every(client, markets))
        try:
            await self._watch(client, markets, subscription)
        finally:
            sweeper.cancel()

    async def _watch(self, client, markets: list[tuple[str, str]], subscription: list[list[str]]) -> None:
        while not self._stopping and not self._changed.is_set():
            # A silent connection raises no error by itself: a deadline on every event does.
            update = await asyncio.wait_for(client.watch_ohlcv_for_symbols(subscription), self._stall)
            with self._lock:
                self._live = self._live | frozenset(markets)
            connection = next(iter(client.clients.values()), None)  # ccxt's WebSocket client: one a ccxt client here
            for symbol, by_timeframe in update.items():
                for timeframe, candles in by_timeframe.items():
                    if candles:
                        self._update(symbol, timeframe, candles, connection)

    async def _sweep_every(self, client, markets: list[tuple[str, str]]) -> None:
        """Every SWEEP_SECONDS, the markets whose newest candle in ccxt's cache began since their
        last event seen here. A watch call returns one message's market: the others of a burst
        (every market's close at once) reach only the cache, and would wait for their own next
        message, seconds later on a real exchange."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            connection = next(iter(client.clients.values()), None)
            for market in markets:
                self._sweep(client, market, connection)

    def _sweep(self, client, market: tuple[str, str], connection: object) -> None:
        symbol, timeframe = market
        cached = client.ohlcvs.get(symbol, {}).get(timeframe)
        newest = valid_candle(cached[-1]) if cached else None
        with self._lock:
            seen = self._forming.get(market)
        if newest is not None and seen is not None and newest[0] > seen.candle[0]:
            self._update(symbol, timeframe, list(cached[-3:]), connection)

    def _update(self, symbol: str, timeframe: str, rows: list, connection: object = None) -> None:
        """The newest of the candles an update brought (ccxt's cache, oldest first) is forming;
        if it began since the last event on the same `connection`, the one before it closed."""
        candle = valid_candle(rows[-1])
        if candle is None:
            log.warning("candle stream: a malformed %s %s candle ignored: %s", symbol, timeframe, str(rows[-1])[:200])
            return
        market = (symbol, timeframe)
        self.events += 1
        forming = Forming(candle, int(self._clock() * 1000))
        with self._lock:
            previous = self._forming.get(market)
            if previous is not None and candle[0] < previous.candle[0]:  # an older candle's late event changes nothing
                return
            # ccxt may reconnect by itself: a candle seen on another connection is no final one either.
            seen_here = previous is not None and self._seen_on.get(market) is connection
            self._forming[market], self._seen_on[market] = forming, connection
        self._on_forming(symbol, timeframe, forming)
        if not seen_here:
            self._on_closed(symbol, timeframe, None)  # new on this connection: REST catches up on what it missed
        elif candle[0] > previous.candle[0]:
            # Only the candle just before the new one was seen to its end; past a skip, REST decides.
            next_one = candle[0] == previous.candle[0] + timeframe_ms(timeframe)
            self._on_closed(symbol, timeframe, final_candle(previous.candle, rows[:-1]) if next_one else None)
