import sqlite3
import threading

import pandas as pd
import pytest

from chronoprice.market.source import Market
from chronoprice.store.sqlite import (
    MIGRATIONS,
    StoreError,
    forecast_origins_since,
    matured_error_sums,
    newest_forecast_origin_ts,
    newest_candle_ts,
    open_store,
    read_candles,
    read_latest_forecast,
    read_matured_forecasts,
    upsert_candles,
    write_forecasts,
)
from tests.conftest import MINUTE_MS, make_candles

MARKET = Market("binance", "BTC/USDT", "1m")


def steps_from(origin_ts, closes):
    return pd.DataFrame(
        {
            "origin_ts": origin_ts,
            "step": range(1, len(closes) + 1),
            "target_ts": [origin_ts + step * MINUTE_MS for step in range(1, len(closes) + 1)],
            "predicted": closes,
            "lower": [close - 10 for close in closes],
            "upper": [close + 10 for close in closes],
        }
    )


def test_store_file_has_design_schema_wal_and_busy_timeout(db_path):
    db = open_store(db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert db["candles"].pks == ["exchange", "symbol", "timeframe", "ts"]
    assert db["forecasts"].pks == ["exchange", "symbol", "timeframe", "origin_ts", "step", "model_version"]
    assert set(db["forecasts"].columns_dict) == {
        "exchange", "symbol", "timeframe", "origin_ts", "step", "target_ts", "predicted", "lower", "upper", "model_version", "created_at",
        "origin_close", "actual"}
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_upsert_candles_is_idempotent_and_round_trips(db):
    candles = make_candles(100)
    upsert_candles(db, MARKET, candles)
    upsert_candles(db, MARKET, candles.iloc[50:])
    assert db["candles"].count == 100
    pd.testing.assert_frame_equal(read_candles(db, MARKET), candles)
    assert newest_candle_ts(db, MARKET) == candles["ts"].iloc[-1]
    assert newest_candle_ts(db, Market("kraken", "BTC/USDT")) is None


def test_read_candles_limit_and_range(db):
    candles = make_candles(100)
    upsert_candles(db, MARKET, candles)
    assert read_candles(db, MARKET, limit=60)["ts"].tolist() == candles["ts"].iloc[40:].tolist()
    start, end = candles["ts"].iloc[10], candles["ts"].iloc[19]
    assert read_candles(db, MARKET, start=start, end=end)["ts"].tolist() == candles["ts"].iloc[10:20].tolist()


def test_forecast_steps_are_written_together_and_the_newest_is_read(db):
    write_forecasts(db, MARKET, steps_from(0, [1.0] * 10), "v1")
    write_forecasts(db, MARKET, steps_from(MINUTE_MS, [2.0] * 10), "v1")
    latest = read_latest_forecast(db, MARKET)
    assert latest["origin_ts"].unique().tolist() == [MINUTE_MS]
    assert latest["step"].tolist() == list(range(1, 11))
    assert forecast_origins_since(db, MARKET, "v1", 0) == {0, MINUTE_MS} and forecast_origins_since(db, MARKET, "v1", 1) == {MINUTE_MS}
    assert forecast_origins_since(db, MARKET, "v2", 0) == set()
    assert newest_forecast_origin_ts(db, MARKET) == MINUTE_MS and newest_forecast_origin_ts(db, MARKET, "v2") is None


def test_a_failed_forecast_write_leaves_no_partial_forecast(db):
    steps = steps_from(0, [1.0] * 10)
    steps.loc[7, "predicted"] = None  # NOT NULL violation on the 8th step
    with pytest.raises(sqlite3.IntegrityError):
        write_forecasts(db, MARKET, steps, "v1")
    assert db["forecasts"].count == 0


def test_matured_forecasts_carry_actual_and_origin_closes(db):
    candles = make_candles(25)
    upsert_candles(db, MARKET, candles.iloc[:20])
    origin = int(candles["ts"].iloc[14])
    write_forecasts(db, MARKET, steps_from(origin, [100.0] * 10), "v1")
    matured = read_matured_forecasts(db, MARKET)
    assert matured["step"].tolist() == [1, 2, 3, 4, 5]
    assert matured["actual"].tolist() == candles["close"].iloc[15:20].tolist()
    assert set(matured["origin_close"]) == {candles["close"].iloc[14]}

    upsert_candles(db, MARKET, candles.iloc[20:])
    revised = candles.iloc[[16]].assign(close=1234.5)
    upsert_candles(db, MARKET, revised)
    matured = read_matured_forecasts(db, MARKET)
    assert matured["step"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "candles stored later mature the steps"
    assert matured["actual"].iloc[1] == 1234.5, "a revised candle revises the actual"
    sums = matured_error_sums(db, MARKET, 0)
    assert sums["count"] == 10 and sums["mae"] == pytest.approx((100.0 - matured["actual"]).abs().mean())


def test_a_version_3_file_gets_the_closes_of_its_forecasts(db_path):
    db = open_store(db_path)
    candles = make_candles(20)
    upsert_candles(db, MARKET, candles)
    write_forecasts(db, MARKET, steps_from(int(candles["ts"].iloc[14]), [100.0] * 10), "v1")
    db.execute("update forecasts set origin_close = null, actual = null")
    db.execute("PRAGMA user_version = 3")
    db.conn.commit()
    matured = read_matured_forecasts(open_store(db_path), MARKET)
    assert matured["actual"].tolist() == candles["close"].iloc[15:20].tolist()


def test_store_refuses_a_newer_schema_with_a_clear_message(db_path):
    open_store(db_path).execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(StoreError, match="newer than this ChronoPrice"):
        open_store(db_path)


def test_store_reopens_an_existing_file_without_losing_rows(db_path):
    upsert_candles(open_store(db_path), MARKET, make_candles(10))
    assert open_store(db_path)["candles"].count == 10


def test_corrupt_database_file_names_the_file_and_what_to_do(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StoreError) as error:
        open_store(path)
    assert str(path) in str(error.value) and "move it aside" in str(error.value)


def test_many_threads_opening_a_new_file_at_once_all_get_the_store(tmp_path):
    """SQLite refuses a second connection's switch of a new file to WAL at once, without waiting."""
    failures = []
    for trial in range(40):
        path = tmp_path / f"new-{trial}.db"

        def open_it():
            try:
                open_store(path).execute("select count(*) from ticks").fetchone()
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(error))

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
