import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from prometheus_client import REGISTRY

from chronoprice.config import settings_from
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.build import build_ticker
from chronoprice.service.tick import Ticker
from chronoprice.web.access import metrics_refusal
from chronoprice.web.server import create_app
from tests.helpers import MINUTE_MS


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("api")
    settings = settings_from({"source": "demo", "db": str(folder / "api.db"), "model": str(tiny_model)}, {})
    ticker = build_ticker(settings)
    ticker.backfill("BTC/USDT", hours=2)
    return create_app(settings, ticker, env={}).server


@pytest.fixture(scope="module")
def client(demo_server):
    return demo_server.test_client()


def test_health_says_what_is_running(client):
    body = client.get("/api/health").get_json()
    assert body["status"] == "ok" and body["source"] == "offline demo"
    assert body["model_available"] is True and body["model_version"].startswith("lstm-")
    assert body["engine"] == "native" and body["resident_mb"] > 0
    assert body["scheduler"] == "none", "nothing ticks the watchlist beside this test's app"


def test_candles_endpoint(client):
    body = client.get("/api/v1/candles?symbol=BTC/USDT&limit=5").get_json()
    assert (body["exchange"], body["symbol"], body["timeframe"]) == ("demo", "BTC/USDT", "1m")
    assert [candle["ts"] for candle in body["candles"]] == sorted(candle["ts"] for candle in body["candles"])
    assert len(body["candles"]) == 5 and body["candles"][0]["time"].endswith("Z")
    assert body["candles"][1]["ts"] - body["candles"][0]["ts"] == MINUTE_MS


def test_forecast_endpoint_follows_the_design_contract(client):
    body = client.get("/api/v1/forecast?symbol=BTC/USDT").get_json()
    assert set(body) == {"exchange", "symbol", "timeframe", "origin_ts", "model_version", "served", "skill_guard", "steps"}
    assert body["served"] == "model" and body["skill_guard"]["guarded"] is False
    assert body["skill_guard"]["required"] == 2000 and body["skill_guard"]["origins"] < 2000  # two hours of history
    assert [step["step"] for step in body["steps"]] == list(range(1, 11))
    assert [step["ts"] - body["origin_ts"] for step in body["steps"]] == [MINUTE_MS * n for n in range(1, 11)]
    assert all(step["lower"] < step["close"] < step["upper"] for step in body["steps"])
    assert client.get("/price/prediction?symbol=BTC/USDT").get_json() == body


def test_metrics_and_history_score_matured_forecasts(client):
    metrics = client.get("/api/v1/metrics?symbol=BTC/USDT&window=120").get_json()
    assert metrics["matured"] > 0 and [step["step"] for step in metrics["steps"]] == list(range(1, 11))
    assert 0.5 < metrics["mae_ratio"] < 1.5 and 0 <= metrics["coverage"] <= 1
    hits = REGISTRY.get_sample_value("chronoprice_cache_lookups_total", {"result": "hit"}) or 0
    assert client.get("/metrics/model?symbol=BTC/USDT&window=120").get_json() == metrics
    now_hits = REGISTRY.get_sample_value("chronoprice_cache_lookups_total", {"result": "hit"})
    assert now_hits == hits + 1, "the same window, cached"
    newest = client.get("/api/v1/candles?limit=1").get_json()["candles"][0]["ts"]
    assert metrics["since_ms"] == newest - 120 * MINUTE_MS
    week = client.get("/api/v1/metrics?symbol=BTC/USDT&window=10080").get_json()
    assert week["since_ms"] % 86_400_000 == 0 and 0 <= newest - 7 * 86_400_000 - week["since_ms"] < 86_400_000
    assert week["matured"] >= metrics["matured"]
    history = client.get("/api/v1/history?symbol=BTC/USDT&limit=20").get_json()["forecasts"]
    assert len(history) == 20 and all(row["actual"] is not None for row in history)
    start, end = history[0]["ts"], history[-1]["ts"]
    window = client.get(f"/api/v1/history?symbol=BTC/USDT&start={start}&end={end}").get_json()["forecasts"]
    assert {row["ts"] for row in window} == {row["ts"] for row in history} | {row["ts"] for row in window}
    assert min(row["ts"] for row in window) == start and max(row["ts"] for row in window) == end
    iso = client.get("/api/v1/history?symbol=BTC/USDT&start=2020-01-01T00:00:00Z&limit=1")
    assert iso.status_code == 200 and len(iso.get_json()["forecasts"]) == 1
    assert client.get(f"/api/v1/history?start={end}&end={start - 1}").get_json()["forecasts"] == []


