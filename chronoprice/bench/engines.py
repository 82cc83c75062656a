"""`python -m chronoprice bench`: forecast engines against the model.predict loop, and a full
tick against the local Binance-compatible server, all measured in one run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from chronoprice.bench import BATCH_ORIGINS
from chronoprice.bench.deploy import BENCH_START_MS, offline_cold_start, resident_mb_by_engine, run_deploy_benchmark
from chronoprice.bench.metrics import metrics_ms_per_tick
from chronoprice.evaluation.walkforward import evaluate_forecaster
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.demo import demo_candles
from chronoprice.market.source import Market
from chronoprice.model.artifact import ModelArtifact, artifact_at, read_metadata, write_metadata
from chronoprice.model.engines import ONE_BATCH_RUN_ORIGINS, feature_name
from chronoprice.model.features import candle_rows, input_scales, model_input, walk_forward_windows
from chronoprice.model.forecasters import LSTMForecaster, load_forecaster
from chronoprice.service.backfill import forecast_history
from chronoprice.service.models import register_shadow
from chronoprice.service.tick import Ticker
from chronoprice.store import open_store
from chronoprice.store.records import upsert_candles
from chronoprice.testing.exchange import BinanceSimulator

ENGINE_NAMES = ("native", "onnx", "litert", "keras")


def timings_ms(action: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Wall time of `repeats` calls of `action` in ms, after one untimed warm-up call:
    compilation and first allocations are not what a tick pays."""
    action()
    timings = []
    for _ in range(repeats):
        started = clock()
        action()
        timings.append((clock() - started) * 1000)
    return np.array(timings)


def single_core_matmul_gmacs(size: int = 1024, repeats: int = 5) -> float:
    """Multiply-adds a second of one core at its best: a float32 matrix product, best of
    `repeats`, in a child process whose BLAS may use one thread only."""
    code = (
        "import time, numpy as np\n"
        f"a = np.random.default_rng(0).random(({size}, {size}), dtype='float32'); a @ a; best = 1e9\n"
        f"for _ in range({repeats}):\n"
        "    started = time.perf_counter(); a @ a; best = min(best, time.perf_counter() - started)\n"
        f"print({size} ** 3 / best / 1e9)\n"
    )
    one_thread = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=one_thread, capture_output=True, text=True, timeout=300, check=True)
    return float(result.stdout)


def forecast_macs(model, window: int, horizon: int) -> int:
    """Multiply-adds of the LSTM matrices in one recursive forecast: every window runs both LSTMs
    over all its steps (the dense head, once a window, is under 0.1% and left out)."""
    matrices = [weight for weight in model.weights if "lstm" in weight.path and weight.path.endswith("kernel")]
    return horizon * window * sum(int(np.prod(weight.shape)) for weight in matrices)


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


def shadow_copy(model_path: Path, folder: Path) -> tuple[dict, ModelArtifact]:
    """The model's artifact under another version, trained on nothing newer than the bench's
    candles: a shadow that costs a tick what a retrained one would."""
    source, copy = artifact_at(model_path), artifact_at(folder / "shadow")
    for original, copied in ((source.keras_path, copy.keras_path), (source.tflite_path, copy.tflite_path),
                             (source.onnx_path, copy.onnx_path), (source.weights_path, copy.weights_path)):
        if original.exists():
            shutil.copyfile(original, copied)
    metadata = read_metadata(source)
    metadata = {**metadata, "version": metadata["version"] + "-shadow", "training": {**metadata.get("training", {}), "last_ts": 0}}
    write_metadata(copy, metadata)
    return metadata, copy


