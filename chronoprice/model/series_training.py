"""One model trained on many candle files, by docs/MODEL.md's rule "A model per timeframe".

Each file is its own series, cut at its gaps into gap-free runs: no window crosses from one file
into the next, or over a gap. Every file is split by time at the same shares (FOLD_EDGES): two
rolling folds choose the candidate and fit its shrinkage, and the newest span of each file is
the validation span, judged once (evaluation/timeframe_models.py), never trained or tuned on.
Imports TensorFlow (through network.py).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import (
    DEFAULT_LEVEL,
    conformal_quantiles,
    fit_shrinkage,
    interval_scores,
    recent_volatility,
    step_metrics,
)
from chronoprice.model.engines import validation_engine
from chronoprice.model.features import (
    CLOSE,
    HORIZON,
    WINDOW,
    gap_free_runs,
    training_pairs,
    walk_forward_windows,
    window_closes,
)
from chronoprice.model.forecasters import LSTMForecaster, walk_forward
from chronoprice.model.network import fit_model
from chronoprice.model.training import Variant, comparison_row, uncalibrated_metadata

log = logging.getLogger(__name__)

# Shares of each file's candles: fold 1 trains before 0.55 and validates to 0.70, fold 2 trains
# before 0.70 and validates to 0.85 (its model is the one kept), and 0.85 on is the validation span.
FOLD_EDGES = (0.55, 0.70, 0.85)
MAX_PAIRS = 120_000  # training pairs per fold, drawn at random from every file's training part
EARLY_STOPPING_PAIRS = 30_000
PATIENCE = 2
SEED = 7


@dataclasses.dataclass(frozen=True)
class TrainingFile:
    """One candle file as training sees it: its name, candles (ts and OHLCV) and spacing."""

    name: str
    candles: pd.DataFrame
    step_ms: int


def share_index(candle_file: TrainingFile, share: float) -> int:
    return int(len(candle_file.candles) * share)


def span_runs(candle_file: TrainingFile, start: float, stop: float, lookback: int, minimum: int) -> list[np.ndarray]:
    """The gap-free runs of a file's candles between two shares, starting `lookback` candles
    early so the first target is the span's first candle (inputs may look back, targets never)."""
    begin, end = share_index(candle_file, start), share_index(candle_file, stop)
    return gap_free_runs(candle_file.candles.iloc[max(0, begin - lookback) : end], candle_file.step_ms, minimum)


def pooled_log_return_scale(runs: list[np.ndarray]) -> float:
    """Standard deviation of 1-step log returns within every run (none across a gap or a file)."""
    return float(np.concatenate([np.diff(np.log(run[:, CLOSE])) for run in runs]).std())


