import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chronoprice.evaluation.metrics import DEFAULT_LEVEL, step_metrics
from chronoprice.market.files import read_candle_csv
from chronoprice.model.artifact import ModelUnavailable, artifact_at, read_metadata
from chronoprice.model.engines import KerasEngine, LiteRTEngine, load_engine
from chronoprice.model.features import (
    candle_rows,
    input_scales,
    model_input,
    training_pairs,
    walk_forward_windows,
)
from chronoprice.model.forecasters import (
    LSTMForecaster,
    NaiveForecaster,
    load_forecaster,
    walk_forward,
)
from chronoprice.model.native import read_weights
from tests.helpers import make_candles


def test_build_model_is_exactly_the_design_architecture():
    from chronoprice.model.network import build_model

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
    assert x_small.shape == (140, 60, 1) and np.all(x_small[:, -1, 0] == 0)
    np.testing.assert_allclose(y_small[0], np.log(closes[60] / closes[59]) / 0.001, rtol=1e-5)


def test_split_by_time_never_puts_a_target_in_two_splits():
    from chronoprice.model.training import split_by_time

    splits = split_by_time(20_000, 60)
    targets = {name: set(range(part.start + 60, part.stop)) for name, part in splits.items()}
    targets["train"] = set(range(60, splits["train"].stop))
    assert not targets["train"] & targets["validation"]
    assert not targets["validation"] & targets["holdout"]
    assert max(targets["train"]) < min(targets["validation"]) < min(targets["holdout"])


def test_rolling_folds_tile_the_candles_before_the_holdout():
    from chronoprice.model.training import rolling_folds, split_by_time

    folds = rolling_folds(20_000, 60, folds=3)
    splits = split_by_time(20_000, 60)
    assert folds[-1] == {"train": splits["train"], "validation": splits["validation"]}
    for earlier, later in zip(folds, folds[1:]):
        assert earlier["validation"].stop == later["train"].stop, "validation windows tile, oldest first"
    for fold in folds:
        assert fold["train"].start == 0 and fold["validation"].start == fold["train"].stop - 60
        assert fold["validation"].stop <= splits["holdout"].start + 60, "no fold scores a holdout target"
    with pytest.raises(ValueError, match="too few for 3 rolling folds"):
        rolling_folds(500, 60, folds=3)


def test_candle_channels_are_scale_free_and_need_candle_rows():
    rows = candle_rows(make_candles(200))
    small = training_pairs(rows, 0.001, feature="relative_closes+range+volume")[0]
    scaled = rows * [1000, 1000, 1000, 7]  # another price level and another volume unit
    large = training_pairs(scaled, 0.001, feature="relative_closes+range+volume")[0]
    assert small.shape == (140, 60, 3)
    np.testing.assert_allclose(small, large, atol=1e-3)
    np.testing.assert_allclose(small[0, :, 1], np.log(rows[:60, 0] / rows[:60, 1]) / 0.001, rtol=1e-5)
    # Volume is measured against the window's mean volume.
    np.testing.assert_allclose(np.expm1(small[:, :, 2]).mean(axis=1), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="needs candle rows"):
        model_input(rows[None, :60, 2], 0.001, "relative_closes+volume")
    with pytest.raises(ValueError, match="unknown feature"):
        model_input(rows[None, :60], 0.001, "relative_closes+spread")


@pytest.mark.parametrize("feature", ["relative_closes", "log_returns", "relative_closes+range+volume", "log_returns+volume+range"])
def test_the_recursion_feeds_back_a_predicted_candle_as_training_would_see_it(feature):
    """next_input must equal model_input of the window with the predicted candle appended: its
    close from the predicted return, its range and volume the window's means."""
    from chronoprice.model.network import next_input

    rows = candle_rows(make_candles(61))[:60]
    scale, step = 0.0007, 0.8
    predicted_close = rows[-1, 2] * np.exp(step * scale)
    mean_range = np.log(rows[:, 0] / rows[:, 1]).mean()
    appended = [predicted_close * np.exp(mean_range), predicted_close, predicted_close, rows[:, 3].mean()]
    expected = model_input(np.vstack([rows[1:], appended])[None], scale, feature)
    fed_back = next_input(model_input(rows[None], scale, feature), np.array([[step]], dtype="float32"), feature).numpy()
    np.testing.assert_allclose(fed_back, expected, atol=2e-5)