def _tick_timings(model_path: Path, engine: str, ticks: int, with_shadow: bool = False) -> list[float]:
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (ticks + 700) * 60_000)
    with BinanceSimulator({"BTC/USDT": candles}, now_ms=BENCH_START_MS + 600 * 60_000 + 20_000) as exchange, \
            tempfile.TemporaryDirectory() as folder:
        # A one-window cold start, so no background history forecasting competes with the timing.
        source = LiveSource("binance", exchange.url, history=60)
        ticker = Ticker(source, Path(folder) / "bench.db", lambda: load_forecaster(model_path, engine), progress=False)
        ticker.tick("BTC/USDT", force=True)  # cold start: loads the model and the first window
        if with_shadow:
            register_shadow(ticker.db(), *shadow_copy(model_path, Path(folder)), "bench", 0)
            ticker.models.refresh()
            exchange.advance(1)
            ticker.tick("BTC/USDT", force=True)  # loads the shadow
        timings = []
        for _ in range(ticks):
            exchange.advance(1)
            started = time.perf_counter()
            status = ticker.tick("BTC/USDT", force=True)
            timings.append((time.perf_counter() - started) * 1000)
            if status.error or status.new_candles != 1:
                raise RuntimeError(f"benchmark tick went wrong: {status.summary()}")
        forecasting = {version for (version,) in ticker.db().execute("select distinct model_version from forecasts where origin_ts = ?",
                                                                     [status.newest_ts])}
        if len(forecasting) != 1 + with_shadow:
            raise RuntimeError(f"benchmark ticks forecast with {sorted(forecasting)}")
        return timings


def _evaluate_seconds(forecaster: LSTMForecaster, origins: int) -> float:
    """Wall time of the evaluate command's walk-forward over `origins`."""
    count = origins + forecaster.window + forecaster.horizon - 1
    rows = candle_rows(demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + count * 60_000))
    started = time.perf_counter()
    evaluate_forecaster(forecaster, rows, 0, forecaster.level)
    return time.perf_counter() - started


def _history_seconds(forecaster: LSTMForecaster, hours: float = 24) -> float:
    """Wall time of a cold start's history: every origin of `hours` of stored candles forecast
    and written to a new SQLite store, as the ticker does in the background."""
    origins = int(hours * 60)
    candles = demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (origins + forecaster.window - 1) * 60_000)
    market = Market("binance", "BTC/USDT")
    with tempfile.TemporaryDirectory() as folder:
        db = open_store(Path(folder) / "history.db")
        upsert_candles(db, market, candles)
        started = time.perf_counter()
        written = forecast_history(db, market, forecaster, int(candles["ts"].iloc[forecaster.window - 1]), progress=False)
        seconds = time.perf_counter() - started
    if written != origins:
        raise RuntimeError(f"history benchmark forecast {written} origins, expected {origins}")
    return seconds


def _batch_windows(origins: int) -> np.ndarray:
    rows = candle_rows(demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + (origins + 59) * 60_000))
    return walk_forward_windows(rows, horizon=1)[0][:origins]


def unmeasurable(live_samples: int, find_spec: Callable = importlib.util.find_spec) -> list[str]:
    """What this install cannot measure, a line each: the browser run needs Playwright, a test
    requirement, and the rest of the bench only the runtime's."""
    if live_samples > 0 and find_spec("playwright") is None:
        return ["the price painted in Chromium: Playwright is a test requirement (pip install -r requirements-dev.txt)"]
    return []


