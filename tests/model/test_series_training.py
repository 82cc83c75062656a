"""A model per timeframe: gap-free runs of many files, pooled verdicts, the AR baseline, and the
shipped model of each timeframe served and registered as its champion."""

import json
import re
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from chronoprice.evaluation.pooling import rule_failures, step_verdicts, winkler_scores
from chronoprice.market.demo import DemoSource
from chronoprice.model.artifact import artifact_at, timeframe_siblings
from chronoprice.model.features import gap_free_runs
from chronoprice.model.forecasters import AutoregressiveForecaster, fit_autoregression, load_forecaster
from chronoprice.model.series_training import (
    TrainingFile,
    pooled_log_return_scale,
    sampled_pairs,
    span_runs,
)
from chronoprice.model.training import Variant
from chronoprice.service.tick import Ticker
from chronoprice.store.registry import read_models
from chronoprice.testing.harness import FakeClock

pytestmark = pytest.mark.slow  # trainings: the whole suite runs it, `-m "not slow"` does not

MINUTE = 60_000


def candle_file(name: str, closes: np.ndarray, ts: np.ndarray) -> TrainingFile:
    candles = pd.DataFrame({"ts": ts, "open": closes, "high": closes * 1.001, "low": closes * 0.999, "close": closes,
                            "volume": np.ones(len(closes))})
    return TrainingFile(name, candles, MINUTE)


def walk(count: int, start: float, seed: int) -> np.ndarray:
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 1e-3, count)))


def test_no_window_crosses_a_gap_or_a_file():
    ts = np.arange(1000) * MINUTE
    ts[600:] += 30 * MINUTE  # a 30-minute outage after the 600th candle
    btc, eth = candle_file("btc", walk(1000, 40_000.0, 1), ts), candle_file("eth", walk(800, 2_000.0, 2), np.arange(800) * MINUTE)
    assert [len(run) for run in gap_free_runs(btc.candles, MINUTE, 61)] == [600, 400]
    runs = [run for each in (btc, eth) for run in span_runs(each, 0.0, 1.0, 0, 61)]
    scale = pooled_log_return_scale(runs)
    assert scale == pytest.approx(1e-3, rel=0.1), "the 40,000 -> 2,000 jump between the files is in no return"
    x, y = sampled_pairs(runs, scale, Variant(), 60, 10**6, np.random.default_rng(0))
    assert len(x) == (600 - 60) + (400 - 60) + (800 - 60)
    assert np.abs(y).max() < 6, "a target across the gap or the files would be hundreds of scales"
    validation = span_runs(btc, 0.85, 1.0, 60, 70)
    assert len(validation) == 1 and len(validation[0]) == 150 + 60, "the span starts a window early, after the gap"


def result_of(actual: np.ndarray, mean: np.ndarray, naive: np.ndarray, width: float) -> dict:
    origin = naive[:, :1]
    return {"actual": actual, "mean": mean, "naive": naive, "origin_close": origin,
            "lower": mean - width, "upper": mean + width, "naive_lower": naive - width, "naive_upper": naive + width}


def test_pooled_verdicts_know_the_answer_on_synthetic_series():
    rng = np.random.default_rng(3)
    origins = 2000
    prices = 100 + rng.normal(0, 1, (origins, 3)).cumsum(axis=1)
    naive = np.full((origins, 3), 100.0)
    same = step_verdicts([result_of(prices, naive, naive, 2.0)], 0.9)
    assert same["mae_ratio"].tolist() == [1.0] * 3 and same["dm_p_value"].tolist() == [1.0] * 3
    assert same["direction_accuracy"].isna().all(), "the last close calls no direction"
    halfway = naive + 0.5 * (prices - naive)  # halves every error
    files = [result_of(prices[:1000], halfway[:1000], naive[:1000], 2.0), result_of(prices[1000:], halfway[1000:], naive[1000:], 2.0)]
    pooled = step_verdicts(files, 0.9)
    assert pooled["origins"].tolist() == [origins] * 3
    assert pooled["mae_ratio"].tolist() == pytest.approx([0.5] * 3)
    assert (pooled["dm_statistic"] < 0).all() and (pooled["dm_p_value"] < 1e-6).all()
    assert (pooled["interval_score_ratio"] < 1).all() and (pooled["interval_dm_p_value"] < 0.05).all()
    assert rule_failures(pooled, {"a": pooled.assign(coverage=0.9)}, {"AR(5)": {"mean_ratio": 0.9, "model_mean_ratio": 0.5}}) == []
    failures = rule_failures(same, {"a": same.assign(coverage=0.8)},
                             {"AR(5)": {"mean_ratio": 0.9, "model_mean_ratio": 1.0}, "AutoETS": {"mean_ratio": 1.1, "model_mean_ratio": 1.0}})
    assert len(failures) == 3 and "step 1" in failures[0] and "80.0% on a" in failures[1] and "AR(5)" in failures[2]