def test_train_writes_every_engine_file_and_metadata(tiny_model):
    from chronoprice.model.network import load_keras_model

    artifact = artifact_at(tiny_model)
    assert artifact.keras_path.stat().st_size > 0 and artifact.tflite_path.stat().st_size > 0 and artifact.onnx_path.stat().st_size > 0
    stored, trained = read_weights(artifact.weights_path), load_keras_model(artifact).get_weights()
    assert [weight.shape for weight in stored] == [weight.shape for weight in trained]
    assert all(np.array_equal(mine, theirs) for mine, theirs in zip(stored, trained))
    metadata = read_metadata(artifact)
    assert metadata["version"].startswith("lstm-")
    assert metadata["window"] == 60 and metadata["horizon"] == 10
    assert "LSTM(64" in metadata["architecture"]
    assert set(metadata["intervals"]["score_quantile"]) == {"0.80", "0.90", "0.95"}
    widths = metadata["intervals"]["score_quantile"]["0.90"]
    assert len(widths) == 10 and widths[9] > widths[0] > 0, "uncertainty grows with the horizon"
    assert metadata["training"]["epochs_run"] == 1
    assert [len(fold["mae_ratio"]) for fold in metadata["selection"]["folds"]] == [10, 10, 10]
    assert len(metadata["shrinkage"]) == 10 and all(0 <= weight <= 1 for weight in metadata["shrinkage"])
    assert [row["step"] for row in metadata["holdout"]] == list(range(1, 11))
    assert {"mae_model", "mae_naive", "mae_ratio", "coverage"} <= set(metadata["holdout"][0])


@pytest.mark.slow
def test_keras_and_litert_engines_give_the_same_forecast(tiny_model):
    artifact = artifact_at(tiny_model)
    metadata = read_metadata(artifact)
    windows, _ = walk_forward_windows(candle_rows(make_candles(400)))
    windows = windows[::37]
    keras_engine, litert_engine = load_engine("keras", artifact, metadata), load_engine("litert", artifact, metadata)
    relative = model_input(windows, metadata["feature"]["scale"], metadata["feature"]["name"])
    keras_path, litert_path = keras_engine.path(relative), litert_engine.path(relative)
    assert np.abs(keras_path - litert_path).max() <= 1e-4 * np.abs(keras_path).max()
    keras_forecast = LSTMForecaster(keras_engine, metadata).forecast(windows)
    litert_forecast = LSTMForecaster(litert_engine, metadata).forecast(windows)
    for key in ("mean", "lower", "upper"):
        np.testing.assert_allclose(keras_forecast[key], litert_forecast[key], rtol=1e-4)


@pytest.mark.slow
def test_keras_and_litert_agree_on_a_closes_only_model_too(tmp_path):
    from chronoprice.model.network import build_model, export_tflite

    model = build_model(channels=1)  # untrained: the export, not the weights, is under test
    artifact = artifact_at(tmp_path / "closes-only")
    artifact.tflite_path.write_bytes(export_tflite(model, 60, 10, "relative_closes"))
    windows, _ = walk_forward_windows(make_candles(400)["close"].to_numpy())
    relative = model_input(windows[::37], 0.0006, "relative_closes")
    keras_path = KerasEngine(model, 60, 10, "relative_closes").path(relative)
    litert_path = LiteRTEngine(artifact).path(relative)
    assert np.abs(keras_path - litert_path).max() <= 1e-4 * np.abs(keras_path).max()


def test_the_shipped_form_forecasts_from_candle_rows_and_refuses_closes_alone(tiny_model):
    forecaster = load_forecaster(tiny_model, "litert")
    rows = candle_rows(make_candles(60))
    forecast = forecaster.forecast(rows[None])
    assert forecast["mean"].shape == (1, 10)
    assert np.all(forecast["lower"] < forecast["mean"]) and np.all(forecast["mean"] < forecast["upper"])
    with pytest.raises(ValueError, match="needs candle rows"):
        forecaster.forecast(rows[:, 2])
    with pytest.raises(ValueError, match="windows of 60 candles"):
        forecaster.forecast(rows[None, :50])