def run_benchmark(model_path: Path, repeats: int = 200, ticks: int = 40, deploy_ticks: int = 100,
                  batch_origins: int = BATCH_ORIGINS, watch_markets: int = 20, watch_minutes: int = 30, alert_rules: int = 100,
                  live_samples: int = 40) -> dict:
    """Every engine and the predict loop on the same window, each engine's batch throughput and
    agreement with keras, the arithmetic floor, the serving engine's history and evaluate
    times, `ticks` live ticks, the Render configuration under gunicorn for `deploy_ticks`, the
    watchlist with its alert rules, and the forming candle from the exchange to a browser."""
    window = candle_rows(demo_candles("BTC/USDT", BENCH_START_MS, BENCH_START_MS + 60 * 60_000))[None]
    serving = load_forecaster(model_path, "auto")
    forecasters = {engine: serving if engine == serving.engine.name else load_forecaster(model_path, engine) for engine in ENGINE_NAMES}
    timings = {engine: timings_ms(lambda: forecasters[engine].forecast(window), repeats) for engine in ENGINE_NAMES}
    keras_forecaster = forecasters["keras"]
    metadata = keras_forecaster.metadata
    relative = model_input(window, input_scales(window, metadata["feature"]), feature_name(metadata))
    timings["predict_loop"] = timings_ms(
        lambda: predict_loop_path(keras_forecaster.engine.model, relative, keras_forecaster.horizon, feature_name(metadata)),
        max(3, repeats // 40),
    )
    batch = _batch_windows(batch_origins)
    throughput, paths = {}, {}
    for engine in ENGINE_NAMES:
        # LiteRT runs one window an invoke, at ~10 ms: a slice of the batch measures it as well.
        windows = batch[: max(1, batch_origins // 16)] if engine == "litert" else batch
        inputs = model_input(windows, input_scales(windows, metadata["feature"]), feature_name(metadata))
        started = time.perf_counter()
        paths[engine] = forecasters[engine].engine.path(inputs)
        throughput[engine] = round(len(windows) / (time.perf_counter() - started))
    reference = paths["keras"]
    # Against the size of the predicted moves, not the price: a far stricter comparison.
    difference = {engine: float(np.abs(paths[engine] - reference[: len(paths[engine])]).max() / np.abs(reference).max())
                  for engine in ENGINE_NAMES if engine != "keras"}
    gmacs = single_core_matmul_gmacs()
    floor_ms = forecast_macs(keras_forecaster.engine.model, keras_forecaster.window, keras_forecaster.horizon) / gmacs / 1e6
    medians = {name: float(np.median(values)) for name, values in timings.items()}
    deploy = run_deploy_benchmark(model_path, deploy_ticks) if deploy_ticks > 0 else None
    skipped = unmeasurable(live_samples)
    tick_ms = _tick_timings(model_path, "auto", ticks)
    shadowed_tick_ms = _tick_timings(model_path, "auto", ticks, with_shadow=True)
    return {
        "model_version": keras_forecaster.version,
        "serving_engine": serving.engine.name,
        "forecast_ms": {name: {"median": round(medians[name], 3), "p99": round(float(np.percentile(values, 99)), 3)}
                        for name, values in timings.items()},
        "speedup_vs_predict_loop": {engine: round(medians["predict_loop"] / medians[engine], 1) for engine in ENGINE_NAMES},
        "batch_origins_per_second": throughput,
        "engines_path_relative_difference": difference,
        "compute_floor_ms": round(floor_ms, 3),
        "single_core_matmul_gmacs": round(gmacs, 1),
        "serving_engine_to_floor": round(medians[serving.engine.name] / floor_ms, 2),
        "history_24h_seconds": round(_history_seconds(serving), 2),
        # As the evaluate command loads it: a process that ends with its batch.
        "evaluate_10000_origins_seconds": round(_evaluate_seconds(load_forecaster(model_path, "auto", run_origins=ONE_BATCH_RUN_ORIGINS),
                                                                  origins=10_000), 2),
        "tick_ms_p50": round(float(np.percentile(tick_ms, 50)), 2),
        "tick_ms_p95": round(float(np.percentile(tick_ms, 95)), 2),
        "tick_with_a_shadow_ms_p50": round(float(np.percentile(shadowed_tick_ms, 50)), 2),
        "tick_with_a_shadow_ms_p95": round(float(np.percentile(shadowed_tick_ms, 95)), 2),
        "repeats": repeats,
        "ticks": ticks,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "deploy": deploy,
        "offline_cold_start": offline_cold_start(model_path),
        "resident_mb_by_engine": resident_mb_by_engine(model_path, deploy) if deploy else None,
        "watchlist": bench_in_child("watchlist", model_path, watch_markets, watch_minutes, alert_rules) if watch_markets > 0 else None,
        "live": bench_in_child("live", model_path, live_samples) if live_samples > 0 and not skipped else None,
        "metrics_ms_per_tick": metrics_ms_per_tick(),
        "skipped": skipped,
    }


def bench_in_child(module: str, *arguments) -> dict:
    """`python -m chronoprice.bench.MODULE ARGUMENTS` in a new interpreter, its last line of JSON: the
    watchlist's memory is then its own, and the bench never imports the live part's Playwright,
    a test requirement."""
    command = [sys.executable, "-m", f"chronoprice.bench.{module}", *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def format_bench(report: dict) -> str:
    serving = report["serving_engine"]
    lines = [f"model {report['model_version']} on {report['machine']['cpus']} CPUs; serving engine (auto): {serving}",
             f"10-step forecast of one window, {report['repeats']} times:"]
    for name, value in report["forecast_ms"].items():
        speedup = report["speedup_vs_predict_loop"].get(name)
        lines.append(f"  {name:<12} median {value['median']:8.3f} ms, p99 {value['p99']:8.3f} ms"
                     + (f"  ({speedup}x faster than the predict loop)" if speedup else ""))
    lines.append(f"  arithmetic floor {report['compute_floor_ms']} ms (one core at {report['single_core_matmul_gmacs']} GMAC/s); "
                 f"{serving} is {report['serving_engine_to_floor']}x the floor")
    lines.append("batches: " + ", ".join(f"{engine} {rate} origins/s" for engine, rate in report["batch_origins_per_second"].items()))
    lines.append("largest difference from keras in predicted moves, of the largest move: "
                 + ", ".join(f"{engine} {value:.1e}" for engine, value in report["engines_path_relative_difference"].items()))
    lines.append(f"24 h cold-start history ({serving}, forecast and stored): {report['history_24h_seconds']} s; "
                 f"evaluate walk-forward over 10,000 origins: {report['evaluate_10000_origins_seconds']} s")
    lines.append(f"full tick against the local exchange: p50 {report['tick_ms_p50']} ms, p95 {report['tick_ms_p95']} ms over {report['ticks']} ticks; "
                 f"with a shadow forecasting beside the model: p50 {report['tick_with_a_shadow_ms_p50']} ms, p95 {report['tick_with_a_shadow_ms_p95']} ms")
    metrics = report["metrics_ms_per_tick"]
    lines.append(f"the operator's metrics a tick records: {metrics['single_process']} ms in one process, "
                 f"{metrics['multiprocess']} ms under gunicorn's multiprocess mode (budget 1 ms)")
    deploy = report["deploy"]
    if deploy:
        lines.append(f"gunicorn, 1 worker, {deploy['engine']} engine: first 200 on / after {deploy['first_200_seconds']} s; "
                     f"24 h cold start forecast in {deploy['cold_start_history_seconds']} s; "
                     f"{deploy['resident_mb_after_ticks']} MB resident after {deploy['ticks']} ticks; "
                     f"tensorflow imported: {deploy['tensorflow_imported']}; API tick p50 {deploy['api_tick_ms_p50']} ms, p95 {deploy['api_tick_ms_p95']} ms")
    offline = report["offline_cold_start"]
    lines.append(f"offline start (python app.py, every exchange refusing), {offline['markets']} watched markets: first 200 on / "
                 f"{offline['first_200_seconds']} s, first forecast {offline['first_forecast_seconds']} s, every market's "
                 f"{offline['every_forecast_seconds']} s")
    if report["resident_mb_by_engine"]:
        lines.append("resident memory, each engine measured alike: " + "; ".join(
            f"{engine} " + ", ".join(f"{value} MB {where.replace('_', ' ')}" for where, value in figures.items())
            for engine, figures in report["resident_mb_by_engine"].items()))
    watch = report.get("watchlist")
    if watch:
        lines.append(f"watchlist, {watch['markets']} markets over {watch['simulated_minutes']} simulated minutes: close to forecast "
                     f"stored p50 {watch['close_to_forecast_seconds_p50']} s, p95 {watch['close_to_forecast_seconds_p95']} s; "
                     f"{watch['origins_missing']} origins missing; {watch['resident_mb']} MB resident; "
                     f"overview p50 {watch['overview_ms_median']} ms, p95 {watch['overview_ms_p95']} ms")
        alerts = watch["alerts"]
        if alerts["rules"]:
            lines.append(f"alerts, {alerts['rules']} rules on those markets: {alerts['firings']} firings, {alerts['delivered']} delivered, "
                         f"{alerts['received_twice']} received twice; firing to webhook p50 {alerts['delivery_seconds_p50']} s, "
                         f"p95 {alerts['delivery_seconds_p95']} s, max {alerts['delivery_seconds_max']} s")
    live = report.get("live")
    if live:
        lines.append(f"exchange event to the price painted in Chromium (gunicorn, stream, {live['page_poll_seconds']} s page poll), "
                     f"{live['samples']} samples: p50 {live['event_to_screen_seconds_p50']} s, p95 {live['event_to_screen_seconds_p95']} s, "
                     f"max {live['event_to_screen_seconds_max']} s; /api/v1/live answer {live['live_message_bytes']} bytes")
    lines += [f"skipped: {reason}" for reason in report["skipped"]]
    return "\n".join(lines)
