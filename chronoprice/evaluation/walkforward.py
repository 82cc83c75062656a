"""Walk-forward evaluation of a forecaster beside the baselines: what `evaluate` prints."""

from __future__ import annotations

import time

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


def evaluate_forecaster(forecaster, closes: np.ndarray, scored_from: int, level: float, peers=(),
                        peer_stride: int = 1, autoregression=None) -> tuple[pd.DataFrame, dict]:
    """Walk forward over every origin of `closes`, scoring those from origin `scored_from` on.

    Earlier origins only warm up the adaptive intervals (their errors matured before the first
    scored origin). Returns one row per step (step_metrics, plus direction-accuracy Wilson
    interval, Diebold-Mariano against naive, coverage at every level for adaptive and static
    intervals, and the drift and moving-average baselines' MAE ratios) and the arrays of the
    scored origins for plotting. `peers` (forecasters.statistical_peers) are scored at every
    `peer_stride`-th scored origin, beside the model on those origins (peer_origins_mae_ratio);
    `autoregression` (a fitted AutoregressiveForecaster) at every one, like drift.
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
    baselines = {}
    for baseline in (DriftForecaster(horizon), MovingAverageForecaster(horizon), *filter(None, [autoregression])):
        baselines[baseline.name] = baseline.forecast(windows[scored])["mean"]
        error = np.abs(baselines[baseline.name] - actual).mean(axis=0)
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
    arrays = {**scored_result, "log_errors": log_errors[scored], "baselines": baselines}
    if peers:
        arrays["peers"] = score_peers(peers, windows[scored], scored_result, peer_stride)
        table = pd.concat([table, pd.DataFrame(peer_step_ratios([arrays["peers"]]))], axis=1)
    return table, arrays


def _relative_mae_ratio(scored: list[dict], forecast) -> np.ndarray:
    """Per step, the MAE of `forecast(each)` over the last close's, pooled over `scored` (each with
    actual, naive and origin_close), errors relative to each origin's close."""
    def stacked(get) -> np.ndarray:
        return np.concatenate([get(each) / each["origin_close"] for each in scored])

    actual = stacked(lambda each: each["actual"])
    naive = np.abs(stacked(lambda each: each["naive"]) - actual).mean(axis=0)
    return np.abs(stacked(forecast) - actual).mean(axis=0) / naive


def baseline_step_ratios(scored: list[dict], name: str) -> np.ndarray:
    """A point baseline's (evaluate_forecaster's `baselines`) pooled MAE ratio per step."""
    return _relative_mae_ratio(scored, lambda each: each["baselines"][name])


def score_peers(peers, windows: np.ndarray, scored_result: dict, stride: int) -> dict:
    """Each peer's forecasts at every `stride`-th origin, with the actuals, origin closes and the
    model's and the last close's forecasts of those origins, and each peer's fit time."""
    sample = {key: scored_result[key][::stride] for key in ("actual", "origin_close", "mean", "naive")}
    means, seconds = {}, {}
    failed = {}
    for peer in peers:
        started, failures_before = time.perf_counter(), peer.failures
        means[peer.name] = peer.forecast(windows[::stride])["mean"]
        seconds[peer.name] = time.perf_counter() - started
        failed[peer.name] = peer.failures - failures_before
    return {**sample, "means": means, "fit_seconds": seconds, "failed_fits": failed}


def peer_step_ratios(scored: list[dict]) -> dict[str, np.ndarray]:
    """Per step, each peer's MAE over the last close's on the origins score_peers sampled (pooled
    over `scored`, errors relative to each origin's close), and the model's on the same origins."""
    ratios = {"peer_origins_mae_ratio": _relative_mae_ratio(scored, lambda each: each["mean"])}
    for name in scored[0]["means"]:
        ratios[f"mae_ratio_{name}"] = _relative_mae_ratio(scored, lambda each, name=name: each["means"][name])
    return ratios


def peer_summary(scored: list[dict]) -> dict[str, dict]:
    """Each peer's mean MAE ratio over the steps beside the model's on the same origins, pooled
    over `scored` (score_peers' results), with its fit time: cli_evaluate.format_baselines' input."""
    ratios = peer_step_ratios(scored)
    return {name: {"mean_ratio": float(ratios[f"mae_ratio_{name}"].mean()),
                   "model_mean_ratio": float(ratios["peer_origins_mae_ratio"].mean()),
                   "origins": sum(len(each["actual"]) for each in scored),
                   "fit_seconds": round(sum(each["fit_seconds"][name] for each in scored), 1),
                   "failed_fits": sum(each["failed_fits"][name] for each in scored)} for name in scored[0]["means"]}
