"""The deployed shapes for `python -m chronoprice bench`: the Render configuration (gunicorn, one
worker) against the local exchange, and the offline demo as `python app.py` starts it, each
with a given engine, so both TensorFlow-free engines' memory is measured the same way in one run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chronoprice.market.demo import demo_candles
from chronoprice.model.engines import AUTO_ORDER
from chronoprice.store import open_store
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import (
    app_process,
    free_port,
    get_json,
    gunicorn_service,
    local_exchange_env,
    wait_for_history,
)

BENCH_START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC, a fixed stretch of the demo market
DAY_ORIGINS = 1440 - 59  # a 24-hour cold start's origins with a full 60-candle window
SETTLED_SECONDS = 4.0  # the offline demo's forecasts stop growing this long: its histories are done


def run_deploy_benchmark(model_path: Path, ticks: int = 100, engine: str = "auto") -> dict:
    """Start-up time and memory of the Render configuration (gunicorn, 1 worker, `engine`) against
    the local exchange: after the 24-hour cold start and its history are done, `ticks` API reads
    each with one new candle, then the worker's resident memory."""
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (ticks + 1600) * 60_000)
    with BinanceSimulator({"BTC/USDT": candles}, now_ms=BENCH_START_MS + 1500 * 60_000 + 20_000) as exchange, \
            tempfile.TemporaryDirectory() as folder:
        env = local_exchange_env(exchange.url, Path(folder) / "deploy.db", 0.05, CHRONOPRICE_ENGINE=engine,
                                 CHRONOPRICE_MODEL=str(model_path))
        with gunicorn_service(env) as (base, _, first_200_seconds, _log):
            cold_started = time.monotonic()
            get_json(base + "/api/v1/forecast")  # cold start: 24 h of candles, history forecast in the background
            wait_for_history(Path(folder) / "deploy.db", expected_origins=DAY_ORIGINS)
            cold_start_seconds = time.monotonic() - cold_started
            tick_ms = []
            for _ in range(ticks):
                exchange.advance(1)
                time.sleep(0.06)
                started = time.perf_counter()
                status, body = get_json(base + "/api/v1/forecast")
                tick_ms.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"forecast answered {status}: {body}")
            _, health = get_json(base + "/api/health")
    return {
        "first_200_seconds": round(first_200_seconds, 2),
        "cold_start_history_seconds": round(cold_start_seconds, 1),
        "resident_mb_after_ticks": health["resident_mb"],
        "tensorflow_imported": health["tensorflow_imported"],
        "engine": health["engine"],
        "ticks": ticks,
        "api_tick_ms_p50": round(float(np.percentile(tick_ms, 50)), 1),
        "api_tick_ms_p95": round(float(np.percentile(tick_ms, 95)), 1),
    }


def offline_demo_resident_mb(model_path: Path, engine: str) -> float:
    """Resident memory of `python app.py` on the offline demo (its default watchlist) with
    `engine`, once its markets' cold-start histories are forecast."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        db_file = Path(folder) / "demo.db"
        command = [sys.executable, "app.py", "--source", "demo", "--engine", engine, "--model", str(model_path),
                   "--db", str(db_file), "--port", str(port)]
        with app_process(command, {}, port) as (base, _, _first_200, _log):
            get_json(base + "/api/v1/forecast")
            wait_for_history(db_file, expected_origins=DAY_ORIGINS)
            _wait_until_settled(db_file)
            _, health = get_json(base + "/api/health")
    return health["resident_mb"]


UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: every connection is refused


def offline_cold_start(model_path: Path, timeout_seconds: float = 120.0) -> dict:
    """`python app.py` with every exchange unreachable (the configured one and both fallbacks)
    on an empty database with the default watchlist: seconds from starting the process until
    `/api/v1/markets` shows the first market's forecast, and every market's."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "app.py", "--model", str(model_path), "--db", str(Path(folder) / "offline.db"),
                   "--port", str(port), "--exchange-url", UNREACHABLE,
                   "--fallback-exchanges", f"kraken={UNREACHABLE},coinbase={UNREACHABLE}"]
        with app_process(command, {}, port) as (base, _, first_200_seconds, _log):
            started = time.monotonic() - first_200_seconds
            first = None
            while time.monotonic() - started < timeout_seconds:
                markets = get_json(base + "/api/v1/markets")[1]["markets"]
                forecast = [market["newest_forecast_origin_ts"] is not None for market in markets]
                if any(forecast) and first is None:
                    first = time.monotonic() - started
                if forecast and all(forecast):
                    return {"markets": len(markets), "first_200_seconds": round(first_200_seconds, 2),
                            "first_forecast_seconds": round(first, 2), "every_forecast_seconds": round(time.monotonic() - started, 2)}
                time.sleep(0.1)
    raise RuntimeError(f"the offline start forecast not every watched market within {timeout_seconds:.0f} s")


def _wait_until_settled(db_file: Path, timeout_seconds: float = 180.0) -> None:
    db = open_store(db_file)
    deadline = time.monotonic() + timeout_seconds
    last, settled_at = None, time.monotonic()
    while time.monotonic() - settled_at < SETTLED_SECONDS:
        count = db.execute("select count(*) from forecasts").fetchone()[0]
        if count != last:
            last, settled_at = count, time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError("the offline demo's histories did not settle in time")
        time.sleep(0.5)


def resident_mb_by_engine(model_path: Path, deploy: dict) -> dict:
    """Each TensorFlow-free engine's resident memory in the offline demo and in the Render
    configuration after its cold start and ticks (the serving engine's from `deploy`, the run
    already made; the others' from a run like it)."""
    measured = {}
    for engine in AUTO_ORDER:
        run = deploy if deploy["engine"] == engine else run_deploy_benchmark(model_path, deploy["ticks"], engine)
        measured[engine] = {"offline_demo": offline_demo_resident_mb(model_path, engine),
                            "gunicorn_after_ticks": run["resident_mb_after_ticks"]}
    return measured
