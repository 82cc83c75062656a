"""`python -m chronoprice evaluate`: walk-forward over one candle file or several, each its own
series, with a pooled verdict across them (one Diebold-Mariano test per step over every origin,
as the promotion check pools markets), and the tables the model commands print."""

from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path

import pandas as pd

from chronoprice.evaluation.backtest import backtest, check_settings, format_backtest
from chronoprice.evaluation.metrics import ADAPTIVE_WINDOW, DEFAULT_LEVEL, INTERVAL_LEVELS
from chronoprice.evaluation.pooling import step_verdicts
from chronoprice.evaluation.report import write_report
from chronoprice.evaluation.walkforward import (
    baseline_step_ratios,
    evaluate_forecaster,
    peer_step_ratios,
    peer_summary,
)
from chronoprice.market.candle_files import CandleFile, read_candle_file
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.engines import ONE_BATCH_RUN_ORIGINS
from chronoprice.model.features import CLOSE, WINDOW, candle_rows, gap_free_runs
from chronoprice.model.forecasters import (
    AUTOREGRESSION_ORDER,
    AutoregressiveForecaster,
    NaiveBandForecaster,
    fit_autoregression,
    load_forecaster,
    statistical_peers,
)
from chronoprice.model.registry import model_timeframe

log = logging.getLogger(__name__)


def read_reported_file(path: Path, timeframe: str | None = None) -> CandleFile:
    """A candle file (read_candle_file), its skipped rows and gaps logged: gaps are never filled,
    so windows across one are forecast as if the candles were consecutive."""
    loaded = read_candle_file(path, timeframe)
    for line, reason in loaded.bad_rows[:10]:
        log.warning("%s:%d: skipped: %s", path, line, reason)
    log.info("%s (from %s candles)", loaded.describe(), loaded.file_timeframe)
    return loaded


def expand_paths(patterns: list[Path]) -> list[Path]:
    """--csv values in order, a glob pattern standing for the files it matches (sorted); a
    pattern that matches nothing is an error naming it."""
    paths = []
    for pattern in patterns:
        if glob.has_magic(str(pattern)):
            matched = sorted(Path(each) for each in glob.glob(str(pattern)))
            if not matched:
                raise ValueError(f"--csv {pattern} matches no file")
            paths += matched
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def first_scored_close(forecaster, path: Path, candles, include_training_data: bool) -> int:
    """Index of the first origin scored: after every candle the model saw (a file it trained on,
    by train-models, from that file's validation span on)."""
    first = forecaster.window - 1
    if not include_training_data:
        training = forecaster.metadata.get("training", {})
        own = {record["file"]: record["validation_from_ts"] for record in training.get("files", [])}
        trained_until = own.get(path.name, training.get("trained_until_ts"))
        # A file that ends before the training data begins holds nothing the model saw.
        if trained_until is not None and int(candles["ts"].iloc[-1]) >= training.get("first_ts", 0):
            first = max(first, int((candles["ts"] < trained_until).sum()))
    if first + forecaster.horizon >= len(candles):
        raise ValueError(f"{path} has no origin after the candles the model was trained and calibrated on "
                         "(up to its metadata's trained_until_ts); pass newer candles, or --include-training-data")
    return first


AUTOREGRESSION_MIN_CANDLES = 1_000


def fitted_autoregression(files: list[tuple[CandleFile, int]], horizon: int):
    """The AR(5) baseline, least squares on every file's candles up to its first scored origin (what
    the model may have trained on, never a scored target), cut at gaps; None, with the reason
    logged, where they are too few."""
    runs = [run[:, CLOSE] for loaded, first in files
            for run in gap_free_runs(loaded.candles.iloc[:first], timeframe_ms(loaded.timeframe),
                                     AUTOREGRESSION_ORDER + 2)]
    count = sum(len(run) for run in runs)
    if count < AUTOREGRESSION_MIN_CANDLES:
        log.info("AR(5) not scored: %d candles before the scored origins, fewer than the %d it is fitted on",
                 count, AUTOREGRESSION_MIN_CANDLES)
        return None
    return AutoregressiveForecaster(fit_autoregression(runs), horizon)


def evaluate_file(forecaster, loaded: CandleFile, first: int, level: float, pooled: bool, peers=(),
                  peer_stride: int = 1, autoregression=None) -> dict:
    """One file walked forward from its origin `first` (first_scored_close): its step table, the
    scored arrays (for a `pooled` verdict with the last close's band, calibrated the same way on
    its own errors, as naive_lower / naive_upper), and what was skipped."""
    candles = loaded.candles
    # Origins before the scored ones only warm up the adaptive intervals.
    start = max(0, first - forecaster.window + 1 - ADAPTIVE_WINDOW - forecaster.horizon)
    scored_from = first - forecaster.window + 1 - start
    rows = candle_rows(candles)[start:]
    table, arrays = evaluate_forecaster(forecaster, rows, scored_from, level, peers, peer_stride, autoregression)
    arrays["origin_ts"] = candles["ts"].to_numpy()[first : first + len(arrays["actual"])]
    if pooled:
        naive_band = evaluate_forecaster(NaiveBandForecaster(forecaster.horizon, forecaster.window, level), rows, scored_from, level)[1]
        arrays.update(naive_lower=naive_band["lower"], naive_upper=naive_band["upper"])
    return {"file": loaded.name, "timeframe": loaded.timeframe, "table": table, "arrays": arrays,
            "skipped": first - forecaster.window + 1}


