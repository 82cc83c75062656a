"""`python -m chronoprice bench`: forecast engines against the model.predict loop, and a full
tick against the local Binance-compatible server, all measured in one run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from chronoprice.evaluation.walkforward import evaluate_forecaster
from chronoprice.market.demo import demo_candles
from chronoprice.market.live import LiveSource
from chronoprice.market.simulator import BinanceSimulator
from chronoprice.model.engines import feature_name
from chronoprice.model.features import candle_rows, model_input
from chronoprice.model.forecasters import LSTMForecaster, load_forecaster
from chronoprice.service.tick import Ticker
from chronoprice.store.sqlite import open_store
from chronoprice.testing import get_json, gunicorn_service, local_exchange_env

BENCH_START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC, a fixed stretch of the demo market


def median_ms(action: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of `repeats` calls of `action` in ms, after one untimed warm-up call:
    compilation and first allocations are not what a tick pays."""
    action()
    timings = []
    for _ in range(repeats):
        started = clock()
        action()
        timings.append((clock() - started) * 1000)
    return float(np.median(timings))


def predict_loop_path(model, relative: np.ndarray, horizon: int, feature: str) -> np.ndarray:
    """The slow baseline: `model.predict` called once per step, as naive code does."""
    # Imported here because it loads TensorFlow, which the rest of bench (and the CLI) must not.
    from chronoprice.model.network import next_input

    steps, cumulative = [], np.zeros((len(relative), 1), dtype="float32")
    for _ in range(horizon):
        step = model.predict(relative, verbose=0)
        relative = next_input(relative, step, feature).numpy()
        cumulative = cumulative + step
        steps.append(cumulative)
    return np.concatenate(steps, axis=1)


def _tick_timings(model_path: Path, engine: str, ticks: int) -> list[float]:
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (ticks + 700) * 60_000)
    with BinanceSimulator({"BTC/USDT": candles}, now_ms=BENCH_START_MS + 600 * 60_000 + 20_000) as exchange, \
            tempfile.TemporaryDirectory() as folder:
        # A one-window cold start, so no background history forecasting competes with the timing.
        source = LiveSource("binance", exchange.url, history=60)
        ticker = Ticker(source, Path(folder) / "bench.db", lambda: load_forecaster(model_path, engine), progress=False)
        ticker.tick("BTC/USDT", force=True)  # cold start: loads the model and the first window
        timings = []
        for _ in range(ticks):
            exchange.advance(1)
            started = time.perf_counter()
            status = ticker.tick("BTC/USDT", force=True)
            timings.append((time.perf_counter() - started) * 1000)
            if status.error or status.new_candles != 1:
                raise RuntimeError(f"benchmark tick went wrong: {status.summary()}")
        return timings


def _evaluate_seconds(forecaster: LSTMForecaster, origins: int) -> float:
    """Wall time of the evaluate command's walk-forward (keras engine, batched) over `origins`."""
    count = origins + forecaster.window + forecaster.horizon - 1
    rows = candle_rows(demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + count * 60_000))
    started = time.perf_counter()
    evaluate_forecaster(forecaster, rows, 0, forecaster.level)
    return time.perf_counter() - started


