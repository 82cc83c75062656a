"""The forming candle over the exchange's WebSocket: ccxt.pro's own client against the local
Binance kline stream (chronoprice/market/stream_simulator.py), its watchdog, and the scheduler
ticking a market the moment its stream shows the candle closed."""

import pytest

from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.source import Market
from chronoprice.market.stream import (
    DEFAULT_PER_CONNECTION,
    CandleStream,
    groups_of,
    streams_per_connection,
    supports_streaming,
    valid_candle,
)
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store import open_store
from chronoprice.store.records import newest_candle_ts, read_candles
from chronoprice.testing.harness import FakeClock
from chronoprice.testing.stream import BinanceStreamSimulator
from tests.helpers import wait_until

MARKETS = [("BTC/USDT", "1m"), ("ETH/USDT", "5m")]


@pytest.fixture
def stream_exchange(exchange):
    with BinanceStreamSimulator(exchange, push_seconds=0.05) as stream:
        yield exchange, stream


def test_ccxt_can_stream_binance_and_kraken_candles_and_malformed_ones_are_refused():
    assert supports_streaming("binance") and supports_streaming("kraken")
    assert not supports_streaming("no-such-exchange")
    assert valid_candle([1, "1.0", "2.0", "0.5", "1.5", "3"]) == (1, 1.0, 2.0, 0.5, 1.5, 3.0)
    for bad in ([1, None, 2, 0.5, 1.5, 3], [1, 1.0, 0.9, 0.5, 1.5, 3], [1, 1.0, 2.0, 0.5, 1.5], ["x", 1, 2, 0.5, 1.5, 3],
                [1, 1.0, float("nan"), 0.5, 1.5, 3], [1, 1.0, 2.0, 0.5, 1.5, -1]):
        assert valid_candle(bad) is None, bad


def test_the_stream_follows_the_forming_candle_and_reports_each_close_once(stream_exchange):
    exchange, stream = stream_exchange
    calls = []
    candles = CandleStream("binance", exchange.url, stream.url, lambda *call: calls.append(call),
                           stall_seconds=5).start()
    try:
        candles.watch(MARKETS)
        assert wait_until(lambda: all(candles.forming(*market) for market in MARKETS) and candles.streaming("BTC/USDT", "1m"))
        forming = candles.forming("BTC/USDT", "1m").candle
        assert forming[0] == exchange.now_ms // 60_000 * 60_000, "the candle still forming, not a closed one"
        assert sorted(calls) == [(*market, None) for market in sorted(MARKETS)], (
            "each market's first event on the connection: a tick to catch up over REST, no final candle")
        exchange.advance(0.25)  # 30 s into the candle, now 45 s
        assert wait_until(lambda: candles.forming("BTC/USDT", "1m").candle[4] != forming[4]), "it moves as the clock runs"
        assert len(calls) == 2
        exchange.advance(1)
        assert wait_until(lambda: len(calls) == 3)
        closed = exchange.closed_candles("BTC/USDT").iloc[-1]
        assert calls[-1] == ("BTC/USDT", "1m", tuple(closed)), "the close reported once, with its final candle"
        candles.watch(MARKETS[:1])
        assert wait_until(lambda: not candles.streaming("ETH/USDT", "5m"))
    finally:
        candles.stop()


def test_a_final_candle_is_one_seen_to_its_end_on_the_same_connection():
    calls = []
    candles = CandleStream("binance", None, None, lambda *call: calls.append(call))
    first, second = object(), object()

    def event(ts: int, close: float, connection) -> None:
        candles._update("BTC/USDT", "1m", [[ts, 100.0, 102.0, 99.0, close, 1.0]], connection)

    event(0, 100.5, first)
    assert calls == [("BTC/USDT", "1m", None)], "new on the connection: REST catches up"
    event(0, 101.0, first)
    event(60_000, 101.2, first)
    assert calls[-1] == ("BTC/USDT", "1m", (0, 100.0, 102.0, 99.0, 101.0, 1.0)), "the next candle began: this one closed"
    event(0, 99.5, first)
    assert len(calls) == 2 and candles.forming("BTC/USDT", "1m").candle[0] == 60_000, "a late event of a closed candle"
    event(240_000, 101.0, first)
    assert calls[-1] == ("BTC/USDT", "1m", None), "candles skipped: the one last seen was not seen to its end"
    event(300_000, 101.0, second)
    assert calls[-1] == ("BTC/USDT", "1m", None), "ccxt reconnected by itself: what the old connection saw is no final"
    assert len(calls) == 4


