import contextlib
import sqlite3
import threading

import pandas as pd
import psycopg
import pytest

from chronoprice.config import settings_from
from chronoprice.market.source import Market
from chronoprice.service.build import build_ticker
from chronoprice.store import STORE_UNAVAILABLE, StoreError, open_store
from chronoprice.store.claims import claim_tick, hold_lease, read_tick_status, release_lease, save_tick_status
from chronoprice.store.records import (
    forecast_origins_since,
    matured_error_sums,
    newest_candle_ts,
    newest_forecast_origin_ts,
    read_candles,
    read_latest_forecast,
    read_matured_forecasts,
    upsert_candles,
    write_forecasts,
)
from chronoprice.store.schema import MIGRATIONS
from chronoprice.store.watchlist import (
    WatchlistFull,
    add_to_watchlist,
    read_watchlist,
    remove_from_watchlist,
    replace_watchlist,
    seeded_from,
)
from tests.helpers import MINUTE_MS, make_candles
from tests.postgres_server import PASSWORD

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


def count_rows(db, table: str) -> int:
    return db.execute(f"select count(*) from {table}").fetchone()[0]


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


def test_upsert_candles_is_idempotent_and_round_trips(store):
    candles = make_candles(100)
    upsert_candles(store, MARKET, candles)
    upsert_candles(store, MARKET, candles.iloc[50:])
    assert count_rows(store, "candles") == 100
    pd.testing.assert_frame_equal(read_candles(store, MARKET), candles)
    assert newest_candle_ts(store, MARKET) == candles["ts"].iloc[-1]
    assert newest_candle_ts(store, Market("kraken", "BTC/USDT")) is None


def test_read_candles_limit_and_range(store):
    candles = make_candles(100)
    upsert_candles(store, MARKET, candles)
    assert read_candles(store, MARKET, limit=60)["ts"].tolist() == candles["ts"].iloc[40:].tolist()
    start, end = candles["ts"].iloc[10], candles["ts"].iloc[19]
    assert read_candles(store, MARKET, start=start, end=end)["ts"].tolist() == candles["ts"].iloc[10:20].tolist()


def test_forecast_steps_are_written_together_and_the_newest_is_read(store):
    write_forecasts(store, MARKET, steps_from(0, [1.0] * 10), "v1")
    write_forecasts(store, MARKET, steps_from(MINUTE_MS, [2.0] * 10), "v1")
    latest = read_latest_forecast(store, MARKET)
    assert latest["origin_ts"].unique().tolist() == [MINUTE_MS]
    assert latest["step"].tolist() == list(range(1, 11))
    assert forecast_origins_since(store, MARKET, "v1", 0) == {0, MINUTE_MS} and forecast_origins_since(store, MARKET, "v1", 1) == {MINUTE_MS}
    assert forecast_origins_since(store, MARKET, "v2", 0) == set()
    assert newest_forecast_origin_ts(store, MARKET) == MINUTE_MS and newest_forecast_origin_ts(store, MARKET, "v2") is None


def test_a_failed_forecast_write_leaves_no_partial_forecast(store):
    steps = steps_from(0, [1.0] * 10)
    steps.loc[7, "predicted"] = None  # NOT NULL violation on the 8th step
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        write_forecasts(store, MARKET, steps, "v1")
    assert count_rows(store, "forecasts") == 0


