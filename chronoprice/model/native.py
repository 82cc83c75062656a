"""The `native` engine's kernel (lstm_kernel.c): compiled for this machine's CPU on first use and
called through ctypes, with the network's weights from the artifact's `.npz`.

The build runs the C compiler (`$CC`, else `cc`) once per kernel source, compiler and CPU, into
the user's cache (`$XDG_CACHE_HOME/chronoprice`, else `~/.cache/chronoprice`); every later
process loads the built library. `-march=native` because the library is built where it runs,
so it uses the vector width this CPU has (AVX-512 here). No compiler, no engine: loading raises
ModelUnavailable saying so, and `--engine auto` serves with onnx instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from chronoprice.model.artifact import ModelUnavailable

KERNEL_SOURCE = Path(__file__).with_name("lstm_kernel.c")
COMPILE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-Wno-psabi")
BUILD_TIMEOUT_SECONDS = 300
# Keras's model.get_weights() order, the names the .npz stores them under.
WEIGHT_NAMES = ("kernel1", "recurrent1", "bias1", "kernel2", "recurrent2", "bias2", "dense1", "dense_bias1", "dense2", "dense_bias2")
# The kernel's tiles: gate blocks in passes of 64 floats, cells in vectors of 16 (lstm_kernel.c).
UNIT_MULTIPLE, MAX_UNITS = 16, 64

_FLOATS = ctypes.POINTER(ctypes.c_float)


class _Network(ctypes.Structure):
    """lstm_kernel.c's `network`."""

    _fields_ = ([(name, ctypes.c_int) for name in ("channels", "units1", "units2", "dense_units")]
                + [(name, _FLOATS) for name in WEIGHT_NAMES[:-1]] + [("dense_bias2", ctypes.c_float)])


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    """Keras model.get_weights() of the shipped architecture -> the engine's .npz."""
    with open(path, "wb") as file:
        np.savez(file, **{name: np.asarray(value, dtype="float32") for name, value in zip(WEIGHT_NAMES, weights, strict=True)})


def read_weights(path: Path) -> list[np.ndarray]:
    """The engine's .npz -> the weights in Keras's order; ModelUnavailable when missing or damaged."""
    if not path.exists():
        raise ModelUnavailable(f"{path} not found; run `python -m chronoprice export --model {path.with_suffix('')}` or use --engine onnx")
    try:
        with np.load(path, allow_pickle=False) as stored:
            weights = [np.ascontiguousarray(stored[name], dtype="float32") for name in WEIGHT_NAMES]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ModelUnavailable(f"cannot load {path}: {error}; restore the file or re-export it") from None
    return weights


def _architecture_problem(weights: list[np.ndarray]) -> str | None:
    kernel1, recurrent1, bias1, kernel2, recurrent2, bias2, dense1, dense_bias1, dense2, dense_bias2 = weights
    units1, units2 = recurrent1.shape[0], recurrent2.shape[0]
    shapes_fit = (
        kernel1.ndim == 2 and recurrent1.shape == (units1, 4 * units1) == (units1, kernel1.shape[1]) and bias1.shape == (4 * units1,)
        and kernel2.shape == (units1, 4 * units2) and recurrent2.shape == (units2, 4 * units2) and bias2.shape == (4 * units2,)
        and dense1.ndim == 2 and dense1.shape[0] == units2 and dense_bias1.shape == (dense1.shape[1],)
        and dense2.shape == (dense1.shape[1], 1) and dense_bias2.shape == (1,)
    )
    if not shapes_fit:
        return "its weights are not two stacked LSTMs and a dense head"
    if any(units % UNIT_MULTIPLE or units > MAX_UNITS for units in (units1, units2)):
        return f"the kernel serves LSTMs of {UNIT_MULTIPLE} to {MAX_UNITS} units in steps of {UNIT_MULTIPLE}, not {units1} and {units2}"
    return None