def test_naive_forecaster_repeats_the_last_close():
    windows = np.array([[1.0, 2.0, 3.0], [5.0, 4.0, 7.0]])
    assert NaiveForecaster(horizon=2).forecast(windows)["mean"].tolist() == [[3.0, 3.0], [7.0, 7.0]]


@pytest.mark.parametrize("engine", ["native", "onnx", "litert"])
def test_the_serving_engines_never_import_tensorflow(tiny_model, engine):
    script = (
        "import sys, numpy as np\n"
        "from chronoprice.model.forecasters import load_forecaster\n"
        f"f = load_forecaster({str(tiny_model)!r}, {engine!r})\n"
        "closes = np.linspace(100, 101, 60)\n"
        "out = f.forecast(np.column_stack([closes * 1.001, closes * 0.999, closes, np.ones(60)])[None])\n"
        f"assert f.engine.name == {engine!r}, f.engine.name\n"
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
    broken.with_suffix(".npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ModelUnavailable, match="cannot load .*broken.npz"):
        load_forecaster(broken, "native")
    broken.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="unreadable"):
        load_forecaster(broken)


def test_shipped_model_version_is_the_hash_of_its_weight_files(shipped_model):
    artifact = artifact_at(shipped_model)
    digest = hashlib.sha256(artifact.keras_path.read_bytes() + artifact.tflite_path.read_bytes()).hexdigest()
    metadata = read_metadata(artifact)
    assert metadata["version"] == "lstm-" + digest[:12]
    assert metadata["feature"]["name"] == "log_returns+range+volume" and metadata["training"]["loss"] == "huber"
    assert len(metadata["selection"]["folds"]) == 3


@pytest.mark.slow
def test_shipped_model_holdout_scores_are_what_its_weights_give_on_the_data(shipped_model, shared_csv):
    metadata = read_metadata(artifact_at(shipped_model))
    candles = read_candle_csv(shared_csv).candles
    assert metadata["training"]["data"].startswith(shared_csv.name) and metadata["training"]["candles"] == len(candles)
    start, stop = metadata["training"]["splits"]["holdout"]
    holdout = candle_rows(candles)[start:stop]
    scores = step_metrics(walk_forward(load_forecaster(shipped_model, "keras"), holdout), DEFAULT_LEVEL)
    saved = pd.DataFrame(metadata["holdout"])
    np.testing.assert_allclose(scores["mae_naive"], saved["mae_naive"], rtol=1e-9)
    np.testing.assert_allclose(scores["mae_model"], saved["mae_model"], rtol=1e-5)
    np.testing.assert_allclose(scores["coverage"], saved["coverage"], atol=2 / len(holdout))
    assert (scores["mae_ratio"] <= 1.0).all()


def test_window_volatility_normalisation_makes_calm_and_wild_markets_look_alike():
    returns = np.random.default_rng(5).normal(0, 1, 200)
    def candles(k):
        closes = 100 * np.exp(np.cumsum(k * 0.001 * returns))
        return np.stack([closes * np.exp(k * 0.0005), closes * np.exp(-k * 0.0005), closes, np.ones_like(closes)], axis=1)

    feature = "log_returns+range"
    calm, wild = (training_pairs(candles(k), 0.001, 60, feature, "window_volatility") for k in (1.0, 8.0))
    assert np.allclose(calm[0], wild[0], atol=1e-4) and np.allclose(calm[1], wild[1], atol=1e-4)
    plain = training_pairs(candles(8.0), 0.001, 60, feature)
    assert not np.allclose(plain[1], calm[1], atol=1e-2), "without normalisation the wild market's targets are larger"
    flat = np.full((1, 60), 100.0)
    assert input_scales(flat, {"scale": 0.001, "normalise": "window_volatility"})[0] == pytest.approx(0.0001)
