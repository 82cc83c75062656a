"""The Keras LSTM: build, train, export to LiteRT, load. Imports TensorFlow; the LiteRT serving
path never imports this module.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from chronoprice.artifact import ModelArtifact, ModelUnavailable
from chronoprice.features import HORIZON, WINDOW

DROPOUT = 0.2


def build_model(window: int = WINDOW, batch_size: int | None = None, dropout: float = DROPOUT) -> keras.Model:
    """LSTM(64, return_sequences) -> Dropout -> LSTM(32) -> Dense(16, relu) -> Dense(1).

    Input [batch, window, 1] (scaled relative log closes); output [batch, 1], the next close as a
    scaled log return from the newest close.
    """
    inputs = keras.Input((window, 1), batch_size=batch_size, name="relative_log_closes")
    hidden = keras.layers.LSTM(64, return_sequences=True, name="lstm_64")(inputs)
    hidden = keras.layers.Dropout(dropout, name="dropout")(hidden)
    hidden = keras.layers.LSTM(32, name="lstm_32")(hidden)
    hidden = keras.layers.Dense(16, activation="relu", name="dense_16")(hidden)
    outputs = keras.layers.Dense(1, name="next_log_return")(hidden)
    return keras.Model(inputs, outputs, name="chronoprice_lstm")


def next_input(inputs: tf.Tensor, step: tf.Tensor, feature: str) -> tf.Tensor:
    """The model input after `step` (the predicted next close, [batch, 1]) joins the window.

    Keeps the form the model was trained on: relative closes are re-referenced to the new
    newest close; for log returns the oldest value stays the placeholder 0.
    """
    if feature == "relative_closes":
        return tf.concat([inputs[:, 1:], step], axis=1) - step
    return tf.concat([tf.zeros_like(step), inputs[:, 2:], step], axis=1)


def recursive_path(model: keras.Model, inputs: tf.Tensor, horizon: int = HORIZON, feature: str = "relative_closes") -> tf.Tensor:
    """Run the model `horizon` times, feeding each predicted close back into the window.

    `inputs` is [batch, window] model input (features.model_input). Returns [batch, horizon]:
    the predicted close of each step as a scaled log return from the origin.
    """
    steps = []
    cumulative = tf.zeros_like(inputs[:, :1])
    for _ in range(horizon):
        step = model(inputs[:, :, None], training=False)
        inputs = next_input(inputs, step, feature)
        cumulative = cumulative + step
        steps.append(cumulative)
    return tf.concat(steps, axis=1)


def compiled_path_function(model: keras.Model, window: int, horizon: int, feature: str = "relative_closes"):
    """All `horizon` steps in one XLA-compiled tf.function taking [batch, window] float32."""
    return tf.function(
        lambda inputs: recursive_path(model, inputs, horizon, feature),
        input_signature=[tf.TensorSpec([None, window], tf.float32)],
        jit_compile=True,
        reduce_retracing=True,
    )


def export_tflite(model: keras.Model, window: int, horizon: int, feature: str = "relative_closes") -> bytes:
    """The whole recursive forecast as one LiteRT graph with frozen weights, batch size 1.

    Frozen constants, because LiteRT cannot initialise Keras 3 resource variables; batch 1,
    because the converter needs static shapes to lower the LSTM loops.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fixed = build_model(window, batch_size=1)
    fixed.set_weights(model.get_weights())
    concrete = tf.function(
        lambda inputs: recursive_path(fixed, inputs, horizon, feature),
        input_signature=[tf.TensorSpec([1, window], tf.float32)],
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
    model = build_model(x_train.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        x_train[:, :, None],
        y_train,
        validation_data=(x_val[:, :, None], y_val),
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


FEATURE_DEFINITIONS = {
    "relative_closes": "log(close / newest close) / scale over the window",
    "log_returns": "log(close / previous close) / scale over the window (oldest value 0)",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to train the fixed architecture: input form, loss and how much history to train on."""

    feature: str = "relative_closes"
    loss: str = "mae"
    train_days: float | None = None  # None: the whole training split

    def describe(self) -> str:
        days = "all" if self.train_days is None else f"last {self.train_days:g} d"
        return f"{self.feature}, {self.loss}, train {days}"


def fit_variant(closes: np.ndarray, variant: Variant, epochs: int, window: int = WINDOW, horizon: int = HORIZON):
    """Train `variant` on the training split and calibrate its intervals on the validation split.

    Returns (model, metadata, forecaster, splits, history); the holdout is untouched.
    """
    from chronoprice.evaluation import conformal_quantiles, fit_shrinkage, interval_scores, walk_forward
    from chronoprice.features import VOLATILITY_WINDOW, log_return_scale, recent_volatility, training_pairs, walk_forward_windows
    from chronoprice.forecast import DEFAULT_LEVEL, KerasEngine, LSTMForecaster

    if len(closes) < 10 * (window + horizon):
        raise ValueError(f"training needs at least {10 * (window + horizon)} candles, got {len(closes)}")
    splits = split_by_time(len(closes), window)
    train = closes[splits["train"]]
    if variant.train_days is not None:
        train = train[-int(variant.train_days * 1440) :]
    scale = log_return_scale(train)
    x_train, y_train = training_pairs(train, scale, window, variant.feature)
    x_val, y_val = training_pairs(closes[splits["validation"]], scale, window, variant.feature)
    model, history = fit_model(x_train, y_train, x_val, y_val, epochs, loss=variant.loss)
    metadata = {
        "version": "unsaved",
        "window": window,
        "horizon": horizon,
        "feature": {"name": variant.feature, "definition": FEATURE_DEFINITIONS[variant.feature], "scale": scale},
        "intervals": {
            "method": "split-conformal on validation errors in units of the last minutes' volatility",
            "volatility_window": VOLATILITY_WINDOW,
            "score_quantile": {f"{DEFAULT_LEVEL:.2f}": [0.0] * horizon},
        },
    }
    engine = KerasEngine(model, window, horizon, variant.feature)
    validation_closes = closes[splits["validation"]]
    validation = walk_forward(LSTMForecaster(engine, metadata), validation_closes, window, horizon)
    metadata["shrinkage"] = fit_shrinkage(np.log(validation["mean"] / validation["origin_close"]), validation["actual"],
                                          validation["origin_close"])
    validation = walk_forward(LSTMForecaster(engine, metadata), validation_closes, window, horizon)
    volatility = recent_volatility(walk_forward_windows(validation_closes, window, horizon)[0])
    scores = interval_scores(np.log(validation["actual"] / validation["mean"]), volatility)
    metadata["intervals"]["score_quantile"] = conformal_quantiles(scores)
    return model, metadata, LSTMForecaster(engine, metadata), splits, history


def train_artifact(
    candles,
    out: ModelArtifact,
    epochs: int,
    data_description: str,
    variant: Variant = Variant(),
    window: int = WINDOW,
    horizon: int = HORIZON,
) -> dict:
    """Train on a candles DataFrame, calibrate intervals, score the holdout, write the artifact.

    Returns the metadata written to `out.metadata_path`.
    """
    from chronoprice.artifact import content_version, write_metadata
    from chronoprice.evaluation import step_metrics, walk_forward
    from chronoprice.forecast import DEFAULT_LEVEL

    closes = candles["close"].to_numpy(dtype="float64")
    model, metadata, forecaster, splits, history = fit_variant(closes, variant, epochs, window, horizon)
    holdout = step_metrics(walk_forward(forecaster, closes[splits["holdout"]], window, horizon), DEFAULT_LEVEL)

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
                "candles": len(closes),
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


def compare_variants(candles, variants: list[Variant], epochs: int, progress=sys.stderr) -> list[dict]:
    """Train every variant the same way and score it walk-forward on validation and holdout.

    Returns one row per variant: its description, its shrinkage weights and, for each split, the
    per-step MAE ratio to the naive baseline and their mean. The shrinkage is fitted on the
    validation split, so validation ratios flatter every variant alike; choose on validation,
    and the holdout, which no choice has seen, confirms.
    """
    from chronoprice.evaluation import step_metrics, walk_forward
    from chronoprice.forecast import DEFAULT_LEVEL

    closes = candles["close"].to_numpy(dtype="float64")
    rows = []
    for number, variant in enumerate(variants, 1):
        print(f"[{number}/{len(variants)}] {variant.describe()}", file=progress, flush=True)
        _, _, forecaster, splits, history = fit_variant(closes, variant, epochs)
        row = {**dataclasses.asdict(variant), "variant": variant.describe(), "epochs_run": len(history["loss"]),
               "shrinkage": forecaster.metadata["shrinkage"]}
        for split in ("validation", "holdout"):
            metrics = step_metrics(walk_forward(forecaster, closes[splits[split]]), DEFAULT_LEVEL)
            row[f"{split}_mae_ratio"] = [round(float(value), 5) for value in metrics["mae_ratio"]]
            row[f"{split}_mean_ratio"] = round(float(metrics["mae_ratio"].mean()), 5)
        rows.append(row)
    return rows
