"""The stream's closed candle is the stored candle: stored and forecast at the close without a
REST request on the way, checked by REST in the background and revised where REST differs; a
reconnect, or a gap, goes through REST. ccxt.pro's own client against the local Binance stream."""

import logging

import pandas as pd
import pytest

from chronoprice.market.candles import COLUMNS, find_gaps
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.source import Market
from chronoprice.market.stream import CandleStream
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.streamed import STREAMED_NOTE, differing_candles, streamed_fetch
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store import open_store
from chronoprice.store.records import newest_candle_ts, newest_forecast_origin_ts, read_candles
from chronoprice.testing.exchange import Fault
from chronoprice.testing.harness import FakeClock
from chronoprice.testing.stream import BinanceStreamSimulator
from tests.helpers import wait_until

MARKET = Market("binance", "BTC/USDT", "1m")


@pytest.fixture
def streamed(exchange, db_path, tiny_model):
    """A scheduler of BTC/USDT@1m with its stream, on a clock that never moves: only the stream
    brings a tick due. Yields once the first (REST) tick is stored and a tick has run while the
    market streams."""
    with BinanceStreamSimulator(exchange, push_seconds=0.05) as stream:
        clock = FakeClock(exchange.now_ms / 1000)
        source = LiveSource("binance", exchange.url, (), history=120, backoff_seconds=0.0, attempts=1)
        ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model), clock=clock, progress=False)
        seed_watchlist(ticker.db(), "BTC/USDT@1m", 50)
        scheduler = Scheduler(ticker, clock=clock)
        scheduler.stream = CandleStream("binance", exchange.url, stream.url, scheduler.candle_closed,
                                        stall_seconds=5).start()
        scheduler.start()
        db = open_store(db_path)
        try:
            assert wait_until(lambda: stored_through_exchanges_newest(db, exchange)), "the first tick"
            # The stream's first event asks for a REST tick to catch up: it must be over before a close,
            # or it would fetch that close itself.
            assert wait_until(lambda: ticker.stored_status("BTC/USDT", "1m").feed == "streaming")
            yield exchange, stream, scheduler, db
        finally:
            scheduler.stop()
            ticker.wait_for_histories()


def stored_through_exchanges_newest(db, exchange) -> bool:
    """The newest closed candle stored and forecast from."""
    newest = exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
    return newest_candle_ts(db, MARKET) == newest and newest_forecast_origin_ts(db, MARKET) == newest


def test_the_streamed_candle_is_taken_only_where_the_next_fetch_would_start():
    candle = (1_735_689_660_000, 100.0, 101.0, 99.0, 100.5, 3.0)
    fetched = streamed_fetch(candle, "binance", lambda exchange: 1_735_689_660_000)
    assert fetched.exchange == "binance" and fetched.note == STREAMED_NOTE
    assert fetched.candles.values.tolist() == [list(candle)]
    assert streamed_fetch(candle, "binance", lambda exchange: 1_735_689_600_000) is None, "a hole before it: REST"
    assert streamed_fetch(candle, "binance", lambda exchange: None) is None, "nothing stored: a cold start"
    assert streamed_fetch(None, "binance", lambda exchange: 1_735_689_660_000) is None


def test_only_new_or_revised_candles_differ():
    stored = pd.DataFrame([[0, 1.0, 2.0, 0.5, 1.5, 3.0], [60_000, 1.5, 2.0, 1.0, 1.8, 2.0]], columns=COLUMNS)
    fetched = pd.DataFrame([[0, 1.0, 2.0, 0.5, 1.5, 3.0], [60_000, 1.5, 2.0, 1.0, 1.9, 2.5],
                            [120_000, 1.9, 2.0, 1.8, 1.9, 1.0]], columns=COLUMNS)
    assert differing_candles(stored, fetched)["ts"].tolist() == [60_000, 120_000]
    assert differing_candles(stored, stored).empty


