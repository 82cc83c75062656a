"""Forecast engines: the recursive network as a function from model input to the predicted path.

An engine maps [B, window, channels] model input (features.model_input) to [B, horizon] scaled
log returns from the origin. The native, onnx and litert engines never import TensorFlow; the
keras engine loads it when it is made. Each engine imports its runtime when it is made, so a
process carries only the one it serves with.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Protocol

import numpy as np

from chronoprice.model import native
from chronoprice.model.artifact import ModelArtifact, ModelUnavailable
from chronoprice.model.features import parse_feature, recursive_windows

log = logging.getLogger(__name__)

EVALUATION_BATCH = 512
# Origins per ONNX run. ONNX's LSTM holds every step's gate inputs at once (60 x 10 rows x 256
# floats an origin) in the session's memory arena, which keeps what its runs in flight held for as
# long as the process lives. A serving process runs 8 at a time (16: 15 % faster batches, 26 MB
# more in the gunicorn worker); a command that ends with its one batch (evaluate) runs 32, 10 %
# faster (docs/PERFORMANCE.md).
SERVING_RUN_ORIGINS = 8
ONE_BATCH_RUN_ORIGINS = 32
# The native kernel keeps no memory between calls, so every process runs its batches in runs
# of 32 (8 to 64 a run measured alike here, 4 a seventh slower, one at a time 45 % slower).
NATIVE_RUN_ORIGINS = 32
# The fastest first, among engines that need no TensorFlow (bench measures the order).
AUTO_ORDER = ("native", "onnx", "litert")


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


class _RunsSideBySide:
    """A batch cut into runs of `run_origins` origins, one in flight a core: a tick's few origins
    run in the caller's thread (a second thread's hand-off costs more than it saves). The
    runtimes below let go of the GIL while they compute."""

    def __init__(self, run_origins: int):
        self._run_origins = run_origins
        # The cores this process may run on (one under `taskset -c 0`), not the machine's.
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(self._cores, thread_name_prefix=f"chronoprice-{self.name}")

    def path(self, relative: np.ndarray) -> np.ndarray:
        runs = [relative[start : start + self._run_origins] for start in range(0, len(relative), self._run_origins)]
        if len(runs) == 1 or self._cores == 1:
            return np.concatenate([self._run(part) for part in runs])
        try:
            running = [self._pool.submit(self._run, part) for part in runs]
        except RuntimeError:  # the interpreter is exiting and has shut the pool: finish in this thread
            return np.concatenate([self._run(part) for part in runs])
        return np.concatenate([each.result() for each in running])

    def _run(self, relative: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NativeEngine(_RunsSideBySide):
    """The recursion in our own C kernel (model/lstm_kernel.c through model/native.py): each step
    multiplies a tile of rows by the weights and updates their cells while the sums are in
    registers and cache, the shared-timeline schedule of the onnx graph."""

    name = "native"

    def __init__(self, artifact: ModelArtifact | None, metadata: dict, weights: list[np.ndarray] | None = None):
        """The artifact's engine file, or a model's `weights` in Keras's order (validation in training)."""
        self._network = native.NativeNetwork(None if artifact is None else artifact.weights_path, weights)
        self._horizon, self._feature = metadata["horizon"], feature_name(metadata)
        self._relative_closes = parse_feature(self._feature)[0] == "relative_closes"
        super().__init__(NATIVE_RUN_ORIGINS)

    def _run(self, relative: np.ndarray) -> np.ndarray:
        return self._network.paths(recursive_windows(relative, self._horizon, self._feature), self._relative_closes)


class OnnxEngine(_RunsSideBySide):
    """The whole recursion as one ONNX graph (model.onnx_graph) on ONNX Runtime's CPU kernels.

    One single-threaded session, concurrent runs of a batch side by side on it. Independent runs
    keep every core busier than one run split across cores by ONNX Runtime, whose small
    per-step products parallelise poorly (docs/PERFORMANCE.md)."""

    name = "onnx"

    def __init__(self, artifact: ModelArtifact, metadata: dict, run_origins: int = SERVING_RUN_ORIGINS):
        import onnxruntime

        if not artifact.onnx_path.exists():
            raise ModelUnavailable(f"{artifact.onnx_path} not found; run `python -m chronoprice export --model "
                                   f"{artifact.base}` or use --engine litert")
        graph = artifact.onnx_path.read_bytes()
        try:
            self._session = self._single_threaded(onnxruntime, graph)
        except Exception as error:  # onnxruntime raises its own classes, with no common base to name
            raise ModelUnavailable(f"cannot load {artifact.onnx_path}: {error}; restore the file or re-export it") from None
        self._horizon, self._feature = metadata["horizon"], feature_name(metadata)
        super().__init__(run_origins)

    @staticmethod
    def _single_threaded(onnxruntime, graph: bytes):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.log_severity_level = 3  # its warnings would go to stderr, past our logging
        return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def _run(self, relative: np.ndarray) -> np.ndarray:
        # ONNX Runtime runs concurrent calls of one session safely: no lock.
        return self._session.run(["path"], {"windows": recursive_windows(relative, self._horizon, self._feature)})[0]


class LiteRTEngine:
    """The exported recursive graph on the LiteRT interpreter (batch 1, one invoke per window)."""

    name = "litert"

    def __init__(self, artifact: ModelArtifact):
        from ai_edge_litert.interpreter import Interpreter

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


def load_engine(kind: str, artifact: ModelArtifact, metadata: dict, run_origins: int = SERVING_RUN_ORIGINS) -> PathEngine:
    """Make the engine `kind` (config.ENGINES validates the setting). auto takes the first of
    AUTO_ORDER whose file loads, and keras only when none of their files exists. `run_origins`
    sizes the onnx engine's runs of a batch."""
    if kind == "auto":
        problems = []
        for candidate in AUTO_ORDER:
            try:
                engine = load_engine(candidate, artifact, metadata, run_origins)
            except ModelUnavailable as problem:
                problems.append(str(problem))
                continue
            if problems:
                log.warning("%s; serving with the %s engine", "; ".join(problems), engine.name)
            return engine
        # Only an artifact with no TensorFlow-free file at all falls back to Keras: a damaged
        # file must not quietly load TensorFlow into the web process.
        tensorflow_free = (artifact.weights_path, artifact.onnx_path, artifact.tflite_path)
        if any(path.exists() for path in tensorflow_free) or not artifact.keras_path.exists():
            raise ModelUnavailable("; ".join(problems))
        kind = "keras"
    if kind == "native":
        return NativeEngine(artifact, metadata)
    if kind == "onnx":
        return OnnxEngine(artifact, metadata, run_origins)
    if kind == "litert":
        return LiteRTEngine(artifact)
    if kind == "keras":
        return KerasEngine.load(artifact, metadata)
    raise ValueError(f"unknown engine {kind!r}")


def validation_engine(model, window: int, horizon: int, feature: str):
    """What training scores a model it has just fitted with: the native engine on its weights (the
    recursion served, with no XLA compilation for each new model, which cost seconds a fold), or
    the Keras recursion where the kernel cannot serve it (no C compiler, another architecture)."""
    try:
        return NativeEngine(None, {"horizon": horizon, "feature": {"name": feature}}, model.get_weights())
    except ModelUnavailable:
        return KerasEngine(model, window, horizon, feature)


def feature_name(metadata: dict) -> str:
    return metadata["feature"].get("name", "relative_closes")
