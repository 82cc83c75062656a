"""The command line of `python -m chronoprice`: every command's arguments and their checks.
cli.py runs the commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from chronoprice.bench import BATCH_ORIGINS
from chronoprice.config import DEFAULT_MODEL, ENGINES, LOG_FORMATS, PROJECT_ROOT, add_settings_arguments, store_target
from chronoprice.evaluation.backtest import DEFAULT_FEE, DEFAULT_SPREAD
from chronoprice.evaluation.metrics import DEFAULT_LEVEL, INTERVAL_LEVELS
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.model.features import parse_feature


def _setting_letters(text: str) -> str:
    letters = text.strip().upper()
    if not letters or set(letters) - set("ABCD"):
        raise argparse.ArgumentTypeError(f"{text!r}: letters of the rule's candidates A, B, C and D (docs/MODEL.md)")
    return letters


def _timeframe_list(text: str) -> list[str]:
    chosen = [each.strip() for each in text.split(",") if each.strip()]
    unknown = [each for each in chosen if each not in TIMEFRAME_MS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown timeframe {', '.join(unknown) or '(none)'}; choose from {', '.join(TIMEFRAME_MS)}")
    return chosen


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def _cost(text: str) -> float:
    value = float(text)
    if not 0 <= value < 0.5:
        raise argparse.ArgumentTypeError("must be a fraction from 0 to below 0.5, e.g. 0.001 for 0.1 %")
    return value


def _feature(text: str) -> str:
    try:
        parse_feature(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


COMPARED_FEATURES = ("relative_closes", "log_returns", "relative_closes+range", "relative_closes+volume",
                     "relative_closes+range+volume", "log_returns+range+volume")


def _add_store_training_arguments(parser: argparse.ArgumentParser, symbol_default: str | None = None,
                                  days_default: float | None = None) -> None:
    """What training from a store's candles takes (train --db, retrain), and the training options."""
    parser.add_argument("--symbol", default=symbol_default,
                        help="with --db: the market, e.g. BTC/USDT" + (f" (default {symbol_default})" if symbol_default else ""))
    parser.add_argument("--timeframe", choices=list(TIMEFRAME_MS), help="the timeframe the model serves: with --db the stored "
                        "candles' (default 1m); with --csv the file's own (default), or a longer one aggregated from it")
    parser.add_argument("--exchange", help="with --db: whose candles (default: the exchange with the most of that market)")
    parser.add_argument("--days", type=_positive_float, default=days_default,
                        help=f"with --db: only the last N days of candles (default: {days_default or 'all'})")
    parser.add_argument("--epochs", type=_positive_int, default=30, help="most epochs; training stops early (default 30)")
    parser.add_argument("--loss", choices=["mse", "huber", "mae"],
                        help="training loss (default: the shipped model's, huber; see docs/MODEL.md)")
    parser.add_argument("--feature", type=_feature, help="input: relative_closes or log_returns, optionally +range and/or "
                        "+volume (default: the shipped model's, log_returns+range+volume)")
    parser.add_argument("--normalise", choices=["window_volatility"], help="express each window's returns in units of its "
                        "own volatility instead of the training split's (default: the training split's)")
    parser.add_argument("--train-days", type=float, default=None, help="train on only the last N days of the training split (default: all)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_MODEL.parent / "trained",
                        help="with --db: the folder of the artifact, named after the market and the time (default models/trained)")
    parser.add_argument("--folds", type=_positive_int, help="one file: rolling validation windows whose forecasts fit "
                        "the shrinkage (default 3; the last one's model ships)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chronoprice", description="ChronoPrice: live crypto forecasts with an honest scoreboard.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the dashboard (same as python app.py)")
    add_settings_arguments(serve)
    worker = commands.add_parser("worker", help="tick the watchlist on every candle close, with no web server")
    add_settings_arguments(worker)

    train = commands.add_parser("train", help="train the LSTM on a candle CSV or the candles a store collected, and write the model artifact")
    data = train.add_mutually_exclusive_group(required=True)
    data.add_argument("--csv", type=Path, action="append", help="candle file of 1m, 5m, 15m or 1h candles: CSV "
                      "(Binance Data Vision or headed OHLCV) or freqtrade JSON, plain or gzipped; the timeframe is "
                      "read from its spacing; repeat it or give a quoted glob for several files, each its own series, "
                      "split at docs/MODEL.md's shares (default --out models/trained/chronoprice-lstm-TIMEFRAME)")
    data.add_argument("--db", type=store_target, help="a ChronoPrice store (SQLite file or postgresql:// URL): train on the "
                      "closed candles it collected for --symbol and --timeframe")
    _add_store_training_arguments(train)
    train.add_argument("--out", type=Path, help="artifact path without extension (default models/chronoprice-lstm; with --db "
                       "OUT_DIR/EXCHANGE-SYMBOL-TIMEFRAME-TIME)")

    retrain = commands.add_parser("retrain", help="train from the store on a schedule, in this process, registering each "
                                  "model as a shadow (replacing the last retrained shadow)")
    retrain.add_argument("--every", required=True, help="how often, e.g. 24h, 12h, 7d; the first run starts at once")
    retrain.add_argument("--db", help="the store (default: CHRONOPRICE_DB or DATABASE_URL, else chronoprice.db)")
    _add_store_training_arguments(retrain, symbol_default="BTC/USDT", days_default=14.0)
    retrain.set_defaults(csv=None, out=None)

    models = commands.add_parser("models", help="the model registry: list versions, or roll back the last change of champion")
    models.add_argument("action", choices=["list", "rollback"], help="list: versions, statuses and recent changes; rollback: the "
                        "champion it replaced serves again")
    models.add_argument("--timeframe", choices=list(TIMEFRAME_MS), help="the timeframe (rollback: default 1m; list: all)")
    models.add_argument("--db", help="the store (default: CHRONOPRICE_DB or DATABASE_URL, else chronoprice.db)")

    compare = commands.add_parser("compare", help="train model variants and compare them walk-forward against the naive baseline")
    compare.add_argument("--csv", type=Path, required=True, action="append",
                         help="candle file (CSV or freqtrade JSON, plain or gzipped, any timeframe); repeat it or give "
                         "a quoted glob for several files, each its own series, scored on docs/MODEL.md's two folds")
    compare.add_argument("--timeframe", choices=list(TIMEFRAME_MS),
                         help="aggregate the candles to this longer timeframe")
    compare.add_argument("--epochs", type=_positive_int, default=30, help="most epochs per variant (default 30)")
    compare.add_argument("--features", default=",".join(COMPARED_FEATURES), help="inputs to try, comma-separated")
    compare.add_argument("--losses", default="mse,huber,mae", help="losses to try")
    compare.add_argument("--train-days", help="training history lengths to try, in days or all (default all,3; several "
                         "files: all)")
    compare.add_argument("--folds", type=_positive_int, help="one file: rolling validation windows before the holdout "
                         "(default 3)")
    compare.add_argument("--json", type=Path, help="also write the rows to this JSON file")

    train_models = commands.add_parser("train-models", help="train a model per timeframe on the shared candle files by "
                                       "docs/MODEL.md's rule, and judge each once on its files' validation spans")
    train_models.add_argument("--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data",
                              help="the folder of candle files (default ../shared/data)")
    train_models.add_argument("--timeframes", default=",".join(TIMEFRAME_MS), type=_timeframe_list,
                              help="comma-separated (default every one: 1m,5m,15m,1h)")
    train_models.add_argument("--out-dir", type=Path, default=DEFAULT_MODEL.parent / "trained",
                              help="where the artifacts go, chronoprice-lstm-TIMEFRAME (default models/trained)")
    train_models.add_argument("--settings", default="ABCD", type=_setting_letters,
                              help="the rule's candidates to fit, by letter (default ABCD: all of docs/MODEL.md's round 2)")

    evaluate = commands.add_parser("evaluate", help="walk-forward accuracy of a model against the naive baseline")
    evaluate.add_argument("--csv", type=Path, required=True, action="append",
                          help="candle file of 1m, 5m, 15m or 1h candles (CSV or freqtrade JSON, plain or gzipped; the "
                          "timeframe is read from its spacing); repeat it or give a quoted glob for several files, each "
                          "its own series, with a pooled verdict")
    evaluate.add_argument("--timeframe", choices=list(TIMEFRAME_MS),
                          help="evaluate on candles of this timeframe: the file's own (default) or a longer one aggregated from it")
    evaluate.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                          help="model artifact (default: the shipped model), or `naive`: the last close with its band, "
                               "as 5m, 15m and 1h serve")
    evaluate.add_argument("--engine", choices=ENGINES, default="auto", help="forecast engine (default auto: native, batched)")
    evaluate.add_argument("--level", type=float, default=DEFAULT_LEVEL, choices=INTERVAL_LEVELS,
                          help=f"interval level (default {DEFAULT_LEVEL})")
    evaluate.add_argument("--include-training-data", action="store_true", help="also score origins the model was trained or calibrated on")
    evaluate.add_argument("--report", type=Path, help="also write a Plotly HTML report to this path")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--peers", action="store_true", help="also score statsforecast's AutoETS and AutoTheta, each fitted "
                          "at every origin on the window's closes (an optional extra: pip install --no-deps -r requirements-peers.txt)")
    evaluate.add_argument("--stride", type=_positive_int, default=1,
                          help="the peers forecast every Nth origin (default 1: every one); their fit time is printed")
    evaluate.add_argument("--backtest", action="store_true", help="also trade the forecasts after costs: long/flat and long/short "
                          "beside buy-and-hold and flat (docs/MODEL.md)")
    evaluate.add_argument("--backtest-step", type=_positive_int, help="the step whose forecast move sets the position (default: the last)")
    evaluate.add_argument("--fee", type=_cost, default=DEFAULT_FEE, help=f"fee a side, as a fraction (default {DEFAULT_FEE}: 0.1 %%)")
    evaluate.add_argument("--spread", type=_cost, default=DEFAULT_SPREAD,
                          help=f"full bid-ask spread, as a fraction of the price; a side pays half (default {DEFAULT_SPREAD})")

    export = commands.add_parser("export", help="write a model's engine files (.onnx, .npz) from its .keras weights")
    export.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model artifact (default: the shipped model)")

    bench = commands.add_parser("bench", help="time the forecast engines and a full tick, in one run")
    bench.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model artifact (default: the shipped model)")
    bench.add_argument("--repeats", type=_positive_int, default=200, help="timed forecasts per engine (default 200)")
    bench.add_argument("--ticks", type=_positive_int, default=40, help="timed ticks against the local exchange (default 40)")
    bench.add_argument("--batch-origins", type=_positive_int, default=BATCH_ORIGINS,
                       help=f"origins each engine forecasts in one call for its throughput (default {BATCH_ORIGINS})")
    bench.add_argument("--deploy-ticks", type=int, default=100, help="ticks against the Render configuration under gunicorn (default 100; 0 skips it and the "
                       "engines' memory comparison)")
    bench.add_argument("--watch-markets", type=int, default=20, help="watched markets for the scheduler's benchmark (default 20; 0 skips it)")
    bench.add_argument("--watch-minutes", type=_positive_int, default=30, help="simulated minutes of that benchmark (default 30)")
    bench.add_argument("--alert-rules", type=int, default=100, help="alert rules on those markets, with webhooks to a local receiver (default 100)")
    bench.add_argument("--live-samples", type=int, default=40,
                       help="price changes timed from the exchange to the page in Chromium under gunicorn (default 40; 0 skips it)")
    bench.add_argument("--scale", action="store_true", help="instead: what one worker and one web instance carry, and storage "
                       "a market a day (docs/SCALING.md)")
    bench.add_argument("--fuzz", type=_positive_int, metavar="REQUESTS", help="instead: that many random and malformed requests "
                       "(bodies up to 20 MB) against gunicorn on the offline demo, /api/health timed throughout (docs/RELIABILITY.md)")
    bench.add_argument("--seed", type=int, default=0, help="the seed --fuzz draws its requests from (default 0)")
    bench.add_argument("--scale-db", help="the store --scale runs on: an empty postgresql:// database (default: a temporary SQLite file)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    migrate = commands.add_parser("migrate", help="copy a store (candles, forecasts, watchlist) to another, SQLite or PostgreSQL")
    migrate.add_argument("--from", dest="source", required=True, help="the store to copy: a SQLite file or a postgresql:// URL")
    migrate.add_argument("--to", dest="target", required=True, help="where to: a SQLite file or a postgresql:// URL; "
                         "an interrupted copy resumes after the last row it holds")
    migrate.add_argument("--batch", type=_positive_int, default=5_000, help="rows a transaction (default 5000)")

    prune = commands.add_parser("prune", help="fold scored forecast steps older than --retain-days into daily sums and "
                                "delete them, once (the scheduler does it every 10 minutes)")
    prune.add_argument("--db", help="the store (default: CHRONOPRICE_DB or DATABASE_URL, else chronoprice.db)")
    prune.add_argument("--retain-days",
                       help="days of steps kept row by row (default: CHRONOPRICE_RETAIN_DAYS, else 30)")

    backfill = commands.add_parser("backfill", help="fetch and store candle history, then forecast from it")
    add_settings_arguments(backfill)
    backfill.add_argument("--hours", type=float, default=24.0, help="hours of history to fetch (default 24)")
    for command in (train, train_models, retrain, models, compare, evaluate, export, bench, migrate, prune):
        command.add_argument("--log-format", choices=LOG_FORMATS, help="log lines as text (default) or json [env CHRONOPRICE_LOG_FORMAT]")
    return parser
