"""The native and onnx engines are the Keras recursion, exactly: for every input form, for
batches of 1, 7 and 256, and for the shipped model over every window of the shared data (onnx in
a serving process's runs and in evaluate's). auto serves with native, falls back to onnx when
its weights are missing or damaged or there is no C compiler to build its kernel, then to
litert, never to TensorFlow."""

import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from chronoprice.cli.main import main
from chronoprice.market.files import read_candle_csv
from chronoprice.model import native
from chronoprice.model.artifact import ModelUnavailable, artifact_at, read_metadata
from chronoprice.model.engines import (
    AUTO_ORDER,
    ONE_BATCH_RUN_ORIGINS,
    SERVING_RUN_ORIGINS,
    KerasEngine,
    NativeEngine,
    OnnxEngine,
    load_engine,
    validation_engine,
)
from chronoprice.model.features import candle_rows, channel_count, model_input, walk_forward_windows
from chronoprice.model.forecasters import load_forecaster
from chronoprice.model.network import build_model, recursive_path
from chronoprice.model.onnx_graph import export_onnx

CLOSE_TOLERANCE = 1e-5  # largest relative difference of a predicted close the engine may have
SCALE = 0.0006  # about the shared data's 1-minute log-return deviation
FORMS = ["relative_closes", "log_returns", "log_returns+range", "log_returns+volume",
         "relative_closes+range+volume", "log_returns+range+volume"]


@pytest.fixture(scope="module")
def shared_windows(shared_csv):
    return walk_forward_windows(candle_rows(read_candle_csv(shared_csv).candles))[0]


def predicted_closes(path: np.ndarray, windows: np.ndarray) -> np.ndarray:
    return windows[:, -1:, 2] * np.exp(path.astype("float64") * SCALE)


@pytest.mark.slow
@pytest.mark.parametrize("feature", FORMS)
@pytest.mark.parametrize("engine_class", [NativeEngine, OnnxEngine])
def test_the_engine_is_the_keras_recursion_for_every_input_form_and_batch_size(engine_class, feature, shared_windows, tmp_path):
    tf.keras.utils.set_random_seed(11)
    model = build_model(channels=channel_count(feature))  # untrained: the engine, not the weights, is under test
    artifact = artifact_at(tmp_path / "net")
    artifact.onnx_path.write_bytes(export_onnx(model.get_weights(), 60, 10, feature))
    native.save_weights(artifact.weights_path, model.get_weights())
    engine = engine_class(artifact, {"horizon": 10, "feature": {"name": feature}})
    picks = shared_windows[:: len(shared_windows) // 264][:264]
    # Keras runs each window on its own whatever the batch, so one call (one trace) serves all sizes.
    keras_paths = recursive_path(model, tf.constant(model_input(picks, SCALE, feature)), 10, feature).numpy()
    for start, size in ((0, 1), (1, 7), (8, 256)):
        windows = picks[start : start + size]
        expected = keras_paths[start : start + size]
        got = engine.path(model_input(windows, SCALE, feature))
        assert got.shape == (size, 10)
        # Against the size of the predicted moves, far stricter than against the price.
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
        closes = predicted_closes(got, windows)
        assert np.abs(closes / predicted_closes(expected, windows) - 1).max() <= CLOSE_TOLERANCE


@pytest.mark.slow
def test_the_shipped_model_on_native_and_onnx_matches_keras_on_every_window_of_the_shared_data(shipped_model, shared_windows):
    expected = load_forecaster(shipped_model, "keras").forecast(shared_windows)
    # onnx in a serving process's runs and the larger ones of a command that ends with its batch (evaluate).
    for engine, run_origins in (("native", SERVING_RUN_ORIGINS), ("onnx", SERVING_RUN_ORIGINS), ("onnx", ONE_BATCH_RUN_ORIGINS)):
        got = load_forecaster(shipped_model, engine, run_origins=run_origins).forecast(shared_windows)
        for key in ("mean", "lower", "upper"):
            assert np.abs(got[key] / expected[key] - 1).max() <= CLOSE_TOLERANCE, (engine, run_origins, key)


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    artifact = artifact_at(tiny_model)
    for path in (artifact.keras_path, artifact.tflite_path, artifact.onnx_path, artifact.weights_path, artifact.metadata_path):
        shutil.copy(path, tmp_path / path.name)
    return artifact_at(tmp_path / artifact.base.name)


ENGINE_FILES = {"native": "weights_path", "onnx": "onnx_path"}


@pytest.mark.parametrize("engine", ["native", "onnx"])
def test_auto_falls_back_past_a_damaged_or_missing_engine_file_naming_it(engine, model_copy, caplog):
    metadata = read_metadata(model_copy)
    position = AUTO_ORDER.index(engine)
    for earlier in AUTO_ORDER[:position]:
        getattr(model_copy, ENGINE_FILES[earlier]).unlink()
    fallback, engine_file = AUTO_ORDER[position + 1], getattr(model_copy, ENGINE_FILES[engine])
    assert load_engine("auto", model_copy, metadata).name == engine
    engine_file.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ModelUnavailable, match=f"cannot load {engine_file}"):
        load_engine(engine, model_copy, metadata)
    with caplog.at_level(logging.WARNING, logger="chronoprice.model.engines"):
        assert load_engine("auto", model_copy, metadata).name == fallback
    assert engine_file.name in caplog.text and f"serving with the {fallback} engine" in caplog.text
    engine_file.unlink()
    with pytest.raises(ModelUnavailable, match="chronoprice export"):
        load_engine(engine, model_copy, metadata)


