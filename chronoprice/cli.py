"""`python -m chronoprice serve|train|evaluate|bench|backfill`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from chronoprice.config import DEFAULT_MODEL, SettingsError, add_settings_arguments, settings_from_args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


def _feature(text: str) -> str:
    from chronoprice.features import parse_feature

    try:
        parse_feature(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


COMPARED_FEATURES = ("relative_closes", "log_returns", "relative_closes+range", "relative_closes+volume",
                     "relative_closes+range+volume", "log_returns+range+volume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chronoprice", description="ChronoPrice: live crypto forecasts with an honest scoreboard.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the dashboard (same as python app.py)")
    add_settings_arguments(serve)

    train = commands.add_parser("train", help="train the LSTM on a candle CSV and write the model artifact")
    train.add_argument("--csv", type=Path, required=True, help="1-minute candle CSV (Binance Data Vision or headed OHLCV)")
    train.add_argument("--epochs", type=_positive_int, default=30, help="most epochs; training stops early (default 30)")
    train.add_argument("--loss", choices=["mse", "huber", "mae"],
                       help="training loss (default: the shipped model's, huber; see docs/MODEL.md)")
    train.add_argument("--feature", type=_feature, help="input: relative_closes or log_returns, optionally +range and/or "
                       "+volume (default: the shipped model's, log_returns+range+volume)")
    train.add_argument("--train-days", type=float, default=None, help="train on only the last N days of the training split (default: all)")
    train.add_argument("--folds", type=_positive_int, default=3,
                       help="rolling validation windows whose forecasts fit the shrinkage (default 3; the last one's model ships)")
    train.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="artifact path without extension (default models/chronoprice-lstm)")

    compare = commands.add_parser("compare", help="train model variants and compare them walk-forward against the naive baseline")
    compare.add_argument("--csv", type=Path, required=True, help="1-minute candle CSV")
    compare.add_argument("--epochs", type=_positive_int, default=30, help="most epochs per variant (default 30)")
    compare.add_argument("--features", default=",".join(COMPARED_FEATURES), help="inputs to try, comma-separated")
    compare.add_argument("--losses", default="mse,huber,mae", help="losses to try")
    compare.add_argument("--train-days", default="all,3", help="training history lengths to try, in days or all")
    compare.add_argument("--folds", type=_positive_int, default=3, help="rolling validation windows before the holdout (default 3)")
    compare.add_argument("--json", type=Path, help="also write the rows to this JSON file")

    evaluate = commands.add_parser("evaluate", help="walk-forward accuracy of a model against the naive baseline")
    evaluate.add_argument("--csv", type=Path, required=True, help="1-minute candle CSV")
    evaluate.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model artifact (default: the shipped model)")
    evaluate.add_argument("--engine", choices=["keras", "litert"], default="keras", help="forecast engine (default keras, batched)")
    evaluate.add_argument("--level", type=float, default=0.9, choices=[0.8, 0.9, 0.95], help="interval level (default 0.9)")
    evaluate.add_argument("--include-training-data", action="store_true", help="also score origins the model was trained or calibrated on")
    evaluate.add_argument("--report", type=Path, help="also write a Plotly HTML report to this path")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    bench = commands.add_parser("bench", help="time the forecast engines and a full tick, in one run")
    bench.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model artifact (default: the shipped model)")
    bench.add_argument("--repeats", type=_positive_int, default=200, help="timed forecasts per engine (default 200)")
    bench.add_argument("--ticks", type=_positive_int, default=40, help="timed ticks against the local exchange (default 40)")
    bench.add_argument("--deploy-ticks", type=int, default=100, help="ticks against the Render configuration under gunicorn (default 100; 0 skips it)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    backfill = commands.add_parser("backfill", help="fetch and store candle history, then forecast from it")
    add_settings_arguments(backfill)
    backfill.add_argument("--hours", type=float, default=24.0, help="hours of history to fetch (default 24)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SettingsError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_serve(args: argparse.Namespace) -> int:
    from chronoprice.server import serve

    serve(settings_from_args(args, os.environ))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from chronoprice.artifact import artifact_at
    from chronoprice.model import Variant, train_artifact
    from chronoprice.sources import read_candle_csv

    loaded = read_candle_csv(args.csv)
    for line, reason in loaded.bad_rows[:10]:
        print(f"{args.csv}:{line}: skipped: {reason}", file=sys.stderr)
    description = f"{args.csv.name}: {len(loaded.candles)} candles"
    chosen = {"feature": args.feature, "loss": args.loss, "train_days": args.train_days}
    variant = Variant(**{name: value for name, value in chosen.items() if value is not None})
    metadata = train_artifact(loaded.candles, artifact_at(args.out), args.epochs, description, variant, folds=args.folds)
    print(f"wrote {args.out}.keras, .tflite and .json (version {metadata['version']})")
    print(format_step_table(metadata["holdout"], "holdout (last 15 %, never trained on)"))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from chronoprice.features import parse_feature
    from chronoprice.model import Variant, compare_variants
    from chronoprice.sources import read_candle_csv

    candles = read_candle_csv(args.csv).candles
    variants = [
        Variant(feature, loss, None if days == "all" else float(days))
        for feature in args.features.split(",") for loss in args.losses.split(",") for days in args.train_days.split(",")
    ]
    for feature in {variant.feature for variant in variants}:
        parse_feature(feature)
    rows = compare_variants(candles, variants, args.epochs, args.folds)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'variant':<52} {'validation mean':>15}  {'folds':<26} {'holdout as is':>13}  {'holdout shrunk':>14}  {'worst step':>10}")
    for row in sorted(rows, key=lambda row: row["validation_mean_ratio"]):
        folds = " ".join(f"{ratio:.5f}" for ratio in row["fold_mean_ratios"])
        print(f"{row['variant']:<52} {row['validation_mean_ratio']:15.5f}  {folds:<26} {row['holdout_raw_mean_ratio']:13.5f}  "
              f"{row['holdout_mean_ratio']:14.5f}  {max(row['holdout_mae_ratio']):10.5f}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from chronoprice.evaluation import ADAPTIVE_WINDOW, evaluate_forecaster
    from chronoprice.features import candle_rows
    from chronoprice.forecast import load_forecaster
    from chronoprice.sources import read_candle_csv

    forecaster = load_forecaster(args.model, args.engine, args.level)
    candles = read_candle_csv(args.csv).candles
    first_scored_close = forecaster.window - 1
    if not args.include_training_data:
        trained_until = forecaster.metadata.get("training", {}).get("trained_until_ts")
        if trained_until is not None:
            first_scored_close = max(first_scored_close, int((candles["ts"] < trained_until).sum()))
    # Origins before the scored ones only warm up the adaptive intervals.
    if first_scored_close + forecaster.horizon >= len(candles):
        raise ValueError(f"{args.csv} has no origin after the candles the model was trained and calibrated on "
                         "(up to its metadata's trained_until_ts); pass newer candles, or --include-training-data")
    start = max(0, first_scored_close - forecaster.window + 1 - ADAPTIVE_WINDOW - forecaster.horizon)
    scored_from = first_scored_close - forecaster.window + 1 - start
    table, arrays = evaluate_forecaster(forecaster, candle_rows(candles)[start:], scored_from, args.level)
    origins = len(arrays["actual"])
    skipped = first_scored_close - forecaster.window + 1
    if args.report:
        from chronoprice.report import write_report

        write_report(args.report, table, arrays, title=f"{forecaster.version} on {args.csv.name}: {origins} unseen origins")
    if args.json:
        report = {"origins": origins, "model_version": forecaster.version, "skipped_training_origins": skipped,
                  "interval": {"method": "split-conformal, adapted to the last errors", "window": ADAPTIVE_WINDOW},
                  "steps": table.to_dict("records")}
        print(json.dumps(report))
    else:
        print(f"{origins} origins, model {forecaster.version}, {skipped} earlier origins skipped (seen in training)")
        print(format_step_table(table.to_dict("records"), f"walk-forward on {args.csv.name}"))
    return 0


def format_step_table(rows: list[dict], title: str) -> str:
    """A per-step table; rows from evaluate carry baselines, tests and intervals too."""
    full = "dm_statistic" in rows[0]
    head = "step  MAE model  MAE naive  ratio   RMSE model  RMSE naive  MAPE % model  direction"
    if full:
        head += "  (95 % CI)      DM stat  p      drift  mov.avg  coverage 80/90/95 (static 90)"
    else:
        head += "  coverage"
    lines = [title, head]
    for row in rows:
        line = (f"{row['step']:>4}  {row['mae_model']:9.3f}  {row['mae_naive']:9.3f}  {row['mae_ratio']:.4f}  "
                f"{row['rmse_model']:10.3f}  {row['rmse_naive']:10.3f}  {row['mape_model']:12.4f}  {row['direction_accuracy']:9.3f}")
        if full:
            line += (f"  ({row['direction_ci_low']:.3f}-{row['direction_ci_high']:.3f})  {row['dm_statistic']:6.2f}  {row['dm_p_value']:.3f}"
                     f"  {row['mae_ratio_drift']:.4f}  {row['mae_ratio_moving_average']:.4f}"
                     f"   {row['coverage_0.80']:.3f} {row['coverage_0.90']:.3f} {row['coverage_0.95']:.3f} ({row['coverage_static_0.90']:.3f})")
        else:
            line += f"  {row['coverage']:8.3f}"
        lines.append(line)
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    from chronoprice.bench import format_bench, run_benchmark

    report = run_benchmark(args.model, repeats=args.repeats, ticks=args.ticks, deploy_ticks=args.deploy_ticks)
    print(json.dumps(report) if args.json else format_bench(report))
    return 0


def run_backfill(args: argparse.Namespace) -> int:
    from chronoprice.pipeline import build_pipeline

    settings = settings_from_args(args, os.environ)
    status = build_pipeline(settings, history_hours=args.hours).backfill(settings.symbol, hours=args.hours)
    print(status.summary())
    return 0 if status.error is None else 1


COMMANDS = {"serve": run_serve, "train": run_train, "compare": run_compare, "evaluate": run_evaluate, "bench": run_bench, "backfill": run_backfill}
