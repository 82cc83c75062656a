"""Model input and targets, pure: scale-free windows of closes.

The model sees the last WINDOW closes in one of two scale-free forms (FEATURES), divided by
`scale` (the standard deviation of 1-minute log returns on the training split, saved with the
model), and predicts the next close as a log return from the newest close in the same units.
One model therefore serves any symbol and price level.

- relative_closes: log(close / newest close); the newest value is always 0.
- log_returns: log(close / previous close); the oldest value, which has no previous close in
  the window, is always 0.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOW = 60
HORIZON = 10


def log_return_scale(closes: np.ndarray) -> float:
    """Standard deviation of 1-step log returns: the unit the model works in."""
    returns = np.diff(np.log(np.asarray(closes, dtype="float64")))
    return float(returns.std())


FEATURES = ("relative_closes", "log_returns")


def model_input(windows: np.ndarray, scale: float, feature: str = "relative_closes") -> np.ndarray:
    """[B, WINDOW] closes -> [B, WINDOW] float32 model input in the form `feature`, / scale."""
    logs = np.log(np.asarray(windows, dtype="float64"))
    if feature == "relative_closes":
        values = logs - logs[:, -1:]
    elif feature == "log_returns":
        values = np.concatenate([np.zeros((len(logs), 1)), np.diff(logs, axis=1)], axis=1)
    else:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
    return (values / scale).astype("float32")


def training_pairs(closes: np.ndarray, scale: float, window: int = WINDOW, feature: str = "relative_closes") -> tuple[np.ndarray, np.ndarray]:
    """Every (input window, next-step target) pair of a close series, in time order.

    Returns X [N, window] float32 and y [N] float32 with N = len(closes) - window.
    """
    closes = np.asarray(closes, dtype="float64")
    windows = sliding_window_view(closes[:-1], window)
    targets = np.log(closes[window:] / closes[window - 1 : -1]) / scale
    return model_input(windows, scale, feature), targets.astype("float32")


def walk_forward_windows(closes: np.ndarray, window: int = WINDOW, horizon: int = HORIZON) -> tuple[np.ndarray, np.ndarray]:
    """Every origin that has a full window before it and `horizon` actual closes after it.

    Returns windows [N, window] of closes and actuals [N, horizon] of the closes that followed,
    with N = len(closes) - window - horizon + 1; origin i's newest close is closes[i + window - 1].
    """
    closes = np.asarray(closes, dtype="float64")
    count = len(closes) - window - horizon + 1
    if count <= 0:
        return np.empty((0, window)), np.empty((0, horizon))
    windows = sliding_window_view(closes, window)[:count]
    actuals = sliding_window_view(closes[window:], horizon)[:count]
    return windows, actuals


VOLATILITY_WINDOW = 15  # candles of returns that scale the interval, chosen on validation


def recent_volatility(windows: np.ndarray, span: int = VOLATILITY_WINDOW) -> np.ndarray:
    """[B, WINDOW] closes -> [B, 1] standard deviation of the last `span` 1-minute log returns.

    Floored at 1e-6 so a frozen market still gets a (tiny) interval.
    """
    logs = np.log(np.asarray(windows, dtype="float64")[:, -span - 1 :])
    return np.maximum(np.diff(logs, axis=1).std(axis=1, keepdims=True), 1e-6)
