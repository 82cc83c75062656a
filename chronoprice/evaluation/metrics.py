"""Accuracy, pure: per-step errors against the naive baseline, significance (Diebold-Mariano,
Wilson), split-conformal and adaptive interval calibration, and shrinkage. Arrays and
DataFrames in, numbers out; nothing here runs a model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

INTERVAL_LEVELS = (0.8, 0.9, 0.95)  # calibrated with every model
DEFAULT_LEVEL = 0.9  # the band the dashboard and the API serve
ERROR_WINDOW_HOURS = 24  # live scores on the dashboard and the API's default window
UNDERCOVERAGE_POINTS = 0.05  # a band covering this much less than its level is flagged ...
UNDERCOVERAGE_ORIGINS = 200  # ... once this many origins have matured (fewer is too noisy to say)
VOLATILITY_WINDOW = 15  # candles of returns that scale the interval, chosen on validation
ADAPTIVE_WINDOW = 360  # matured scores per step that set the live interval (6 hours), chosen on validation
ADAPTIVE_MIN_ERRORS = 120  # below this many, the validation calibration saved with the model is used


def undercovered(coverage: float | None, origins: int, level: float = DEFAULT_LEVEL) -> bool:
    """Whether a band's live coverage is more than UNDERCOVERAGE_POINTS below its level, on enough
    matured origins to say so: the page warns that the band is too narrow."""
    return coverage is not None and origins >= UNDERCOVERAGE_ORIGINS and coverage < level - UNDERCOVERAGE_POINTS


def recent_volatility(closes: np.ndarray, span: int = VOLATILITY_WINDOW) -> np.ndarray:
    """[B, W] closes -> [B, 1] standard deviation of the last `span` 1-step log returns: the unit
    of the interval scores.

    Floored at 1e-6 so a frozen market still gets a (tiny) interval.
    """
    logs = np.log(np.asarray(closes, dtype="float64")[:, -span - 1 :])
    return np.maximum(np.diff(logs, axis=1).std(axis=1, keepdims=True), 1e-6)


def interval_scores(log_errors: np.ndarray, volatility: np.ndarray) -> np.ndarray:
    """Conformal scores: |log(actual / predicted)| in units of the origin's recent volatility.

    Scaling by volatility lets one quantile serve calm and turbulent markets: the interval
    widens the moment the last minutes turn wild, instead of after errors pile up.
    """
    return np.abs(np.asarray(log_errors, dtype="float64")) / volatility


def conformal_quantiles(scores: np.ndarray, levels=INTERVAL_LEVELS) -> dict[str, list[float]]:
    """Split-conformal quantiles per step: the ceil((n+1)·level)-th smallest score of n.

    `scores` is [N, horizon] (interval_scores) on data the model was not fitted on.
    """
    absolute = np.sort(np.asarray(scores, dtype="float64"), axis=0)
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

    `result` holds [N, horizon] mean, lower, upper, actual and naive (the naive forecaster's
    path) and [N, 1] origin_close. One row per step 1..horizon: mae/rmse/mape of model and naive
    (prices; MAPE in %), the MAE ratio model/naive, the model's direction accuracy, and the
    interval's empirical coverage.
    """
    actual, mean, origin = result["actual"], result["mean"], result["origin_close"]
    model_error, naive_error = mean - actual, result["naive"] - actual
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


def score_sums(matured: pd.DataFrame, by: tuple[str, ...] = ("step",)) -> pd.DataFrame:
    """Per step (or per `by` key) of stored forecasts against their actual closes (columns step,
    predicted, lower, upper, actual and naive, the naive forecaster's prediction): the key, count,
    model_error, naive_error and covered, the sums every live score is made of (how many, the
    summed absolute errors of the forecast and of the naive forecaster, how many actuals inside
    [lower, upper]). store/retention.py folds deleted steps with it and sums the same columns in SQL."""
    columns = [*by, "count", "model_error", "naive_error", "covered"]
    if matured.empty:  # possibly without even its columns
        return pd.DataFrame(columns=columns, dtype="float64")
    frame = matured[list(by)].assign(
        model_error=(matured["predicted"] - matured["actual"]).abs(),
        naive_error=(matured["naive"] - matured["actual"]).abs(),
        covered=((matured["actual"] >= matured["lower"]) & (matured["actual"] <= matured["upper"])).astype(int),
    )
    grouped = frame.groupby(list(by))
    sums = grouped[["model_error", "naive_error", "covered"]].sum().assign(count=grouped.size()).reset_index()
    return sums[columns]


