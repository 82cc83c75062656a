import dataclasses
import json
import threading

import numpy as np
import pandas as pd
import pytest

from chronoprice.evaluation.metrics import matured_scores
from chronoprice.market.candles import find_gaps
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.model.features import candle_rows
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.backfill import forecast_history
from chronoprice.service.scoring import adapted_quantiles
from chronoprice.service.status import STATUS_FORMAT, TickStatus, status_from_json, status_to_json
from chronoprice.service.tick import Ticker
from chronoprice.store.records import read_candles, read_latest_forecast, read_matured_forecasts
from chronoprice.testing.exchange import Fault
from chronoprice.testing.harness import FakeClock
from tests.helpers import MINUTE_MS, wait_until

SYMBOL = "BTC/USDT"
HISTORY = 120  # candles on a cold start; the ticker forecasts them in the background


@pytest.fixture
def ticker(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=2)
    clock = FakeClock()
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    ticker.test_clock = clock
    return ticker


def test_tick_stores_the_exchanges_closed_candles_and_a_ten_step_forecast(ticker, exchange):
    status = ticker.tick(SYMBOL)
    assert status.error is None and status.exchange == "binance" and status.new_candles == HISTORY
    market = ticker.market(SYMBOL, "binance")
    exchange.advance(3)
    ticker.test_clock.seconds += 10
    status = ticker.tick(SYMBOL)
    assert status.new_candles == 3
    stored = read_candles(ticker.db(), market)
    closed = exchange.closed_candles(SYMBOL)
    pd.testing.assert_frame_equal(stored, closed.tail(len(stored)).reset_index(drop=True))
    assert find_gaps(stored["ts"].to_numpy(), MINUTE_MS).empty
    forecast = read_latest_forecast(ticker.db(), market)
    assert forecast["origin_ts"].unique().tolist() == [stored["ts"].iloc[-1]] == [status.forecast_origin_ts]
    assert forecast["step"].tolist() == list(range(1, 11))
    assert (forecast["target_ts"] - forecast["origin_ts"]).tolist() == [step * MINUTE_MS for step in range(1, 11)]
    assert (forecast["lower"] < forecast["predicted"]).all() and (forecast["predicted"] < forecast["upper"]).all()
    assert status.model_version == forecast["model_version"].iloc[0]


def test_ticks_run_at_most_once_per_refresh_interval(ticker, exchange):
    ticker.tick(SYMBOL)
    fetches = exchange.requests["/api/v3/klines"]
    exchange.advance(1)
    ticker.test_clock.seconds += 5
    assert ticker.tick(SYMBOL).new_candles == HISTORY, "within the interval: the stored state, no fetch"
    assert exchange.requests["/api/v3/klines"] == fetches
    ticker.test_clock.seconds += 5
    assert ticker.tick(SYMBOL).new_candles == 1
    assert exchange.requests["/api/v3/klines"] == fetches + 1


def test_concurrent_callers_share_one_tick(ticker, exchange):
    exchange.queue(Fault(path="/klines", status=0, delay_seconds=0.5))  # a slow exchange
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(ticker.tick(SYMBOL))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert exchange.requests["/api/v3/klines"] == 1
    assert len(statuses) == 8
    assert sum(status.new_candles == HISTORY for status in statuses) == 1, "one caller ran the tick"


def test_a_failing_exchange_keeps_the_last_good_state_with_the_error(ticker, exchange):
    first = ticker.tick(SYMBOL)
    exchange.advance(2)
    exchange.queue(Fault(path="/klines", status=503, times=2))  # both attempts of one tick
    ticker.test_clock.seconds += 10
    status = ticker.tick(SYMBOL)
    assert "unreachable" in status.error
    assert status.newest_ts == first.newest_ts
    assert status.forecast_origin_ts == first.forecast_origin_ts
    ticker.test_clock.seconds += 10
    recovered = ticker.tick(SYMBOL)
    assert recovered.error is None and recovered.new_candles == 2


def test_missing_model_still_stores_candles_and_says_model_unavailable(exchange, db_path, tmp_path):
    source = LiveSource("binance", exchange.url, (), history=HISTORY)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tmp_path / "no-model"))
    status = ticker.tick(SYMBOL)
    assert status.new_candles == HISTORY
    assert status.error.startswith("model unavailable") and "not found" in status.error
    assert read_latest_forecast(ticker.db(), ticker.market(SYMBOL, "binance")).empty


