"""SQLite store on sqlite-utils: candles and forecasts (schema in docs/ARCHITECTURE.md).

Functions take a `sqlite_utils.Database`; `open_store` makes one with WAL, a busy timeout and
the schema migrated. Timestamps are UTC epoch milliseconds of a candle's open time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlite_utils

from chronoprice.market.candles import COLUMNS
from chronoprice.market.source import Market

BUSY_TIMEOUT_MS = 5_000
MARKET_KEY = ["exchange", "symbol", "timeframe"]
CANDLE_KEY = MARKET_KEY + ["ts"]
FORECAST_KEY = MARKET_KEY + ["origin_ts", "step", "model_version"]
FORECAST_COLUMNS = ["origin_ts", "step", "target_ts", "predicted", "lower", "upper", "model_version", "created_at"]


class StoreError(RuntimeError):
    """The database file cannot be used; the message names the file and what to do."""


# A forecast step keeps the close of its origin candle (the naive forecast) and of its target
# candle (the actual, once stored), copied from `candles` whenever either is written: scores are
# read on every page and API call, and joining every step with two candles dominated them.
_CLOSE_OF = ("(select close from candles c where c.exchange = forecasts.exchange and c.symbol = forecasts.symbol "
             "and c.timeframe = forecasts.timeframe and c.ts = forecasts.{})")
_CLOSES_SET = f"origin_close = {_CLOSE_OF.format('origin_ts')}, actual = {_CLOSE_OF.format('target_ts')}"


def _create_tables(db: sqlite_utils.Database) -> None:
    db["candles"].create(
        {"exchange": str, "symbol": str, "timeframe": str, "ts": int,
         "open": float, "high": float, "low": float, "close": float, "volume": float},
        pk=CANDLE_KEY,
        not_null=set(CANDLE_KEY + COLUMNS),
        if_not_exists=True,
    )
    db["forecasts"].create(
        {"exchange": str, "symbol": str, "timeframe": str, "origin_ts": int, "step": int, "target_ts": int,
         "predicted": float, "lower": float, "upper": float, "model_version": str, "created_at": int},
        pk=FORECAST_KEY,
        not_null=set(FORECAST_KEY + ["target_ts", "predicted", "lower", "upper"]),
        if_not_exists=True,
    )
    db["forecasts"].create_index(MARKET_KEY + ["target_ts"], index_name="forecasts_by_target", if_not_exists=True)


def _create_tick_claims(db: sqlite_utils.Database) -> None:
    db["ticks"].create({"key": str, "claimed_ms": int, "status": str}, pk="key", if_not_exists=True)


def _create_watchlist_and_leases(db: sqlite_utils.Database) -> None:
    db["watchlist"].create({"symbol": str, "timeframe": str, "added_ms": int}, pk=["symbol", "timeframe"], if_not_exists=True)
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["leases"].create({"name": str, "owner": str, "expires_ms": int}, pk="name", if_not_exists=True)


def _add_forecast_closes(db: sqlite_utils.Database) -> None:
    for column in ("origin_close", "actual"):
        if column not in db["forecasts"].columns_dict:
            db["forecasts"].add_column(column, float)
    db.execute(f"update forecasts set {_CLOSES_SET}")
    # Covering the scores' columns, so the overview's error sums and the metrics never leave the
    # index (about a third more bytes per forecast, three times faster scores).
    db.execute("drop index if exists forecasts_by_target")
    db["forecasts"].create_index(MARKET_KEY + ["target_ts", "step", "predicted", "lower", "upper", "origin_close", "actual"],
                                 index_name="forecasts_matured", if_not_exists=True)


# Each migration brings a file from version N to N + 1; an old file runs the ones it lacks.
# Migrations are idempotent, because processes opening a new file at once may both run them.
MIGRATIONS = [_create_tables, _create_tick_claims, _create_watchlist_and_leases, _add_forecast_closes]


def migrate(db: sqlite_utils.Database) -> None:
    """Bring the file's schema to the newest version, one migration at a time."""
    # BEGIN IMMEDIATE takes the write lock (waiting on the busy timeout) before the version is
    # read, so processes opening a new file at once migrate one after the other.
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{db_path(db)} has schema version {version}, newer than this ChronoPrice ({len(MIGRATIONS)}); "
                "upgrade ChronoPrice or point --db at another file"
            )
        for number in range(version, len(MIGRATIONS)):
            MIGRATIONS[number](db)
            db.execute(f"PRAGMA user_version = {number + 1}")
        if db.conn.in_transaction:
            db.conn.commit()
    except BaseException:
        if db.conn.in_transaction:
            db.conn.rollback()
        raise