def run_benchmark(model_path: Path, repeats: int = 200, ticks: int = 40, deploy_ticks: int = 100) -> dict:
    """Time every engine and the predict loop on the same window, `ticks` live ticks, and the
    Render configuration under gunicorn (the shipped model) for `deploy_ticks` ticks."""
    window = candle_rows(demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + 60 * 60_000))[None]
    forecast_ms, forecasters = {}, {}
    for engine in ("keras", "litert"):
        forecasters[engine] = load_forecaster(model_path, engine)
        forecast_ms[engine] = median_ms(lambda: forecasters[engine].forecast(window), repeats)
    keras_forecaster = forecasters["keras"]
    metadata = keras_forecaster.metadata
    relative = model_input(window, float(metadata["feature"]["scale"]), feature_name(metadata))
    forecast_ms["predict_loop"] = median_ms(
        lambda: predict_loop_path(keras_forecaster.engine.model, relative, keras_forecaster.horizon, feature_name(metadata)),
        max(3, repeats // 40),
    )
    keras_path, litert_path = (forecasters[engine].engine.path(relative) for engine in ("keras", "litert"))
    # Relative to the size of the predicted move, not the price: a far stricter comparison.
    agreement = np.abs(keras_path - litert_path).max() / np.abs(keras_path).max()
    tick_ms = _tick_timings(model_path, "auto", ticks)
    evaluate_seconds = _evaluate_seconds(keras_forecaster, origins=10_000)
    return {
        "model_version": keras_forecaster.version,
        "forecast_ms": {name: round(value, 3) for name, value in forecast_ms.items()},
        "speedup_vs_predict_loop": {
            engine: round(forecast_ms["predict_loop"] / forecast_ms[engine], 1) for engine in ("keras", "litert")
        },
        "engines_path_relative_difference": float(agreement),
        "evaluate_10000_origins_seconds": round(evaluate_seconds, 2),
        "tick_ms_p50": round(float(np.percentile(tick_ms, 50)), 2),
        "tick_ms_p95": round(float(np.percentile(tick_ms, 95)), 2),
        "repeats": repeats,
        "ticks": ticks,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "deploy": run_deploy_benchmark(model_path, deploy_ticks) if deploy_ticks > 0 else None,
    }


def format_bench(report: dict) -> str:
    lines = [f"model {report['model_version']} on {report['machine']['cpus']} CPUs, median of {report['repeats']} forecasts"]
    for name, value in report["forecast_ms"].items():
        speedup = report["speedup_vs_predict_loop"].get(name)
        lines.append(f"  10-step forecast, {name:<12} {value:9.3f} ms" + (f"  ({speedup}x faster than the predict loop)" if speedup else ""))
    lines.append(f"  keras vs litert: largest difference in predicted moves {report['engines_path_relative_difference']:.2e} of the largest move")
    lines.append(f"  evaluate walk-forward over 10,000 origins (keras, batched): {report['evaluate_10000_origins_seconds']} s")
    lines.append(f"  full tick against the local exchange: p50 {report['tick_ms_p50']} ms, p95 {report['tick_ms_p95']} ms over {report['ticks']} ticks")
    deploy = report["deploy"]
    if deploy:
        lines.append(f"gunicorn, 1 worker, {deploy['engine']} engine: first 200 on / after {deploy['first_200_seconds']} s; "
                     f"24 h cold start forecast in {deploy['cold_start_history_seconds']} s; "
                     f"{deploy['resident_mb_after_ticks']} MB resident after {deploy['ticks']} ticks; "
                     f"tensorflow imported: {deploy['tensorflow_imported']}; API tick p50 {deploy['api_tick_ms_p50']} ms, p95 {deploy['api_tick_ms_p95']} ms")
    return "\n".join(lines)


# ------------------------------------------------------------------- the deployed service


def _wait_for_history(db_file: Path, expected_origins: int, timeout_seconds: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    db = open_store(db_file)
    while db.execute("select count(distinct origin_ts) from forecasts").fetchone()[0] < expected_origins:
        if time.monotonic() > deadline:
            raise RuntimeError("the cold-start history was not forecast in time")
        time.sleep(0.5)


def run_deploy_benchmark(model_path: Path, ticks: int = 100) -> dict:
    """Start-up time and memory of the Render configuration (gunicorn, 1 worker, litert) against
    the local exchange: after the 24-hour cold start and its history are done, `ticks` API reads
    each with one new candle, then the worker's resident memory."""
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (ticks + 1600) * 60_000)
    with BinanceSimulator({"BTC/USDT": candles}, now_ms=BENCH_START_MS + 1500 * 60_000 + 20_000) as exchange, \
            tempfile.TemporaryDirectory() as folder:
        env = local_exchange_env(exchange.url, Path(folder) / "deploy.db", 0.05, CHRONOPRICE_ENGINE="litert",
                                 CHRONOPRICE_MODEL=str(model_path))
        with gunicorn_service(env) as (base, _, first_200_seconds, _log):
            cold_started = time.monotonic()
            get_json(base + "/api/v1/forecast")  # cold start: 24 h of candles, history forecast in the background
            _wait_for_history(Path(folder) / "deploy.db", expected_origins=1440 - 59)
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