def test_processes_sharing_the_database_tick_once_per_interval(ticker, exchange, db_path, tiny_model):
    other_source = LiveSource("binance", exchange.url, (), history=HISTORY)
    other_process = Ticker(other_source, db_path, lambda: load_forecaster(tiny_model, "litert"), clock=ticker.test_clock)
    first = ticker.tick(SYMBOL)
    fetches = exchange.requests["/api/v3/klines"]
    shared = other_process.tick(SYMBOL)
    assert exchange.requests["/api/v3/klines"] == fetches, "the second process used the first one's tick"
    assert shared == first
    ticker.test_clock.seconds += 10
    exchange.advance(1)
    assert other_process.tick(SYMBOL).new_candles == 1


@pytest.mark.slow
def test_cold_start_stores_a_day_and_forecasts_it(exchange, db_path, tiny_model, series):
    source = LiveSource("binance", exchange.url, (), history=1000 + 100, page_limit=1000)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"))
    status = ticker.tick(SYMBOL)
    assert status.new_candles == 1100
    stored = read_candles(ticker.db(), ticker.market(SYMBOL, "binance"))
    pd.testing.assert_frame_equal(stored, exchange.closed_candles(SYMBOL).tail(1100).reset_index(drop=True))
    assert wait_for_forecasts(ticker.db(), 10 * (1100 - 59)) == 10 * (1100 - 59), "history is forecast in the background"


def wait_for_forecasts(db, count):
    """The stored forecast count once it reaches `count` (or the liveness timeout passes)."""
    wait_until(lambda: db["forecasts"].count >= count, interval=0.1)
    return db["forecasts"].count


def test_forecast_history_fills_every_origin_once(ticker):
    ticker.tick(SYMBOL)
    assert wait_for_forecasts(ticker.db(), 10 * (HISTORY - 59)) == 10 * (HISTORY - 59), "cold start forecasts its history"
    market = ticker.market(SYMBOL, "binance")
    ts = read_candles(ticker.db(), market)["ts"]
    with ticker.db().conn:
        ticker.db().execute("delete from forecasts where origin_ts >= ?", [int(ts.iloc[100])])
    forecaster = ticker.forecaster()
    assert forecast_history(ticker.db(), market, forecaster, int(ts.iloc[80]), progress=False) == HISTORY - 100
    assert forecast_history(ticker.db(), market, forecaster, int(ts.iloc[80]), progress=False) == 0
    assert ticker.db()["forecasts"].count == 10 * (HISTORY - 59)


@pytest.mark.slow
def test_intervals_adapt_to_the_latest_matured_errors(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=600)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"))
    ticker.tick(SYMBOL)
    assert wait_for_forecasts(ticker.db(), 10 * (600 - 59)) == 10 * (600 - 59)
    market, forecaster = ticker.market(SYMBOL, "binance"), ticker.forecaster()
    adapted = adapted_quantiles(ticker.db(), market, forecaster)
    assert not np.allclose(adapted, forecaster.calibrated_quantiles), "enough errors have matured to adapt"
    matured = read_matured_forecasts(ticker.db(), market)
    scores = matured_scores(matured, read_candles(ticker.db(), market), MINUTE_MS)
    recent = scores.groupby(matured["step"]).tail(360)
    covered = (recent.to_numpy() <= adapted[matured.loc[recent.index, "step"].to_numpy() - 1]).mean()
    assert 0.88 <= covered <= 0.93, "the adapted 90 % interval covers about 90 % of the recent errors"


def test_a_hole_the_exchange_fills_later_is_repaired_and_forecasts_resume(ticker, exchange, series):
    full = series[SYMBOL]
    ticker.tick(SYMBOL)
    market = ticker.market(SYMBOL, "binance")
    newest = read_candles(ticker.db(), market)["ts"].iloc[-1]
    missing = [newest + MINUTE_MS * k for k in (2, 3, 4)]
    exchange.series[SYMBOL] = full[~full["ts"].isin(missing)].reset_index(drop=True)
    exchange.advance(8)
    ticker.test_clock.seconds += 10
    status = ticker.tick(SYMBOL)
    assert "gap" in status.error and status.forecast_origin_ts is None
    stored = read_candles(ticker.db(), market)
    assert find_gaps(stored["ts"].to_numpy(), MINUTE_MS)["missing"].tolist() == [3]
    exchange.series[SYMBOL] = full  # the exchange fills the hole
    ticker.test_clock.seconds += 10
    status = ticker.tick(SYMBOL)
    assert status.error is None and status.forecast_origin_ts == status.newest_ts
    stored = read_candles(ticker.db(), market)
    pd.testing.assert_frame_equal(stored, exchange.closed_candles(SYMBOL).tail(len(stored)).reset_index(drop=True))


