import threading
import time

import numpy as np
import pandas as pd
import pytest

from chronoprice.candles import find_gaps
from chronoprice.exchange_sim import Fault
from chronoprice.forecast import load_forecaster
from chronoprice.pipeline import Pipeline
from chronoprice.sources import LiveSource
from chronoprice.store import read_candles, read_latest_forecast
from tests.conftest import MINUTE_MS

SYMBOL = "BTC/USDT"
HISTORY = 120  # candles on a cold start; the pipeline forecasts them in the background


class FakeClock:
    def __init__(self):
        self.seconds = 0.0

    def __call__(self):
        return self.seconds


@pytest.fixture
def pipeline(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=2)
    clock = FakeClock()
    pipeline = Pipeline(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    pipeline.test_clock = clock
    return pipeline


def test_tick_stores_the_exchanges_closed_candles_and_a_ten_step_forecast(pipeline, exchange):
    status = pipeline.tick(SYMBOL)
    assert status.error is None and status.exchange == "binance" and status.new_candles == HISTORY
    market = pipeline.market(SYMBOL, "binance")
    exchange.advance(3)
    pipeline.test_clock.seconds += 10
    status = pipeline.tick(SYMBOL)
    assert status.new_candles == 3
    stored = read_candles(pipeline.db(), market)
    closed = exchange.closed_candles(SYMBOL)
    pd.testing.assert_frame_equal(stored, closed.tail(len(stored)).reset_index(drop=True))
    assert find_gaps(stored["ts"].to_numpy(), MINUTE_MS).empty
    forecast = read_latest_forecast(pipeline.db(), market)
    assert forecast["origin_ts"].unique().tolist() == [stored["ts"].iloc[-1]] == [status.forecast_origin_ts]
    assert forecast["step"].tolist() == list(range(1, 11))
    assert (forecast["target_ts"] - forecast["origin_ts"]).tolist() == [step * MINUTE_MS for step in range(1, 11)]
    assert (forecast["lower"] < forecast["predicted"]).all() and (forecast["predicted"] < forecast["upper"]).all()
    assert status.model_version == forecast["model_version"].iloc[0]


def test_ticks_run_at_most_once_per_refresh_interval(pipeline, exchange):
    pipeline.tick(SYMBOL)
    fetches = exchange.requests["/api/v3/klines"]
    exchange.advance(1)
    pipeline.test_clock.seconds += 5
    assert pipeline.tick(SYMBOL).new_candles == HISTORY, "within the interval: the stored state, no fetch"
    assert exchange.requests["/api/v3/klines"] == fetches
    pipeline.test_clock.seconds += 5
    assert pipeline.tick(SYMBOL).new_candles == 1
    assert exchange.requests["/api/v3/klines"] == fetches + 1


def test_concurrent_callers_share_one_tick(pipeline, exchange):
    exchange.queue(Fault(path="/klines", status=0, delay_seconds=0.5))  # a slow exchange
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(pipeline.tick(SYMBOL))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert exchange.requests["/api/v3/klines"] == 1
    assert len(statuses) == 8
    assert sum(status.new_candles == HISTORY for status in statuses) == 1, "one caller ran the tick"


def test_a_failing_exchange_keeps_the_last_good_state_with_the_error(pipeline, exchange):
    first = pipeline.tick(SYMBOL)
    exchange.advance(2)
    exchange.queue(Fault(path="/klines", status=503, times=2))  # both attempts of one tick
    pipeline.test_clock.seconds += 10
    status = pipeline.tick(SYMBOL)
    assert "unreachable" in status.error
    assert status.newest_ts == first.newest_ts
    assert status.forecast_origin_ts == first.forecast_origin_ts
    pipeline.test_clock.seconds += 10
    recovered = pipeline.tick(SYMBOL)
    assert recovered.error is None and recovered.new_candles == 2


def test_missing_model_still_stores_candles_and_says_model_unavailable(exchange, db_path, tmp_path):
    source = LiveSource("binance", exchange.url, (), history=HISTORY)
    pipeline = Pipeline(source, db_path, lambda: load_forecaster(tmp_path / "no-model"))
    status = pipeline.tick(SYMBOL)
    assert status.new_candles == HISTORY
    assert status.error.startswith("model unavailable") and "not found" in status.error
    assert read_latest_forecast(pipeline.db(), pipeline.market(SYMBOL, "binance")).empty


def test_processes_sharing_the_database_tick_once_per_interval(pipeline, exchange, db_path, tiny_model):
    other_source = LiveSource("binance", exchange.url, (), history=HISTORY)
    other_process = Pipeline(other_source, db_path, lambda: load_forecaster(tiny_model, "litert"), clock=pipeline.test_clock)
    first = pipeline.tick(SYMBOL)
    fetches = exchange.requests["/api/v3/klines"]
    shared = other_process.tick(SYMBOL)
    assert exchange.requests["/api/v3/klines"] == fetches, "the second process used the first one's tick"
    assert shared == first
    pipeline.test_clock.seconds += 10
    exchange.advance(1)
    assert other_process.tick(SYMBOL).new_candles == 1


def test_cold_start_stores_a_day_and_forecasts_it(exchange, db_path, tiny_model, series):
    source = LiveSource("binance", exchange.url, (), history=1000 + 100, page_limit=1000)
    pipeline = Pipeline(source, db_path, lambda: load_forecaster(tiny_model, "litert"))
    status = pipeline.tick(SYMBOL)
    assert status.new_candles == 1100
    stored = read_candles(pipeline.db(), pipeline.market(SYMBOL, "binance"))
    pd.testing.assert_frame_equal(stored, exchange.closed_candles(SYMBOL).tail(1100).reset_index(drop=True))
    assert wait_for_forecasts(pipeline.db(), 10 * (1100 - 59)) == 10 * (1100 - 59), "history is forecast in the background"


def wait_for_forecasts(db, count):
    for _ in range(300):
        if db["forecasts"].count >= count:
            break
        time.sleep(0.05)
    return db["forecasts"].count


def test_forecast_history_fills_every_origin_once(pipeline):
    pipeline.tick(SYMBOL)
    assert wait_for_forecasts(pipeline.db(), 10 * (HISTORY - 59)) == 10 * (HISTORY - 59), "cold start forecasts its history"
    market = pipeline.market(SYMBOL, "binance")
    ts = read_candles(pipeline.db(), market)["ts"]
    with pipeline.db().conn:
        pipeline.db().execute("delete from forecasts where origin_ts >= ?", [int(ts.iloc[100])])
    assert pipeline.forecast_history(market, int(ts.iloc[80])) == HISTORY - 100
    assert pipeline.forecast_history(market, int(ts.iloc[80])) == 0
    assert pipeline.db()["forecasts"].count == 10 * (HISTORY - 59)


def test_intervals_adapt_to_the_latest_matured_errors(exchange, db_path, tiny_model):
    from chronoprice.evaluation import matured_scores
    from chronoprice.store import read_matured_forecasts

    source = LiveSource("binance", exchange.url, (), history=600)
    pipeline = Pipeline(source, db_path, lambda: load_forecaster(tiny_model, "litert"))
    pipeline.tick(SYMBOL)
    assert wait_for_forecasts(pipeline.db(), 10 * (600 - 59)) == 10 * (600 - 59)
    market, forecaster = pipeline.market(SYMBOL, "binance"), pipeline.forecaster()
    adapted = pipeline._adapted_quantiles(market, forecaster)
    assert not np.allclose(adapted, forecaster.calibrated_quantiles), "enough errors have matured to adapt"
    matured = read_matured_forecasts(pipeline.db(), market)
    scores = matured_scores(matured, read_candles(pipeline.db(), market), MINUTE_MS)
    recent = scores.groupby(matured["step"]).tail(360)
    covered = (recent.to_numpy() <= adapted[matured.loc[recent.index, "step"].to_numpy() - 1]).mean()
    assert 0.88 <= covered <= 0.93, "the adapted 90 % interval covers about 90 % of the recent errors"


def test_a_hole_the_exchange_fills_later_is_repaired_and_forecasts_resume(pipeline, exchange, series):
    full = series[SYMBOL]
    pipeline.tick(SYMBOL)
    market = pipeline.market(SYMBOL, "binance")
    newest = read_candles(pipeline.db(), market)["ts"].iloc[-1]
    missing = [newest + MINUTE_MS * k for k in (2, 3, 4)]
    exchange.series[SYMBOL] = full[~full["ts"].isin(missing)].reset_index(drop=True)
    exchange.advance(8)
    pipeline.test_clock.seconds += 10
    status = pipeline.tick(SYMBOL)
    assert "gap" in status.error and status.forecast_origin_ts is None
    stored = read_candles(pipeline.db(), market)
    assert find_gaps(stored["ts"].to_numpy(), MINUTE_MS)["missing"].tolist() == [3]
    exchange.series[SYMBOL] = full  # the exchange fills the hole
    pipeline.test_clock.seconds += 10
    status = pipeline.tick(SYMBOL)
    assert status.error is None and status.forecast_origin_ts == status.newest_ts
    stored = read_candles(pipeline.db(), market)
    pd.testing.assert_frame_equal(stored, exchange.closed_candles(SYMBOL).tail(len(stored)).reset_index(drop=True))


def test_an_exchange_slower_than_the_client_timeout_is_reported_and_recovered(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=HISTORY, timeout_ms=300, attempts=2, backoff_seconds=0.0)
    clock = FakeClock()
    pipeline = Pipeline(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    first = pipeline.tick(SYMBOL)
    exchange.queue(Fault(path="/klines", status=0, delay_seconds=0.6, times=2))
    exchange.advance(1)
    clock.seconds += 10
    slow = pipeline.tick(SYMBOL)
    assert "unreachable" in slow.error and "RequestTimeout" in slow.error
    assert slow.newest_ts == first.newest_ts
    clock.seconds += 10
    recovered = pipeline.tick(SYMBOL)
    assert recovered.error is None and recovered.forecast_origin_ts == recovered.newest_ts == first.newest_ts + MINUTE_MS


def test_forecasts_come_from_the_stored_highs_lows_and_volumes(exchange, db_path, tiny_model):
    from chronoprice.features import candle_rows

    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=2)
    forecaster = load_forecaster(tiny_model, "litert")
    pipeline = Pipeline(source, db_path, lambda: forecaster, refresh_seconds=10, clock=FakeClock())
    status = pipeline.tick(SYMBOL)
    assert status.error is None and status.forecast_origin_ts is not None
    market = pipeline.market(SYMBOL, "binance")
    window = read_candles(pipeline.db(), market, limit=60)
    expected = forecaster.forecast(candle_rows(window)[None], forecaster.calibrated_quantiles)
    stored = read_latest_forecast(pipeline.db(), market)
    np.testing.assert_allclose(stored["predicted"], expected["mean"][0], rtol=1e-9)
    np.testing.assert_allclose(stored["upper"], expected["upper"][0], rtol=1e-9)