def test_matured_forecasts_carry_actual_and_origin_closes(store):
    candles = make_candles(25)
    upsert_candles(store, MARKET, candles.iloc[:20])
    origin = int(candles["ts"].iloc[14])
    write_forecasts(store, MARKET, steps_from(origin, [100.0] * 10), "v1")
    matured = read_matured_forecasts(store, MARKET)
    assert matured["step"].tolist() == [1, 2, 3, 4, 5]
    assert matured["actual"].tolist() == candles["close"].iloc[15:20].tolist()
    assert set(matured["origin_close"]) == {candles["close"].iloc[14]}

    upsert_candles(store, MARKET, candles.iloc[20:])
    revised = candles.iloc[[16]].assign(close=1234.5)
    upsert_candles(store, MARKET, revised)
    matured = read_matured_forecasts(store, MARKET)
    assert matured["step"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "candles stored later mature the steps"
    assert matured["actual"].iloc[1] == 1234.5, "a revised candle revises the actual"
    sums = matured_error_sums(store, MARKET, 0)
    assert sums["count"] == 10 and sums["mae"] == pytest.approx((100.0 - matured["actual"]).abs().mean())
    assert type(sums["coverage"]) is float and sums["coverage"] == ((matured["actual"] - 100.0).abs() <= 10).mean()


def test_claims_leases_and_the_watchlist_hold_on_both_backends(store):
    assert claim_tick(store, "m", 1_000, 10_000) and not claim_tick(store, "m", 5_000, 10_000)
    assert claim_tick(store, "m", 11_000, 10_000), "claimable again after the interval"
    save_tick_status(store, "m", '{"ok": true}')
    assert read_tick_status(store, "m") == '{"ok": true}' and read_tick_status(store, "other") is None
    assert hold_lease(store, "scheduler", "a", 1_000, 30_000) and not hold_lease(store, "scheduler", "b", 20_000, 30_000)
    release_lease(store, "scheduler", "a")
    assert hold_lease(store, "scheduler", "b", 20_000, 30_000), "a released lease passes at once"
    replace_watchlist(store, [("ETH/USDT", "1h"), ("BTC/USDT", "1m")], "ETH/USDT@1h,BTC/USDT@1m")
    assert add_to_watchlist(store, "ADA/USDT", "5m", 3) and not add_to_watchlist(store, "ADA/USDT", "5m", 3)
    with pytest.raises(WatchlistFull):
        add_to_watchlist(store, "SOL/USDT", "5m", 3)
    assert read_watchlist(store) == [("ETH/USDT", "1h"), ("BTC/USDT", "1m"), ("ADA/USDT", "5m")], "in the order added"
    assert remove_from_watchlist(store, "BTC/USDT", "1m") and not remove_from_watchlist(store, "BTC/USDT", "1m")
    assert seeded_from(store) == "ETH/USDT@1h,BTC/USDT@1m"


def test_postgres_errors_and_logs_never_show_the_password(postgres_server, postgres_url, caplog):
    wrong = postgres_url.replace(PASSWORD, "not-the-password")
    with pytest.raises(StoreError) as refused:
        open_store(wrong)
    assert "not-the-password" not in str(refused.value) and PASSWORD not in str(refused.value)
    assert "chronoprice:***@" in str(refused.value) and "password authentication failed" in str(refused.value)
    assert PASSWORD not in caplog.text and "not-the-password" not in caplog.text


@pytest.mark.slow
def test_postgres_store_reconnects_after_the_server_restarts(postgres_server, postgres_url):
    db = open_store(postgres_url)
    upsert_candles(db, MARKET, make_candles(10))
    postgres_server.stop()
    # The store's own error, which STORE_UNAVAILABLE names: no caller needs the driver for it.
    with pytest.raises(StoreError, match="PostgreSQL unavailable") as unavailable:
        read_candles(db, MARKET)
    assert isinstance(unavailable.value, STORE_UNAVAILABLE) and PASSWORD not in str(unavailable.value)
    postgres_server.start()
    assert len(read_candles(db, MARKET)) == 10, "the pool replaced its dead connections"
    db.close()


def test_postgres_refuses_a_newer_schema_with_a_clear_message(postgres_url):
    open_store(postgres_url).execute(f"update schema_version set version = {len(MIGRATIONS) + 5}")
    with pytest.raises(StoreError, match="newer than this ChronoPrice"):
        open_store(postgres_url)


def test_a_version_3_file_gets_the_closes_of_its_forecasts(db_path):
    with contextlib.closing(sqlite3.connect(db_path)) as old:
        for statement in [sql for migration in MIGRATIONS[:3] for sql in migration]:
            old.execute(statement)
        candles = make_candles(20)
        old.executemany("insert into candles values ('binance', 'BTC/USDT', '1m', ?, ?, ?, ?, ?, ?)",
                        candles[["ts", "open", "high", "low", "close", "volume"]].values.tolist())
        origin = int(candles["ts"].iloc[14])
        old.executemany("insert into forecasts values ('binance', 'BTC/USDT', '1m', ?, ?, ?, 100, 99, 101, 'v1', 0)",
                        [(origin, step, origin + step * MINUTE_MS) for step in range(1, 11)])
        old.execute("PRAGMA user_version = 3")
        old.commit()
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


def test_the_pool_setting_bounds_a_processs_postgresql_connections(postgres_url):
    settings = settings_from({"db": postgres_url, "source": "demo"}, {"CHRONOPRICE_DB_POOL": "3"})
    db = build_ticker(settings).db()
    assert db.pool.max_size == 3
    with db.conn:  # a transaction holds one of them
        assert db.pool.get_stats()["pool_size"] <= 3
    db.close()
    default = build_ticker(settings_from({"db": postgres_url, "source": "demo"}, {})).db()
    assert default.pool.max_size == 8
    default.close()