def test_the_interval_score_is_the_width_plus_the_penalty_for_missing():
    assert winkler_scores(np.array([9.0, 9.0]), np.array([11.0, 11.0]), np.array([10.0, 12.0]), 0.9).tolist() == pytest.approx([2.0, 22.0])


def test_the_autoregression_recovers_its_coefficients_and_runs_recursively():
    rng = np.random.default_rng(0)
    returns = np.zeros(30_000)
    for t in range(2, len(returns)):
        returns[t] = 0.3 * returns[t - 1] - 0.2 * returns[t - 2] + rng.normal(0, 1e-3)
    closes = 100 * np.exp(np.cumsum(returns))
    coefficients = fit_autoregression([closes[:15_000], closes[15_000:]])
    assert coefficients[:2] == pytest.approx([0.3, -0.2], abs=0.03) and np.abs(coefficients[2:]).max() < 0.03
    window = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 101.0])
    path = AutoregressiveForecaster(np.array([0.5, 0, 0, 0, 0]), 2).forecast(window)["mean"][0]
    step = np.log(1.01) * 0.5
    assert path == pytest.approx([101 * np.exp(step), 101 * np.exp(step + step * 0.5)])


def test_the_shipped_model_of_another_timeframe_is_served_and_registered_as_its_champion(tmp_path, tiny_model):
    base = tmp_path / "chronoprice-lstm"
    for source in artifact_at(tiny_model).base.parent.glob(f"{artifact_at(tiny_model).base.name}.*"):
        shutil.copy(source, base.with_suffix(source.suffix))
        shutil.copy(source, tmp_path / f"chronoprice-lstm-5m{source.suffix}")
    five = artifact_at(tmp_path / "chronoprice-lstm-5m").metadata_path
    five.write_text(json.dumps({**json.loads(five.read_text()), "timeframe": "5m", "version": "lstm-five"}))
    assert timeframe_siblings(base, ("1m", "5m", "15m", "1h")) == {"5m": tmp_path / "chronoprice-lstm-5m"}

    clock = FakeClock(1_780_000_000.0)
    ticker = Ticker(DemoSource(history=1200, now_ms=lambda: int(clock() * 1000)), tmp_path / "served.db",
                    lambda: load_forecaster(base), clock=clock, progress=False,
                    timeframe_models={"5m": lambda: load_forecaster(tmp_path / "chronoprice-lstm-5m")})
    assert ticker.forecaster("5m").version == "lstm-five"
    assert ticker.forecaster("1h").name == "naive", "a timeframe with no model keeps the last close"
    assert {(each.version, each.timeframe, each.status) for each in read_models(ticker.db())} == {
        (ticker.forecaster("1m").version, "1m", "champion"), ("lstm-five", "5m", "champion")}
    assert ticker.tick("BTC/USDT", "5m", force=True).model_version == "lstm-five"
    ticker.wait_for_histories()