@pytest.mark.slow
def test_a_streamed_close_is_stored_and_forecast_while_rest_fails(streamed, caplog):
    exchange, stream, scheduler, db = streamed
    exchange.queue(Fault(status=503, times=1_000))  # REST's candles fail from here on; the stream goes on
    with caplog.at_level(logging.WARNING, logger="chronoprice.service.scheduler"):
        for _ in range(2):
            exchange.advance(1)
            assert wait_until(lambda: stored_through_exchanges_newest(db, exchange)), "stored and forecast"
        assert wait_until(lambda: "REST could not check" in caplog.text), "the background check failed, and said so"
    exchange.faults.clear()
    stored = read_candles(db, MARKET)
    pd.testing.assert_frame_equal(stored.tail(3).reset_index(drop=True),
                                  exchange.closed_candles("BTC/USDT").tail(3).reset_index(drop=True))
    assert scheduler.ticker.stored_status("BTC/USDT", "1m").note == STREAMED_NOTE


@pytest.mark.slow
def test_a_wrong_final_candle_from_the_stream_is_revised_by_rest(streamed, caplog):
    exchange, stream, scheduler, db = streamed

    def close_at_the_high(event: dict) -> list[dict]:
        return [{**event, "k": {**event["k"], "c": event["k"]["h"]}}]

    stream.final_events = close_at_the_high
    with caplog.at_level(logging.INFO, logger="chronoprice.service.scheduler"):
        exchange.advance(1)
        closed = exchange.closed_candles("BTC/USDT").iloc[-1]
        assert wait_until(lambda: stored_through_exchanges_newest(db, exchange))
        assert wait_until(lambda: "REST revised 1 candle" in caplog.text), "the background check found it"
    stored = read_candles(db, MARKET).iloc[-1]
    assert stored["close"] == closed["close"] != closed["high"], "REST's close, not the stream's"
    origin_close = db.execute("select distinct origin_close from forecasts where origin_ts = ?", [int(closed["ts"])])
    assert [row[0] for row in origin_close] == [closed["close"]], "the forecast's last close revised with it"


@pytest.mark.slow
def test_a_duplicate_final_candle_is_one_close(streamed):
    exchange, stream, scheduler, db = streamed
    stream.final_events = lambda event: [event, event]
    ticks = exchange.kline_requests[("BTCUSDT", "1m")]
    for _ in range(2):
        exchange.advance(1)
        assert wait_until(lambda: stored_through_exchanges_newest(db, exchange))
    origins = db.execute("select origin_ts, count(*) from forecasts where origin_ts >= ? group by origin_ts",
                         [int(exchange.closed_candles("BTC/USDT")["ts"].iloc[-2])]).fetchall()
    assert [count for _, count in origins] == [10, 10], "one whole forecast a close"
    assert wait_until(lambda: exchange.kline_requests[("BTCUSDT", "1m")] >= ticks + 2)
    assert exchange.kline_requests[("BTCUSDT", "1m")] == ticks + 2, "one background check a close, no REST tick"


@pytest.mark.slow
def test_a_reconnect_after_missed_closes_fills_the_gap_through_rest(streamed, caplog):
    exchange, stream, scheduler, db = streamed
    with caplog.at_level(logging.INFO, logger="chronoprice.service.scheduler"):
        stream.disconnect()
        exchange.advance(3)  # three closes while the connection is down
        assert wait_until(lambda: stored_through_exchanges_newest(db, exchange)), "REST caught up on the reconnect"
        exchange.advance(1)
        assert wait_until(lambda: stored_through_exchanges_newest(db, exchange))
    stored = read_candles(db, MARKET)
    pd.testing.assert_frame_equal(stored, exchange.closed_candles("BTC/USDT").tail(len(stored)).reset_index(drop=True))
    assert find_gaps(stored["ts"].to_numpy(), 60_000).empty
    assert "REST revised" not in caplog.text, "no half-formed candle from before the drop was stored as closed"
    forecast = {row[0] for row in db.execute("select distinct origin_ts from forecasts")}
    assert set(stored["ts"].tail(5)) <= forecast, "every close forecast, the missed ones included"