def run_evaluate(args: argparse.Namespace) -> int:
    paths = expand_paths(args.csv)
    if args.stride != 1 and not args.peers:
        raise ValueError("--stride sets how often the peers forecast: pass --peers too")
    if len(paths) > 1 and (args.report or args.backtest):
        raise ValueError("--report and --backtest take one --csv file")
    if str(args.model) == "naive":
        forecaster = NaiveBandForecaster(level=args.level, window=WINDOW)
    else:
        # The process ends with this one batch: larger runs are faster, and their memory goes with it.
        forecaster = load_forecaster(args.model, args.engine, args.level, ONE_BATCH_RUN_ORIGINS)
    step = args.backtest_step or forecaster.horizon
    if args.backtest:
        check_settings(step, forecaster.horizon, args.fee, args.spread)
    peers = statistical_peers(forecaster.horizon) if args.peers else ()
    scored = []
    for path in paths:
        loaded = read_reported_file(path, args.timeframe)
        scored.append((loaded, first_scored_close(forecaster, path, loaded.candles, args.include_training_data)))
    autoregression = fitted_autoregression(scored, forecaster.horizon)
    files = [evaluate_file(forecaster, loaded, first, args.level, len(paths) > 1, peers, args.stride, autoregression)
             for loaded, first in scored]
    timeframes = {each["timeframe"] for each in files}
    if len(timeframes) > 1:
        raise ValueError(f"the files hold different timeframes ({', '.join(sorted(timeframes))}); pass --timeframe")
    args.timeframe = timeframes.pop()
    trained_timeframe = model_timeframe(forecaster.metadata) if str(args.model) != "naive" else args.timeframe
    if trained_timeframe != args.timeframe:
        log.warning("model %s was trained on %s candles and is evaluated here on %s candles", forecaster.version,
                    trained_timeframe, args.timeframe)
    if len(files) == 1:
        return print_one_file(args, forecaster, files[0], step)
    pooled = step_verdicts([each["arrays"] for each in files], args.level)
    peer_results = [each["arrays"]["peers"] for each in files] if peers else []
    if autoregression is not None:
        pooled["mae_ratio_ar"] = baseline_step_ratios([each["arrays"] for each in files], autoregression.name)
    if peers:
        pooled = pd.concat([pooled, pd.DataFrame(peer_step_ratios(peer_results))], axis=1)
    if args.json:
        print(json.dumps({"model_version": forecaster.version, "timeframe": args.timeframe,
                          "files": [{"file": each["file"], "origins": len(each["arrays"]["actual"]),
                                     "skipped_training_origins": each["skipped"], "steps": each["table"].to_dict("records")}
                                    for each in files],
                          "pooled": pooled.to_dict("records"),
                          **({"peers": peer_summary(peer_results)} if peers else {})}))
        return 0
    for each in files:
        print(f"{len(each['arrays']['actual'])} origins, {each['skipped']} earlier origins skipped (seen in training)")
        print(format_step_table(each["table"].to_dict("records"), f"walk-forward on {each['file']}, {args.timeframe} candles", args.level))
        print()
    print(format_verdict_table(pooled.to_dict("records"), f"pooled over {len(files)} files, model {forecaster.version} "
                               "(errors relative to each origin's close; one DM test a step)"))
    if peers:
        print(format_baselines(peer_summary(peer_results)))
    return 0


