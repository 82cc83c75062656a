"""The Render configuration, run for real: gunicorn serving app:server against the local exchange."""

import concurrent.futures
import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from chronoprice.bench.deploy import offline_demo_resident_mb, run_deploy_benchmark
from chronoprice.config import settings_from
from chronoprice.market.source import Market
from chronoprice.store import open_store
from chronoprice.store.records import newest_candle_ts, newest_forecast_origin_ts
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import get_json, gunicorn_service, local_exchange_env
from chronoprice.web.cache import cache_config
from tests.helpers import CANDLES_DRAWN, MINUTE_MS, SERIES_START_MS, wait_until

pytestmark = pytest.mark.slow  # gunicorn processes and a one-minute soak: the whole suite runs it, `-m "not slow"` does not

PROJECT = Path(__file__).resolve().parents[2]


def test_render_yaml_is_one_free_gunicorn_service_on_the_fastest_engine_without_tensorflow():
    blueprint = yaml.safe_load((PROJECT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    assert service["type"] == "web" and service["plan"] == "free" and service["runtime"] == "python"
    assert service["startCommand"].startswith("gunicorn app:server --bind 0.0.0.0:$PORT --workers 1 --threads")
    assert service["healthCheckPath"] == "/api/health"
    env = {item["key"]: item["value"] for item in service["envVars"]}
    assert env["PYTHON_VERSION"].startswith("3.11."), "TensorFlow 2.21, ai-edge-litert 2.3 and onnxruntime 1.32 ship cp311 wheels"
    assert env["CHRONOPRICE_ENGINE"] == "auto", "native where the host has a C compiler, else onnx"
    assert env["CHRONOPRICE_EXCHANGE"] != "binance", "Binance answers HTTP 451 to US hosts"


def test_the_scaled_blueprint_wires_web_instances_and_a_worker_to_one_postgres_and_key_value():
    blueprint = yaml.safe_load((PROJECT / "render-scaled.yaml").read_text())
    services = {service["name"]: service for service in blueprint["services"]}
    web, worker, cache = services["chronoprice-web"], services["chronoprice-worker"], services["chronoprice-cache"]
    (database,) = blueprint["databases"]
    (group,) = blueprint["envVarGroups"]
    assert (web["type"], worker["type"], cache["type"]) == ("web", "worker", "keyvalue")
    assert web["startCommand"].startswith("gunicorn app:server --bind 0.0.0.0:$PORT") and web["healthCheckPath"] == "/api/health"
    assert worker["startCommand"] == "python -m chronoprice worker"
    assert web["numInstances"] >= 2 and worker["numInstances"] == 2, "instances to share the load; a worker and its standby"

    def wired(service) -> dict:
        env = {item["key"]: item for item in service["envVars"] if "key" in item}
        assert {"fromGroup": group["name"]} in service["envVars"]
        assert env["DATABASE_URL"]["fromDatabase"] == {"name": database["name"], "property": "connectionString"}
        values = {item["key"]: item["value"] for item in group["envVars"]}
        values.update({key: item["value"] for key, item in env.items() if "value" in item})
        return {**values, "DATABASE_URL": "postgresql://user:password@db.internal:5432/chronoprice"}

    web_settings, worker_settings = settings_from({}, wired(web)), settings_from({}, wired(worker))
    assert web_settings.scheduler is False and worker_settings.scheduler is True
    assert str(web_settings.db) == str(worker_settings.db) == "postgresql://user:password@db.internal:5432/chronoprice"
    assert worker_settings.exchange == "binanceus" and worker_settings.engine == "auto"
    cache_url = {item["key"]: item for item in web["envVars"] if "key" in item}["CACHE_REDIS_URL"]["fromService"]
    assert cache_url == {"type": "keyvalue", "name": cache["name"], "property": "connectionString"}
    assert cache_config({"CACHE_REDIS_URL": "redis://red-x:6379"})["CACHE_TYPE"] == "RedisCache"


def test_two_workers_and_twenty_clients_cause_one_exchange_fetch_per_interval(series, tmp_path):
    now = SERIES_START_MS + 3000 * MINUTE_MS + 20_000
    with BinanceSimulator(series, now_ms=now) as exchange:
        # The scheduler is off: this is about reads of markets nobody watches.
        env = local_exchange_env(exchange.url, tmp_path / "shared.db", 3, workers=2, CHRONOPRICE_SCHEDULER="false")
        with gunicorn_service(env, workers=2, threads=8) as (base, _, _first_200, _log):
            status, body = get_json(base + "/api/v1/candles?limit=3")
            assert status == 200, body
            for _ in range(2):
                exchange.advance(1)
                time.sleep(3.2)  # the refresh interval has passed for every worker
                fetches = exchange.requests["/api/v3/klines"]
                paths = ["/api/v1/candles?limit=3", "/api/v1/forecast", "/price/latest", "/api/v1/metrics"] * 5
                with concurrent.futures.ThreadPoolExecutor(20) as pool:
                    results = list(pool.map(lambda path: get_json(base + path), paths))
                assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:2]
                assert exchange.requests["/api/v3/klines"] - fetches == 1
                newest = exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
                assert get_json(base + "/price/latest")[1]["ts"] == newest


def test_of_two_gunicorn_workers_exactly_one_ticks_the_watchlist_with_nobody_reading(series, tmp_path):
    now = SERIES_START_MS + 3000 * MINUTE_MS + 20_000
    db_path = tmp_path / "watched.db"
    with BinanceSimulator(series, now_ms=now) as exchange:
        env = local_exchange_env(exchange.url, db_path, 3, workers=2, CHRONOPRICE_WATCH="ETH/USDT@1m,BTC/USDT@15m")
        with gunicorn_service(env, workers=2, threads=8) as (base, process, _first_200, log_path):
            db = open_store(db_path)
            for symbol, timeframe in (("ETH/USDT", "1m"), ("BTC/USDT", "15m")):
                market = Market("binance", symbol, timeframe)
                closed = exchange.closed_candles(symbol, timeframe)["ts"].iloc[-1]
                assert wait_until(lambda: newest_candle_ts(db, market) == closed), f"{symbol} {timeframe} ticked unread"
                assert wait_until(lambda: newest_forecast_origin_ts(db, market) == closed)
            owners = {row[0] for row in db.execute("select owner from leases where name = 'scheduler'")}
            assert len(owners) == 1
            workers = {int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()}
            assert int(owners.pop().split(":")[1]) in workers
            assert "holds the lease" in log_path.read_text()
            assert log_path.read_text().count("holds the lease") == 1, "one worker schedules"
            assert wait_until(lambda: log_path.read_text().count("stands by") == 1), "the other stands by"
            scrapes = [urllib.request.urlopen(base + "/metrics", timeout=10).read().decode() for _ in range(6)]
            ticks = [sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("chronoprice_ticks_total"))
                     for text in scrapes]
            assert min(ticks) >= 2, "any worker answers with the ticking worker's counts (multiprocess mode)"
            assert all('chronoprice_close_to_stored_seconds_count{timeframe="15m"}' in text for text in scrapes)


