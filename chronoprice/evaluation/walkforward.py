"""Walk-forward evaluation of a forecaster beside the baselines: what `evaluate` prints."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import (
    INTERVAL_LEVELS,
    adaptive_quantiles,
    diebold_mariano,
    interval_scores,
    recent_volatility,
    step_metrics,
    wilson_interval,
)
from chronoprice.model.features import walk_forward_windows, window_closes
from chronoprice.model.forecasters import (
    DriftForecaster,
    MovingAverageForecaster,
    score_quantiles,
    walk_forward,
)


def evaluate_forecaster(forecaster, closes: np.ndarray, scored_from: int, level: float) -> tuple[pd.DataFrame, dict]:
    """Walk forward over every origin of `closes`, scoring those from origin `scored_from` on.

    Earlier origins only warm up the adaptive intervals (their errors matured before the first
    scored origin). Returns one row per step (step_metrics, plus direction-accuracy Wilson
    interval, Diebold-Mariano against naive, coverage at every level for adaptive and static
    intervals, and the drift and moving-average baselines' MAE ratios) and the arrays of the
    scored origins for plotting.
    """
    window, horizon = forecaster.window, forecaster.horizon
    result = walk_forward(forecaster, closes, window, horizon)
    windows = walk_forward_windows(closes, window, horizon)[0]
    volatility = recent_volatility(window_closes(windows))
    log_errors = np.log(result["actual"] / result["mean"])
    scores = interval_scores(log_errors, volatility)
    scored = slice(scored_from, None)
    coverage = {}
    for each in INTERVAL_LEVELS:
        static = score_quantiles(forecaster.metadata, each)
        adaptive = adaptive_quantiles(scores, each, static)
        coverage[f"{each:.2f}"] = ((scores <= adaptive)[scored].mean(axis=0), (scores <= static)[scored].mean(axis=0),
                                   adaptive[scored] * volatility[scored])
    widths = coverage[f"{level:.2f}"][2]
    mean = result["mean"][scored]
    scored_result = {"mean": mean, "actual": result["actual"][scored], "origin_close": result["origin_close"][scored],
                     "naive": result["naive"][scored], "lower": mean * np.exp(-widths), "upper": mean * np.exp(widths)}
    table = step_metrics(scored_result, level)
    actual, origin = scored_result["actual"], scored_result["origin_close"]
    moved = actual != origin
    hits = (np.sign(mean - origin) == np.sign(actual - origin)) & moved
    for baseline in (DriftForecaster(horizon), MovingAverageForecaster(horizon)):
        error = np.abs(baseline.forecast(windows[scored])["mean"] - actual).mean(axis=0)
        table[f"mae_{baseline.name}"] = error
        table[f"mae_ratio_{baseline.name}"] = error / table["mae_naive"]
    intervals = [wilson_interval(hits[:, k].sum(), int(moved[:, k].sum())) for k in range(horizon)]
    naive = scored_result["naive"]
    tests = [diebold_mariano(mean[:, k] - actual[:, k], naive[:, k] - actual[:, k], k + 1) for k in range(horizon)]
    table["direction_ci_low"], table["direction_ci_high"] = zip(*intervals)
    table["dm_statistic"], table["dm_p_value"] = zip(*tests)
    for each, (adaptive, static, _) in coverage.items():
        table[f"coverage_{each}"] = adaptive
        table[f"coverage_static_{each}"] = static
    return table, {**scored_result, "log_errors": log_errors[scored]}
