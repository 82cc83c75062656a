"""The Render configuration, run for real: gunicorn serving app:server against the local exchange."""

import concurrent.futures
import time
from pathlib import Path

import yaml

from chronoprice.bench import get_json, gunicorn_service, run_deploy_benchmark
from chronoprice.exchange_sim import BinanceSimulator
from tests.conftest import MINUTE_MS, SERIES_START_MS

PROJECT = Path(__file__).resolve().parents[1]


def test_render_yaml_is_one_free_gunicorn_service_on_litert():
    blueprint = yaml.safe_load((PROJECT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    assert service["type"] == "web" and service["plan"] == "free" and service["runtime"] == "python"
    assert service["startCommand"].startswith("gunicorn app:server --bind 0.0.0.0:$PORT --workers 1 --threads")
    assert service["healthCheckPath"] == "/api/health"
    env = {item["key"]: item["value"] for item in service["envVars"]}
    assert env["PYTHON_VERSION"].startswith("3.11."), "TensorFlow 2.21 and ai-edge-litert 2.3 ship cp311 wheels"
    assert env["CHRONOPRICE_ENGINE"] == "litert"
    assert env["CHRONOPRICE_EXCHANGE"] != "binance", "Binance answers HTTP 451 to US hosts"


def test_two_workers_and_twenty_clients_cause_one_exchange_fetch_per_interval(series, tmp_path):
    now = SERIES_START_MS + 3000 * MINUTE_MS + 20_000
    with BinanceSimulator(series, now_ms=now) as exchange:
        env = {"CHRONOPRICE_SOURCE": "live", "CHRONOPRICE_EXCHANGE_URL": exchange.url, "CHRONOPRICE_FALLBACK_EXCHANGES": "none",
               "CHRONOPRICE_REFRESH_SECONDS": "3", "CHRONOPRICE_DB": str(tmp_path / "shared.db"), "WEB_CONCURRENCY": "2",
               "CHRONOPRICE_CACHE_DIR": str(tmp_path / "cache")}
        with gunicorn_service(env, workers=2, threads=8) as (base, _, _first_200):
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


def test_render_configuration_never_imports_tensorflow(shipped_model):
    # Memory and start-up time are measured by `python -m chronoprice bench` (docs/PERFORMANCE.md).
    report = run_deploy_benchmark(shipped_model, ticks=3)
    assert report["engine"] == "litert"
    assert report["tensorflow_imported"] is False, "sys.modules of the gunicorn worker after forecasts"