def sampled_pairs(runs: list[np.ndarray], scale: float, variant: Variant, window: int, limit: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every run's (window, next step) pairs, at most `limit` of them drawn without replacement."""
    pairs = [training_pairs(run, scale, window, variant.feature, variant.normalise) for run in runs if len(run) > window]
    x, y = np.concatenate([pair[0] for pair in pairs]), np.concatenate([pair[1] for pair in pairs])
    if len(x) > limit:
        chosen = np.sort(rng.choice(len(x), limit, replace=False))
        x, y = x[chosen], y[chosen]
    return x, y


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A variant of the fixed architecture and the files it trains on."""

    variant: Variant
    data: str  # e.g. "5m file" or "5m file + 1m files aggregated"
    files: tuple[TrainingFile, ...]

    def describe(self) -> str:
        return f"{self.variant.describe()}; {self.data}"


@dataclasses.dataclass
class CandidateFit:
    candidate: Candidate
    model: object  # the keras.Model of fold 2
    forecaster: LSTMForecaster
    folds: list[dict]
    score: float  # mean MAE ratio of the model as is over folds, files and steps: what the choice is made on
    history: dict


def _fold_validation(forecaster, files: tuple[TrainingFile, ...], start: float, stop: float, window: int,
                     horizon: int) -> dict[str, list[tuple[np.ndarray, dict]]]:
    """(run, walk-forward result) of every gap-free run of each file's span, by file name."""
    return {each.name: [(run, walk_forward(forecaster, run, window, horizon))
                        for run in span_runs(each, start, stop, window, window + horizon)] for each in files}


def fit_candidate(candidate: Candidate, epochs: int, window: int = WINDOW, horizon: int = HORIZON,
                  max_pairs: int = MAX_PAIRS) -> CandidateFit:
    """Train the candidate on both folds; keep fold 2's model, with shrinkage fitted on both folds'
    validation forecasts and intervals calibrated on fold 2's."""
    rng = np.random.default_rng(SEED)
    variant, folds, outcomes = candidate.variant, [], []
    edges = (0.0, *FOLD_EDGES)
    for number in (1, 2):
        train_stop, validation_stop = edges[number], edges[number + 1]
        train_runs = [run for each in candidate.files for run in span_runs(each, 0.0, train_stop, 0, window + 1)]
        validation_runs = [run for each in candidate.files
                           for run in span_runs(each, train_stop, validation_stop, window, window + 1)]
        scale = pooled_log_return_scale(train_runs)
        x_train, y_train = sampled_pairs(train_runs, scale, variant, window, max_pairs, rng)
        x_val, y_val = sampled_pairs(validation_runs, scale, variant, window, EARLY_STOPPING_PAIRS, rng)
        log.info("%s, fold %d/2: %d training pairs, validating on the next %.0f %% of each file", candidate.describe(),
                 number, len(x_train), 100 * (validation_stop - train_stop))
        model, history = fit_model(x_train, y_train, x_val, y_val, epochs, loss=variant.loss, patience=PATIENCE)
        forecaster = LSTMForecaster(validation_engine(model, window, horizon, variant.feature),
                                    uncalibrated_metadata(variant, scale, window, horizon))
        results = _fold_validation(forecaster, candidate.files, train_stop, validation_stop, window, horizon)
        ratios = {name: step_metrics(_joined([result for _, result in runs]), DEFAULT_LEVEL)["mae_ratio"].round(6).tolist()
                  for name, runs in results.items() if runs}
        folds.append({"train_before_share": train_stop, "validation_share": [train_stop, validation_stop],
                      "training_pairs": len(x_train), "epochs_run": len(history["loss"]), "mae_ratio": ratios})
        outcomes.append(results)
    score = float(np.mean([np.mean(ratios) for fold in folds for ratios in fold["mae_ratio"].values()]))
    return CandidateFit(candidate, model, _calibrated(forecaster, outcomes, window, horizon), folds, score, history)


def compare_candidates(files: tuple[TrainingFile, ...], variants: list[Variant], epochs: int, data: str) -> list[dict]:
    """compare on several files: every variant trained on both folds, scored on the folds only (the
    validation spans are left for the one judgment of the model chosen). Rows as compare_variants'
    without the holdout."""
    rows = []
    for number, variant in enumerate(variants, 1):
        log.info("[%d/%d] %s", number, len(variants), variant.describe())
        fit = fit_candidate(Candidate(variant, data, files), epochs)
        fold_means = [float(np.mean([np.mean(ratios) for ratios in fold["mae_ratio"].values()])) for fold in fit.folds]
        rows.append(comparison_row(variant, fold_means, [fold["epochs_run"] for fold in fit.folds],
                                   fit.forecaster.metadata["shrinkage"]))
    return rows


def _joined(results: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([result[key] for result in results]) for key in results[0]}


def _calibrated(forecaster: LSTMForecaster, outcomes: list[dict[str, list[tuple[np.ndarray, dict]]]],
                window: int, horizon: int) -> LSTMForecaster:
    """Shrinkage from both folds' validation forecasts (relative to each origin's close, so every
    file weighs by its difficulty, not its price); intervals from the last fold's, shrunk."""
    every = _joined([result for outcome in outcomes for runs in outcome.values() for _, result in runs])
    origin = every["origin_close"]
    metadata = dict(forecaster.metadata)
    metadata["shrinkage"] = fit_shrinkage(np.log(every["mean"] / origin), every["actual"] / origin, np.ones_like(origin))
    shrunk = LSTMForecaster(forecaster.engine, metadata)
    scores = []
    for runs in outcomes[-1].values():
        for run, result in runs:
            windows = walk_forward_windows(run, window, horizon)[0]
            volatility = recent_volatility(window_closes(windows))
            scores.append(interval_scores(np.log(result["actual"] / shrunk.forecast(windows)["mean"]), volatility))
    metadata["intervals"] = {**metadata["intervals"], "score_quantile": conformal_quantiles(np.concatenate(scores))}
    return LSTMForecaster(forecaster.engine, metadata)
