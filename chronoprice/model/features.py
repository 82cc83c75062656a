"""Model input and targets, pure: scale-free windows of candles.

A window is the last WINDOW candles, either as closes ([B, WINDOW]) or as candle rows
([B, WINDOW, 4] of high, low, close, volume: CANDLE_COLUMNS). The model sees it as channels, all
scale-free, and predicts the next close as a log return from the newest close, divided by a
scale: either `scale` (the standard deviation of 1-step log returns on the training split, saved
with the model), or, for a model normalised by window volatility, each window's own standard
deviation of log returns (floored at a fraction of `scale`, so a flat window is not blown up).
One model therefore serves any symbol and price level, and a normalised one any volatility
regime: a calm year and a wild one look alike to it.

A feature name is a close form, optionally with extra channels joined by "+", e.g.
"relative_closes+range+volume". Close forms (the first channel):
- relative_closes: log(close / newest close); the newest value is always 0.
- log_returns: log(close / previous close); the oldest value, which has no previous close in
  the window, is always 0.
Extra channels (they need candle rows, not closes alone):
- range: log(high / low), the candle's spread, / scale.
- volume: log(1 + volume / the window's mean volume).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOW = 60
HORIZON = 10
CANDLE_COLUMNS = ("high", "low", "close", "volume")
HIGH, LOW, CLOSE, VOLUME = range(len(CANDLE_COLUMNS))


def log_return_scale(closes: np.ndarray) -> float:
    """Standard deviation of 1-step log returns: the unit the model works in."""
    returns = np.diff(np.log(np.asarray(closes, dtype="float64")))
    return float(returns.std())


VOLATILITY_FLOOR = 0.1  # a window's scale is at least this share of the training scale


def window_volatility(windows: np.ndarray, floor: float) -> np.ndarray:
    """[B, W] closes or [B, W, 4] candles -> [B] standard deviation of the window's log returns,
    at least `floor`."""
    returns = np.diff(np.log(window_closes(windows)), axis=1)
    return np.maximum(returns.std(axis=1), floor)


def input_scales(windows: np.ndarray, feature: dict) -> np.ndarray:
    """[B] the scale each window's input and predicted returns are expressed in, from a model's
    metadata `feature` ({"scale", and "normalise": "window_volatility" when normalised})."""
    scale = float(feature["scale"])
    if feature.get("normalise") == "window_volatility":
        return window_volatility(windows, VOLATILITY_FLOOR * scale)
    return np.full(len(windows), scale)


FEATURES = ("relative_closes", "log_returns")
EXTRA_CHANNELS = ("range", "volume")


def parse_feature(name: str) -> tuple[str, tuple[str, ...]]:
    """"relative_closes+range" -> ("relative_closes", ("range",)); ValueError when unknown."""
    form, *extras = name.split("+")
    if form not in FEATURES or any(extra not in EXTRA_CHANNELS for extra in extras) or len(set(extras)) < len(extras):
        raise ValueError(f"unknown feature {name!r}; a close form ({', '.join(FEATURES)}), "
                         f"optionally with +{' +'.join(EXTRA_CHANNELS)}")
    return form, tuple(extras)


def channel_count(feature: str) -> int:
    return 1 + len(parse_feature(feature)[1])


def candle_rows(candles) -> np.ndarray:
    """A candles DataFrame -> [N, 4] float64 rows of CANDLE_COLUMNS, the form windows are cut from."""
    return candles[list(CANDLE_COLUMNS)].to_numpy(dtype="float64")


def gap_free_runs(candles, step_ms: int, minimum: int) -> list[np.ndarray]:
    """A candles DataFrame (ts and CANDLE_COLUMNS) cut at every gap: the rows of each run of at
    least `minimum` consecutive candles, so no window reaches over a gap."""
    breaks = np.flatnonzero(np.diff(candles["ts"].to_numpy()) != step_ms) + 1
    return [run for run in np.split(candle_rows(candles), breaks) if len(run) >= minimum]


FEATURE_DEFINITIONS = {
    "relative_closes": "log(close / newest close) / scale over the window",
    "log_returns": "log(close / previous close) / scale over the window (oldest value 0)",
    "range": "log(high / low) / scale",
    "volume": "log(1 + volume / the window's mean volume)",
}


def describe_feature(feature: str) -> str:
    form, extras = parse_feature(feature)
    return "; ".join(FEATURE_DEFINITIONS[part] for part in (form, *extras))


def window_closes(windows: np.ndarray) -> np.ndarray:
    """The closes of windows: [B, W] closes as they are, [B, W, 4] candle rows -> [B, W]."""
    windows = np.asarray(windows, dtype="float64")
    return windows[..., CLOSE] if windows.ndim == 3 else windows


def model_input(windows: np.ndarray, scale, feature: str = "relative_closes") -> np.ndarray:
    """[B, WINDOW] closes or [B, WINDOW, 4] candles -> [B, WINDOW, channels] float32 model input;
    `scale` is one number or one per window ([B], input_scales)."""
    form, extras = parse_feature(feature)
    windows = np.asarray(windows, dtype="float64")
    scale = np.reshape(np.asarray(scale, dtype="float64"), (-1, 1))
    if extras and windows.ndim != 3:
        raise ValueError(f"feature {feature!r} needs candle rows ({', '.join(CANDLE_COLUMNS)}), not closes alone")
    logs = np.log(window_closes(windows))
    if form == "relative_closes":
        channels = [(logs - logs[:, -1:]) / scale]
    else:
        channels = [np.concatenate([np.zeros((len(logs), 1)), np.diff(logs, axis=1)], axis=1) / scale]
    for extra in extras:
        if extra == "range":
            channels.append(np.log(windows[..., HIGH] / windows[..., LOW]) / scale)
        else:
            volume = windows[..., VOLUME]
            channels.append(np.log1p(volume / np.maximum(volume.mean(axis=1, keepdims=True), 1e-12)))
    return np.stack(channels, axis=-1).astype("float32")


def recursive_windows(inputs: np.ndarray, horizon: int, feature: str) -> np.ndarray:
    """The model inputs of a recursive forecast's `horizon` windows, before anything is predicted:
    [B, W, C] model input -> [horizon, W, B, C] float32 (time-major, as ONNX's LSTM reads it).

    Window k is window 0 moved on by k candles, the last k of them predicted. Their closes stay
    0 here (for relative closes, nothing is re-referenced either): the engine adds them as it
    predicts them. Everything else is known up front, because network.next_input gives a
    predicted candle the mean range and volume of the window before it, and re-expresses
    volumes against each window's mean: this is its arithmetic with a zero step.
    """
    form, extras = parse_feature(feature)
    inputs = np.asarray(inputs, dtype="float32")
    window = inputs.shape[1]
    moving = _moving_windows(window, horizon)
    closes = np.concatenate([inputs[:, :, 0], np.zeros((len(inputs), horizon - 1), dtype="float32")], axis=1)
    channels = [closes[:, moving]]
    if form == "log_returns":
        channels[0][:, :, 0] = 0  # the oldest log return has no previous close in its window
    for number, extra in enumerate(extras, 1):
        values = inputs[:, :, number]
        if extra == "range":
            channels.append(_extended_by_window_means(values, horizon)[:, moving])
        else:
            # exp - 1 and log(1 + x), as in network.next_input (LiteRT has no expm1 or log1p).
            ratios = _extended_by_window_means(np.exp(values) - 1, horizon)[:, moving]
            volumes = np.log(1 + ratios / np.maximum(ratios.mean(axis=2, keepdims=True), np.float32(1e-12)))
            volumes[:, 0] = values  # window 0 as given, not recomputed through exp and log
            channels.append(volumes)
    return np.ascontiguousarray(np.stack(channels, axis=-1).transpose(1, 2, 0, 3))


@functools.lru_cache(maxsize=8)
def _moving_windows(window: int, horizon: int) -> np.ndarray:
    """Indices [horizon, window] of the windows moving one candle at a time along W + horizon - 1."""
    return np.arange(horizon)[:, None] + np.arange(window)


@functools.lru_cache(maxsize=8)
def _window_means_operator(window: int, horizon: int) -> np.ndarray:
    """[W, horizon - 1] float32: the mean each predicted candle gets is linear in the window's
    values, so one matrix product gives all of them (the mean of the window before each)."""
    extended = np.concatenate([np.eye(window), np.zeros((window, horizon - 1))], axis=1)
    for step in range(horizon - 1):
        extended[:, window + step] = extended[:, step : window + step].mean(axis=1)
    return extended[:, window:].astype("float32")


def _extended_by_window_means(values: np.ndarray, horizon: int) -> np.ndarray:
    """[B, W] -> [B, W + horizon - 1], the predicted candles' values appended."""
    return np.concatenate([values, values @ _window_means_operator(values.shape[1], horizon)], axis=1)


def training_pairs(series: np.ndarray, scale: float, window: int = WINDOW, feature: str = "relative_closes",
                   normalise: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every (input window, next-step target) pair of a series of closes [N] or candles [N, 4],
    in time order; with `normalise` ("window_volatility"), each pair in its window's own scale.

    Returns X [M, window, channels] float32 and y [M] float32 with M = N - window.
    """
    series = np.asarray(series, dtype="float64")
    closes = series[:, CLOSE] if series.ndim == 2 else series
    windows = _windows_of(series[:-1], window)
    scales = input_scales(windows, {"scale": scale, "normalise": normalise})
    targets = np.log(closes[window:] / closes[window - 1 : -1]) / scales
    return model_input(windows, scales, feature), targets.astype("float32")


def _windows_of(series: np.ndarray, window: int) -> np.ndarray:
    """Sliding windows over time: [N] -> [N - window + 1, window]; [N, 4] -> [.., window, 4]."""
    windows = sliding_window_view(series, window, axis=0)
    return np.moveaxis(windows, -1, 1) if series.ndim == 2 else windows


def walk_forward_windows(series: np.ndarray, window: int = WINDOW, horizon: int = HORIZON) -> tuple[np.ndarray, np.ndarray]:
    """Every origin that has a full window before it and `horizon` actual closes after it.

    `series` is closes [N] or candles [N, 4]. Returns windows (of closes [M, window], or of
    candles [M, window, 4]) and actuals [M, horizon] of the closes that followed, with
    M = N - window - horizon + 1; origin i's newest candle is series[i + window - 1].
    """
    series = np.asarray(series, dtype="float64")
    closes = series[:, CLOSE] if series.ndim == 2 else series
    count = len(series) - window - horizon + 1
    if count <= 0:
        return np.empty((0, window, *series.shape[1:])), np.empty((0, horizon))
    windows = _windows_of(series, window)[:count]
    actuals = sliding_window_view(closes[window:], horizon)[:count]
    return windows, actuals