def test_latest_price_alias(client):
    body = client.get("/price/latest").get_json()
    candles = client.get("/api/v1/candles?limit=1").get_json()["candles"]
    assert body["price"] == candles[-1]["close"] and body["ts"] == candles[-1]["ts"]


@pytest.mark.parametrize(
    "path, parameter",
    [
        ("/api/v1/candles?limit=0", "limit"),
        ("/api/v1/candles?limit=ten", "limit"),
        ("/api/v1/candles?symbol=BTCUSDT", "symbol"),
        ("/api/v1/metrics?window=5", "window"),
        ("/api/v1/history?start=yesterday", "start"),
        ("/api/v1/history?end=-5", "end"),
        ("/api/v1/history?start=-1.9", "start"),  # ISO 8601 for the year -1, found by the fuzzer
        ("/api/v1/history?end=6000-01-01", "end"),  # past the nanosecond range too
    ],
)
def test_bad_parameters_get_400_naming_the_parameter(client, path, parameter):
    response = client.get(path)
    assert response.status_code == 400
    assert response.get_json()["parameter"] == parameter


def test_unknown_symbols_and_paths_get_404_json(client):
    response = client.get("/api/v1/forecast?symbol=DOGE/EUR")
    assert response.status_code == 404 and response.get_json()["parameter"] == "symbol"
    assert "has no DOGE/EUR" in response.get_json()["error"]
    for path in ("/api/v2/forecast", "/price/nothing", "/metrics/else"):
        response = client.get(path)
        assert response.status_code == 404 and "no such endpoint" in response.get_json()["error"]
    response = client.post("/api/health")
    assert response.status_code == 405 and response.is_json and "GET" in response.headers["Allow"]


def test_openapi_document_is_served(client):
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.") and "/api/v1/forecast" in document["paths"]


def test_the_openapi_document_describes_every_route_and_method(demo_server):
    document = demo_server.test_client().get("/api/openapi.json").get_json()
    api_rules = [rule for rule in demo_server.url_map.iter_rules()
                 if rule.rule.startswith(("/api/v1/", "/price/", "/metrics", "/api/health")) and "<path:" not in rule.rule]
    served = {(rule.rule.replace("<", "{").replace(">", "}"), method.lower())
              for rule in api_rules for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path.replace("{id}", "{rule_id}"), method) for path, item in document["paths"].items() for method in item}
    assert served == documented


@pytest.mark.parametrize("text", ["BTC/USDT", "eth/usdt", "1INCH/USDT", " BTC/USDT", "BTC/USDT ", "ÄÖ/USDT", "BTC-USDT",
                                  "BTC/USDT/X", "/USDT", "BTC/", "BTC/US DT", "", "BTC\n/USDT"])
def test_the_symbol_pattern_accepts_exactly_what_the_server_accepts(client, text):
    import re

    from chronoprice.web.openapi import OPENAPI

    pattern = OPENAPI["components"]["schemas"]["NewAlertRule"]["oneOf"][0]["properties"]["symbol"]["pattern"]
    response = client.get("/api/v1/candles", query_string={"symbol": text, "limit": 1})
    assert (re.search(pattern, text) is not None) == (response.status_code != 400), response.get_json()


