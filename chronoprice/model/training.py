"""Model selection and training: time-ordered splits, rolling-origin folds, variants of the
fixed architecture, shrinkage and interval calibration, and the artifact written to disk.
Imports TensorFlow (through network.py).
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np

from chronoprice.evaluation.metrics import (
    DEFAULT_LEVEL,
    VOLATILITY_WINDOW,
    conformal_quantiles,
    fit_shrinkage,
    interval_scores,
    recent_volatility,
    step_metrics,
)
from chronoprice.model.artifact import ModelArtifact, content_version, read_metadata, write_metadata
from chronoprice.model.engines import feature_name, validation_engine
from chronoprice.model.features import (
    CLOSE,
    HORIZON,
    WINDOW,
    candle_rows,
    describe_feature,
    log_return_scale,
    training_pairs,
    walk_forward_windows,
    window_closes,
)
from chronoprice.model.forecasters import LSTMForecaster, walk_forward
from chronoprice.model.native import save_weights
from chronoprice.model.network import export_tflite, fit_model, load_keras_model, save_keras_model
from chronoprice.model.onnx_graph import export_onnx

log = logging.getLogger(__name__)

TRAIN_SHARE, VALIDATION_SHARE = 0.70, 0.15
FOLDS = 3  # rolling origins that choose the variant and fit its shrinkage


def split_by_time(count: int, window: int) -> dict[str, slice]:
    """Train, validation and holdout slices of a series, in time order, never shuffled.

    Validation and holdout slices start `window` candles early so their first target is the
    first candle after the previous split: inputs may look back, targets never overlap.
    """
    train_end = int(count * TRAIN_SHARE)
    validation_end = int(count * (TRAIN_SHARE + VALIDATION_SHARE))
    return {
        "train": slice(0, train_end),
        "validation": slice(train_end - window, validation_end),
        "holdout": slice(validation_end - window, count),
    }


def rolling_folds(count: int, window: int, folds: int = FOLDS) -> list[dict[str, slice]]:
    """Train/validation pairs for rolling-origin selection, oldest first, all before the holdout.

    The validation windows are as long as split_by_time's and tile the candles just before the
    holdout; each fold trains on every candle before its validation window, so the last fold is
    split_by_time's train and validation.
    """
    splits = split_by_time(count, window)
    end, length = splits["validation"].stop, splits["validation"].stop - splits["train"].stop
    first_train = end - folds * length
    if first_train < 4 * window:
        raise ValueError(f"{count} candles are too few for {folds} rolling folds: the first would train on {first_train}")
    stops = [end - (folds - 1 - number) * length for number in range(folds)]
    return [{"train": slice(0, stop - length), "validation": slice(stop - length - window, stop)} for stop in stops]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to train the fixed architecture: input form, loss and how much history to train on."""

    feature: str = "log_returns+range+volume"  # the defaults are the shipped model's: see docs/MODEL.md
    loss: str = "huber"
    train_days: float | None = None  # None: every candle before the validation window
    normalise: str | None = None  # "window_volatility": each window in its own scale (features.input_scales)
    candles_per_day: int = 1440  # of the timeframe trained on: what train_days counts in

    def describe(self) -> str:
        days = "all" if self.train_days is None else f"last {self.train_days:g} d"
        scale = ", per-window volatility" if self.normalise else ""
        return f"{self.feature}{scale}, {self.loss}, train {days}"


def uncalibrated_metadata(variant: Variant, scale: float, window: int, horizon: int) -> dict:
    """A freshly fitted model's metadata: its input form and scale, intervals not yet calibrated."""
    return {
        "version": "unsaved",
        "window": window,
        "horizon": horizon,
        "feature": {"name": variant.feature, "definition": describe_feature(variant.feature), "scale": scale,
                    **({"normalise": variant.normalise} if variant.normalise else {})},
        "intervals": {
            "method": "split-conformal on validation errors in units of the last candles' volatility",
            "volatility_window": VOLATILITY_WINDOW,
            "score_quantile": {f"{DEFAULT_LEVEL:.2f}": [0.0] * horizon},
        },
    }


