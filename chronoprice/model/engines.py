"""Forecast engines: the recursive network as a function from model input to the predicted path.

An engine maps [B, window, channels] model input (features.model_input) to [B, horizon] scaled
log returns from the origin. The litert engine never imports TensorFlow; the keras engine loads
it when it is made.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from chronoprice.model.artifact import ModelArtifact, ModelUnavailable

EVALUATION_BATCH = 512


class PathEngine(Protocol):
    """Maps [B, window, channels] model input to [B, horizon] scaled log returns from the origin."""

    name: str

    def path(self, relative: np.ndarray) -> np.ndarray: ...


def _keras_network():
    """The Keras side of the model. Imported here, when a keras engine is made, and nowhere on
    module level: importing it loads TensorFlow, which the LiteRT serving path must not."""
    from chronoprice.model import network

    return network


class KerasEngine:
    """The Keras model with all steps inside one XLA-compiled tf.function."""

    name = "keras"

    def __init__(self, model, window: int, horizon: int, feature: str = "relative_closes"):
        self.model = model
        self._function = _keras_network().compiled_path_function(model, window, horizon, feature)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, artifact: ModelArtifact, metadata: dict) -> "KerasEngine":
        if not artifact.keras_path.exists():
            raise ModelUnavailable(f"{artifact.keras_path} not found; retrain or use --engine litert")
        model = _keras_network().load_keras_model(artifact)
        return cls(model, metadata["window"], metadata["horizon"], feature_name(metadata))

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
        if not artifact.tflite_path.exists():
            raise ModelUnavailable(f"{artifact.tflite_path} not found; retrain or use --engine keras")
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


def load_engine(kind: str, artifact: ModelArtifact, metadata: dict) -> PathEngine:
    """Make the engine `kind` (auto, keras or litert: config.ENGINES validates the setting);
    auto prefers LiteRT, which needs no TensorFlow."""
    if kind == "auto":
        kind = "litert" if artifact.tflite_path.exists() else "keras"
    if kind == "litert":
        return LiteRTEngine(artifact)
    if kind == "keras":
        return KerasEngine.load(artifact, metadata)
    raise ValueError(f"unknown engine {kind!r}")


def feature_name(metadata: dict) -> str:
    return metadata["feature"].get("name", "relative_closes")
