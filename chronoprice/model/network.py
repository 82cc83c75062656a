"""The Keras LSTM: build, recursion, export to LiteRT, fit, load. Imports TensorFlow; the LiteRT
serving path never imports this module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)
from tqdm import tqdm

from chronoprice.model.artifact import ModelArtifact, ModelUnavailable
from chronoprice.model.features import HORIZON, WINDOW, channel_count, parse_feature

log = logging.getLogger(__name__)

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
        # A bar redraws its line: on a terminal only, never among log lines written to a file or pipe.
        self._bar = tqdm(total=self._epochs * self._batches, desc="training", unit="batch", file=sys.stderr,
                         mininterval=0.2, disable=not sys.stderr.isatty())

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss, validation_loss = logs.get("loss", 0), logs.get("val_loss", 0)
        self._bar.set_postfix(epoch=f"{epoch + 1}/{self._epochs}", loss=f"{loss:.4f}",
                              val_loss=f"{validation_loss:.4f}")
        if self._bar.disable:
            log.info("epoch %d/%d: loss %.4f, validation loss %.4f", epoch + 1, self._epochs, loss, validation_loss)

    def on_train_end(self, logs=None):
        self._bar.close()
        epochs_run = len(self.model.history.epoch) if self.model.history else self._epochs
        if epochs_run < self._epochs:
            log.info("stopped early after %d epochs: validation loss stopped improving", epochs_run)


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
