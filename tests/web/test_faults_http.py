"""Exchange faults seen through the product over HTTP: the API and the dashboard's refresh
callback while the exchange misbehaves, and after it recovers. The local exchange's clock is
also almost two years behind the local clock throughout."""

import json
import random

import pytest

from chronoprice.config import settings_from
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.tick import Ticker
from chronoprice.store.records import read_candles
from chronoprice.testing.exchange import Fault, kline_row
from chronoprice.testing.harness import FakeClock, dashboard_refresh_body
from chronoprice.web.server import create_app

SYMBOL = "BTC/USDT"
KLINES = "/klines"

FAULTS = {
    "429 with Retry-After": (Fault(KLINES, 429, '{"code":-1003,"msg":"Too many requests"}', {"Retry-After": "7"}, times=2), "rate limit"),
    "500": (Fault(KLINES, 500, "internal error", times=2), "unreachable"),
    "503": (Fault(KLINES, 503, '{"code":-1001,"msg":"Internal error"}', times=2), "unreachable"),
    "timeout longer than the client's": (Fault(KLINES, 0, delay_seconds=0.6, times=2), "RequestTimeout"),
    "451 geo-block": (Fault(KLINES, 451, '{"code":0,"msg":"restricted location"}', times=1), "refuses this region"),
    "truncated JSON": (Fault(KLINES, 200, '[[1735689600000, "1.0", "2.0"', times=1), "not JSON"),
    "empty reply": (Fault(KLINES, 200, "", times=1), "not JSON"),
    "HTML error page": (Fault(KLINES, 200, "<html>bad gateway</html>", times=1), "not JSON"),
}


def dashboard_refresh(client) -> dict:
    """POST the dashboard's refresh callback as the browser does; returns its outputs by id."""
    body = dashboard_refresh_body(client.get("/_dash-dependencies").get_json(), SYMBOL)
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:500]
    return {key: next(iter(value.values())) for key, value in response.get_json()["response"].items()}


@pytest.fixture
def product(exchange, tmp_path, tiny_model):
    clock = FakeClock()
    source = LiveSource("binance", exchange.url, (), history=200, timeout_ms=300, attempts=2, backoff_seconds=0.0,
                        sleep=lambda seconds: None, clock=clock)
    ticker = Ticker(source, tmp_path / "faults.db", lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    settings = settings_from({"source": "live", "db": str(tmp_path / "faults.db")}, {})
    client = create_app(settings, ticker, env={}).server.test_client()
    assert client.get("/api/v1/forecast").status_code == 200
    return ticker, client, clock


def test_duplicated_and_shuffled_candles_are_stored_once_in_order(product, exchange):
    ticker, client, clock = product
    exchange.advance(4)
    since = client.get("/api/v1/candles?limit=1").get_json()["candles"][-1]["ts"] + 60_000
    frame = exchange.series[SYMBOL]
    fresh = frame[(frame["ts"] >= since) & (frame["ts"] <= exchange.now_ms)].to_dict("records")
    rows = [kline_row(candle, min(1.0, (exchange.now_ms - candle["ts"]) / 60_000)) for candle in fresh]
    messy = rows + rows[:3]
    random.Random(5).shuffle(messy)
    exchange.queue(Fault(KLINES, 200, json.dumps(messy)))
    clock.seconds += 10
    assert client.get("/api/v1/forecast").status_code == 200
    stored = read_candles(ticker.db(), ticker.market(SYMBOL, "binance"))
    assert stored.equals(exchange.closed_candles(SYMBOL).tail(len(stored)).reset_index(drop=True))
    assert dashboard_refresh(client)["status-message"] == ""


@pytest.mark.slow
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_exchange_fault_never_breaks_the_api_or_dashboard_and_recovery_is_complete(product, exchange, fault_name):
    ticker, client, clock = product
    fault, reported_as = FAULTS[fault_name]
    before = client.get("/api/v1/candles?limit=1").get_json()["candles"][-1]["ts"]
    exchange.queue(fault)
    exchange.advance(2)
    clock.seconds += 10

    for path in ("/api/v1/candles?limit=1", "/api/v1/forecast", "/api/v1/metrics", "/price/latest", "/api/health"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_json())
    assert client.get("/api/v1/candles?limit=1").get_json()["candles"][-1]["ts"] == before, "the last good state stays"
    shown = dashboard_refresh(client)
    assert reported_as in shown["status-message"], shown["status-message"]
    assert shown["kpi-last-price"] != "–" and len(shown["price-chart"]["data"][0]["x"]) == 60

    exchange.faults.clear()
    clock.seconds += 10
    forecast = client.get("/api/v1/forecast").get_json()
    stored = read_candles(ticker.db(), ticker.market(SYMBOL, "binance"))
    closed = exchange.closed_candles(SYMBOL)
    assert stored["ts"].iloc[-1] == closed["ts"].iloc[-1] == forecast["origin_ts"], "caught up and forecasting within one refresh"
    assert stored.equals(closed.tail(len(stored)).reset_index(drop=True))
    assert dashboard_refresh(client)["status-message"] == ""
