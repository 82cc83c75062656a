"""Verdicts over several series at once, pure: per-step error ratios, Diebold-Mariano tests and
interval scores of a forecaster against the last close, for one file or pooled over many.

Errors are divided by each origin's close, so a BTC file and an ETH file weigh by how hard they
are to forecast, not by their prices; pooling concatenates the origins of every file (files
are independent series, so the Newey-West variance across a file boundary adds nothing real).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import diebold_mariano

SIGNIFICANCE = 0.05
COVERAGE_RANGE = (0.88, 0.92)  # a 90 % band's coverage on every file, or it is not calibrated


def winkler_scores(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, level: float) -> np.ndarray:
    """Interval score of central `level` bands: the width, plus 2 / (1 - level) times how far the
    actual fell outside. Lower is better; it rewards a narrow band only while it still covers."""
    penalty = 2.0 / (1.0 - level)
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return (upper - lower) + penalty * (below + above)


def step_verdicts(results: list[dict[str, np.ndarray]], level: float) -> pd.DataFrame:
    """One row per step over the origins of every result (walk_forward's dict, plus the last
    close's band as naive_lower / naive_upper): MAE ratio to the last close with its DM test,
    direction accuracy (None where the forecast called no direction), coverage, and the
    interval-score ratio to the last close's band with its DM test."""
    def stacked(key: str) -> np.ndarray:
        return np.concatenate([result[key] / result["origin_close"] for result in results])

    actual, mean, naive, origin = stacked("actual"), stacked("mean"), stacked("naive"), stacked("origin_close")
    model_band = winkler_scores(stacked("lower"), stacked("upper"), actual, level)
    naive_band = winkler_scores(stacked("naive_lower"), stacked("naive_upper"), actual, level)
    covered = (actual >= stacked("lower")) & (actual <= stacked("upper"))
    called = (actual != origin) & (mean != origin)  # a step shrunk to the last close calls no direction
    hits = (np.sign(mean - origin) == np.sign(actual - origin)) & called
    rows = []
    for step in range(actual.shape[1]):
        model_error, naive_error = mean[:, step] - actual[:, step], naive[:, step] - actual[:, step]
        statistic, p_value = diebold_mariano(model_error, naive_error, step + 1)
        band_statistic, band_p = diebold_mariano(model_band[:, step], naive_band[:, step], step + 1)
        rows.append({
            "step": step + 1, "origins": len(actual),
            "mae_ratio": float(np.abs(model_error).mean() / np.abs(naive_error).mean()),
            "dm_statistic": statistic, "dm_p_value": p_value,
            "direction_accuracy": float(hits[:, step].sum() / called[:, step].sum()) if called[:, step].any() else None,
            "coverage": float(covered[:, step].mean()),
            "interval_score_ratio": float(model_band[:, step].mean() / naive_band[:, step].mean()),
            "interval_dm_statistic": band_statistic, "interval_dm_p_value": band_p,
        })
    return pd.DataFrame(rows)


def rule_failures(pooled: pd.DataFrame, per_file: dict[str, pd.DataFrame], baselines: dict[str, dict]) -> list[str]:
    """Why a model may not ship by docs/MODEL.md's rule (empty when it may): pooled over the
    validation spans never significantly worse than the last close at any step, significantly
    better at step 1, coverage within COVERAGE_RANGE on every file, and a mean ratio over the
    steps below every baseline's (`baselines`: name to its "mean_ratio" and the model's on the same
    origins, "model_mean_ratio")."""
    failures = []
    worse = pooled[(pooled["dm_statistic"] > 0) & (pooled["dm_p_value"] < SIGNIFICANCE)]["step"].tolist()
    if worse:
        failures.append(f"significantly worse than the last close at steps {', '.join(map(str, worse))}")
    first = pooled.iloc[0]
    if not (first["dm_statistic"] < 0 and first["dm_p_value"] < SIGNIFICANCE):
        failures.append(f"not significantly better than the last close at step 1 (ratio {first['mae_ratio']:.4f}, "
                        f"DM p {first['dm_p_value']:.3f})")
    low, high = COVERAGE_RANGE
    for name, table in per_file.items():
        coverage = float(table["coverage"].mean())
        if not low <= coverage <= high:
            failures.append(f"band coverage {coverage:.1%} on {name}, outside {low:.0%}-{high:.0%}")
    for name, baseline in baselines.items():
        if not baseline["model_mean_ratio"] < baseline["mean_ratio"]:
            failures.append(f"mean ratio {baseline['model_mean_ratio']:.4f} not below {name}'s {baseline['mean_ratio']:.4f}")
    return failures
