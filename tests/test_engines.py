"""The onnx engine is the Keras recursion, exactly: for every input form, for batches of 1, 7
and 256, and for the shipped model over every window of the shared data in a serving process's
runs and in evaluate's. auto serves with it,
and falls back to litert, never to TensorFlow, when its file is missing or damaged."""

import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from chronoprice.market.files import read_candle_csv
from chronoprice.model.artifact import ModelUnavailable, artifact_at, read_metadata
from chronoprice.model.engines import ONE_BATCH_RUN_ORIGINS, SERVING_RUN_ORIGINS, OnnxEngine, load_engine
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


@pytest.mark.parametrize("feature", FORMS)
def test_the_onnx_graph_is_the_keras_recursion_for_every_input_form_and_batch_size(feature, shared_windows, tmp_path):
    tf.keras.utils.set_random_seed(11)
    model = build_model(channels=channel_count(feature))  # untrained: the graph, not the weights, is under test
    artifact = artifact_at(tmp_path / "net")
    artifact.onnx_path.write_bytes(export_onnx(model.get_weights(), 60, 10, feature))
    engine = OnnxEngine(artifact, {"horizon": 10, "feature": {"name": feature}})
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


def test_the_shipped_model_on_onnx_matches_keras_on_every_window_of_the_shared_data(shipped_model, shared_windows):
    expected = load_forecaster(shipped_model, "keras").forecast(shared_windows)
    # A serving process's runs and the larger ones of a command that ends with its batch (evaluate).
    for run_origins in (SERVING_RUN_ORIGINS, ONE_BATCH_RUN_ORIGINS):
        got = load_forecaster(shipped_model, "onnx", run_origins=run_origins).forecast(shared_windows)
        for key in ("mean", "lower", "upper"):
            assert np.abs(got[key] / expected[key] - 1).max() <= CLOSE_TOLERANCE, (run_origins, key)


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    artifact = artifact_at(tiny_model)
    for path in (artifact.keras_path, artifact.tflite_path, artifact.onnx_path, artifact.metadata_path):
        shutil.copy(path, tmp_path / path.name)
    return artifact_at(tmp_path / artifact.base.name)


def test_auto_serves_with_onnx_and_falls_back_to_litert_naming_the_problem(model_copy, caplog):
    metadata = read_metadata(model_copy)
    assert load_engine("auto", model_copy, metadata).name == "onnx"
    model_copy.onnx_path.write_bytes(b"\x08\x07 not a graph")
    with pytest.raises(ModelUnavailable, match=f"cannot load {model_copy.onnx_path}"):
        load_engine("onnx", model_copy, metadata)
    with caplog.at_level(logging.WARNING, logger="chronoprice.model.engines"):
        assert load_engine("auto", model_copy, metadata).name == "litert"
    assert "tiny.onnx" in caplog.text and "serving with the litert engine" in caplog.text
    model_copy.onnx_path.unlink()
    with pytest.raises(ModelUnavailable, match="chronoprice export"):
        load_engine("onnx", model_copy, metadata)


def test_auto_never_falls_back_to_tensorflow_over_a_damaged_file(model_copy):
    model_copy.onnx_path.unlink()
    model_copy.tflite_path.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelUnavailable, match="tiny.tflite"):
        load_engine("auto", model_copy, read_metadata(model_copy))