def test_render_configuration_never_imports_tensorflow(shipped_model):
    # Memory and start-up time are measured by `python -m chronoprice bench` (docs/PERFORMANCE.md).
    report = run_deploy_benchmark(shipped_model, ticks=3)
    assert report["engine"] == "native"
    assert report["tensorflow_imported"] is False, "sys.modules of the gunicorn worker after forecasts"


def test_the_bench_reads_the_offline_demos_memory_once_its_histories_are_forecast(tiny_model):
    # The bench compares both engines this way in one run (docs/PERFORMANCE.md); here it must work:
    # a server with dash, pandas and an engine loaded holds well over 100 MB.
    assert offline_demo_resident_mb(tiny_model, "native") > 100


SOAK_SECONDS = float(os.environ.get("CHRONOPRICE_SOAK_SECONDS", "60"))


def test_fifty_api_clients_and_an_open_dashboard_for_a_minute(series, tmp_path):
    """The concurrency soak: no 5xx and no "database is locked" while the exchange keeps moving."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from chronoprice.testing.harness import CHROMIUM, CHROMIUM_ARGS

    now = SERIES_START_MS + 2000 * MINUTE_MS + 20_000
    with BinanceSimulator(series, now_ms=now) as exchange:
        env = local_exchange_env(exchange.url, tmp_path / "soak.db", 1, workers=2)
        with gunicorn_service(env, workers=2, threads=16) as (base, _, _first_200, log_path), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            console_errors = []
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.goto(base + "/market")
            try:
                page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70", timeout=60_000)
            except PlaywrightError:
                raise AssertionError(f"no chart after 60 s; console: {console_errors[-5:]}; log: {log_path.read_text()[-3000:]}") from None
            deadline = time.monotonic() + SOAK_SECONDS
            paths = ["/api/v1/candles?limit=60", "/api/v1/forecast", "/api/v1/metrics", "/price/latest", "/api/v1/history?limit=100"]

            def client(number):
                timings, statuses = [], []
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    status, _ = get_json(base + paths[number % len(paths)])
                    timings.append((time.perf_counter() - started) * 1000)
                    statuses.append(status)
                return timings, statuses

            def market_moves():
                while time.monotonic() < deadline:
                    exchange.advance(1)
                    time.sleep(2)

            with concurrent.futures.ThreadPoolExecutor(51) as pool:
                mover = pool.submit(market_moves)
                results = list(pool.map(client, range(50)))
                mover.result()
            page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70")
            browser.close()
            log = log_path.read_text()
    timings = sorted(value for result in results for value in result[0])
    statuses = [value for result in results for value in result[1]]
    print(f"\nsoak: {len(statuses)} requests in {SOAK_SECONDS:.0f} s, p50 {timings[len(timings) // 2]:.0f} ms, "
          f"p95 {timings[int(len(timings) * 0.95)]:.0f} ms")
    assert statuses and all(status == 200 for status in statuses), sorted(set(statuses))
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    assert console_errors == []