class NativeNetwork:
    """The weights of one model bound to the kernel; `paths` is safe to call from several threads
    at once (the kernel keeps nothing between calls) and runs without the GIL."""

    def __init__(self, path: Path | None = None, weights: list[np.ndarray] | None = None):
        """The weights of the engine's file at `path`, or `weights` in Keras's order (a model in training)."""
        if weights is None:
            weights = read_weights(path)
        weights = [np.ascontiguousarray(value, dtype="float32") for value in weights]
        problem = _architecture_problem(weights)
        if problem:
            raise ModelUnavailable(
                f"the native engine cannot serve {path or 'this model'}: {problem}; use --engine onnx")
        self._function = kernel().forecast_paths
        self._weights = weights  # the struct points into these arrays
        kernel1, recurrent1, _, _, recurrent2, _, dense1, *_ = weights
        pointers = [weight.ctypes.data_as(_FLOATS) for weight in weights[:-1]]
        self._network = _Network(kernel1.shape[0], recurrent1.shape[0], recurrent2.shape[0], dense1.shape[1],
                                 *pointers, float(weights[-1][0]))
        self.channels = kernel1.shape[0]

    def paths(self, windows: np.ndarray, relative_closes: bool) -> np.ndarray:
        """features.recursive_windows [horizon, window, B, channels] -> [B, horizon] scaled log
        returns from the origin."""
        horizon, window, origins, channels = windows.shape
        if channels != self.channels or horizon > window:
            raise ValueError(f"the kernel takes windows of {self.channels} channels at least as long as the horizon, "
                             f"not {channels} channels, {window} candles, horizon {horizon}")
        windows = np.ascontiguousarray(windows, dtype="float32")
        path = np.empty((origins, horizon), dtype="float32")
        if origins and self._function(ctypes.byref(self._network), windows.ctypes.data_as(_FLOATS), horizon, window,
                                      origins, int(relative_closes), path.ctypes.data_as(_FLOATS)):
            raise MemoryError(f"the native engine could not allocate its state for {origins} origins")
        return path


_kernel_lock = threading.Lock()
_kernel: ctypes.CDLL | None = None


def kernel() -> ctypes.CDLL:
    """The kernel library, built if this machine has none yet."""
    global _kernel
    with _kernel_lock:
        if _kernel is None:
            library = built_kernel_path()
            if not library.exists():
                build_kernel(library)
            try:
                loaded = ctypes.CDLL(str(library))
            except OSError as error:
                raise ModelUnavailable(f"cannot load the native engine's kernel {library}: {error}; delete it to rebuild") from None
            loaded.forecast_paths.restype = ctypes.c_int
            loaded.forecast_paths.argtypes = [ctypes.POINTER(_Network), _FLOATS, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_int, _FLOATS]
            _kernel = loaded
        return _kernel


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {flags}"


def built_kernel_path() -> Path:
    digest = hashlib.sha256()
    for part in (KERNEL_SOURCE.read_bytes(), " ".join([*_compiler(), *COMPILE_FLAGS]).encode(), _cpu_signature().encode()):
        digest.update(part)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chronoprice"
    return cache / f"lstm_kernel-{digest.hexdigest()[:16]}.so"


def build_kernel(library: Path) -> None:
    """Compile the kernel to `library`: into a temporary file beside it, then renamed, so a
    process that builds at the same time, or is killed halfway, never leaves a broken library."""
    compiler = _compiler()
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(descriptor)
    except OSError as error:
        raise ModelUnavailable(f"cannot build the native engine's kernel in {library.parent}: {error}; use --engine onnx") from None
    try:
        result = subprocess.run([*compiler, *COMPILE_FLAGS, "-o", partial, str(KERNEL_SOURCE)],
                                capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        os.unlink(partial)
        raise ModelUnavailable(f"cannot build the native engine's kernel with {compiler[0]} ({error}); install a C "
                               "compiler (Debian: apt-get install gcc) or use --engine onnx") from None
    if result.returncode:
        os.unlink(partial)
        said = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelUnavailable(f"{compiler[0]} could not build the native engine's kernel ({said}); use --engine onnx")
    os.replace(partial, library)