def test_train_models_trains_judges_and_says_whether_a_model_passes(tmp_path, capsys):
    from chronoprice.cli.main import main

    for number, name in enumerate(("binance_btcusdt_1h_x.csv", "binance_ethusdt_1h_x.csv")):
        closes = walk(1200, 100.0 * (number + 1), number)
        ts = pd.to_datetime(1_599_998_400_000 + np.arange(1200) * 3_600_000, unit="ms", utc=True)
        pd.DataFrame({"open_time": ts.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "open": closes, "high": closes * 1.002,
                      "low": closes * 0.998, "close": closes, "volume": 1.0}).to_csv(tmp_path / name, index=False)
    assert main(["train-models", "--data", str(tmp_path), "--timeframes", "1h", "--settings", "AB",
                 "--out-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "pooled over the validation spans" in printed and "1h: " in printed
    metadata = json.loads((tmp_path / "out" / "chronoprice-lstm-1h.json").read_text())
    assert metadata["timeframe"] == "1h" and [each["file"] for each in metadata["training"]["files"]] == [
        "binance_btcusdt_1h_x.csv", "binance_ethusdt_1h_x.csv"]
    assert metadata["validation"]["pooled"][0]["origins"] == 2 * (180 - 10 + 1)
    assert load_forecaster(tmp_path / "out" / "chronoprice-lstm-1h").version == metadata["version"]
    assert ("does not pass" in printed) == bool(metadata["validation"]["failures"])
    assert main(["evaluate", "--csv", str(tmp_path / "binance_ethusdt_1h_x.csv"), "--model",
                 str(tmp_path / "out" / "chronoprice-lstm-1h"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["origins"] == 1200 - 1020 - 10, "evaluate scores a training file only from its validation span on"
    assert main(["evaluate", "--csv", str(tmp_path / "binance_*_1h_x.csv"), "--model",
                 str(tmp_path / "out" / "chronoprice-lstm-1h"), "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [each["file"] for each in pooled["files"]] == ["binance_btcusdt_1h_x.csv", "binance_ethusdt_1h_x.csv"]
    assert [row["origins"] for row in pooled["pooled"]] == [2 * (1200 - 1020 - 10)] * 10, "each file its own series"
    assert 0 <= pooled["pooled"][0]["dm_p_value"] <= 1 and pooled["pooled"][0]["interval_score_ratio"] > 0
    ar_mean_ratio = np.mean([row["mae_ratio_ar"] for row in pooled["pooled"]])
    assert ar_mean_ratio == pytest.approx(metadata["validation"]["baselines"]["AR(5)"]["mean_ratio"], abs=0.002), (
        "evaluate's AR(5) is fitted on what train-models' was (the candles before the validation spans)")
    assert main(["evaluate", "--csv", str(tmp_path / "nothing_*.csv"), "--model", "naive"]) == 2
    assert "matches no file" in capsys.readouterr().err
    selection = metadata["selection"]
    assert [each["setting"] for each in selection["candidates"]] == ["A", "B"]
    assert selection["score"] == min(each["score"] for each in selection["candidates"])
    assert selection["setting"] == min(selection["candidates"], key=lambda each: each["score"])["setting"]
    baselines = metadata["validation"]["baselines"]
    assert set(baselines) == {"AR(5)", "AutoETS", "AutoTheta"}
    assert baselines["AutoETS"]["origins"] == 2 * len(range(0, 180 - 10 + 1, 10)), "every 10th origin of each span"
    assert "AutoTheta: mean ratio" in printed


def two_candle_files(folder, closes: np.ndarray, ts: np.ndarray) -> tuple:
    """A CSV of the first 500 candles and a freqtrade JSON of the rest, at another price level."""
    pd.DataFrame({"open_time": pd.to_datetime(ts[:500], unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                  "open": closes[:500], "high": closes[:500] * 1.001, "low": closes[:500] * 0.999,
                  "close": closes[:500], "volume": 1.0}).to_csv(folder / "btc.csv", index=False)
    rows = [[int(t), c, c * 1.001, c * 0.999, c, 1.0] for t, c in zip(ts[500:], closes[500:] / 15)]
    (folder / "eth.json").write_text(json.dumps(rows))
    return folder / "btc.csv", folder / "eth.json"


def test_compare_and_train_on_several_files_take_each_as_its_own_series(tmp_path, capsys):
    from chronoprice.cli.main import main

    closes = walk(900, 30_000.0, 3)
    ts = 1_700_000_100_000 + np.arange(900) * MINUTE  # on the 5-minute grid too
    btc, eth = two_candle_files(tmp_path, closes, ts)
    assert main(["compare", "--csv", str(btc), "--csv", str(eth), "--epochs", "1", "--features", "log_returns",
                 "--losses", "mae,huber"]) == 0
    printed = capsys.readouterr().out
    assert "log_returns, mae, train all" in printed and "log_returns, huber, train all" in printed
    assert "holdout" not in printed, "several files keep their validation spans for train's one judgment"
    assert main(["compare", "--csv", str(btc), "--csv", str(eth), "--train-days", "3"]) == 2
    assert "--train-days and --folds apply to one file" in capsys.readouterr().err
    out = tmp_path / "several"
    assert main(["train", "--csv", str(btc), "--csv", str(eth), "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pooled over the validation spans" in printed
    assert "does not pass" in printed or "passes the rule" in printed
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert [each["file"] for each in metadata["training"]["files"]] == ["btc.csv", "eth.json"]
    assert metadata["training"]["rule"].startswith("train --csv, several files")
    assert metadata["validation"]["pooled"][0]["origins"] == (500 - 425 - 10 + 1) + (400 - 340 - 10 + 1)
    assert load_forecaster(out).version == metadata["version"]
    assert main(["train", "--csv", str(tmp_path / "*.csv"), "--csv", str(tmp_path / "eth.json"), "--folds", "2"]) == 2
    assert "--folds and --train-days apply to one file" in capsys.readouterr().err
    five = tmp_path / "five"
    five.mkdir()
    two_candle_files(five, closes[::5], ts[::5])  # 180 candles 5 minutes apart
    assert main(["train", "--csv", str(btc), "--csv", str(five / "btc.csv")]) == 2
    assert "hold 1m and 5m candles: give --timeframe 5m" in capsys.readouterr().err


def test_the_peers_score_every_nth_origin_beside_the_model_and_say_how_long_they_took(tmp_path, capsys):
    from chronoprice.cli.main import main

    closes = 100 + 0.05 * np.arange(400)  # a steady trend: a model with a trend beats the last close
    ts = pd.to_datetime(1_699_999_980_000 + np.arange(400) * MINUTE, unit="ms", utc=True)
    pd.DataFrame({"open_time": ts.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "open": closes, "high": closes + 0.1, "low": closes - 0.1, "close": closes,
                  "volume": 1.0}).to_csv(tmp_path / "trend.csv", index=False)
    assert main(["evaluate", "--csv", str(tmp_path / "trend.csv"), "--model", "naive", "--peers", "--stride", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    origins = report["origins"]
    for name in ("AutoETS", "AutoTheta"):
        assert report["peers"][name]["origins"] == len(range(0, origins, 7)) and report["peers"][name]["fit_seconds"] >= 0
        assert report["peers"][name]["model_mean_ratio"] == pytest.approx(1.0), "the last close against itself"
        assert all(step[f"mae_ratio_{name}"] < 0.96 for step in report["steps"]), f"{name} follows the trend"
    assert max(step["mae_ratio_AutoETS"] for step in report["steps"]) < 0.01, "ETS's additive trend is this series"
    assert 0.5 < report["steps"][-1]["mae_ratio_AutoTheta"] < 0.6, "Theta extrapolates half the trend"
    assert main(["evaluate", "--csv", str(tmp_path / "trend.csv"), "--model", "naive", "--stride", "7"]) == 2
    assert "pass --peers too" in capsys.readouterr().err


def test_a_peer_that_cannot_fit_gives_the_last_close_and_is_counted():
    from chronoprice.model.forecasters import StatisticalPeer

    class Unfittable:
        def forecast(self, y, h):
            raise ValueError("no fit")

    peer = StatisticalPeer("broken", Unfittable, horizon=3)
    windows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert peer.forecast(windows)["mean"].tolist() == [[3.0] * 3, [6.0] * 3] and peer.failures == 2


def test_without_statsforecast_the_peers_say_how_to_install_them(monkeypatch):
    from chronoprice.model.forecasters import PEERS_INSTALL, PeersUnavailable, statistical_peers

    monkeypatch.setitem(sys.modules, "statsforecast.models", None)
    with pytest.raises(PeersUnavailable, match=re.escape(PEERS_INSTALL)):
        statistical_peers()
