import json
import re
import socket

import numpy as np
import pandas as pd
import pytest

from chronoprice.bench.engines import forecast_macs, timings_ms
from chronoprice.cli.main import main
from chronoprice.market.source import Market
from chronoprice.model.artifact import artifact_at, read_metadata
from chronoprice.store import open_store
from chronoprice.testing.harness import FakeClock
from tests.helpers import make_candles


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory):
    candles = make_candles(1500)
    path = tmp_path_factory.mktemp("csv") / "synthetic.csv"
    candles.assign(timestamp=candles["ts"])[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(path, index=False)
    return path


@pytest.mark.parametrize("command", ["serve", "worker", "train", "retrain", "models", "compare", "evaluate", "export", "bench", "backfill"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m chronoprice " + command in capsys.readouterr().out


def test_evaluate_json_follows_the_design_contract(tiny_model, synthetic_csv, capsys):
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model), "--json", "--include-training-data"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["origins"] == 1500 - 60 - 10 + 1
    assert [step["step"] for step in report["steps"]] == list(range(1, 11))
    for step in report["steps"]:
        assert {"mae_model", "mae_naive", "mae_ratio", "direction_accuracy", "coverage", "interval_level"} <= set(step)
        assert step["interval_level"] == 0.9
        assert step["mae_ratio"] == pytest.approx(step["mae_model"] / step["mae_naive"])


def test_evaluate_aggregates_the_csv_to_the_timeframe_asked(tiny_model, synthetic_csv, capsys):
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model), "--json", "--include-training-data",
                 "--timeframe", "5m"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["timeframe"] == "5m" and report["origins"] == 1500 // 5 - 60 - 10 + 1


def test_evaluate_scores_the_last_close_with_its_band_as_longer_timeframes_serve_it(synthetic_csv, capsys):
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", "naive", "--json", "--timeframe", "5m"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_version"] == "naive" and report["origins"] == 1500 // 5 - 60 - 10 + 1
    for step in report["steps"]:
        assert step["mae_ratio"] == 1.0 and step["dm_p_value"] == 1.0, "the last close is the naive forecast itself"
        assert 0.0 < step["coverage_0.90"] <= 1.0 and 0.0 < step["coverage_static_0.90"] <= 1.0


