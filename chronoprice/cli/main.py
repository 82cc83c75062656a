"""`python -m chronoprice COMMAND`: each command run (serve, worker, train, train-models, retrain, models,
compare, evaluate, export, bench, backfill, migrate, prune; their arguments: cli/parser.py; the model
lifecycle's: cli/models.py; evaluate: cli/evaluate.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from chronoprice.cli.evaluate import (
    expand_paths,
    format_baselines,
    format_step_table,
    format_verdict_table,
    read_reported_file,
    run_evaluate,
)
from chronoprice.cli.models import RETRAIN_REASON, register_trained, run_models, run_retrain, store_setting
from chronoprice.cli.parser import build_parser
from chronoprice.config import (
    DEFAULT_MODEL,
    SettingsError,
    log_format_from,
    settings_from,
    settings_from_args,
    store_target,
)
from chronoprice.logs import configure_logging
from chronoprice.market.candles import find_gaps
from chronoprice.market.timeframes import DAY_MS, TIMEFRAME_MS, timeframe_ms
from chronoprice.model.artifact import artifact_at, read_metadata, timeframe_siblings
from chronoprice.model.features import parse_feature
from chronoprice.model.forecasters import load_forecaster, statistical_peers
from chronoprice.model.registry import model_timeframe
from chronoprice.service.build import build_scheduler, build_ticker
from chronoprice.service.retention import prune_store
from chronoprice.store import open_store
from chronoprice.store.records import stored_training_candles
from chronoprice.store.transfer import copy_store
from chronoprice.web.api.prometheus import start_metrics_server
from chronoprice.web.server import serve

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(log_format_from(args.log_format, os.environ))
        return COMMANDS[args.command](args)
    except (SettingsError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_serve(args: argparse.Namespace) -> int:
    serve(settings_from_args(args, os.environ))
    return 0


def _training():
    """model.training, imported only by the commands that train: it loads TensorFlow, which
    serving, evaluating on LiteRT and the rest of the CLI never need."""
    from chronoprice.model import training

    return training


def training_data(args: argparse.Namespace) -> tuple[pd.DataFrame, str, Path]:
    """The candles `train` fits, what the metadata says they are, and where the artifact goes."""
    if args.csv:
        loaded = read_reported_file(args.csv, args.timeframe)
        args.timeframe = loaded.timeframe
        return loaded.candles, loaded.describe(), args.out or DEFAULT_MODEL
    args.timeframe = args.timeframe or "1m"
    if not args.symbol:
        raise ValueError("train --db needs --symbol (and --timeframe unless 1m)")
    db = open_store(args.db)
    try:
        market, candles = stored_training_candles(db, args.symbol.upper(), args.timeframe, args.exchange, args.days)
    finally:
        db.close()
    gaps = find_gaps(candles["ts"].to_numpy(), timeframe_ms(args.timeframe))
    if not gaps.empty:
        log.warning("%d gaps in the stored candles (%d candles missing): windows across them are trained on as if continuous",
                    len(gaps), int(gaps["missing"].sum()))
    first, last = (pd.Timestamp(candles["ts"].iloc[end], unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M") for end in (0, -1))
    description = f"store {market.exchange} {market.symbol} {market.timeframe}: {len(candles)} candles, {first} to {last} UTC"
    # Timed, so a later run never overwrites the files of a model the registry still serves.
    name = f"{market.exchange}-{market.symbol.replace('/', '-')}-{market.timeframe}-{pd.Timestamp.now('UTC'):%Y%m%d-%H%M%S}".lower()
    return candles, description, args.out or args.out_dir / name


def run_train(args: argparse.Namespace) -> int:
    paths = expand_paths(args.csv) if args.csv else []
    if len(paths) > 1:
        return train_on_files(args, paths)
    args.csv = paths[0] if paths else None
    train_and_register(args)
    return 0


def train_on_files(args: argparse.Namespace, paths: list[Path]) -> int:
    """`train` on several files: each its own series, split at docs/MODEL.md's shares (two
    rolling folds, the newest 15 % of each file the validation span, judged once)."""
    if args.folds is not None or args.train_days is not None:
        raise ValueError("--folds and --train-days apply to one file; several are split at the same shares of each "
                         "file (docs/MODEL.md, \"A model per timeframe\")")
    from chronoprice.evaluation.timeframe_models import Setting, train_timeframe  # loads TensorFlow

    timeframe, files = training_files(paths, args.timeframe)
    out = artifact_at(args.out or DEFAULT_MODEL.parent / "trained" / f"chronoprice-lstm-{timeframe}")
    setting = Setting("given", _variant(args, timeframe), args.epochs)
    metadata = train_timeframe(timeframe, files, [], out, (setting,), rule="train --csv, several files: the given "
                               "setting on docs/MODEL.md's folds")
    print(f"wrote {out.base}.keras, .tflite, .onnx, .npz and .json (version {metadata['version']})")
    print_judgment(timeframe, metadata, out)
    return 0


def training_files(paths: list[Path], timeframe: str | None) -> tuple[str, list]:
    """Several candle files as training reads them, all of one timeframe (`timeframe`, or the one they share)."""
    from chronoprice.model.series_training import TrainingFile  # loads TensorFlow

    loaded = [read_reported_file(path, timeframe) for path in paths]
    timeframes = sorted({each.timeframe for each in loaded}, key=timeframe_ms)
    if len(timeframes) > 1:
        raise ValueError(f"the files hold {' and '.join(timeframes)} candles: give --timeframe {timeframes[-1]} to "
                         "aggregate them to one timeframe")
    names = [each.name for each in loaded]
    if len(set(names)) < len(names):
        raise ValueError("two files share a name; every file is reported by its name, so rename one")
    step_ms = timeframe_ms(timeframes[0])
    return timeframes[0], [TrainingFile(each.name, each.candles, step_ms) for each in loaded]


def _variant(args: argparse.Namespace, timeframe: str):
    chosen = {"feature": args.feature, "loss": args.loss, "train_days": args.train_days, "normalise": args.normalise}
    return _training().Variant(**{name: value for name, value in chosen.items() if value is not None},
                               candles_per_day=DAY_MS // timeframe_ms(timeframe))


def print_judgment(timeframe: str, metadata: dict, out) -> None:
    """The validation spans' verdict of a model trained on several files, and whether it passes the rule."""
    validation = metadata["validation"]
    print(format_baselines(validation["baselines"]))
    print(format_verdict_table(validation["pooled"], f"{timeframe}: {metadata['training']['data']}, pooled over the "
                               "validation spans (never trained or tuned on)"))
    failures = validation["failures"]
    print(f"{timeframe}: {out.base} {'passes the rule' if not failures else 'does not pass: ' + '; '.join(failures)}\n")


