import json
import subprocess
import sys

import numpy as np
import pytest

from chronoprice.artifact import ModelUnavailable, artifact_at, read_metadata
from chronoprice.features import model_input, training_pairs, walk_forward_windows
from chronoprice.forecast import LSTMForecaster, NaiveForecaster, load_engine, load_forecaster
from tests.conftest import make_candles


def test_build_model_is_exactly_the_design_architecture():
    from chronoprice.model import build_model

    model = build_model()
    layers = [(type(layer).__name__, getattr(layer, "units", None)) for layer in model.layers[1:]]
    assert layers == [("LSTM", 64), ("Dropout", None), ("LSTM", 32), ("Dense", 16), ("Dense", 1)]
    assert model.layers[1].return_sequences and not model.layers[3].return_sequences
    assert model.layers[4].activation.__name__ == "relu"
    assert model.input_shape == (None, 60, 1) and model.output_shape == (None, 1)


def test_training_pairs_are_scale_free():
    closes = make_candles(200)["close"].to_numpy()
    x_small, y_small = training_pairs(closes, 0.001)
    x_large, y_large = training_pairs(closes * 1000, 0.001)
    np.testing.assert_allclose(x_small, x_large, atol=1e-4)
    np.testing.assert_allclose(y_small, y_large, atol=1e-4)
    assert x_small.shape == (140, 60) and np.all(x_small[:, -1] == 0)
    np.testing.assert_allclose(y_small[0], np.log(closes[60] / closes[59]) / 0.001, rtol=1e-5)


def test_split_by_time_never_puts_a_target_in_two_splits():
    from chronoprice.model import split_by_time

    splits = split_by_time(20_000, 60)
    targets = {name: set(range(part.start + 60, part.stop)) for name, part in splits.items()}
    targets["train"] = set(range(60, splits["train"].stop))
    assert not targets["train"] & targets["validation"]
    assert not targets["validation"] & targets["holdout"]
    assert max(targets["train"]) < min(targets["validation"]) < min(targets["holdout"])


def test_train_writes_keras_tflite_and_metadata(tiny_model):
    artifact = artifact_at(tiny_model)
    assert artifact.keras_path.stat().st_size > 0 and artifact.tflite_path.stat().st_size > 0
    metadata = read_metadata(artifact)
    assert metadata["version"].startswith("lstm-")
    assert metadata["window"] == 60 and metadata["horizon"] == 10
    assert "LSTM(64" in metadata["architecture"]
    assert set(metadata["intervals"]["score_quantile"]) == {"0.80", "0.90", "0.95"}
    widths = metadata["intervals"]["score_quantile"]["0.90"]
    assert len(widths) == 10 and widths[9] > widths[0] > 0, "uncertainty grows with the horizon"
    assert metadata["training"]["epochs_run"] == 1
    assert [row["step"] for row in metadata["holdout"]] == list(range(1, 11))
    assert {"mae_model", "mae_naive", "mae_ratio", "coverage"} <= set(metadata["holdout"][0])


def test_keras_and_litert_engines_give_the_same_forecast(tiny_model):
    artifact = artifact_at(tiny_model)
    metadata = read_metadata(artifact)
    windows, _ = walk_forward_windows(make_candles(400)["close"].to_numpy())
    windows = windows[::37]
    keras_engine, litert_engine = load_engine("keras", artifact, metadata), load_engine("litert", artifact, metadata)
    relative = model_input(windows, metadata["feature"]["scale"])
    keras_path, litert_path = keras_engine.path(relative), litert_engine.path(relative)
    assert np.abs(keras_path - litert_path).max() <= 1e-4 * np.abs(keras_path).max()
    keras_forecast = LSTMForecaster(keras_engine, metadata).forecast(windows)
    litert_forecast = LSTMForecaster(litert_engine, metadata).forecast(windows)
    for key in ("mean", "lower", "upper"):
        np.testing.assert_allclose(keras_forecast[key], litert_forecast[key], rtol=1e-4)


def test_forecast_shapes_and_interval_order(tiny_model):
    forecaster = load_forecaster(tiny_model, "litert")
    closes = make_candles(60)["close"].to_numpy()
    forecast = forecaster.forecast(closes)
    assert forecast["mean"].shape == (1, 10)
    assert np.all(forecast["lower"] < forecast["mean"]) and np.all(forecast["mean"] < forecast["upper"])
    with pytest.raises(ValueError, match="windows of 60 closes"):
        forecaster.forecast(closes[:50])


def test_naive_forecaster_repeats_the_last_close():
    windows = np.array([[1.0, 2.0, 3.0], [5.0, 4.0, 7.0]])
    assert NaiveForecaster(horizon=2).forecast(windows)["mean"].tolist() == [[3.0, 3.0], [7.0, 7.0]]


def test_litert_serving_path_never_imports_tensorflow(tiny_model):
    script = (
        "import sys, numpy as np\n"
        "from chronoprice.forecast import load_forecaster\n"
        f"f = load_forecaster({str(tiny_model)!r}, 'auto')\n"
        "out = f.forecast(np.linspace(100, 101, 60))\n"
        "assert f.engine.name == 'litert', f.engine.name\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_or_corrupt_model_files_raise_model_unavailable(tiny_model, tmp_path):
    with pytest.raises(ModelUnavailable, match="not found"):
        load_forecaster(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.with_suffix(".json").write_text(artifact_at(tiny_model).metadata_path.read_text())
    broken.with_suffix(".tflite").write_bytes(b"\x00" * 100)
    broken.with_suffix(".keras").write_bytes(b"not a zip")
    with pytest.raises(ModelUnavailable, match="broken.tflite"):
        load_forecaster(broken, "litert")
    with pytest.raises(ModelUnavailable, match="broken.keras"):
        load_forecaster(broken, "keras")
    broken.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="unreadable"):
        load_forecaster(broken)


def test_shipped_model_metadata_is_complete(shipped_model):
    metadata = json.loads(shipped_model.with_suffix(".json").read_text())
    assert metadata["training"]["data"].startswith("btcusdt_1m_binanceus_2023-03-01_14.csv")
    assert metadata["version"] == load_forecaster(shipped_model, "litert").version
    assert all(row["mae_ratio"] <= 1.01 for row in metadata["holdout"])
