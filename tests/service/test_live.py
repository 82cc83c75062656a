"""The forming candle from the exchange's WebSocket to the browser: the live board (memory, or
Redis shared by several processes), GET /api/v1/live, and the market page's one-second poll in
a real headless Chromium, all wired as `python app.py --source live` wires them."""

import logging
import threading

import pytest
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from chronoprice.config import settings_from
from chronoprice.market.source import Market
from chronoprice.market.stream import Forming
from chronoprice.service.build import build_scheduler, build_ticker
from chronoprice.service.live_board import REST_SECONDS, LiveBoard
from chronoprice.store.records import read_candles
from chronoprice.store.shared_cache import open_shared_cache
from chronoprice.testing.harness import CHROMIUM, CHROMIUM_ARGS, FakeClock
from chronoprice.testing.stream import BinanceStreamSimulator
from chronoprice.web.server import create_app
from tests.helpers import LIVENESS_SECONDS, wait_until

MINUTE = 60_000


@pytest.fixture(params=["live"])
def live_app(request, exchange, tmp_path, tiny_model):
    """`python app.py --source live` (or auto) against the local exchange and its kline stream,
    the scheduler on a clock that stands still (so only streamed closes tick), served on a port."""
    with BinanceStreamSimulator(exchange, push_seconds=0.1) as stream:
        settings = settings_from({"source": request.param, "exchange_url": exchange.url, "exchange_ws_url": stream.url,
                                  "fallback_exchanges": "none", "db": str(tmp_path / "live.db"), "model": str(tiny_model),
                                  "watch": "BTC/USDT@1m"}, {})
        clock = FakeClock(exchange.now_ms / 1000)
        ticker = build_ticker(settings, history_hours=2, clock=clock, env={})
        scheduler = build_scheduler(settings, ticker, clock=clock).start()
        app = create_app(settings, ticker, env={})
        server = make_server("127.0.0.1", 0, app.server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield exchange, stream, ticker, app.server.test_client(), f"http://127.0.0.1:{server.server_port}/"
        finally:
            server.shutdown()
            scheduler.stop()


def live_candle(client) -> dict:
    return client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json()["candle"]


def forming_ts(exchange) -> int:
    return exchange.now_ms // MINUTE * MINUTE


@pytest.mark.slow
def test_the_api_serves_the_streamed_forming_candle_which_is_never_stored(live_app):
    exchange, stream, ticker, client, _ = live_app
    assert wait_until(lambda: client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json().get("via") == "stream")
    live = client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m")
    body = live.get_json()
    assert live.headers["Cache-Control"] == "no-store"
    assert body["candle"]["ts"] == forming_ts(exchange) and body["age_seconds"] >= 0
    first_close = body["candle"]["close"]
    exchange.advance(0.25)  # 15 s further into the same candle
    assert wait_until(lambda: client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json()["candle"]["close"] != first_close)

    exchange.advance(1)  # the candle closes: the stream ticks the market, the next one forms
    market = Market("binance", "BTC/USDT", "1m")
    closed = exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
    assert wait_until(lambda: read_candles(ticker.db(), market)["ts"].iloc[-1] == closed)
    assert wait_until(lambda: client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json()["candle"]["ts"] == forming_ts(exchange))
    assert forming_ts(exchange) not in set(read_candles(ticker.db(), market)["ts"]), "the forming candle is never stored"

    assert client.get("/api/v1/live?symbol=BTC/USDT&timeframe=2m").status_code == 400
    missing = client.get("/api/v1/live?symbol=DOGE/USDT&timeframe=1m")
    assert missing.status_code == 404 and missing.get_json()["parameter"] == "symbol"


@pytest.mark.parametrize("live_app", ["auto"], indirect=True)
def test_auto_streams_while_the_exchange_answers(live_app):
    exchange, stream, ticker, client, _ = live_app
    assert wait_until(lambda: client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json().get("via") == "stream")
    assert live_candle(client)["ts"] == forming_ts(exchange)


def test_without_a_stream_the_api_gives_the_forming_candle_the_last_tick_fetched(exchange, tmp_path, tiny_model):
    settings = settings_from({"source": "live", "exchange_url": exchange.url, "fallback_exchanges": "none", "stream": "off",
                              "db": str(tmp_path / "polled.db"), "model": str(tiny_model)}, {})
    ticker = build_ticker(settings, history_hours=2, clock=FakeClock(exchange.now_ms / 1000), env={})
    client = create_app(settings, ticker, env={}).server.test_client()
    assert client.get("/api/v1/candles?symbol=BTC/USDT&limit=1").status_code == 200  # ticks it
    body = client.get("/api/v1/live?symbol=BTC/USDT").get_json()
    assert body["via"] == "tick" and body["candle"]["ts"] == forming_ts(exchange)
    assert body["updated_ms"] == ticker.stored_status("BTC/USDT", "1m").finished_at_ms


def test_the_live_board_is_shared_through_redis_and_rests_while_redis_is_gone(redis_url, caplog):
    clock = FakeClock(0)
    worker, web = (LiveBoard(open_shared_cache({"CACHE_REDIS_URL": redis_url}, "live"), clock=clock) for _ in range(2))
    candle = Forming((1_735_689_600_000, 100.0, 101.0, 99.5, 100.5, 3.0), 1_735_689_630_000)
    worker.publish("BTC/USDT", "1m", candle)
    assert web.read("BTC/USDT", "1m") == candle, "another process reads what the streaming one published"
    assert web.read("ETH/USDT", "1m") is None

    gone = LiveBoard(open_shared_cache({"CACHE_REDIS_URL": "redis://127.0.0.1:1/0"}, "live"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="chronoprice.service.live_board"):
        gone.publish("BTC/USDT", "1m", candle)  # refused, not raised: the stream goes on
        assert gone.read("BTC/USDT", "1m") is None
    assert len(caplog.records) == 1, "one warning, then it rests instead of waiting on Redis at every event"
    clock.seconds += REST_SECONDS
    with caplog.at_level(logging.WARNING, logger="chronoprice.service.live_board"):
        assert gone.read("BTC/USDT", "1m") is None
    assert len(caplog.records) == 2, "and tries again after its rest"


@pytest.mark.slow
def test_the_market_page_follows_the_streamed_candle_within_seconds(live_app):
    exchange, stream, ticker, client, url = live_app
    assert wait_until(lambda: client.get("/api/v1/live?symbol=BTC/USDT&timeframe=1m").get_json().get("via") == "stream")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        problems = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(url + "market?symbol=BTC/USDT&timeframe=1m")
        shown = set()
        for _ in range(3):
            before = live_candle(client)["close"]
            exchange.advance(0.1)  # 6 s more of trading in the forming candle (30 s in: it stays open)
            assert wait_until(lambda: live_candle(client)["close"] != before)
            live = live_candle(client)
            page.wait_for_function("price => document.querySelector('#kpi-last-price').innerText === price",
                                   arg=f"{live['close']:,.2f}", timeout=LIVENESS_SECONDS * 1000)
            shown.add(live["close"])
        drawn = page.evaluate("""() => {
            const plot = document.querySelector('#price-chart .js-plotly-plot');
            const forming = plot.data.find(trace => trace.uid === 'forming');
            return {x: forming.x, close: forming.close, detail: document.querySelector('#kpi-last-price-detail').innerText};
        }""")
        browser.close()
    assert drawn["close"] == [live["close"]] and drawn["x"] == [live["time"].replace("Z", "")[:19]]
    assert drawn["detail"].endswith("still forming · live") and len(shown) == 3
    assert problems == []
