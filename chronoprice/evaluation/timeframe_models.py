"""A model per timeframe, by docs/MODEL.md's rule: which files each trains on, the settings fixed
in advance, and the one judgment on the validation spans (the newest 15 % of each file) that
decides whether it ships. Imports TensorFlow (through series_training.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import DEFAULT_LEVEL, adaptive_quantiles, conformal_quantiles, interval_scores, recent_volatility
from chronoprice.evaluation.pooling import rule_failures, step_verdicts
from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS, compare_errors, should_promote
from chronoprice.model.artifact import ModelArtifact, content_version, write_metadata
from chronoprice.model.features import CLOSE, HORIZON, WINDOW, walk_forward_windows, window_closes
from chronoprice.model.forecasters import AutoregressiveForecaster, fit_autoregression, walk_forward
from chronoprice.model.series_training import FOLD_EDGES, Candidate, TrainingFile, fit_candidate, share_index, span_runs
from chronoprice.model.training import ARCHITECTURE, Variant, write_model_files

# Fixed before any of these models was trained (docs/MODEL.md, "A model per timeframe").
VARIANT = Variant(feature="log_returns+range+volume", loss="huber", normalise="window_volatility")
EPOCHS = 8
PLAN = {  # timeframe: (the files it is judged on, the files it also trains on), globs in the data folder
    "1m": (("binance_*_1m_*.csv",), ()),
    "5m": (("binance_btcusdt_5m_*.csv",), ("binance_*_1m_*.csv",)),
    "15m": (("binance_btcusdt_5m_*.csv",), ("binance_*_1m_*.csv",)),
    "1h": (("binance_*_1h_*.csv",), ()),
}


def file_record(candle_file: TrainingFile) -> dict:
    ts = candle_file.candles["ts"].to_numpy()
    return {"file": candle_file.name, "candles": len(ts), "first_ts": int(ts[0]), "last_ts": int(ts[-1]),
            "validation_from_ts": int(ts[share_index(candle_file, FOLD_EDGES[-1])])}


@dataclasses.dataclass
class Judgment:
    per_file: dict[str, pd.DataFrame]
    pooled: pd.DataFrame
    baselines: dict[str, float]  # mean MAE ratio over the steps, pooled, of each baseline
    failures: list[str]


def _banded(forecaster, naive_quantiles: np.ndarray, run: np.ndarray, window: int, horizon: int, level: float) -> dict:
    """Walk-forward of a run with the bands as served: the model's adaptive band, and the last
    close's, calibrated the same way on its own errors."""
    result = walk_forward(forecaster, run, window, horizon)
    windows = walk_forward_windows(run, window, horizon)[0]
    volatility = recent_volatility(window_closes(windows))
    for prefix, mean, fallback in (("", result["mean"], forecaster.calibrated_quantiles),
                                   ("naive_", result["naive"], naive_quantiles)):
        scores = interval_scores(np.log(result["actual"] / mean), volatility)
        widths = adaptive_quantiles(scores, level, fallback) * volatility
        result[f"{prefix}lower"], result[f"{prefix}upper"] = mean * np.exp(-widths), mean * np.exp(widths)
    return result


def naive_band_quantiles(files: list[TrainingFile], window: int, horizon: int, level: float) -> np.ndarray:
    """The last close's score quantiles, calibrated where the model's are (fold 2's validation)."""
    scores = []
    for each in files:
        for run in span_runs(each, FOLD_EDGES[1], FOLD_EDGES[2], window, window + horizon):
            windows, actual = walk_forward_windows(run, window, horizon)
            closes = window_closes(windows)
            scores.append(interval_scores(np.log(actual / closes[:, -1:]), recent_volatility(closes)))
    return np.asarray(conformal_quantiles(np.concatenate(scores), (level,))[f"{level:.2f}"])