def fit_fold(candles: np.ndarray, fold: dict[str, slice], variant: Variant, epochs: int, window: int = WINDOW,
             horizon: int = HORIZON) -> tuple[keras.Model, LSTMForecaster, dict, dict]:
    """Train `variant` on a fold's training candles (early stopping on its validation window) and
    walk forward over the validation window with the model as is.

    `candles` is [N, 4] (features.CANDLE_COLUMNS). Returns (model, its forecaster, whose
    metadata has neither intervals nor shrinkage yet, training history, validation
    walk-forward result).
    """

    train = candles[fold["train"]]
    if variant.train_days is not None:
        train = train[-int(variant.train_days * variant.candles_per_day) :]
    scale = log_return_scale(train[:, CLOSE])
    x_train, y_train = training_pairs(train, scale, window, variant.feature, variant.normalise)
    x_val, y_val = training_pairs(candles[fold["validation"]], scale, window, variant.feature, variant.normalise)
    model, history = fit_model(x_train, y_train, x_val, y_val, epochs, loss=variant.loss)
    forecaster = LSTMForecaster(validation_engine(model, window, horizon, variant.feature),
                                uncalibrated_metadata(variant, scale, window, horizon))
    return model, forecaster, history, walk_forward(forecaster, candles[fold["validation"]], window, horizon)


def fit_variant(candles: np.ndarray, variant: Variant, epochs: int, window: int = WINDOW, horizon: int = HORIZON,
                folds: int = FOLDS):
    """Train `variant` on every rolling fold and keep the last fold's model.

    The per-step shrinkage toward the last close is fitted on the validation forecasts of all
    folds together (each fold's model on its own validation window), the intervals are
    calibrated on the last fold's validation window, and `metadata["selection"]` records each
    fold's MAE ratios of the model as is. The holdout is untouched.
    Returns (model, metadata, forecaster, splits, history).
    """

    if len(candles) < 10 * (window + horizon):
        raise ValueError(f"training needs at least {10 * (window + horizon)} candles, got {len(candles)}")
    fold_splits = rolling_folds(len(candles), window, folds)
    results, selection = [], []
    for number, fold in enumerate(fold_splits, 1):
        log.info("fold %d/%d: train on candles %d, validate on the next %d", number, folds, fold["train"].stop,
                 fold["validation"].stop - fold["train"].stop)
        model, forecaster, history, validation = fit_fold(candles, fold, variant, epochs, window, horizon)
        results.append(validation)
        ratios = step_metrics(validation, DEFAULT_LEVEL)["mae_ratio"]
        selection.append({"train": [0, fold["train"].stop], "validation_targets": [fold["train"].stop, fold["validation"].stop],
                          "epochs_run": len(history["loss"]), "mae_ratio": [round(float(ratio), 6) for ratio in ratios]})
    pooled = {key: np.concatenate([result[key] for result in results]) for key in ("mean", "actual", "origin_close")}
    metadata, engine = forecaster.metadata, forecaster.engine
    metadata["shrinkage"] = fit_shrinkage(np.log(pooled["mean"] / pooled["origin_close"]), pooled["actual"], pooled["origin_close"])
    metadata["selection"] = {"method": f"rolling origin over {folds} validation windows", "folds": selection}
    validation_candles = candles[fold_splits[-1]["validation"]]
    validation = walk_forward(LSTMForecaster(engine, metadata), validation_candles, window, horizon)
    volatility = recent_volatility(window_closes(walk_forward_windows(validation_candles, window, horizon)[0]))
    scores = interval_scores(np.log(validation["actual"] / validation["mean"]), volatility)
    metadata["intervals"]["score_quantile"] = conformal_quantiles(scores)
    return model, metadata, LSTMForecaster(engine, metadata), split_by_time(len(candles), window), history


ARCHITECTURE = "LSTM(64, return_sequences) -> Dropout(0.2) -> LSTM(32) -> Dense(16, relu) -> Dense(1)"


def write_model_files(model: keras.Model, out: ModelArtifact, window: int, horizon: int, feature: str) -> None:
    """The model's .keras, .tflite, .onnx and native .npz files (the metadata is written last, by the caller)."""
    out.base.parent.mkdir(parents=True, exist_ok=True)
    save_keras_model(model, out.keras_path)
    out.tflite_path.write_bytes(export_tflite(model, window, horizon, feature))
    out.onnx_path.write_bytes(export_onnx(model.get_weights(), window, horizon, feature))
    save_weights(out.weights_path, model.get_weights())