def test_evaluate_skips_what_the_model_was_trained_on(shipped_model, shared_csv, capsys):
    assert main(["evaluate", "--csv", str(shared_csv), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    trained_until = read_metadata(artifact_at(shipped_model))["training"]["trained_until_ts"]
    assert report["skipped_training_origins"] > 0
    assert report["origins"] == 20_160 - report["skipped_training_origins"] - 59 - 10
    assert trained_until > 0
    for step in report["steps"]:
        assert step["mae_ratio"] <= 1.0, f"step {step['step']}: model is worse than naive on unseen candles"
        assert 0.4 < step["direction_accuracy"] < 0.6
        for level in ("0.80", "0.90", "0.95"):
            assert abs(step[f"coverage_{level}"] - float(level)) <= 0.02, f"step {step['step']}: {level} interval off nominal"


@pytest.mark.slow
def test_train_command_writes_an_artifact(synthetic_csv, tmp_path, capsys):
    out = tmp_path / "cli-model"
    assert main(["train", "--csv", str(synthetic_csv), "--epochs", "1", "--folds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "epoch 1/1: loss" in printed.err and "training: 100%" not in printed.err, "no bar off a terminal: a line an epoch"
    assert "holdout" in printed.out
    metadata = read_metadata(artifact_at(out))
    assert metadata["training"]["data"] == "synthetic.csv: 1500 1m candles, 2025-01-01 00:00 to 2025-01-02 00:59 UTC"
    assert metadata["timeframe"] == "1m"
    assert len(metadata["selection"]["folds"]) == 2


@pytest.mark.slow
def test_compare_scores_every_variant_on_rolling_folds_and_the_holdout(synthetic_csv, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert main(["compare", "--csv", str(synthetic_csv), "--epochs", "1", "--features", "relative_closes,log_returns+range",
                 "--losses", "mae", "--train-days", "all", "--folds", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [row["variant"] for row in rows] == ["relative_closes, mae, train all", "log_returns+range, mae, train all"]
    for row in rows:
        assert len(row["fold_mean_ratios"]) == 2 and len(row["epochs_run"]) == 2
        assert row["validation_mean_ratio"] == pytest.approx(sum(row["fold_mean_ratios"]) / 2, abs=1e-5)
        assert len(row["holdout_mae_ratio"]) == len(row["holdout_raw_mae_ratio"]) == len(row["shrinkage"]) == 10
    printed = capsys.readouterr()
    assert "fold 2/2" in printed.err and "log_returns+range, mae, train all" in printed.out


def test_compare_refuses_an_unknown_feature_before_training(synthetic_csv, capsys):
    assert main(["compare", "--csv", str(synthetic_csv), "--features", "relative_closes+spread"]) == 2
    assert "unknown feature 'relative_closes+spread'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_json_reports_every_engine_in_one_run(tiny_model, capsys):
    assert main(["bench", "--model", str(tiny_model), "--repeats", "5", "--ticks", "3", "--deploy-ticks", "0",
                 "--batch-origins", "300", "--watch-markets", "2", "--watch-minutes", "2", "--alert-rules", "3", "--live-samples", "0",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["serving_engine"] == "native"
    assert set(report["forecast_ms"]) == {"native", "onnx", "keras", "litert", "predict_loop"}
    for timing in report["forecast_ms"].values():
        assert 0 < timing["median"] <= timing["p99"]
    assert set(report["speedup_vs_predict_loop"]) == set(report["batch_origins_per_second"]) == {"native", "onnx", "keras", "litert"}
    assert all(rate > 0 for rate in report["batch_origins_per_second"].values())
    assert set(report["engines_path_relative_difference"]) == {"native", "onnx", "litert"}
    assert max(report["engines_path_relative_difference"].values()) <= 1e-4, "the engines forecast the same path"
    assert report["compute_floor_ms"] > 0 and report["single_core_matmul_gmacs"] > 0
    # Both sides are rounded figures: the ratio to 0.01, the median and the floor to 0.001 ms.
    assert report["serving_engine_to_floor"] == pytest.approx(report["forecast_ms"]["native"]["median"] / report["compute_floor_ms"], rel=0.01, abs=0.005)
    assert report["history_24h_seconds"] > 0 and report["evaluate_10000_origins_seconds"] > 0
    assert set(report["metrics_ms_per_tick"]) == {"single_process", "multiprocess"}
    assert all(value > 0 for value in report["metrics_ms_per_tick"].values())
    assert 0 < report["tick_ms_p50"] <= report["tick_ms_p95"] and 0 < report["tick_with_a_shadow_ms_p50"] <= report["tick_with_a_shadow_ms_p95"]
    assert report["model_version"] == read_metadata(artifact_at(tiny_model))["version"]
    watch = report["watchlist"]
    assert watch["markets"] == 2 and watch["ticks_timed"] >= 2 and watch["origins_missing"] == 0
    assert 0 < watch["close_to_forecast_seconds_p50"] <= watch["close_to_forecast_seconds_p95"] and watch["resident_mb"] > 0
    alerts = watch["alerts"]
    assert alerts["rules"] == 3 and alerts["delivered"] == alerts["firings"] and alerts["received_twice"] == 0
    assert report["live"] is None and report["deploy"] is None and report["resident_mb_by_engine"] is None
    assert report["skipped"] == []
    offline = report["offline_cold_start"]
    assert offline["markets"] == 4 and 0 < offline["first_forecast_seconds"] <= offline["every_forecast_seconds"]


def test_bench_without_playwright_skips_only_the_browser_run_with_one_line():
    from chronoprice.bench.engines import unmeasurable

    assert unmeasurable(40, find_spec=lambda name: None) == [
        "the price painted in Chromium: Playwright is a test requirement (pip install -r requirements-dev.txt)"]
    assert unmeasurable(0, find_spec=lambda name: None) == [] and unmeasurable(40) == []


def test_alert_delivery_is_timed_from_each_firing_to_its_first_arrival():
    from chronoprice.bench.watchlist import delivery_report
    from chronoprice.store.alerts import Firing

    def firing(rule_id, fired_ms, state="delivered"):
        return Firing(rule_id, 60_000, fired_ms, "BTC/USDT", "1m", "price_cross", "", state)

    firings = [firing("a", 1_000_000), firing("b", 1_000_000), firing("c", 1_002_000, state="pending")]
    received = [(1000.5, "a:60000", {}), (1001.0, "b:60000", {}), (1003.0, "a:60000", {})]  # a sent again
    report = delivery_report(firings, received)
    assert report["firings"] == 3 and report["delivered"] == 2 and report["received_twice"] == 1
    assert report["delivery_seconds_max"] == 1.0 and report["delivery_seconds_p50"] == 0.75


def test_bench_times_every_call_after_one_untimed_warm_up():
    clock = FakeClock(0.0)
    durations = iter([9.0, 0.004, 0.001, 0.003, 0.002, 0.005])  # the 9 s first call is compilation

    def action():
        clock.seconds += next(durations)

    assert timings_ms(action, repeats=5, clock=clock) == pytest.approx([4.0, 1.0, 3.0, 2.0, 5.0])
    with pytest.raises(StopIteration):
        action()


def test_the_compute_floor_counts_the_multiply_adds_of_both_lstms_in_every_window():
    from chronoprice.model.network import build_model

    per_step = 3 * 256 + 64 * 256 + 64 * 128 + 32 * 128  # input and recurrent matrices of both layers
    assert forecast_macs(build_model(channels=3), window=60, horizon=10) == 10 * 60 * per_step == 17_664_000


def test_backfill_stores_history_and_forecasts_it(tiny_model, tmp_path, capsys):
    db_path = tmp_path / "backfill.db"
    code = main(["backfill", "--source", "demo", "--db", str(db_path), "--model", str(tiny_model), "--hours", "2"])
    assert code == 0
    db = open_store(db_path)
    market = Market("demo", "BTC/USDT", "1m")
    candles = db.execute("select count(*) from candles where exchange = ?", [market.exchange]).fetchone()[0]
    assert 119 <= candles <= 120
    origins = db.execute("select count(distinct origin_ts) from forecasts").fetchone()[0]
    assert origins == candles - 59
    assert "historical forecasts written" in capsys.readouterr().out


def test_evaluate_refuses_a_csv_the_model_has_already_seen(tiny_model, synthetic_csv, capsys):
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model)]) == 2
    assert "no origin after the candles the model was trained" in capsys.readouterr().err


def test_cli_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["evaluate", "--csv", str(tmp_path / "absent.csv")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "absent.csv" in error
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["worker", "--source", "demo", "--db", str(tmp_path / "w.db"), "--metrics-port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: --metrics-port={port}: Address already in use on 127.0.0.1\n"


def test_evaluate_reports_baselines_tests_and_every_interval_level(tiny_model, synthetic_csv, tmp_path, capsys):
    report_path = tmp_path / "report.html"
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model), "--include-training-data",
                 "--json", "--report", str(report_path)]) == 0
    step = json.loads(capsys.readouterr().out)["steps"][0]
    for key in ("mae_ratio_drift", "mae_ratio_moving_average", "dm_statistic", "dm_p_value", "direction_ci_low",
                "direction_ci_high", "coverage_0.80", "coverage_0.90", "coverage_0.95", "coverage_static_0.90"):
        assert key in step
    assert step["direction_ci_low"] <= step["direction_accuracy"] <= step["direction_ci_high"]
    assert step["coverage"] == step["coverage_0.90"]
    html = report_path.read_text()
    assert "MAE ratio to the last close by step" in html and "Band coverage by step" in html
    assert "name='viewport'" in html and "<script src='plotly.min.js'>" in html and (tmp_path / "plotly.min.js").exists()
    assert "the model never saw (from 20" in html and "compared with repeating the last close" in html, "a dated verdict"
    assert "95 % interval" in html and report_path.stat().st_size < 2_000_000


def test_evaluate_backtests_the_forecasts_after_costs(tiny_model, synthetic_csv, tmp_path, capsys):
    report_path = tmp_path / "report.html"
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model), "--include-training-data", "--json",
                 "--backtest", "--backtest-step", "3", "--fee", "0.0005", "--spread", "0.0002", "--report", str(report_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    trading = report["backtest"]
    assert trading["step"] == 3 and trading["candles"] == report["origins"] and "curves" not in trading
    assert trading["threshold"] == pytest.approx(2 * (0.0005 + 0.0001))
    assert set(trading["strategies"]) == {"long_flat", "long_short", "buy_and_hold", "flat"}
    closes = make_candles(1500)["close"].to_numpy()
    held = closes[59 : 59 + report["origins"] + 1]  # the first scored origin's close to the last one's next close
    assert trading["strategies"]["buy_and_hold"]["gross_return"] == pytest.approx(held[-1] / held[0] - 1)
    assert "Backtest after costs" in report_path.read_text()


@pytest.mark.parametrize("flags", [["--fee", "-0.1"], ["--spread", "abc"], ["--backtest-step", "0"]])
def test_bad_backtest_flags_are_refused_by_name(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--csv", "x.csv", "--backtest", *flags])
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


def test_a_backtest_step_past_the_horizon_is_one_clear_line(tiny_model, synthetic_csv, capsys):
    assert main(["evaluate", "--csv", str(synthetic_csv), "--model", str(tiny_model), "--include-training-data",
                 "--backtest", "--backtest-step", "11"]) == 2
    assert "between 1 and 10" in capsys.readouterr().err


@pytest.fixture
def collected_store(tmp_path):
    """A store as the app leaves it: 1,500 closed 5m candles of BTC/USDT from binance with three
    missing, and fewer from kraken."""
    from chronoprice.market.candles import aggregate_candles
    from chronoprice.store.records import upsert_candles

    path = tmp_path / "collected.db"
    db = open_store(path)
    five_minutes = aggregate_candles(make_candles(1500 * 5), 300_000)
    upsert_candles(db, Market("binance", "BTC/USDT", "5m"), five_minutes.drop(index=[700, 701, 702]))
    upsert_candles(db, Market("kraken", "BTC/USDT", "5m"), five_minutes.tail(800))
    db.close()
    return path, five_minutes


@pytest.mark.slow
def test_train_from_the_store_fits_the_collected_candles_and_serves_their_timeframe(collected_store, tmp_path, capsys):
    path, five_minutes = collected_store
    out = tmp_path / "from-store"
    assert main(["train", "--db", str(path), "--symbol", "btc/usdt", "--timeframe", "5m", "--days", "4",
                 "--epochs", "1", "--folds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "3 gaps" not in printed.err and "1 gaps in the stored candles (3 candles missing)" in printed.err
    metadata = read_metadata(artifact_at(out))
    assert metadata["timeframe"] == "5m"
    first_kept = five_minutes["ts"].iloc[-1] - 4 * 86_400_000 + 300_000  # the last 4 days: 1,152 candles, 3 of them missing
    assert metadata["training"]["data"].startswith("store binance BTC/USDT 5m: 1149 candles, ")
    assert metadata["training"]["first_ts"] == first_kept and metadata["training"]["last_ts"] == five_minutes["ts"].iloc[-1]


def test_train_from_the_store_names_its_artifact_after_the_market_and_says_what_is_missing(collected_store, capsys):
    from chronoprice.cli.main import training_data
    from chronoprice.cli.parser import build_parser

    path, _ = collected_store
    _, description, out = training_data(build_parser().parse_args(["train", "--db", str(path), "--symbol", "BTC/USDT", "--timeframe", "5m",
                                                                   "--exchange", "kraken"]))
    assert out.parts[-3:-1] == ("models", "trained") and "800 candles" in description
    assert re.fullmatch(r"kraken-btc-usdt-5m-\d{8}-\d{6}", out.name), "timed: a later run never overwrites a registered model"
    assert main(["train", "--db", str(path), "--timeframe", "5m"]) == 2
    assert "needs --symbol" in capsys.readouterr().err
    assert main(["train", "--db", str(path), "--symbol", "ETH/USDT"]) == 2
    assert "no ETH/USDT 1m candles; it holds: binance BTC/USDT 5m, kraken BTC/USDT 5m" in capsys.readouterr().err


def test_evaluate_reads_a_file_of_longer_candles_and_refuses_to_split_them(synthetic_csv, tmp_path, capsys):
    """A 5m file (here: the synthetic minutes aggregated and written as gzipped freqtrade JSON)
    is read at its own timeframe, aggregated upward on request, never downward."""
    import gzip

    from chronoprice.market.candle_files import read_candle_file

    five = read_candle_file(synthetic_csv, "5m").candles
    path = tmp_path / "five.json.gz"
    path.write_bytes(gzip.compress(json.dumps(five.to_numpy().tolist()).encode()))
    assert main(["evaluate", "--csv", str(path), "--model", "naive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timeframe"] == "5m"
    assert main(["evaluate", "--csv", str(path), "--model", "naive", "--json", "--timeframe", "15m"]) == 0
    assert json.loads(capsys.readouterr().out)["origins"] == len(five) // 3 - 60 - 10 + 1
    assert main(["evaluate", "--csv", str(path), "--model", "naive", "--timeframe", "1m"]) == 2
    assert "1m candles cannot be made from them" in capsys.readouterr().err


def test_evaluate_scores_every_origin_of_a_file_older_than_the_models_training(shipped_model, synthetic_csv, tmp_path, capsys):
    """The shipped model was trained on March 2023: a 2021 file holds nothing it saw, so nothing
    is skipped (it used to refuse such a file as 'already seen')."""
    from chronoprice.market.candle_files import read_candle_file

    candles = read_candle_file(synthetic_csv).candles
    candles["ts"] -= 4 * 365 * 86_400_000  # January 2021
    path = tmp_path / "old.csv"
    candles.rename(columns={"ts": "open_time"}).to_csv(path, index=False)
    assert main(["evaluate", "--csv", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped_training_origins"] == 0 and report["origins"] == len(candles) - 60 - 10 + 1


def test_the_readme_command_reference_matches_the_parser():
    """Every command has a line in README's "Command line" block, every flag written there exists,
    and every flag the parser has is named somewhere in README."""
    import argparse

    from chronoprice.cli.parser import build_parser
    from chronoprice.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)).choices
    problems = []
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings if flag.startswith("--")} - {"--help"}
        lines = [line for line in block.splitlines() if re.match(rf"python -m chronoprice {name}(\s|$)", line)]
        written = set(re.findall(r"--[a-z][a-z-]*", " ".join(lines)))
        problems += [f"{name}: no line"] * (not lines) + [f"{name}: README names {flag}, the parser has none" for flag in written - flags]
        problems += [f"{name}: {flag} is not in README" for flag in sorted(flags) if flag not in readme]
    assert problems == []


def test_evaluate_scores_an_ar5_fitted_only_on_the_candles_before_the_scored_origins(caplog):
    from chronoprice.cli.evaluate import evaluate_file, fitted_autoregression
    from chronoprice.market.candle_files import CandleFile
    from chronoprice.model.forecasters import NaiveBandForecaster

    rng = np.random.default_rng(11)
    returns = np.zeros(3000)
    for index in range(1, 3000):  # log returns of an AR(1) with coefficient 0.5
        returns[index] = 0.5 * returns[index - 1] + rng.normal(0, 1e-3)
    closes = 100 * np.exp(np.cumsum(returns))
    ts = 1_700_000_100_000 + np.arange(3000) * 60_000
    candles = pd.DataFrame({"ts": ts, "open": closes, "high": closes * 1.001, "low": closes * 0.999, "close": closes,
                            "volume": 1.0})
    loaded = CandleFile("ar1.csv", candles, "1m", "1m", [], pd.DataFrame(columns=["after_ts", "missing"]))
    autoregression = fitted_autoregression([(loaded, 2000)], 10)
    assert autoregression.coefficients[0] == pytest.approx(0.5, abs=0.06)
    assert np.abs(autoregression.coefficients[1:]).max() < 0.08
    evaluated = evaluate_file(NaiveBandForecaster(window=60), loaded, 2000, 0.9, True, autoregression=autoregression)
    table = evaluated["table"]
    assert table["mae_ratio_ar"].iloc[0] < 0.93, "the AR(5) knows this series' autocorrelation"
    assert table["mae_ratio_ar"].iloc[-1] == pytest.approx(1.0, abs=0.05), "ten steps on, the effect has died out"
    candles.loc[1500, "close"] *= 50  # a spike in the scored part: an AR fitted on it would be thrown far off
    assert fitted_autoregression([(loaded, 1000)], 10).coefficients[0] == pytest.approx(0.5, abs=0.1)
    caplog.set_level("INFO")
    assert fitted_autoregression([(loaded, 999)], 10) is None
    assert "AR(5) not scored: 999 candles before the scored origins" in caplog.text