def db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def _use_wal(db: sqlite_utils.Database) -> None:
    """Switch the file to WAL. SQLite answers "database is locked" at once, without the busy
    handler, while another connection is switching a new file too, so wait here instead."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def open_store(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path`, in WAL mode with the schema up to date."""
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        db = sqlite_utils.Database(connection)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"cannot use database {path}: {error}. If the file is damaged, move it aside "
            "(candles are fetched again) or pass --db with another path"
        ) from None
    return db


def upsert_candles(db: sqlite_utils.Database, market: Market, candles: pd.DataFrame) -> int:
    """Insert or replace candles (a COLUMNS DataFrame) for `market`; returns how many rows were written."""
    if candles.empty:
        return 0
    records = candles[COLUMNS].assign(**market.key()).to_dict("records")
    with db.conn:
        db["candles"].upsert_all(records, pk=CANDLE_KEY)
        _copy_closes(db, market, int(candles["ts"].min()), int(candles["ts"].max()))
    return len(records)


def _copy_closes(db: sqlite_utils.Database, market: Market, first_ts: int, last_ts: int) -> None:
    """Copy candle closes into the forecast steps whose origin or target lies in [first_ts, last_ts]."""
    where, params = _market_where(market)
    for column in ("origin_ts", "target_ts"):
        db.execute(f"update forecasts set {_CLOSES_SET} where {where} and {column} between ? and ?",
                   params + [first_ts, last_ts])


def _market_where(market: Market) -> tuple[str, list]:
    return "exchange = ? and symbol = ? and timeframe = ?", [market.exchange, market.symbol, market.timeframe]


def newest_candle_ts(db: sqlite_utils.Database, market: Market) -> int | None:
    where, params = _market_where(market)
    return db.execute(f"select max(ts) from candles where {where}", params).fetchone()[0]


def read_candles(
    db: sqlite_utils.Database, market: Market, limit: int | None = None, start: int | None = None, end: int | None = None
) -> pd.DataFrame:
    """Candles of `market` with start <= ts <= end, the newest `limit` of them, oldest first."""
    where, params = _market_where(market)
    if start is not None:
        where, params = where + " and ts >= ?", params + [int(start)]
    if end is not None:
        where, params = where + " and ts <= ?", params + [int(end)]
    sql = f"select {', '.join(COLUMNS)} from candles where {where} order by ts desc"
    if limit is not None:
        sql, params = sql + " limit ?", params + [int(limit)]
    # Built from one float array, column by column: a DataFrame of row tuples costs six times more.
    values = np.array(db.execute(sql, params).fetchall()[::-1], dtype=float).reshape(-1, len(COLUMNS))
    return pd.DataFrame({"ts": values[:, 0].astype(np.int64), **{column: values[:, number] for number, column in enumerate(COLUMNS) if number}})


def write_forecasts(db: sqlite_utils.Database, market: Market, rows: pd.DataFrame, model_version: str) -> None:
    """Store the steps of several forecasts (columns origin_ts, step, target_ts, predicted,
    lower, upper) in one transaction: all or none."""
    records = (
        rows[["origin_ts", "step", "target_ts", "predicted", "lower", "upper"]]
        .astype({"origin_ts": "int64", "step": "int64", "target_ts": "int64"})
        .assign(model_version=model_version, created_at=int(time.time() * 1000), **market.key())
        .to_dict("records")
    )
    with db.conn:
        # Every column but the closes is written, and they are copied again below, so replacing a
        # row is upserting it, in one statement instead of two.
        db["forecasts"].insert_all(records, pk=FORECAST_KEY, replace=True)
        _copy_closes(db, market, int(rows["origin_ts"].min()), int(rows["target_ts"].max()))


def newest_forecast_origin_ts(db: sqlite_utils.Database, market: Market, model_version: str | None = None) -> int | None:
    """The newest origin with a forecast of `market` (by `model_version` if given)."""
    where, params = _market_where(market)
    if model_version is not None:
        where, params = where + " and model_version = ?", params + [model_version]
    return db.execute(f"select max(origin_ts) from forecasts where {where}", params).fetchone()[0]