def test_missing_model_gives_503_json_and_candles_still_work(tmp_path):
    settings = settings_from({"source": "demo", "db": str(tmp_path / "m.db"), "model": str(tmp_path / "absent")}, {})
    client = create_app(settings, build_ticker(settings, history_hours=2), env={}).server.test_client()
    response = client.get("/api/v1/forecast")
    assert response.status_code == 503 and "model unavailable" in response.get_json()["error"]
    assert response.headers["Retry-After"]
    assert client.get("/api/v1/candles?limit=3").status_code == 200
    assert client.get("/api/health").get_json()["model_available"] is False


def test_a_new_candle_invalidates_cached_responses(exchange, tmp_path, tiny_model):
    settings = settings_from({"source": "live", "db": str(tmp_path / "c.db"), "refresh_seconds": "1"}, {})
    source = LiveSource("binance", exchange.url, (), history=100)
    clock = [1000.0]
    ticker = Ticker(source, settings.db, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=1, clock=lambda: clock[0])
    server = create_app(settings, ticker, env={}).server
    client = server.test_client()
    first = client.get("/api/v1/candles?limit=2").get_json()
    fetches = exchange.requests["/api/v3/klines"]
    assert client.get("/api/v1/candles?limit=2").get_json() == first
    assert exchange.requests["/api/v3/klines"] == fetches, "within the refresh interval: no new fetch"
    exchange.advance(1)
    clock[0] += 1
    second = client.get("/api/v1/candles?limit=2").get_json()
    assert second["candles"][-1]["ts"] == first["candles"][-1]["ts"] + MINUTE_MS
    forecast = client.get("/api/v1/forecast").get_json()
    assert forecast["origin_ts"] == second["candles"][-1]["ts"]


def test_cache_backend_follows_the_deployment():
    from chronoprice.web.cache import cache_config

    assert cache_config({})["CACHE_TYPE"] == "SimpleCache"
    assert cache_config({"WEB_CONCURRENCY": "2"})["CACHE_TYPE"] == "FileSystemCache"
    assert cache_config({"CACHE_REDIS_URL": "redis://127.0.0.1:6379/0"})["CACHE_TYPE"] == "RedisCache"


