"""The Keras LSTM: build, train, export to LiteRT, load. Imports TensorFlow; the LiteRT serving
path never imports this module.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import keras

from chronoprice.artifact import ModelArtifact, ModelUnavailable
from chronoprice.features import HORIZON, WINDOW, channel_count, parse_feature

if TYPE_CHECKING:
    from chronoprice.forecast import LSTMForecaster

DROPOUT = 0.2


def build_model(window: int = WINDOW, batch_size: int | None = None, dropout: float = DROPOUT, channels: int = 1) -> keras.Model:
    """LSTM(64, return_sequences) -> Dropout -> LSTM(32) -> Dense(16, relu) -> Dense(1).

    Input [batch, window, channels] (features.model_input); output [batch, 1], the next close as
    a scaled log return from the newest close.
    """
    inputs = keras.Input((window, channels), batch_size=batch_size, name="scale_free_candles")
    hidden = keras.layers.LSTM(64, return_sequences=True, name="lstm_64")(inputs)
    hidden = keras.layers.Dropout(dropout, name="dropout")(hidden)
    hidden = keras.layers.LSTM(32, name="lstm_32")(hidden)
    hidden = keras.layers.Dense(16, activation="relu", name="dense_16")(hidden)
    outputs = keras.layers.Dense(1, name="next_log_return")(hidden)
    return keras.Model(inputs, outputs, name="chronoprice_lstm")


def next_input(inputs: tf.Tensor, step: tf.Tensor, feature: str) -> tf.Tensor:
    """The model input after the predicted next candle (`step`, its close as [batch, 1]) joins
    the window.

    Keeps the form the model was trained on: relative closes are re-referenced to the new
    newest close; for log returns the oldest value stays the placeholder 0. The predicted
    candle's range and volume are unknown, so it gets the window's mean of each, and the
    volume channel is re-expressed against the new window's mean volume.
    """
    form, extras = parse_feature(feature)
    closes = inputs[:, :, 0]
    if form == "relative_closes":
        channels = [tf.concat([closes[:, 1:], step], axis=1) - step]
    else:
        channels = [tf.concat([tf.zeros_like(step), closes[:, 2:], step], axis=1)]
    for number, extra in enumerate(extras, 1):
        values = inputs[:, :, number]
        if extra == "range":
            channels.append(tf.concat([values[:, 1:], tf.reduce_mean(values, axis=1, keepdims=True)], axis=1))
        else:
            # exp - 1 and log(1 + x): LiteRT has no builtin expm1 or log1p.
            ratios = tf.exp(values) - 1
            ratios = tf.concat([ratios[:, 1:], tf.reduce_mean(ratios, axis=1, keepdims=True)], axis=1)
            ratios = ratios / tf.maximum(tf.reduce_mean(ratios, axis=1, keepdims=True), 1e-12)
            channels.append(tf.math.log(1 + ratios))
    return tf.stack(channels, axis=-1)


def recursive_path(model: keras.Model, inputs: tf.Tensor, horizon: int = HORIZON, feature: str = "relative_closes") -> tf.Tensor:
    """Run the model `horizon` times, feeding each predicted candle back into the window.

    `inputs` is [batch, window, channels] model input (features.model_input). Returns
    [batch, horizon]: the predicted close of each step as a scaled log return from the origin.
    """
    steps = []
    cumulative = tf.zeros_like(inputs[:, :1, 0])
    for _ in range(horizon):
        step = model(inputs, training=False)
        inputs = next_input(inputs, step, feature)
        cumulative = cumulative + step
        steps.append(cumulative)
    return tf.concat(steps, axis=1)


def compiled_path_function(model: keras.Model, window: int, horizon: int, feature: str = "relative_closes"):
    """All `horizon` steps in one XLA-compiled tf.function taking [batch, window, channels] float32."""
    return tf.function(
        lambda inputs: recursive_path(model, inputs, horizon, feature),
        input_signature=[tf.TensorSpec([None, window, channel_count(feature)], tf.float32)],
        jit_compile=True,
        reduce_retracing=True,
    )


def export_tflite(model: keras.Model, window: int, horizon: int, feature: str = "relative_closes") -> bytes:
    """The whole recursive forecast as one LiteRT graph with frozen weights, batch size 1.

    Frozen constants, because LiteRT cannot initialise Keras 3 resource variables; batch 1,
    because the converter needs static shapes to lower the LSTM loops.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    channels = channel_count(feature)
    fixed = build_model(window, batch_size=1, channels=channels)
    fixed.set_weights(model.get_weights())
    concrete = tf.function(
        lambda inputs: recursive_path(fixed, inputs, horizon, feature),
        input_signature=[tf.TensorSpec([1, window, channels], tf.float32)],
    ).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])
    return converter.convert()