def train_artifact(
    candles,
    out: ModelArtifact,
    epochs: int,
    data_description: str,
    variant: Variant = Variant(),
    window: int = WINDOW,
    horizon: int = HORIZON,
    folds: int = FOLDS,
    timeframe: str = "1m",
) -> dict:
    """Train on a candles DataFrame of `timeframe` (`folds` rolling folds, see fit_variant),
    calibrate intervals, score the holdout, write the artifact; the model serves that timeframe.

    Returns the metadata written to `out.metadata_path`.
    """

    rows = candle_rows(candles)
    model, metadata, forecaster, splits, history = fit_variant(rows, variant, epochs, window, horizon, folds)
    holdout = step_metrics(walk_forward(forecaster, rows[splits["holdout"]], window, horizon), DEFAULT_LEVEL)

    write_model_files(model, out, window, horizon, variant.feature)
    ts = candles["ts"].to_numpy()
    validation_end = splits["validation"].stop
    metadata.update(
        {
            "version": content_version(out.keras_path, out.tflite_path),
            "architecture": ARCHITECTURE,
            "timeframe": timeframe,
            "training": {
                "data": data_description,
                "candles": len(rows),
                "first_ts": int(ts[0]),
                "last_ts": int(ts[-1]),
                "trained_until_ts": int(ts[validation_end - 1]),
                "splits": {name: [int(part.start), int(part.stop)] for name, part in splits.items()},
                "train_days": variant.train_days,
                "epochs_run": len(history["loss"]),
                "epochs_max": epochs,
                "loss": variant.loss,
                "history": history,
            },
            "holdout": holdout.round(8).to_dict("records"),
        }
    )
    write_metadata(out, metadata)
    return metadata


def export_engine_files(artifact: ModelArtifact) -> dict:
    """Write the .onnx graph and the native engine's .npz of an existing artifact from its .keras
    weights (its version, a hash of the weight files, stays). Returns the artifact's metadata."""
    metadata = read_metadata(artifact)
    weights = load_keras_model(artifact).get_weights()
    artifact.onnx_path.write_bytes(export_onnx(weights, metadata["window"], metadata["horizon"], feature_name(metadata)))
    save_weights(artifact.weights_path, weights)
    return metadata


def comparison_row(variant: Variant, fold_means: list[float], epochs_run: list[int], shrinkage: list[float]) -> dict:
    """One variant's row of `compare`: its fold scores and their mean (what a choice is made on)."""
    return {**dataclasses.asdict(variant), "variant": variant.describe(), "epochs_run": epochs_run,
            "validation_mean_ratio": round(float(np.mean(fold_means)), 5),
            "fold_mean_ratios": [round(mean, 5) for mean in fold_means], "shrinkage": shrinkage}


def compare_variants(candles, variants: list[Variant], epochs: int, folds: int = FOLDS) -> list[dict]:
    """Train every variant the same way and score it walk-forward on rolling validation windows
    and on the holdout.

    Returns one row per variant: its description; `validation_mean_ratio`, the MAE ratio to the
    naive baseline of the model as is, averaged over steps and folds (the score a choice is
    made on); `fold_mean_ratios`; its shrinkage weights (fitted on the validation windows); and
    the holdout's per-step ratios of the model as is (`holdout_raw_*`) and with its shrinkage
    (`holdout_*`, what would ship). Choose on validation; the holdout, which no choice has
    seen, confirms.
    """

    series = candle_rows(candles)
    rows = []
    for number, variant in enumerate(variants, 1):
        log.info("[%d/%d] %s", number, len(variants), variant.describe())
        _, metadata, forecaster, splits, _ = fit_variant(series, variant, epochs, folds=folds)
        folds_run = metadata["selection"]["folds"]
        row = comparison_row(variant, [float(np.mean(fold["mae_ratio"])) for fold in folds_run],
                             [fold["epochs_run"] for fold in folds_run], metadata["shrinkage"])
        as_is = LSTMForecaster(forecaster.engine, {**metadata, "shrinkage": [1.0] * forecaster.horizon})
        for prefix, each in (("holdout_raw", as_is), ("holdout", forecaster)):
            ratios = step_metrics(walk_forward(each, series[splits["holdout"]]), DEFAULT_LEVEL)["mae_ratio"]
            row[f"{prefix}_mae_ratio"] = [round(float(value), 5) for value in ratios]
            row[f"{prefix}_mean_ratio"] = round(float(ratios.mean()), 5)
        rows.append(row)
    return rows
