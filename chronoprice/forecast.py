"""Forecasters: the recursive LSTM on a choice of engine, and the naive baseline.

Every forecaster has `forecast(windows) -> {"mean", "lower", "upper"}`: `windows` is [B, WINDOW]
closes (or one window of WINDOW closes) or [B, WINDOW, 4] candle rows (features.CANDLE_COLUMNS;
models with range or volume channels need these), and each returned array is [B, horizon] prices.
This module imports neither TensorFlow nor LiteRT at import time; an engine loads its runtime
when it is made, and the litert engine never imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Protocol

import numpy as np

from chronoprice.artifact import ModelArtifact, ModelUnavailable, artifact_at, read_metadata
from chronoprice.features import model_input, recent_volatility, window_closes

DEFAULT_LEVEL = 0.9
EVALUATION_BATCH = 512


class PathEngine(Protocol):
    """Maps [B, window, channels] model input to [B, horizon] scaled log returns from the origin."""

    name: str

    def path(self, relative: np.ndarray) -> np.ndarray: ...


class KerasEngine:
    """The Keras model with all steps inside one XLA-compiled tf.function."""

    name = "keras"

    def __init__(self, model, window: int, horizon: int, feature: str = "relative_closes"):
        from chronoprice.model import compiled_path_function

        self.model = model
        self._function = compiled_path_function(model, window, horizon, feature)
        self._lock = threading.Lock()

    def path(self, relative: np.ndarray) -> np.ndarray:
        # A fixed batch shape keeps XLA from compiling once per distinct batch size.
        batch = 1 if len(relative) == 1 else EVALUATION_BATCH
        parts = []
        with self._lock:
            for start in range(0, len(relative), batch):
                chunk = relative[start : start + batch]
                padded = np.zeros((batch, *relative.shape[1:]), dtype="float32")
                padded[: len(chunk)] = chunk
                parts.append(self._function(padded).numpy()[: len(chunk)])
        return np.concatenate(parts)


class LiteRTEngine:
    """The exported recursive graph on the LiteRT interpreter (batch 1, one invoke per window)."""

    name = "litert"

    def __init__(self, artifact: ModelArtifact):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(artifact.tflite_path), num_threads=1)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelUnavailable(f"cannot load {artifact.tflite_path}: {error}; restore the file or retrain") from None
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def path(self, relative: np.ndarray) -> np.ndarray:
        rows = []
        with self._lock:
            for row in relative:
                self._interpreter.set_tensor(self._input, row[None].astype("float32"))
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output)[0].copy())
        return np.stack(rows)


def litert_available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def load_engine(kind: str, artifact: ModelArtifact, metadata: dict) -> PathEngine:
    """Make the engine `kind` (auto, keras, litert); auto prefers LiteRT when it is installed."""
    if kind == "auto":
        kind = "litert" if litert_available() and artifact.tflite_path.exists() else "keras"
    if kind == "litert":
        if not artifact.tflite_path.exists():
            raise ModelUnavailable(f"{artifact.tflite_path} not found; retrain or use --engine keras")
        return LiteRTEngine(artifact)
    if not artifact.keras_path.exists():
        raise ModelUnavailable(f"{artifact.keras_path} not found; retrain or use --engine litert")
    from chronoprice.model import load_keras_model

    return KerasEngine(load_keras_model(artifact), metadata["window"], metadata["horizon"], feature_name(metadata))


def feature_name(metadata: dict) -> str:
    return metadata["feature"].get("name", "relative_closes")


def _as_batch(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows, dtype="float64")
    return windows[None, :] if windows.ndim == 1 else windows


def score_quantiles(metadata: dict, level: float) -> np.ndarray:
    """Per-step interval size for `level` in units of recent volatility, as calibrated on the
    validation split when the model was trained."""
    table = metadata["intervals"]["score_quantile"]
    key = f"{level:.2f}"
    if key not in table:
        raise ValueError(f"interval level {level} not calibrated; available: {', '.join(sorted(table))}")
    return np.asarray(table[key], dtype="float64")


class LSTMForecaster:
    """The recursive LSTM forecast, its move weighted per step against the last close (the
    metadata's `shrinkage`, fitted on validation), with split-conformal intervals scaled by
    recent volatility."""

    name = "lstm"

    def __init__(self, engine: PathEngine, metadata: dict, level: float = DEFAULT_LEVEL):
        self.engine, self.metadata, self.level = engine, metadata, level
        self.version = metadata["version"]
        self.window, self.horizon = metadata["window"], metadata["horizon"]
        self._scale, self._feature = float(metadata["feature"]["scale"]), feature_name(metadata)
        self.calibrated_quantiles = score_quantiles(metadata, level)
        self._shrinkage = np.asarray(metadata.get("shrinkage", [1.0] * self.horizon), dtype="float64")

    def forecast(self, windows: np.ndarray, quantiles: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """`quantiles` ([horizon] score quantiles) replaces the calibration saved with the model,
        e.g. with one adapted to the latest matured errors."""
        windows = _as_batch(windows)
        if windows.shape[1] != self.window:
            raise ValueError(f"a forecast needs windows of {self.window} candles, got {windows.shape[1]}")
        raw_path = self.engine.path(model_input(windows, self._scale, self._feature)).astype("float64")
        log_path = raw_path * self._scale * self._shrinkage
        origin = window_closes(windows)[:, -1:]
        widths = (self.calibrated_quantiles if quantiles is None else quantiles) * recent_volatility(windows)
        return {
            "mean": origin * np.exp(log_path),
            "lower": origin * np.exp(log_path - widths),
            "upper": origin * np.exp(log_path + widths),
        }


class PointBaseline:
    """A baseline with no interval: each subclass maps [B, W] closes to a [B, horizon] path."""

    name = "baseline"

    def __init__(self, horizon: int):
        self.horizon = horizon

    def forecast(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        mean = self.path(window_closes(_as_batch(windows)))
        return {"mean": mean, "lower": mean, "upper": mean}

    def path(self, closes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NaiveForecaster(PointBaseline):
    """The last close, repeated: the baseline every model must beat."""

    name = "naive"

    def path(self, closes: np.ndarray) -> np.ndarray:
        return np.repeat(closes[:, -1:], self.horizon, axis=1)


class DriftForecaster(PointBaseline):
    """The last close moved along the window's average log return: a trend-following baseline."""

    name = "drift"

    def path(self, closes: np.ndarray) -> np.ndarray:
        drift = np.log(closes[:, -1:] / closes[:, :1]) / (closes.shape[1] - 1)
        return closes[:, -1:] * np.exp(drift * np.arange(1, self.horizon + 1))


class MovingAverageForecaster(PointBaseline):
    """The mean close of the window, repeated: a mean-reverting baseline."""

    name = "moving_average"

    def path(self, closes: np.ndarray) -> np.ndarray:
        return np.repeat(closes.mean(axis=1, keepdims=True), self.horizon, axis=1)


def load_forecaster(model_path, engine: str = "auto", level: float = DEFAULT_LEVEL) -> LSTMForecaster:
    """Read the artifact at `model_path` and make its forecaster; raises ModelUnavailable with the reason."""
    artifact = artifact_at(model_path)
    metadata = read_metadata(artifact)
    return LSTMForecaster(load_engine(engine, artifact, metadata), metadata, level)