def json_schema(openapi_schema):
    """An OpenAPI 3.0 schema as JSON Schema: `nullable: true` also allows null."""
    if isinstance(openapi_schema, list):
        return [json_schema(each) for each in openapi_schema]
    if not isinstance(openapi_schema, dict):
        return openapi_schema
    converted = {key: json_schema(value) for key, value in openapi_schema.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if openapi_schema.get("nullable") else converted


@pytest.mark.parametrize("body", [
    {"type": "price_cross", "level": 65000.5}, {"type": "price_cross", "level": 65000, "direction": "up"},
    {"type": "band_exit"}, {"type": "band_exit", "level": 0.95, "step": 10}, {"type": "forecast_move", "percent": 0.5},
    {"type": "market_state", "cooldown_minutes": 0},
    {"type": "price_cross"}, {"type": "price_cross", "level": 0}, {"type": "band_exit", "level": 0.85},
    {"type": "band_exit", "step": 11}, {"type": "forecast_move"}, {"type": "forecast_move", "percent": 101},
    {"type": "price_cross", "level": 1, "direction": "sideways"}, {"type": "market_state", "cooldown_minutes": 10**6},
    {"type": "market_state", "webhook": ""}, {"type": "market_state", "webhook": None},
    {"type": "market_state", "webhook": "https://93.184.216.34/hook"}, {"type": "market_state", "webhook": {}},
    {"type": "market_state", "webhook": 0}, {"type": "market_state", "webhook": "ftp://93.184.216.34/hook"},
    {"type": "market_state", "webhook": "https://93.184.216.34/" + "x" * 2000},
])
def test_the_alert_rule_schema_accepts_exactly_what_the_server_accepts(body):
    import jsonschema

    from chronoprice.service.alert_rules import RuleError, new_rule
    from chronoprice.web.openapi import OPENAPI

    schema = OPENAPI["components"]["schemas"]["NewAlertRule"]
    full = {"symbol": "BTC/USDT", **body}
    schema_accepts = jsonschema.Draft4Validator(json_schema(schema)).is_valid(full)
    try:
        new_rule(full, "BTC/USDT", "1m", 10, 0, allow_private=False)
        server_accepts = True
    except RuleError:
        server_accepts = False
    assert schema_accepts == server_accepts


# The fuzz: every operation of the OpenAPI document, with generated parameters, must answer
# without a 5xx and in the documented shape.
fuzz_schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(demo_server):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", demo_server)


@pytest.mark.slow
@fuzz_schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz_finds_no_server_error_and_no_schema_violation(case):
    case.call_and_validate()


def test_responses_are_cached_in_redis_when_configured(redis_url, tmp_path, tiny_model):
    import redis

    settings = settings_from({"source": "demo", "db": str(tmp_path / "r.db"), "model": str(tiny_model)}, {})
    client = create_app(settings, build_ticker(settings, history_hours=2), env={"CACHE_REDIS_URL": redis_url}).server.test_client()
    body = client.get("/api/v1/candles?limit=3").get_json()
    keys = [key.decode() for key in redis.Redis.from_url(redis_url).keys("chronoprice:*")]
    assert any(key.startswith("chronoprice:api:candles:demo:BTC/USDT:") for key in keys), keys
    assert client.get("/api/v1/candles?limit=3").get_json() == body


def test_a_database_locked_past_the_busy_timeout_gets_503_not_500(tmp_path, tiny_model, monkeypatch):
    import sqlite3

    import chronoprice.web.api.candles

    settings = settings_from({"source": "demo", "db": str(tmp_path / "l.db"), "model": str(tiny_model)}, {})
    client = create_app(settings, build_ticker(settings, history_hours=2), env={}).server.test_client()

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(chronoprice.web.api.candles, "read_candles", locked)  # a real lock would take 5 s to surface
    response = client.get("/api/v1/candles")
    assert response.status_code == 503 and "database busy" in response.get_json()["error"]


def test_metrics_are_prometheus_text_open_on_loopback_and_behind_the_metrics_token_elsewhere(tmp_path, tiny_model):
    from prometheus_client.parser import text_string_to_metric_families

    token = "a-long-metrics-token-for-tests"
    settings = settings_from({"source": "demo", "db": str(tmp_path / "m.db"), "model": str(tiny_model),
                              "metrics_token": token}, {})
    ticker = build_ticker(settings)
    client = create_app(settings, ticker, env={}).server.test_client()
    assert client.get("/api/v1/candles?limit=3").status_code == 200  # a tick
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(answer.get_data(as_text=True))}
    assert {"chronoprice_ticks", "chronoprice_close_to_stored_seconds", "chronoprice_exchange_errors"} <= set(families)
    assert any(sample.value >= 1 for sample in families["chronoprice_ticks"].samples if sample.name.endswith("_total"))
    labels = {key for family in families.values() if family.name.startswith("chronoprice_")
              for sample in family.samples for key in sample.labels}
    bounded = {"timeframe", "outcome", "kind", "event", "le", "state", "result", "market"}
    assert labels <= bounded, "no message or other unbounded label"
    market_labelled = {family.name for family in families.values() for sample in family.samples
                       if "market" in sample.labels}
    assert market_labelled <= {"chronoprice_skill_guarded"}, "a market label only on the guard of watched markets"
    assert token not in answer.get_data(as_text=True)
    stranger = {"REMOTE_ADDR": "203.0.113.9"}
    refused = client.get("/metrics", environ_base=stranger)
    assert refused.status_code == 401 and "CHRONOPRICE_METRICS_TOKEN" in refused.get_json()["error"]
    assert token not in refused.get_data(as_text=True)
    assert client.get("/metrics", environ_base=stranger, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", environ_base=stranger, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert metrics_refusal("203.0.113.9", None, None) is None, "with no metrics token set, /metrics is open"
    ticker.wait_for_histories()
