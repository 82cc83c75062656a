"""A model per timeframe, by docs/MODEL.md's rule: which files each trains on, the settings fixed
in advance, and the one judgment on the validation spans (the newest 15 % of each file) that
decides whether it ships. Imports TensorFlow (through series_training.py).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from chronoprice.evaluation.metrics import (
    DEFAULT_LEVEL,
    adaptive_quantiles,
    conformal_quantiles,
    interval_scores,
    recent_volatility,
)
from chronoprice.evaluation.pooling import rule_failures, step_verdicts
from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS, compare_errors, should_promote
from chronoprice.evaluation.walkforward import peer_summary, score_peers
from chronoprice.model.artifact import ModelArtifact, content_version, write_metadata
from chronoprice.model.features import CLOSE, HORIZON, WINDOW, walk_forward_windows, window_closes
from chronoprice.model.forecasters import AutoregressiveForecaster, fit_autoregression, walk_forward
from chronoprice.model.series_training import (
    FOLD_EDGES,
    Candidate,
    CandidateFit,
    TrainingFile,
    fit_candidate,
    share_index,
    span_runs,
)
from chronoprice.model.training import ARCHITECTURE, Variant, write_model_files

log = logging.getLogger(__name__)

# Fixed before any of these models was trained (docs/MODEL.md, "A model per timeframe", rounds 1 and 2).
VARIANT = Variant(feature="log_returns+range+volume", loss="huber", normalise="window_volatility")
EPOCHS = 8
PLAN = {  # timeframe: (the files it is judged on, the files it also trains on), globs in the data folder
    "1m": (("binance_*_1m_*.csv",), ()),
    "5m": (("binance_btcusdt_5m_*.csv",), ("binance_*_1m_*.csv",)),
    "15m": (("binance_btcusdt_5m_*.csv",), ("binance_*_1m_*.csv",)),
    "1h": (("binance_*_1h_*.csv",), ()),
}
PEER_STRIDE = 10  # the peers fit a model at every origin: every 10th origin of each span
RULE = "docs/MODEL.md, A model per timeframe, round 2"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One candidate of the rule: a variant, its epochs and whether PLAN's finer files train too."""

    letter: str
    variant: Variant
    epochs: int
    finer_files: bool = True


SETTINGS = (Setting("A", VARIANT, EPOCHS), Setting("B", dataclasses.replace(VARIANT, normalise=None), EPOCHS),
            Setting("C", VARIANT, EPOCHS, finer_files=False), Setting("D", VARIANT, 2 * EPOCHS))


def file_record(candle_file: TrainingFile) -> dict:
    ts = candle_file.candles["ts"].to_numpy()
    return {"file": candle_file.name, "candles": len(ts), "first_ts": int(ts[0]), "last_ts": int(ts[-1]),
            "validation_from_ts": int(ts[share_index(candle_file, FOLD_EDGES[-1])])}


@dataclasses.dataclass
class Judgment:
    per_file: dict[str, pd.DataFrame]
    pooled: pd.DataFrame
    baselines: dict[str, dict]  # each baseline's mean MAE ratio over the steps, pooled, beside the model's on its origins
    failures: list[str]
    model_errors: np.ndarray  # [origins, horizon] absolute errors over each origin's close, every file


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


def _relative_errors(mean: np.ndarray, result: dict) -> np.ndarray:
    return np.abs(mean - result["actual"]) / result["origin_close"]


def _mean_ratio(errors: np.ndarray, naive_errors: np.ndarray) -> float:
    return float((errors.mean(axis=0) / naive_errors.mean(axis=0)).mean())


def judge(forecaster, judged: list[TrainingFile], training: list[TrainingFile], peers=(), level: float = DEFAULT_LEVEL,
          window: int = WINDOW, horizon: int = HORIZON, peer_stride: int = PEER_STRIDE) -> Judgment:
    """Score a forecaster once on the validation spans of the judged files, beside the last close,
    an AR(5) fitted on every training file's candles before its validation span, and `peers`
    (forecasters.statistical_peers) at every `peer_stride`-th origin."""
    ar = AutoregressiveForecaster(fit_autoregression(
        [run[:, CLOSE] for each in training for run in span_runs(each, 0.0, FOLD_EDGES[-1], 0, window)]), horizon)
    naive_quantiles = naive_band_quantiles(judged, window, horizon, level)
    per_file, results, errors, peer_results = {}, [], {"AR(5)": [], "model": [], "naive": []}, []
    for each in judged:
        runs = span_runs(each, FOLD_EDGES[-1], 1.0, window, window + horizon)
        file_results = [_banded(forecaster, naive_quantiles, run, window, horizon, level) for run in runs]
        per_file[each.name] = step_verdicts(file_results, level)
        results += file_results
        for run, result in zip(runs, file_results):
            windows = walk_forward_windows(run, window, horizon)[0]
            errors["model"].append(_relative_errors(result["mean"], result))
            errors["naive"].append(_relative_errors(result["naive"], result))
            errors["AR(5)"].append(_relative_errors(ar.forecast(windows)["mean"], result))
            if peers:
                peer_results.append(score_peers(peers, windows, result, peer_stride))
    pooled = step_verdicts(results, level)
    every = {name: np.concatenate(parts) for name, parts in errors.items()}
    baselines = {"AR(5)": {"mean_ratio": _mean_ratio(every["AR(5)"], every["naive"]), "origins": len(every["naive"]),
                           "model_mean_ratio": _mean_ratio(every["model"], every["naive"])},
                 **(peer_summary(peer_results) if peer_results else {})}
    return Judgment(per_file, pooled, baselines, rule_failures(pooled, per_file, baselines), every["model"])