def test_markets_are_split_over_connections_by_the_exchanges_limit(stream_exchange):
    assert streams_per_connection("binance") == 1024 and streams_per_connection("kraken") == DEFAULT_PER_CONNECTION
    assert groups_of(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    exchange, stream = stream_exchange
    calls = []
    candles = CandleStream("binance", exchange.url, stream.url, lambda *call: calls.append(call), stall_seconds=5,
                           per_connection=1).start()
    try:
        candles.watch(MARKETS)
        assert wait_until(lambda: all(candles.streaming(*market) for market in MARKETS))
        assert stream.connections == 2, "one connection a market, at a limit of one"
        exchange.advance(1)
        assert wait_until(lambda: any(call[:2] == ("BTC/USDT", "1m") and call[2] for call in calls)), "closes come"
    finally:
        candles.stop()


@pytest.mark.slow
def test_a_dropped_a_silent_and_a_garbled_stream_recover_by_themselves(stream_exchange):
    exchange, stream = stream_exchange
    candles = CandleStream("binance", exchange.url, stream.url, lambda *market: None, stall_seconds=1.0).start()
    try:
        candles.watch(MARKETS[:1])
        assert wait_until(lambda: candles.streaming("BTC/USDT", "1m"))
        stream.send_garbage()
        stream.send_garbage('{"e": "kline", "s": "BTCUSDT", "k": {"t": "soon", "i": "1m"}}')
        events = candles.events
        assert wait_until(lambda: candles.events > events + 5), "events keep coming after garbage frames"

        connections = stream.connections
        stream.disconnect()
        assert wait_until(lambda: stream.connections > connections and candles.streaming("BTC/USDT", "1m")), "reconnected"

        stream.silent = True  # a stall: the connection stays open and says nothing
        assert wait_until(lambda: not candles.streaming("BTC/USDT", "1m")), "the watchdog noticed the silence"
        stream.silent = False
        assert wait_until(lambda: candles.streaming("BTC/USDT", "1m")), "and reconnected once events came again"
    finally:
        candles.stop()


@pytest.mark.slow
def test_a_streamed_close_ticks_the_market_at_once_and_stores_only_closed_candles(stream_exchange, db_path, tiny_model):
    exchange, stream = stream_exchange
    clock = FakeClock(exchange.now_ms / 1000)  # never moves: without the stream, no tick would come due
    source = LiveSource("binance", exchange.url, (), history=120, backoff_seconds=0.0, attempts=1)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model), clock=clock, progress=False)
    seed_watchlist(ticker.db(), "BTC/USDT@1m", 50)
    scheduler = Scheduler(ticker, clock=clock)
    scheduler.stream = CandleStream("binance", exchange.url, stream.url, scheduler.candle_closed, stall_seconds=5).start()
    scheduler.start()
    market = Market("binance", "BTC/USDT", "1m")
    db = open_store(db_path)
    try:
        closed = exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
        assert wait_until(lambda: newest_candle_ts(db, market) == closed), "the first tick"
        assert wait_until(lambda: scheduler.stream.streaming("BTC/USDT", "1m"))
        for _ in range(3):
            exchange.advance(1)
            closed = exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
            assert wait_until(lambda: newest_candle_ts(db, market) == closed), "ticked on the streamed close"
        assert wait_until(lambda: ticker.stored_status("BTC/USDT", "1m").feed == "streaming")
    finally:
        scheduler.stop()
    stored = read_candles(db, market)
    assert stored["ts"].iloc[-1] == exchange.closed_candles("BTC/USDT")["ts"].iloc[-1], "no forming candle stored"
