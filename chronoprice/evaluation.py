"""Accuracy, pure: walk-forward forecasts, per-step metrics against the naive baseline, and
split-conformal interval calibration.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from chronoprice.features import HORIZON, WINDOW, walk_forward_windows

INTERVAL_LEVELS = (0.8, 0.9, 0.95)


def walk_forward(forecaster, closes: np.ndarray, window: int = WINDOW, horizon: int = HORIZON) -> dict[str, np.ndarray]:
    """Forecast from every origin of `closes` that has `horizon` actual closes after it.

    Returns arrays [N, horizon]: mean, lower, upper, actual; and origin_close [N, 1].
    """
    windows, actual = walk_forward_windows(closes, window, horizon)
    if len(windows) == 0:
        raise ValueError(f"walk-forward needs at least {window + horizon} closes, got {len(closes)}")
    forecast = forecaster.forecast(windows)
    return {**forecast, "actual": actual, "origin_close": windows[:, -1:]}


def conformal_halfwidths(log_errors: np.ndarray, levels=INTERVAL_LEVELS) -> dict[str, list[float]]:
    """Split-conformal half-widths per step: the ceil((n+1)·level)-th smallest |error| of n.

    `log_errors` is [N, horizon] of log(actual / predicted) on data the model was not fitted on.
    """
    absolute = np.sort(np.abs(np.asarray(log_errors, dtype="float64")), axis=0)
    count = len(absolute)
    table = {}
    for level in levels:
        rank = min(count, math.ceil((count + 1) * level)) - 1
        table[f"{level:.2f}"] = [float(value) for value in absolute[rank]]
    return table


def _direction_accuracy(predicted_move: np.ndarray, actual_move: np.ndarray) -> np.ndarray:
    """Share of origins where the predicted move has the sign of the actual one, per step.

    Origins where the price did not move are left out: no direction to call.
    """
    moved = actual_move != 0
    hits = (np.sign(predicted_move) == np.sign(actual_move)) & moved
    return hits.sum(axis=0) / np.maximum(moved.sum(axis=0), 1)


def step_metrics(result: dict[str, np.ndarray], level: float) -> pd.DataFrame:
    """Per-step metrics of a walk-forward result and of the naive baseline on the same origins.

    One row per step 1..horizon: mae/rmse/mape of model and naive (prices; MAPE in %), the MAE
    ratio model/naive, the model's direction accuracy, and the interval's empirical coverage.
    """
    actual, mean, origin = result["actual"], result["mean"], result["origin_close"]
    model_error, naive_error = mean - actual, origin - actual
    mae_model, mae_naive = np.abs(model_error).mean(axis=0), np.abs(naive_error).mean(axis=0)
    covered = (actual >= result["lower"]) & (actual <= result["upper"])
    return pd.DataFrame(
        {
            "step": np.arange(1, actual.shape[1] + 1),
            "mae_model": mae_model,
            "mae_naive": mae_naive,
            "mae_ratio": mae_model / mae_naive,
            "rmse_model": np.sqrt((model_error**2).mean(axis=0)),
            "rmse_naive": np.sqrt((naive_error**2).mean(axis=0)),
            "mape_model": 100 * np.abs(model_error / actual).mean(axis=0),
            "mape_naive": 100 * np.abs(naive_error / actual).mean(axis=0),
            "direction_accuracy": _direction_accuracy(mean - origin, actual - origin),
            "coverage": covered.mean(axis=0),
            "interval_level": level,
        }
    )


def matured_metrics(matured: pd.DataFrame) -> pd.DataFrame:
    """Live scores of stored forecasts against their actual closes, per step.

    `matured` has columns step, predicted, lower, upper, actual and origin_close (the naive
    baseline's forecast). Returns one row per step present: mae_model, mae_naive, mae_ratio,
    coverage (share of actuals inside [lower, upper]) and count.
    """
    frame = matured.assign(
        model=(matured["predicted"] - matured["actual"]).abs(),
        naive=(matured["origin_close"] - matured["actual"]).abs(),
        covered=(matured["actual"] >= matured["lower"]) & (matured["actual"] <= matured["upper"]),
    )
    grouped = frame.groupby("step")
    table = pd.DataFrame({"mae_model": grouped["model"].mean(), "mae_naive": grouped["naive"].mean(),
                          "coverage": grouped["covered"].mean(), "count": grouped.size()}).reset_index()
    return table.assign(mae_ratio=table["mae_model"] / table["mae_naive"].where(table["mae_naive"] > 0))


def overall_metrics(matured: pd.DataFrame) -> dict:
    """MAE ratio model/naive and interval coverage over all matured steps; None when empty."""
    if matured.empty:
        return {"mae_ratio": None, "coverage": None, "count": 0}
    naive = (matured["origin_close"] - matured["actual"]).abs().mean()
    model = (matured["predicted"] - matured["actual"]).abs().mean()
    covered = (matured["actual"] >= matured["lower"]) & (matured["actual"] <= matured["upper"])
    return {"mae_ratio": float(model / naive) if naive > 0 else None, "coverage": float(covered.mean()), "count": len(matured)}