def forecast_origins_since(db: sqlite_utils.Database, market: Market, model_version: str, start_ts: int) -> set[int]:
    """Origins at or after `start_ts` with a forecast of `model_version`."""
    where, params = _market_where(market)
    sql = f"select distinct origin_ts from forecasts where {where} and model_version = ? and origin_ts >= ?"
    return {row[0] for row in db.execute(sql, params + [model_version, int(start_ts)])}


def read_latest_forecast(db: sqlite_utils.Database, market: Market) -> pd.DataFrame:
    """The steps of the newest forecast of `market` (FORECAST_COLUMNS), step 1 first; empty if none."""
    where, params = _market_where(market)
    sql = (
        f"select {', '.join(FORECAST_COLUMNS)} from forecasts where {where} and origin_ts = "
        f"(select max(origin_ts) from forecasts where {where}) order by created_at desc, step"
    )
    frame = pd.DataFrame(db.execute(sql, params * 2).fetchall(), columns=FORECAST_COLUMNS)
    if frame.empty:
        return frame
    newest_version = frame["model_version"].iloc[0]
    return frame[frame["model_version"] == newest_version].sort_values("step").reset_index(drop=True)


def _matured_where(market: Market, since_target_ts: int | None, until_target_ts: int | None,
                   step: int | None) -> tuple[str, list]:
    """The WHERE of matured forecast steps: both their origin and their target candle stored."""
    where, params = _market_where(market)
    where += " and actual is not null and origin_close is not null"
    for clause, value in (("target_ts >= ?", since_target_ts), ("target_ts <= ?", until_target_ts), ("step = ?", step)):
        if value is not None:
            where, params = f"{where} and {clause}", params + [int(value)]
    return where, params


def read_matured_forecasts(
    db: sqlite_utils.Database,
    market: Market,
    since_target_ts: int | None = None,
    until_target_ts: int | None = None,
    limit: int | None = None,
    step: int | None = None,
) -> pd.DataFrame:
    """Forecast steps whose target candle is stored, with the actual close and the origin close.

    Columns: FORECAST_COLUMNS + actual (close at target_ts) + origin_close (close at origin_ts,
    the naive baseline's forecast for every step), oldest target first; with `limit`, the
    newest `limit` rows; with `step`, that step's rows only.
    """
    where, params = _matured_where(market, since_target_ts, until_target_ts, step)
    columns = ", ".join(FORECAST_COLUMNS)
    sql = f"select {columns}, actual, origin_close from forecasts where {where} order by target_ts desc, step desc"
    if limit is not None:
        sql, params = sql + " limit ?", params + [int(limit)]
    rows = db.execute(sql, params).fetchall()[::-1]
    return pd.DataFrame(rows, columns=FORECAST_COLUMNS + ["actual", "origin_close"])


def matured_step_errors(db: sqlite_utils.Database, market: Market, since_target_ts: int, step: int) -> np.ndarray:
    """[N, 2] errors of the matured forecasts at `step` since `since_target_ts`, oldest first:
    the forecast's and the origin close's (the naive forecast's), each minus the actual close."""
    where, params = _matured_where(market, since_target_ts, None, step)
    rows = db.execute(f"select predicted - actual, origin_close - actual from forecasts where {where} order by target_ts", params)
    return np.array(rows.fetchall(), dtype=float).reshape(-1, 2)


def matured_error_sums(db: sqlite_utils.Database, market: Market, since_target_ts: int) -> dict:
    """Over the matured forecast steps since `since_target_ts`, summed in the database rather
    than read row by row: their count, mean absolute error, mean absolute error of the origin
    close, and the share of actual closes inside [lower, upper]."""
    where, params = _matured_where(market, since_target_ts, None, None)
    count, mae, mae_origin, inside = db.execute(
        "select count(*), avg(abs(predicted - actual)), avg(abs(origin_close - actual)), "
        f"avg(actual between lower and upper) from forecasts where {where}", params).fetchone()
    return {"count": count, "mae": mae, "mae_origin_close": mae_origin, "coverage": inside}


class ConnectionPerThread:
    """One connection to the file at `path` per thread: sqlite3 connections are not shared
    between threads, and web servers answer each request on a thread of their own."""

    def __init__(self, path: Path | str):
        self.path = path
        self._local = threading.local()

    def __call__(self) -> sqlite_utils.Database:
        if getattr(self._local, "db", None) is None:
            self._local.db = open_store(self.path)
        return self._local.db