def load_keras_model(artifact: ModelArtifact) -> keras.Model:
    try:
        return keras.models.load_model(artifact.keras_path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelUnavailable(f"cannot load {artifact.keras_path}: {error}; restore the file or retrain") from None


class TrainingProgress(keras.callbacks.Callback):
    """A tqdm bar over every batch of every epoch, with the latest losses beside it."""

    def __init__(self, epochs: int, batches_per_epoch: int):
        super().__init__()
        self._epochs, self._batches = epochs, batches_per_epoch
        self._bar = None

    def on_train_begin(self, logs=None):
        from tqdm import tqdm

        self._bar = tqdm(total=self._epochs * self._batches, desc="training", unit="batch", file=sys.stderr,
                         mininterval=0.2 if sys.stderr.isatty() else 10.0)

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._bar.set_postfix(epoch=f"{epoch + 1}/{self._epochs}", loss=f"{logs.get('loss', 0):.4f}", val_loss=f"{logs.get('val_loss', 0):.4f}")

    def on_train_end(self, logs=None):
        self._bar.close()
        epochs_run = len(self.model.history.epoch) if self.model.history else self._epochs
        if epochs_run < self._epochs:
            print(f"stopped early after {epochs_run} epochs: validation loss stopped improving", file=sys.stderr)


def fit_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int,
    loss: str = "mse",
    batch_size: int = 256,
    patience: int = 3,
    seed: int = 7,
) -> tuple[keras.Model, dict]:
    """Train on time-ordered windows; validation is the later split, and the best epoch is kept.

    Batches are shuffled within the training split only, so no future window leaks into
    training. A progress bar on stderr counts batches over all epochs.
    """
    keras.utils.set_random_seed(seed)
    model = build_model(x_train.shape[1], channels=x_train.shape[2])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[stop, TrainingProgress(epochs, -(-len(x_train) // batch_size))],
        verbose=0,
    )
    return model, {key: [float(value) for value in values] for key, values in history.history.items()}


def save_keras_model(model: keras.Model, path: Path) -> None:
    model.save(path)


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

    def describe(self) -> str:
        days = "all" if self.train_days is None else f"last {self.train_days:g} d"
        return f"{self.feature}, {self.loss}, train {days}"


def fit_fold(candles: np.ndarray, fold: dict[str, slice], variant: Variant, epochs: int, window: int = WINDOW,
             horizon: int = HORIZON) -> tuple[keras.Model, LSTMForecaster, dict, dict]:
    """Train `variant` on a fold's training candles (early stopping on its validation window) and
    walk forward over the validation window with the model as is.

    `candles` is [N, 4] (features.CANDLE_COLUMNS). Returns (model, its forecaster, whose
    metadata has neither intervals nor shrinkage yet, training history, validation
    walk-forward result).
    """
    from chronoprice.evaluation import walk_forward
    from chronoprice.features import CLOSE, VOLATILITY_WINDOW, describe_feature, log_return_scale, training_pairs
    from chronoprice.forecast import DEFAULT_LEVEL, KerasEngine, LSTMForecaster

    train = candles[fold["train"]]
    if variant.train_days is not None:
        train = train[-int(variant.train_days * 1440) :]
    scale = log_return_scale(train[:, CLOSE])
    x_train, y_train = training_pairs(train, scale, window, variant.feature)
    x_val, y_val = training_pairs(candles[fold["validation"]], scale, window, variant.feature)
    model, history = fit_model(x_train, y_train, x_val, y_val, epochs, loss=variant.loss)
    metadata = {
        "version": "unsaved",
        "window": window,
        "horizon": horizon,
        "feature": {"name": variant.feature, "definition": describe_feature(variant.feature), "scale": scale},
        "intervals": {
            "method": "split-conformal on validation errors in units of the last minutes' volatility",
            "volatility_window": VOLATILITY_WINDOW,
            "score_quantile": {f"{DEFAULT_LEVEL:.2f}": [0.0] * horizon},
        },
    }
    forecaster = LSTMForecaster(KerasEngine(model, window, horizon, variant.feature), metadata)
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
    from chronoprice.evaluation import conformal_quantiles, fit_shrinkage, interval_scores, step_metrics, walk_forward
    from chronoprice.features import recent_volatility, walk_forward_windows
    from chronoprice.forecast import DEFAULT_LEVEL, LSTMForecaster

    if len(candles) < 10 * (window + horizon):
        raise ValueError(f"training needs at least {10 * (window + horizon)} candles, got {len(candles)}")
    fold_splits = rolling_folds(len(candles), window, folds)
    results, selection = [], []
    for number, fold in enumerate(fold_splits, 1):
        print(f"fold {number}/{folds}: train on candles {fold['train'].stop}, validate on the next "
              f"{fold['validation'].stop - fold['train'].stop}", file=sys.stderr, flush=True)
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
    volatility = recent_volatility(walk_forward_windows(validation_candles, window, horizon)[0])
    scores = interval_scores(np.log(validation["actual"] / validation["mean"]), volatility)
    metadata["intervals"]["score_quantile"] = conformal_quantiles(scores)
    return model, metadata, LSTMForecaster(engine, metadata), split_by_time(len(candles), window), history


def train_artifact(
    candles,
    out: ModelArtifact,
    epochs: int,
    data_description: str,
    variant: Variant = Variant(),
    window: int = WINDOW,
    horizon: int = HORIZON,
    folds: int = FOLDS,
) -> dict:
    """Train on a candles DataFrame (`folds` rolling folds, see fit_variant), calibrate
    intervals, score the holdout, write the artifact.

    Returns the metadata written to `out.metadata_path`.
    """
    from chronoprice.artifact import content_version, write_metadata
    from chronoprice.evaluation import step_metrics, walk_forward
    from chronoprice.features import candle_rows
    from chronoprice.forecast import DEFAULT_LEVEL

    rows = candle_rows(candles)
    model, metadata, forecaster, splits, history = fit_variant(rows, variant, epochs, window, horizon, folds)
    holdout = step_metrics(walk_forward(forecaster, rows[splits["holdout"]], window, horizon), DEFAULT_LEVEL)

    out.base.parent.mkdir(parents=True, exist_ok=True)
    save_keras_model(model, out.keras_path)
    out.tflite_path.write_bytes(export_tflite(model, window, horizon, variant.feature))
    ts = candles["ts"].to_numpy()
    validation_end = splits["validation"].stop
    metadata.update(
        {
            "version": content_version(out.keras_path, out.tflite_path),
            "architecture": "LSTM(64, return_sequences) -> Dropout(0.2) -> LSTM(32) -> Dense(16, relu) -> Dense(1)",
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
    from chronoprice.evaluation import step_metrics, walk_forward
    from chronoprice.features import candle_rows
    from chronoprice.forecast import DEFAULT_LEVEL, LSTMForecaster

    series = candle_rows(candles)
    rows = []
    for number, variant in enumerate(variants, 1):
        print(f"[{number}/{len(variants)}] {variant.describe()}", file=sys.stderr, flush=True)
        _, metadata, forecaster, splits, _ = fit_variant(series, variant, epochs, folds=folds)
        fold_means = [float(np.mean(fold["mae_ratio"])) for fold in metadata["selection"]["folds"]]
        row = {**dataclasses.asdict(variant), "variant": variant.describe(),
               "epochs_run": [fold["epochs_run"] for fold in metadata["selection"]["folds"]],
               "validation_mean_ratio": round(float(np.mean(fold_means)), 5),
               "fold_mean_ratios": [round(mean, 5) for mean in fold_means], "shrinkage": metadata["shrinkage"]}
        as_is = LSTMForecaster(forecaster.engine, {**metadata, "shrinkage": [1.0] * forecaster.horizon})
        for prefix, each in (("holdout_raw", as_is), ("holdout", forecaster)):
            ratios = step_metrics(walk_forward(each, series[splits["holdout"]]), DEFAULT_LEVEL)["mae_ratio"]
            row[f"{prefix}_mae_ratio"] = [round(float(value), 5) for value in ratios]
            row[f"{prefix}_mean_ratio"] = round(float(ratios.mean()), 5)
        rows.append(row)
    return rows