def judge(forecaster, judged: list[TrainingFile], training: list[TrainingFile], level: float = DEFAULT_LEVEL,
          window: int = WINDOW, horizon: int = HORIZON) -> Judgment:
    """Score a forecaster once on the validation spans of the judged files, beside the last close
    and an AR(5) fitted on every training file's candles before its validation span."""
    ar = AutoregressiveForecaster(fit_autoregression(
        [run[:, CLOSE] for each in training for run in span_runs(each, 0.0, FOLD_EDGES[-1], 0, window)]), horizon)
    naive_quantiles = naive_band_quantiles(judged, window, horizon, level)
    per_file, results, ar_errors = {}, [], []
    for each in judged:
        runs = span_runs(each, FOLD_EDGES[-1], 1.0, window, window + horizon)
        file_results = [_banded(forecaster, naive_quantiles, run, window, horizon, level) for run in runs]
        per_file[each.name] = step_verdicts(file_results, level)
        results += file_results
        for run, result in zip(runs, file_results):
            windows = walk_forward_windows(run, window, horizon)[0]
            ar_errors.append(np.abs(ar.forecast(windows)["mean"] - result["actual"]) / result["origin_close"])
    pooled = step_verdicts(results, level)
    naive_errors = np.concatenate([np.abs(result["naive"] - result["actual"]) / result["origin_close"] for result in results])
    baselines = {"AR(5)": float((np.concatenate(ar_errors).mean(axis=0) / naive_errors.mean(axis=0)).mean())}
    return Judgment(per_file, pooled, baselines, rule_failures(pooled, per_file, baselines))


def incumbent_verdict(challenger, incumbent, judged: list[TrainingFile], timeframe: str, window: int = WINDOW,
                      horizon: int = HORIZON) -> dict:
    """The promotion rule's own test (evaluation/verdicts.py) of a new model against the one it
    would replace, on the judged files' validation spans: each origin's mean absolute error over
    the steps, relative to its close, pooled over the files."""
    errors = {name: [] for name in ("challenger", "incumbent")}
    for each in judged:
        for run in span_runs(each, FOLD_EDGES[-1], 1.0, window, window + horizon):
            for name, forecaster in (("challenger", challenger), ("incumbent", incumbent)):
                result = walk_forward(forecaster, run, window, horizon)
                errors[name].append((np.abs(result["mean"] - result["actual"]) / result["origin_close"]).mean(axis=1))
    comparison = compare_errors(np.concatenate(errors["challenger"]), np.concatenate(errors["incumbent"]), horizon)
    return {"incumbent": incumbent.version, "origins": comparison.origins, "mae_ratio": comparison.mae_ratio,
            "dm_statistic": comparison.statistic, "p_value": comparison.p_value,
            "promoted": should_promote(comparison, REQUIRED_ORIGINS[timeframe])}


def train_timeframe(timeframe: str, judged: list[TrainingFile], extra: list[TrainingFile], out: ModelArtifact,
                    epochs: int = EPOCHS, variant: Variant = VARIANT, incumbent=None) -> dict:
    """Train the timeframe's model by the rule on the judged and extra files (PLAN's), judge it
    once, write the artifact (shipping is the caller's decision, from
    metadata["validation"]["failures"]). Returns the metadata."""
    data = " + ".join(filter(None, [f"{len(judged)} {timeframe} file(s)",
                                    f"{len(extra)} finer file(s) aggregated" if extra else ""]))
    fit = fit_candidate(Candidate(variant, data, tuple(judged + extra)), epochs)
    judgment = judge(fit.forecaster, judged, judged + extra)
    failures = list(judgment.failures)
    replaces = incumbent_verdict(fit.forecaster, incumbent, judged, timeframe) if incumbent is not None else None
    if replaces is not None and not replaces["promoted"]:
        failures.append(f"does not beat the shipped {replaces['incumbent']} by the promotion rule (ratio "
                        f"{replaces['mae_ratio']:.4f}, DM p {replaces['p_value']:.3f})")
    write_model_files(fit.model, out, WINDOW, HORIZON, variant.feature)
    records = [file_record(each) for each in judged + extra]
    metadata = {**fit.forecaster.metadata, "version": content_version(out.keras_path, out.tflite_path),
                "architecture": ARCHITECTURE, "timeframe": timeframe,
                "training": {"data": data, "files": records,
                             "rule": "docs/MODEL.md, A model per timeframe", "fold_edges": list(FOLD_EDGES),
                             "first_ts": min(record["first_ts"] for record in records),
                             "last_ts": max(record["last_ts"] for record in records),
                             # evaluate scores a file it does not know only after every file's training part
                             "trained_until_ts": max(record["validation_from_ts"] for record in records),
                             "epochs_max": epochs, "loss": variant.loss, "history": fit.history},
                "selection": {"method": "rolling origin over 2 folds per file", "candidate": fit.candidate.describe(),
                              "score": round(fit.score, 6), "folds": fit.folds},
                "validation": {"pooled": judgment.pooled.round(6).to_dict("records"),
                               "per_file": {name: table.round(6).to_dict("records") for name, table in judgment.per_file.items()},
                               "baselines": judgment.baselines, "incumbent": replaces, "failures": failures}}
    write_metadata(out, metadata)
    return metadata