def test_export_writes_the_engine_files_of_an_older_model_and_keeps_its_version(model_copy, capsys):
    model_copy.onnx_path.unlink()
    model_copy.weights_path.unlink()
    version = read_metadata(model_copy)["version"]
    assert main(["export", "--model", str(model_copy.base)]) == 0
    assert f"wrote {model_copy.onnx_path} and {model_copy.weights_path} (version {version})" in capsys.readouterr().out
    assert load_engine("auto", model_copy, read_metadata(model_copy)).name == "native"


def test_with_no_c_compiler_the_native_engine_says_so_and_auto_serves_with_onnx(model_copy, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "_kernel", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no kernel built yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    metadata = read_metadata(model_copy)
    with pytest.raises(ModelUnavailable, match="install a C compiler"):
        load_engine("native", model_copy, metadata)
    with caplog.at_level(logging.WARNING, logger="chronoprice.model.engines"):
        assert load_engine("auto", model_copy, metadata).name == "onnx"
    assert "serving with the onnx engine" in caplog.text
    assert list((tmp_path / "cache" / "chronoprice").iterdir()) == []  # nothing half-built left behind


def test_the_kernel_is_built_once_a_machine_and_a_broken_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_kernel", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = native.built_kernel_path()
    assert built.parent == tmp_path / "chronoprice" and not built.exists()
    native.kernel()
    assert built.exists() and list(built.parent.iterdir()) == [built]
    first_build = built.stat().st_mtime_ns
    monkeypatch.setattr(native, "_kernel", None)
    native.kernel()  # a new process finds the library and loads it as it is
    assert built.stat().st_mtime_ns == first_build
    monkeypatch.setattr(native, "KERNEL_SOURCE", tmp_path / "broken.c")
    (tmp_path / "broken.c").write_text("int forecast_paths( {\n")
    with pytest.raises(ModelUnavailable, match="could not build the native engine's kernel"):
        native.build_kernel(tmp_path / "chronoprice" / "broken.so")
    assert list(built.parent.iterdir()) == [built]


def test_the_native_engine_refuses_an_architecture_its_kernel_does_not_serve(tmp_path):
    tf.keras.utils.set_random_seed(3)
    weights = build_model(channels=3).get_weights()
    path = tmp_path / "net.npz"
    native.save_weights(path, [weights[0][:, :200], *weights[1:]])
    with pytest.raises(ModelUnavailable, match="not two stacked LSTMs"):
        native.NativeNetwork(path)


def test_auto_never_falls_back_to_tensorflow_over_a_damaged_file(model_copy):
    model_copy.weights_path.unlink()
    model_copy.onnx_path.unlink()
    model_copy.tflite_path.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelUnavailable, match="tiny.tflite"):
        load_engine("auto", model_copy, read_metadata(model_copy))


def test_a_batch_still_forecasts_while_the_interpreter_shuts_the_engines_pool(tiny_model):
    """A history forecast running as the process exits used to fail ("cannot schedule new futures
    after shutdown") and log a traceback; it finishes in its own thread instead."""
    from tests.helpers import make_candles

    forecaster = load_forecaster(tiny_model, "native")
    engine = forecaster.engine
    engine._cores = 2  # as on a machine of two cores, whatever this run's affinity
    windows = walk_forward_windows(candle_rows(make_candles(200)))[0][:40]
    before = forecaster.forecast(windows)
    engine._pool.shutdown()
    after = forecaster.forecast(windows)
    np.testing.assert_array_equal(before["mean"], after["mean"])



def test_training_validates_on_the_native_engine_and_on_keras_where_no_kernel_can_be_built(monkeypatch, tmp_path,
                                                                                          shared_windows):
    tf.keras.utils.set_random_seed(5)
    model = build_model()
    engine = validation_engine(model, 60, 10, "relative_closes")
    assert isinstance(engine, NativeEngine)
    picks = shared_windows[:16]
    inputs = model_input(picks, SCALE, "relative_closes")
    keras_paths = recursive_path(model, tf.constant(inputs), 10, "relative_closes").numpy()
    np.testing.assert_allclose(engine.path(inputs), keras_paths, atol=2e-5)
    monkeypatch.setattr(native, "_kernel", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    assert isinstance(validation_engine(model, 60, 10, "relative_closes"), KerasEngine)