def step_scores(sums: pd.DataFrame) -> pd.DataFrame:
    """score_sums -> one row per step present: mae_model, mae_naive, mae_ratio, coverage (share of
    actuals inside [lower, upper]) and count."""
    count = sums["count"].astype(float)
    table = pd.DataFrame({"step": sums["step"].astype(int), "mae_model": sums["model_error"] / count,
                          "mae_naive": sums["naive_error"] / count, "coverage": sums["covered"] / count,
                          "count": sums["count"].astype(int)})
    return table.assign(mae_ratio=table["mae_model"] / table["mae_naive"].where(table["mae_naive"] > 0))


def total_metrics(sums: pd.DataFrame) -> dict:
    """score_sums -> MAE ratio model/naive and interval coverage over every step; None when empty."""
    count = int(sums["count"].sum())
    if not count:
        return {"mae_ratio": None, "coverage": None, "count": 0}
    naive = float(sums["naive_error"].sum())
    return {"mae_ratio": float(sums["model_error"].sum()) / naive if naive > 0 else None,
            "coverage": float(sums["covered"].sum()) / count, "count": count}


def matured_metrics(matured: pd.DataFrame) -> pd.DataFrame:
    """step_scores of the matured rows (score_sums' columns)."""
    return step_scores(score_sums(matured))


def overall_metrics(matured: pd.DataFrame) -> dict:
    """total_metrics of the matured rows (score_sums' columns)."""
    return total_metrics(score_sums(matured))


SHRINKAGE_GRID = np.round(np.arange(0.0, 1.0001, 0.025), 3)


def fit_shrinkage(log_moves: np.ndarray, actual: np.ndarray, origin_close: np.ndarray) -> list[float]:
    """Per step, the weight on the model's predicted move (0 = the last close, 1 = the model as
    is): the smallest weight whose MAE on these origins is within one standard error of the
    best weight's (the one-standard-error rule).

    The forecast thus leaves the last close only as far as the evidence clearly supports: a
    gain smaller than its own noise is not worth the risk on unseen data. The standard error is
    that of the paired difference in absolute errors, with Newey-West variance, because a step-k
    error overlaps the next k - 1 origins'. `log_moves` is [N, horizon] of log(predicted /
    origin close); returns one weight per step from SHRINKAGE_GRID, which stays within [0, 1]
    so the forecast never goes beyond what the model says.
    """
    weights = []
    for step in range(log_moves.shape[1]):
        errors = np.abs(origin_close * np.exp(np.outer(log_moves[:, step], SHRINKAGE_GRID)) - actual[:, step : step + 1])
        best = errors[:, int(np.argmin(errors.mean(axis=0)))]
        for column, weight in enumerate(SHRINKAGE_GRID):
            gap = errors[:, column] - best
            if gap.mean() <= math.sqrt(long_run_variance(gap, step + 1) / len(gap)):
                weights.append(float(weight))
                break
    return weights


def long_run_variance(series: np.ndarray, horizon: int) -> float:
    """Newey-West variance of a series whose values overlap `horizon` - 1 neighbours (Bartlett
    weights, lag horizon - 1)."""
    centred = series - series.mean()
    count = len(centred)
    variance = centred @ centred / count
    for lag in range(1, horizon):
        variance += 2 * (1 - lag / horizon) * (centred[lag:] @ centred[:-lag]) / count
    return float(variance)


def conformal_level(count: int, level: float) -> float:
    """The quantile level that gives finite-sample coverage `level` from `count` scores."""
    return min(1.0, math.ceil((count + 1) * level) / count)


def adaptive_quantiles(scores: np.ndarray, level: float, fallback: np.ndarray,
                       window: int = ADAPTIVE_WINDOW, min_errors: int = ADAPTIVE_MIN_ERRORS) -> np.ndarray:
    """Per-origin, per-step score quantiles from the scores that had matured by then.

    `scores` is [N, horizon] for consecutive origins. At origin i the step-k score of origin j
    is known once j + k <= i, so the quantile for (i, k) is the conformal quantile over the last
    `window` origins up to i - k; before `min_errors` have matured, `fallback` (the validation
    calibration saved with the model) is used.
    """
    scores = np.asarray(scores, dtype="float64")
    quantiles = np.empty_like(scores)
    for column in range(scores.shape[1]):
        quantiles[:, column] = known_quantiles(scores[:, column], column + 1, level, fallback[column], window, min_errors)
    return quantiles