def test_an_exchange_slower_than_the_client_timeout_is_reported_and_recovered(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=HISTORY, timeout_ms=300, attempts=2, backoff_seconds=0.0)
    clock = FakeClock()
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock)
    first = ticker.tick(SYMBOL)
    exchange.queue(Fault(path="/klines", status=0, delay_seconds=0.6, times=2))
    exchange.advance(1)
    clock.seconds += 10
    slow = ticker.tick(SYMBOL)
    assert "unreachable" in slow.error and "RequestTimeout" in slow.error
    assert slow.newest_ts == first.newest_ts
    clock.seconds += 10
    recovered = ticker.tick(SYMBOL)
    assert recovered.error is None and recovered.forecast_origin_ts == recovered.newest_ts == first.newest_ts + MINUTE_MS


def test_forecasts_come_from_the_stored_highs_lows_and_volumes(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=2)
    forecaster = load_forecaster(tiny_model, "litert")
    ticker = Ticker(source, db_path, lambda: forecaster, refresh_seconds=10, clock=FakeClock())
    status = ticker.tick(SYMBOL)
    assert status.error is None and status.forecast_origin_ts is not None
    market = ticker.market(SYMBOL, "binance")
    window = read_candles(ticker.db(), market, limit=60)
    expected = forecaster.forecast(candle_rows(window)[None], forecaster.calibrated_quantiles)
    stored = read_latest_forecast(ticker.db(), market)
    np.testing.assert_allclose(stored["predicted"], expected["mean"][0], rtol=1e-9)
    np.testing.assert_allclose(stored["upper"], expected["upper"][0], rtol=1e-9)


def test_saved_status_round_trips_and_another_format_is_ignored():
    status = TickStatus("live: binance", "binance", SYMBOL, newest_ts=5 * MINUTE_MS, new_candles=3, error="x")
    assert status_from_json(status_to_json(status)) == status
    unversioned = json.dumps(dataclasses.asdict(status))  # what an older ChronoPrice saved
    assert status_from_json(unversioned) is None
    newer = json.dumps({"format": STATUS_FORMAT + 1, **dataclasses.asdict(status)})
    assert status_from_json(newer) is None
    with_extra_field = json.dumps({"format": STATUS_FORMAT, **dataclasses.asdict(status), "added_later": 1})
    assert status_from_json(with_extra_field) == status
    assert status_from_json("{not json") is None and status_from_json(None) is None


def test_a_status_saved_in_another_format_reads_as_first_update(ticker, exchange):
    with ticker.db().conn:
        ticker.db().execute("insert into ticks (key, claimed_ms, status) values (?, ?, ?)",
                            [f"LiveSource:{SYMBOL}:1m", 10**15, '{"source": "old", "symbol": "BTC/USDT"}'])
    status = ticker.tick(SYMBOL)
    assert status.note == "first update in progress" and exchange.requests["/api/v3/klines"] == 0


def test_a_restarted_process_completes_a_history_a_killed_one_left_half_done(ticker, exchange, db_path, tiny_model):
    ticker.tick(SYMBOL)
    market = ticker.market(SYMBOL, "binance")
    origins = read_candles(ticker.db(), market)["ts"].iloc[59:].tolist()
    assert wait_until(lambda: forecast_count(ticker.db(), market) == len(origins)), "the cold start's history"
    with ticker.db().conn:
        ticker.db().execute("delete from forecasts where origin_ts between ? and ?", [origins[10], origins[30]])
    restarted = Ticker(ticker.source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=FakeClock())
    exchange.advance(1)
    restarted.tick(SYMBOL, force=True)
    assert forecast_count(ticker.db(), market) == len(origins) + 1, "the hole is forecast again, and the new candle"


def forecast_count(db, market) -> int:
    return db.execute("select count(distinct origin_ts) from forecasts where symbol = ? and timeframe = ?",
                      [market.symbol, market.timeframe]).fetchone()[0]