def train_and_register(args: argparse.Namespace, reason: str = "trained from the store with train --db",
                       supersede: str | None = None) -> None:
    """Train on what the arguments name (the CSV or the store's candles), write the artifact,
    and with --db register the model as a shadow in that store."""
    training = _training()
    candles, description, out = training_data(args)
    variant = _variant(args, args.timeframe)
    metadata = training.train_artifact(candles, artifact_at(out), args.epochs, description, variant,
                                       folds=args.folds or training.FOLDS, timeframe=args.timeframe)
    print(f"wrote {out}.keras, .tflite, .onnx, .npz and .json (version {metadata['version']})")
    print(format_step_table(metadata["holdout"], "holdout (last 15 %, never trained on)"))
    if args.db:
        register_trained(args, artifact_at(out), metadata, reason, supersede)


def run_retraining(args: argparse.Namespace) -> int:
    args.db = store_setting(args)
    return run_retrain(args, lambda each: train_and_register(each, RETRAIN_REASON, RETRAIN_REASON))


def run_compare(args: argparse.Namespace) -> int:
    training = _training()
    paths = expand_paths(args.csv)
    several = len(paths) > 1
    if several and (args.train_days not in (None, "all") or args.folds is not None):
        raise ValueError("--train-days and --folds apply to one file; several files train on each file's whole "
                         "training part, on docs/MODEL.md's two folds")
    if several:
        timeframe, files = training_files(paths, args.timeframe)
    else:
        loaded = read_reported_file(paths[0], args.timeframe)
        timeframe, candles = loaded.timeframe, loaded.candles
    days = ["all"] if several else (args.train_days or "all,3").split(",")
    variants = [training.Variant(feature, loss, None if each == "all" else float(each),
                                 candles_per_day=DAY_MS // timeframe_ms(timeframe))
                for feature in args.features.split(",") for loss in args.losses.split(",") for each in days]
    for feature in {variant.feature for variant in variants}:
        parse_feature(feature)
    if several:
        from chronoprice.model.series_training import compare_candidates  # loads TensorFlow

        rows = compare_candidates(tuple(files), variants, args.epochs, f"{len(files)} {timeframe} files")
    else:
        rows = training.compare_variants(candles, variants, args.epochs, args.folds or training.FOLDS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(format_comparison(rows))
    return 0


def format_comparison(rows: list[dict]) -> str:
    """compare's table, best fold score first; the holdout columns only where one file has a holdout
    (several files keep their validation spans for train's one judgment)."""
    holdout = "holdout_mean_ratio" in rows[0]
    lines = [f"{'variant':<52} {'validation mean':>15}  {'folds':<26}"
             + (f" {'holdout as is':>13}  {'holdout shrunk':>14}  {'worst step':>10}" if holdout else "")]
    for row in sorted(rows, key=lambda row: row["validation_mean_ratio"]):
        folds = " ".join(f"{ratio:.5f}" for ratio in row["fold_mean_ratios"])
        line = f"{row['variant']:<52} {row['validation_mean_ratio']:15.5f}  {folds:<26}"
        if holdout:
            line += (f" {row['holdout_raw_mean_ratio']:13.5f}  {row['holdout_mean_ratio']:14.5f}  "
                     f"{max(row['holdout_mae_ratio']):10.5f}")
        lines.append(line)
    return "\n".join(lines)


def run_train_models(args: argparse.Namespace) -> int:
    """Train and judge each timeframe's model; shipping one (copying it beside models/chronoprice-lstm)
    is a decision docs/MODEL.md records, taken only when the printed verdict passes."""
    from chronoprice.evaluation.timeframe_models import SETTINGS, train_timeframe  # loads TensorFlow

    peers = statistical_peers()  # the rule compares with them: fail before hours of training, not after
    settings = tuple(setting for setting in SETTINGS if setting.letter in args.settings)
    for timeframe in args.timeframes:
        out = artifact_at(args.out_dir / f"chronoprice-lstm-{timeframe}")
        metadata = train_timeframe(timeframe, *plan_files(args.data, timeframe), out, settings,
                                   incumbent=shipped_model(timeframe), peers=peers)
        print_judgment(timeframe, metadata, out)
    return 0


def shipped_model(timeframe: str):
    """The model shipped for a timeframe (models/chronoprice-lstm, or its -5m etc. sibling), which a
    new one must beat by the promotion rule to replace; None where the last close is served."""
    siblings = {model_timeframe(read_metadata(artifact_at(DEFAULT_MODEL))): DEFAULT_MODEL,
                **timeframe_siblings(DEFAULT_MODEL, TIMEFRAME_MS)}
    return load_forecaster(siblings[timeframe]) if timeframe in siblings else None


def plan_files(data_dir: Path, timeframe: str) -> tuple[list, list]:
    """The files a timeframe's model is judged on and the ones it also trains on
    (timeframe_models.PLAN), read at that timeframe, each reported as it is read."""
    from chronoprice.evaluation.timeframe_models import PLAN

    def read(patterns: tuple[str, ...]) -> list:
        paths = sorted({path for pattern in patterns for path in Path(data_dir).glob(pattern)})
        return training_files(paths, timeframe)[1] if paths else []

    judged, extra = (read(patterns) for patterns in PLAN[timeframe])
    if not judged:
        raise ValueError(f"no {timeframe} file in {data_dir} matches {', '.join(PLAN[timeframe][0])}")
    return judged, extra


def run_export(args: argparse.Namespace) -> int:
    artifact = artifact_at(args.model)
    metadata = _training().export_engine_files(artifact)
    print(f"wrote {artifact.onnx_path} and {artifact.weights_path} (version {metadata['version']})")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, os.environ)
    open_store(settings.db).close()
    if settings.metrics_port:
        try:
            start_metrics_server(settings.host, settings.metrics_port, settings.metrics_token)
        except OSError as error:
            raise SettingsError(f"--metrics-port={settings.metrics_port}: {error.strerror} on {settings.host}") from None
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    scheduler = build_scheduler(settings, build_ticker(settings))
    signal.signal(signal.SIGTERM, lambda *_: scheduler.request_stop())
    try:
        scheduler.run_forever()
    except KeyboardInterrupt:
        scheduler.stop()
    return 0


def run_bench(args: argparse.Namespace) -> int:
    # The benchmarks (and the local exchange they run) load only for this command.
    from chronoprice.bench.engines import format_bench, run_benchmark
    from chronoprice.bench.fuzz import format_fuzz, run_fuzz
    from chronoprice.bench.scale import format_scale, run_scale_benchmark

    if args.fuzz:
        report = run_fuzz(args.fuzz, args.seed)
        print(json.dumps(report) if args.json else format_fuzz(report))
        return 0 if report["server_errors"] == 0 and report["unanswered"] == 0 else 1
    if args.scale:
        report = run_scale_benchmark(args.model, store_target(args.scale_db) if args.scale_db else None)
        print(json.dumps(report) if args.json else format_scale(report))
        return 0
    report = run_benchmark(args.model, repeats=args.repeats, ticks=args.ticks, deploy_ticks=args.deploy_ticks,
                           watch_markets=args.watch_markets, watch_minutes=args.watch_minutes,
                           batch_origins=args.batch_origins, alert_rules=args.alert_rules, live_samples=args.live_samples)
    print(json.dumps(report) if args.json else format_bench(report))
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    source, target = (open_store(store_target(text)) for text in (args.source, args.target))
    copies = copy_store(source, target, args.batch, progress=sys.stderr.isatty())
    for copy in copies:
        print(f"{copy.table}: {copy.copied} rows copied; rows {copy.source_rows} -> {copy.target_rows}; "
              f"checksum {copy.source_checksum[:16]} -> {copy.target_checksum[:16]}: {'exact' if copy.exact else 'DIFFERENT'}")
    source.close()
    target.close()
    return 0 if all(copy.exact for copy in copies) else 1


def run_prune(args: argparse.Namespace) -> int:
    settings = settings_from({"db": args.db, "retain_days": args.retain_days}, os.environ)
    db = open_store(settings.db)
    pruned = prune_store(db, settings.retain_days, progress=lambda markets: tqdm(
        markets, desc="pruning", unit="market", disable=not sys.stderr.isatty()))
    days = f"{settings.retain_days} day{'s' if settings.retain_days > 1 else ''}"
    print(f"folded {pruned.steps:,} scored forecast steps older than {days} into daily sums "
          f"({pruned.markets} markets); candles are kept")
    db.close()
    return 0


def run_backfill(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, os.environ)
    status = build_ticker(settings, history_hours=args.hours).backfill(settings.symbol, hours=args.hours)
    print(status.summary())
    return 0 if status.error is None else 1


COMMANDS = {"serve": run_serve, "worker": run_worker, "train": run_train, "train-models": run_train_models,
            "retrain": run_retraining, "models": run_models, "compare": run_compare, "evaluate": run_evaluate,
            "export": run_export, "bench": run_bench, "backfill": run_backfill, "migrate": run_migrate, "prune": run_prune}