def incumbent_verdict(challenger_errors: np.ndarray, incumbent, judged: list[TrainingFile], timeframe: str,
                      window: int = WINDOW, horizon: int = HORIZON) -> dict:
    """The promotion rule's own test (evaluation/verdicts.py) of a new model, whose errors on the
    judged files' validation spans judge() measured, against the one it would replace, on the same
    origins: each origin's mean absolute error over the steps, relative to its close."""
    incumbent_errors = []
    for each in judged:
        for run in span_runs(each, FOLD_EDGES[-1], 1.0, window, window + horizon):
            result = walk_forward(incumbent, run, window, horizon)
            incumbent_errors.append(_relative_errors(result["mean"], result))
    comparison = compare_errors(challenger_errors.mean(axis=1), np.concatenate(incumbent_errors).mean(axis=1), horizon)
    return {"incumbent": incumbent.version, "origins": comparison.origins, "mae_ratio": comparison.mae_ratio,
            "dm_statistic": comparison.statistic, "p_value": comparison.p_value,
            "promoted": should_promote(comparison, REQUIRED_ORIGINS[timeframe])}


def choose_candidate(timeframe: str, judged: list[TrainingFile], extra: list[TrainingFile],
                     settings: tuple[Setting, ...] = SETTINGS) -> tuple[CandidateFit, Setting, list[dict]]:
    """Fit every setting that differs on this timeframe's files and keep the one with the lowest
    fold score (the earlier letter on a tie); the validation spans are not looked at."""
    chosen, tried = None, []
    distinct = [setting for setting in settings if setting.finer_files or extra]
    for number, setting in enumerate(distinct, 1):
        files = judged + (extra if setting.finer_files else [])
        data = " + ".join(filter(None, [f"{len(judged)} {timeframe} file(s)", f"{len(extra)} finer file(s) aggregated"
                                        if setting.finer_files and extra else ""]))
        log.info("%s: candidate %s (%d/%d)", timeframe, setting.letter, number, len(distinct))
        fit = fit_candidate(Candidate(setting.variant, data, tuple(files)), setting.epochs)
        tried.append({"setting": setting.letter, "candidate": fit.candidate.describe(), "epochs_max": setting.epochs,
                      "score": round(fit.score, 6), "folds": fit.folds})
        if chosen is None or fit.score < chosen[0].score:
            chosen = (fit, setting)
    return (*chosen, tried)


def _records(table: pd.DataFrame) -> list[dict]:
    """A verdict table as JSON rows; a step that makes no call has direction null, not NaN."""
    rounded = table.round(6)
    return rounded.astype(object).where(rounded.notna(), None).to_dict("records")


def train_timeframe(timeframe: str, judged: list[TrainingFile], extra: list[TrainingFile], out: ModelArtifact,
                    settings: tuple[Setting, ...] = SETTINGS, incumbent=None, peers=(), rule: str = RULE) -> dict:
    """Train the timeframe's candidates by the rule on the judged and extra files (PLAN's), judge
    the chosen one once beside the AR(5) and `peers`, write its artifact (shipping is the caller's
    decision, from metadata["validation"]["failures"]). Returns the metadata."""
    fit, setting, tried = choose_candidate(timeframe, judged, extra, settings)
    trained_on = list(fit.candidate.files)
    judgment = judge(fit.forecaster, judged, trained_on, peers)
    failures = list(judgment.failures)
    replaces = incumbent_verdict(judgment.model_errors, incumbent, judged, timeframe) if incumbent is not None else None
    if replaces is not None and not replaces["promoted"]:
        failures.append(f"does not beat the shipped {replaces['incumbent']} by the promotion rule (ratio "
                        f"{replaces['mae_ratio']:.4f}, DM p {replaces['p_value']:.3f})")
    write_model_files(fit.model, out, WINDOW, HORIZON, setting.variant.feature)
    records = [file_record(each) for each in trained_on]
    metadata = {**fit.forecaster.metadata, "version": content_version(out.keras_path, out.tflite_path),
                "architecture": ARCHITECTURE, "timeframe": timeframe,
                "training": {"data": fit.candidate.data, "files": records,
                             "rule": rule, "fold_edges": list(FOLD_EDGES),
                             "first_ts": min(record["first_ts"] for record in records),
                             "last_ts": max(record["last_ts"] for record in records),
                             # evaluate scores a file it does not know only after every file's training part
                             "trained_until_ts": max(record["validation_from_ts"] for record in records),
                             "epochs_max": setting.epochs, "loss": setting.variant.loss, "history": fit.history},
                "selection": {"method": "rolling origin over 2 folds per file, the lowest fold score",
                              "setting": setting.letter, "candidate": fit.candidate.describe(),
                              "score": round(fit.score, 6), "folds": fit.folds, "candidates": tried},
                "validation": {"pooled": _records(judgment.pooled),
                               "per_file": {name: _records(table) for name, table in judgment.per_file.items()},
                               "baselines": judgment.baselines, "incumbent": replaces, "failures": failures}}
    write_metadata(out, metadata)
    return metadata