def print_one_file(args: argparse.Namespace, forecaster, evaluated: dict, step: int) -> int:
    table, arrays, skipped = evaluated["table"], evaluated["arrays"], evaluated["skipped"]
    origins = len(arrays["actual"])
    trading = None
    if args.backtest:
        trading = backtest(arrays["origin_close"][:, 0], arrays["actual"][:, 0], arrays["mean"], step, args.fee, args.spread,
                           timeframe_ms(args.timeframe) // 60_000)
    if args.report:
        write_report(args.report, table, arrays, f"{forecaster.version} on {evaluated['file']}", args.level, trading, args.timeframe)
    if args.json:
        report = {"origins": origins, "model_version": forecaster.version, "timeframe": args.timeframe, "skipped_training_origins": skipped,
                  "interval": {"method": "split-conformal, adapted to the last errors", "window": ADAPTIVE_WINDOW},
                  "steps": table.to_dict("records")}
        if trading:
            report["backtest"] = {key: value for key, value in trading.items() if key != "curves"}
        if "peers" in arrays:
            report["peers"] = peer_summary([arrays["peers"]])
        print(json.dumps(report))
    else:
        print(f"{origins} origins, model {forecaster.version}, {skipped} earlier origins skipped (seen in training)")
        print(format_step_table(table.to_dict("records"), f"walk-forward on {evaluated['file']}, {args.timeframe} candles", args.level))
        if trading:
            print(format_backtest(trading))
        if "peers" in arrays:
            print(format_baselines(peer_summary([arrays["peers"]])))
    return 0


def coverages(row: dict) -> str:
    """The adaptive interval's coverage at every calibrated level, e.g. '0.803 0.903 0.955'."""
    return " ".join(f"{row['coverage_%.2f' % each]:.3f}" for each in INTERVAL_LEVELS)


def format_step_table(rows: list[dict], title: str, level: float = DEFAULT_LEVEL) -> str:
    """A per-step table; rows from evaluate carry baselines, tests and intervals too (the static
    interval's coverage is shown at `level`)."""
    full = "dm_statistic" in rows[0]
    head = "step  MAE model  MAE naive  ratio   RMSE model  RMSE naive  MAPE % model  direction"
    if full:
        levels = "/".join(f"{each * 100:g}" for each in INTERVAL_LEVELS)
        head += f"  (95 % CI)      DM stat  p      drift  mov.avg  coverage {levels} (static {level * 100:g})"
    else:
        head += "  coverage"
    autoregression = "mae_ratio_ar" in rows[0]
    head += "    AR(5)" if autoregression else ""
    peers = [key.removeprefix("mae_ratio_") for key in rows[0] if key.startswith("mae_ratio_Auto")]
    head += "".join(f"  {name:>9}" for name in peers) + ("  model (same)" if peers else "")
    lines = [title, head]
    for row in rows:
        line = (f"{row['step']:>4}  {row['mae_model']:9.3f}  {row['mae_naive']:9.3f}  {row['mae_ratio']:.4f}  "
                f"{row['rmse_model']:10.3f}  {row['rmse_naive']:10.3f}  {row['mape_model']:12.4f}  {row['direction_accuracy']:9.3f}")
        if full:
            line += (f"  ({row['direction_ci_low']:.3f}-{row['direction_ci_high']:.3f})  {row['dm_statistic']:6.2f}  {row['dm_p_value']:.3f}"
                     f"  {row['mae_ratio_drift']:.4f}  {row['mae_ratio_moving_average']:.4f}"
                     f"   {coverages(row)} ({row[f'coverage_static_{level:.2f}']:.3f})")
        else:
            line += f"  {row['coverage']:8.3f}"
        line += f"  {row['mae_ratio_ar']:.4f}" if autoregression else ""
        line += "".join(f"  {row[f'mae_ratio_{name}']:9.4f}" for name in peers)
        line += f"  {row['peer_origins_mae_ratio']:11.4f}" if peers else ""
        lines.append(line)
    return "\n".join(lines)


def format_verdict_table(rows: list[dict], title: str) -> str:
    """evaluation.pooling.step_verdicts rows as text."""
    peers = [key.removeprefix("mae_ratio_") for key in rows[0] if key.startswith("mae_ratio_Auto")]
    autoregression = "mae_ratio_ar" in rows[0]
    lines = [title, "step  origins  MAE ratio  DM p    direction  coverage  interval-score ratio  DM p"
             + ("    AR(5)" if autoregression else "")
             + "".join(f"  {name:>9}" for name in peers) + ("  model (same)" if peers else "")]
    lines += [f"{row['step']:>4}  {row['origins']:7d}  {row['mae_ratio']:9.4f}  {row['dm_p_value']:.3f}  "
              f"{'no call' if pd.isna(row['direction_accuracy']) else format(row['direction_accuracy'], '.3f'):>9}  "
              f"{row['coverage']:8.3f}  {row['interval_score_ratio']:20.4f}  {row['interval_dm_p_value']:.3f}"
              + (f"  {row['mae_ratio_ar']:.4f}" if autoregression else "")
              + "".join(f"  {row[f'mae_ratio_{name}']:9.4f}" for name in peers)
              + (f"  {row['peer_origins_mae_ratio']:11.4f}" if peers else "") for row in rows]
    return "\n".join(lines)


def format_baselines(baselines: dict[str, dict]) -> str:
    """Each baseline's mean MAE ratio over the steps beside the model's on the same origins."""
    lines = []
    for name, baseline in baselines.items():
        fitted = f", fitted in {baseline['fit_seconds']:.1f} s" if "fit_seconds" in baseline else ""
        failed = f", {baseline['failed_fits']} fits failed (last close used)" if baseline.get("failed_fits") else ""
        lines.append(f"{name}: mean ratio {baseline['mean_ratio']:.4f} (the model {baseline['model_mean_ratio']:.4f}) "
                     f"over {baseline['origins']:,} origins{fitted}{failed}")
    return "\n".join(lines)