def known_quantiles(scores: np.ndarray, lag: int, level: float, fallback: float,
                    window: int = ADAPTIVE_WINDOW, min_errors: int = ADAPTIVE_MIN_ERRORS) -> np.ndarray:
    """For each of one step's consecutive scores, the conformal quantile of the `window` scores
    that had matured `lag` places earlier (when its band was set); `fallback` before `min_errors`."""
    rolling = pd.Series(np.asarray(scores, dtype="float64")).rolling(window, min_periods=min_errors)
    known = rolling.quantile(conformal_level(window, level), interpolation="higher").shift(lag).to_numpy()
    return np.where(np.isnan(known), fallback, known)


def band_exits(scores: np.ndarray, step: int, level: float, fallback: float) -> np.ndarray:
    """Which of one step's consecutive matured scores left the `level` band as it was set when
    each forecast was made (the live adaptive band): a band-exit alert's condition."""
    scores = np.asarray(scores, dtype="float64")
    return scores > known_quantiles(scores, step, level, fallback)


def live_quantiles(scores_by_step: dict[int, np.ndarray], level: float, fallback: np.ndarray,
                   window: int = ADAPTIVE_WINDOW, min_errors: int = ADAPTIVE_MIN_ERRORS) -> np.ndarray:
    """The same rule for the next forecast, from the newest matured scores of each step."""
    quantiles = np.asarray(fallback, dtype="float64").copy()
    for step, scores in scores_by_step.items():
        recent = np.asarray(scores, dtype="float64")[-window:]
        if len(recent) >= min_errors:
            quantiles[step - 1] = np.quantile(recent, conformal_level(len(recent), level), method="higher")
    return quantiles


def matured_scores(matured: pd.DataFrame, candles: pd.DataFrame, timeframe_ms: int) -> pd.Series:
    """interval_scores of stored forecasts (read_matured_forecasts rows), each against the
    volatility of the candles that ended at its origin; NaN where those candles have a gap."""
    span = VOLATILITY_WINDOW
    if len(candles) <= span:
        return pd.Series(dtype="float64")
    position = pd.Series(np.arange(len(candles)), index=candles["ts"].to_numpy())
    ends = position.reindex(matured["origin_ts"].to_numpy()).to_numpy()
    valid = ~np.isnan(ends) & (ends >= span)
    ends = np.where(valid, ends, span).astype(int)
    rows = ends[:, None] + np.arange(-span, 1)
    closes, ts = candles["close"].to_numpy(), candles["ts"].to_numpy()
    valid &= (ts[rows[:, -1]] - ts[rows[:, 0]]) == span * timeframe_ms
    volatility = recent_volatility(closes[rows], span)[:, 0]
    scores = np.abs(np.log(matured["actual"].to_numpy() / matured["predicted"].to_numpy())) / volatility
    return pd.Series(np.where(valid, scores, np.nan), index=matured.index).dropna()


def wilson_interval(successes: float, count: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if count == 0:
        return 0.0, 1.0
    share = successes / count
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return centre - half, centre + half


def diebold_mariano(model_errors: np.ndarray, baseline_errors: np.ndarray, horizon: int) -> tuple[float, float]:
    """Diebold-Mariano test on absolute errors, with Newey-West variance (lag horizon - 1) and the
    Harvey-Leybourne-Newbold small-sample correction.

    Returns (statistic, two-sided p-value); a negative statistic means the model's errors are
    smaller than the baseline's.
    """
    differential = np.abs(model_errors) - np.abs(baseline_errors)
    count = len(differential)
    variance = long_run_variance(differential, horizon)
    if variance <= 0:
        return 0.0, 1.0
    statistic = differential.mean() / math.sqrt(variance / count)
    statistic *= math.sqrt((count + 1 - 2 * horizon + horizon * (horizon - 1) / count) / count)
    return float(statistic), float(math.erfc(abs(statistic) / math.sqrt(2)))
