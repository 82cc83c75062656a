"""Exchange faults seen through the product: the API and the dashboard while the exchange
misbehaves, and after it recovers."""

import pytest

from chronoprice.config import settings_from
from chronoprice.dashboard.callbacks import load_view, render_text
from chronoprice.exchange_sim import Fault
from chronoprice.forecast import load_forecaster
from chronoprice.pipeline import Pipeline
from chronoprice.server import create_app
from chronoprice.sources import LiveSource
from chronoprice.store import read_candles

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


class Clock:
    seconds = 1000.0

    def __call__(self):
        return self.seconds


@pytest.fixture
def product(exchange, tmp_path, tiny_model):
    clock = Clock()
    source = LiveSource("binance", exchange.url, (), history=200, timeout_ms=300, attempts=2, backoff_seconds=0.0,
                        sleep=lambda seconds: None, clock=clock)
    pipeline = Pipeline(source, tmp_path / "faults.db", lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    settings = settings_from({"source": "live", "db": str(tmp_path / "faults.db")}, {})
    client = create_app(settings, pipeline, env={}).server.test_client()
    assert client.get("/api/v1/forecast").status_code == 200
    return pipeline, client, clock


@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_exchange_fault_never_breaks_the_api_or_dashboard_and_recovery_is_complete(product, exchange, fault_name):
    pipeline, client, clock = product
    fault, reported_as = FAULTS[fault_name]
    before = client.get("/api/v1/candles?limit=1").get_json()["candles"][-1]["ts"]
    exchange.queue(fault)
    exchange.advance(2)
    clock.seconds += 10

    for path in ("/api/v1/candles?limit=1", "/api/v1/forecast", "/api/v1/metrics", "/price/latest", "/api/health"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_json())
    assert client.get("/api/v1/candles?limit=1").get_json()["candles"][-1]["ts"] == before, "the last good state stays"
    shown = render_text(load_view(pipeline, SYMBOL))
    assert reported_as in shown["status-message"], shown["status-message"]
    assert shown["kpi-last-price"] != "–"

    exchange.faults.clear()
    clock.seconds += 10
    forecast = client.get("/api/v1/forecast").get_json()
    stored = read_candles(pipeline.db(), pipeline.market(SYMBOL, "binance"))
    closed = exchange.closed_candles(SYMBOL)
    assert stored["ts"].iloc[-1] == closed["ts"].iloc[-1] == forecast["origin_ts"], "caught up and forecasting within one refresh"
    assert stored.equals(closed.tail(len(stored)).reset_index(drop=True))
    assert render_text(load_view(pipeline, SYMBOL))["status-message"] == ""
