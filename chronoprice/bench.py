"""`python -m chronoprice bench`: forecast engines against the model.predict loop, and a full
tick against the local Binance-compatible server, all measured in one run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from chronoprice.artifact import artifact_at, read_metadata
from chronoprice.exchange_sim import BinanceSimulator
from chronoprice.features import relative_windows
from chronoprice.forecast import LSTMForecaster, load_engine
from chronoprice.pipeline import Pipeline
from chronoprice.sources import LiveSource, demo_candles

BENCH_START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC, a fixed stretch of the demo market


def _median_ms(action, repeats: int) -> float:
    action()  # warm-up: compilation and first allocations are not what a tick pays
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


def predict_loop_path(model, relative: np.ndarray, horizon: int) -> np.ndarray:
    """The slow baseline: `model.predict` called once per step, as naive code does."""
    steps, cumulative = [], np.zeros((len(relative), 1), dtype="float32")
    for _ in range(horizon):
        step = model.predict(relative[:, :, None], verbose=0)
        relative = np.concatenate([relative[:, 1:], step], axis=1) - step
        cumulative = cumulative + step
        steps.append(cumulative)
    return np.concatenate(steps, axis=1)


def _tick_timings(model_path: Path, engine: str, ticks: int) -> list[float]:
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (ticks + 700) * 60_000)
    with BinanceSimulator({"BTC/USDT": candles}, now_ms=BENCH_START_MS + 600 * 60_000 + 20_000) as exchange, \
            tempfile.TemporaryDirectory() as folder:
        # A one-window cold start, so no background history forecasting competes with the timing.
        source = LiveSource("binance", exchange.url, history=60)
        pipeline = Pipeline(source, Path(folder) / "bench.db", lambda: _forecaster(model_path, engine), log=None)
        pipeline.tick("BTC/USDT", force=True)  # cold start: loads the model and the first window
        timings = []
        for _ in range(ticks):
            exchange.advance(1)
            started = time.perf_counter()
            status = pipeline.tick("BTC/USDT", force=True)
            timings.append((time.perf_counter() - started) * 1000)
            if status.error or status.new_candles != 1:
                raise RuntimeError(f"benchmark tick went wrong: {status.summary()}")
        return timings


def _forecaster(model_path: Path, engine: str) -> LSTMForecaster:
    artifact = artifact_at(model_path)
    metadata = read_metadata(artifact)
    return LSTMForecaster(load_engine(engine, artifact, metadata), metadata)


def run_benchmark(model_path: Path, repeats: int = 200, ticks: int = 40) -> dict:
    """Time every engine and the predict loop on the same window, and `ticks` live ticks."""
    window_closes = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + 60 * 60_000)["close"].to_numpy()
    forecast_ms, forecasters = {}, {}
    for engine in ("keras", "litert"):
        forecasters[engine] = _forecaster(model_path, engine)
        forecast_ms[engine] = _median_ms(lambda: forecasters[engine].forecast(window_closes), repeats)
    keras_forecaster = forecasters["keras"]
    relative = relative_windows(window_closes[None, :], float(keras_forecaster.metadata["feature"]["scale"]))
    forecast_ms["predict_loop"] = _median_ms(
        lambda: predict_loop_path(keras_forecaster.engine.model, relative, keras_forecaster.horizon), max(3, repeats // 40)
    )
    keras_path, litert_path = (forecasters[engine].engine.path(relative) for engine in ("keras", "litert"))
    # Relative to the size of the predicted move, not the price: a far stricter comparison.
    agreement = np.abs(keras_path - litert_path).max() / np.abs(keras_path).max()
    tick_ms = _tick_timings(model_path, "auto", ticks)
    return {
        "model_version": keras_forecaster.version,
        "forecast_ms": {name: round(value, 3) for name, value in forecast_ms.items()},
        "speedup_vs_predict_loop": {
            engine: round(forecast_ms["predict_loop"] / forecast_ms[engine], 1) for engine in ("keras", "litert")
        },
        "engines_path_relative_difference": float(agreement),
        "tick_ms_p50": round(float(np.percentile(tick_ms, 50)), 2),
        "tick_ms_p95": round(float(np.percentile(tick_ms, 95)), 2),
        "repeats": repeats,
        "ticks": ticks,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
    }


def format_bench(report: dict) -> str:
    lines = [f"model {report['model_version']} on {report['machine']['cpus']} CPUs, median of {report['repeats']} forecasts"]
    for name, value in report["forecast_ms"].items():
        speedup = report["speedup_vs_predict_loop"].get(name)
        lines.append(f"  10-step forecast, {name:<12} {value:9.3f} ms" + (f"  ({speedup}x faster than the predict loop)" if speedup else ""))
    lines.append(f"  keras vs litert: largest difference in predicted moves {report['engines_path_relative_difference']:.2e} of the largest move")
    lines.append(f"  full tick against the local exchange: p50 {report['tick_ms_p50']} ms, p95 {report['tick_ms_p95']} ms over {report['ticks']} ticks")
    return "\n".join(lines)
