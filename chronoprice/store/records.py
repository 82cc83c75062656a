"""Candles and forecasts in the store: the same SQL on SQLite and PostgreSQL (schema in
docs/ARCHITECTURE.md). Functions take the store's Database (sqlite.py or postgres.py);
timestamps are UTC epoch milliseconds of a candle's open time.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from chronoprice.market.candles import COLUMNS
from chronoprice.market.source import Market
from chronoprice.store.schema import CLOSES_SET, FORECAST_COLUMNS, Database

_UPSERT_CANDLE = (
    "insert into candles (exchange, symbol, timeframe, ts, open, high, low, close, volume) values (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "on conflict (exchange, symbol, timeframe, ts) do update set open = excluded.open, high = excluded.high, "
    "low = excluded.low, close = excluded.close, volume = excluded.volume"
)
# The closes are left as they are: _copy_closes sets them again in the same transaction.
_UPSERT_FORECAST = (
    "insert into forecasts (exchange, symbol, timeframe, origin_ts, step, target_ts, predicted, lower, upper, model_version, "
    "created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (exchange, symbol, timeframe, origin_ts, step, model_version) "
    "do update set target_ts = excluded.target_ts, predicted = excluded.predicted, lower = excluded.lower, "
    "upper = excluded.upper, created_at = excluded.created_at"
)


def upsert_candles(db: Database, market: Market, candles: pd.DataFrame) -> int:
    """Insert or replace candles (a COLUMNS DataFrame) for `market`; returns how many rows were written."""
    if candles.empty:
        return 0
    key = [market.exchange, market.symbol, market.timeframe]
    rows = [key + [int(row[0]), *row[1:]] for row in candles[COLUMNS].itertuples(index=False, name=None)]
    with db.conn:
        db.conn.executemany(_UPSERT_CANDLE, rows)
        span = [int(candles["ts"].min()), int(candles["ts"].max())]
        for column in ("origin_ts", "target_ts"):  # the forecast steps these candles start or end
            _copy_closes(db, market, f"{column} between ? and ?", span)
    return len(rows)


def _copy_closes(db: Database, market: Market, condition: str, values: list) -> None:
    """Copy candle closes into the forecast steps of `market` that meet `condition`."""
    where, params = market_where(market)
    db.execute(f"update forecasts set {CLOSES_SET} where {where} and {condition}", params + values)


def market_where(market: Market) -> tuple[str, list]:
    return "exchange = ? and symbol = ? and timeframe = ?", [market.exchange, market.symbol, market.timeframe]


MATURED = "actual is not null and origin_close is not null"  # both its origin and its target candle stored
# The forecasts a market's record is made of, whatever else is stored beside them: those of its
# timeframe's champion in the registry, or where the registry names none, of every version but
# its shadows. Shadows are read only by name.
SERVED = ("model_version = coalesce((select version from models where timeframe = ? and status = 'champion'), model_version) "
          "and model_version not in (select version from models where timeframe = ? and status = 'shadow')")


def forecasts_where(market: Market, model_version: str | None) -> tuple[str, list]:
    """The WHERE of the forecasts of `market` by `model_version`, or the SERVED ones."""
    where, params = market_where(market)
    if model_version is not None:
        return f"{where} and model_version = ?", params + [model_version]
    return f"{where} and {SERVED}", params + [market.timeframe] * 2


def newest_candle_ts(db: Database, market: Market) -> int | None:
    where, params = market_where(market)
    return db.execute(f"select max(ts) from candles where {where}", params).fetchone()[0]


def read_candles(
    db: Database, market: Market, limit: int | None = None, start: int | None = None, end: int | None = None
) -> pd.DataFrame:
    """Candles of `market` with start <= ts <= end, the newest `limit` of them, oldest first."""
    where, params = market_where(market)
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


def write_forecasts(db: Database, market: Market, rows: pd.DataFrame, model_version: str) -> None:
    """Store the steps of several forecasts (columns origin_ts, step, target_ts, predicted,
    lower, upper) in one transaction: all or none."""
    key, created_at = [market.exchange, market.symbol, market.timeframe], int(time.time() * 1000)
    records = [key + [int(origin), int(step), int(target), *map(_number, (predicted, lower, upper)), model_version, created_at]
               for origin, step, target, predicted, lower, upper
               in rows[["origin_ts", "step", "target_ts", "predicted", "lower", "upper"]].itertuples(index=False, name=None)]
    with db.conn:
        db.conn.executemany(_UPSERT_FORECAST, records)
        _copy_closes(db, market, "model_version = ? and origin_ts between ? and ?",
                     [model_version, int(rows["origin_ts"].min()), int(rows["origin_ts"].max())])


def _number(value) -> float | None:
    """NaN as NULL, as SQLite stores it, so the NOT NULL constraints refuse it on PostgreSQL too."""
    return None if value is None or math.isnan(value) else float(value)


def newest_forecast_origin_ts(db: Database, market: Market, model_version: str | None = None) -> int | None:
    """The newest origin with a forecast of `market` by `model_version`, or SERVED."""
    where, params = forecasts_where(market, model_version)
    return db.execute(f"select max(origin_ts) from forecasts where {where}", params).fetchone()[0]


def forecast_origins_since(db: Database, market: Market, model_version: str, start_ts: int) -> set[int]:
    """Origins at or after `start_ts` with a forecast of `model_version`."""
    where, params = market_where(market)
    sql = f"select distinct origin_ts from forecasts where {where} and model_version = ? and origin_ts >= ?"
    return {row[0] for row in db.execute(sql, params + [model_version, int(start_ts)])}


def read_latest_forecast(db: Database, market: Market, model_version: str | None = None) -> pd.DataFrame:
    """The steps of the newest forecast of `market` by `model_version` or SERVED
    (FORECAST_COLUMNS), step 1 first; empty if none."""
    where, params = forecasts_where(market, model_version)
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
                   step: int | None, model_version: str | None = None) -> tuple[str, list]:
    """The WHERE of matured forecast steps (by `model_version`, or SERVED): both their origin and
    their target candle stored."""
    where, params = forecasts_where(market, model_version)
    where += f" and {MATURED}"
    for clause, value in (("target_ts >= ?", since_target_ts), ("target_ts <= ?", until_target_ts), ("step = ?", step)):
        if value is not None:
            where, params = f"{where} and {clause}", params + [int(value)]
    return where, params


def read_matured_forecasts(
    db: Database,
    market: Market,
    since_target_ts: int | None = None,
    until_target_ts: int | None = None,
    limit: int | None = None,
    step: int | None = None,
    model_version: str | None = None,
) -> pd.DataFrame:
    """Forecast steps whose target candle is stored, with the actual close and the origin close.

    Columns: FORECAST_COLUMNS + actual (close at target_ts) + origin_close (close at origin_ts,
    the naive baseline's forecast for every step), oldest target first; with `limit`, the
    newest `limit` rows; with `step`, that step's rows only; by `model_version`, or SERVED.
    """
    where, params = _matured_where(market, since_target_ts, until_target_ts, step, model_version)
    columns = ", ".join(FORECAST_COLUMNS)
    sql = f"select {columns}, actual, origin_close from forecasts where {where} order by target_ts desc, step desc"
    if limit is not None:
        sql, params = sql + " limit ?", params + [int(limit)]
    rows = db.execute(sql, params).fetchall()[::-1]
    return pd.DataFrame(rows, columns=FORECAST_COLUMNS + ["actual", "origin_close"])


def matured_step_errors(db: Database, market: Market, since_target_ts: int, step: int,
                        model_version: str | None = None) -> np.ndarray:
    """[N, 2] errors of the matured forecasts (by `model_version`, or SERVED) at `step` since
    `since_target_ts`, oldest first: the forecast's and the origin close's (the naive
    forecast's), each minus the actual close."""
    where, params = _matured_where(market, since_target_ts, None, step, model_version)
    rows = db.execute(f"select predicted - actual, origin_close - actual from forecasts where {where} order by target_ts", params)
    return np.array(rows.fetchall(), dtype=float).reshape(-1, 2)


def matured_error_sums(db: Database, market: Market, since_target_ts: int, model_version: str | None = None) -> dict:
    """Over the matured forecast steps (by `model_version`, or SERVED) since `since_target_ts`,
    summed in the database rather than read row by row: their count, mean absolute error, mean
    absolute error of the origin close, the share of actual closes inside [lower, upper], and
    from how many origins."""
    where, params = _matured_where(market, since_target_ts, None, None, model_version)
    count, mae, mae_origin, inside, origins = db.execute(
        "select count(*), avg(abs(predicted - actual)), avg(abs(origin_close - actual)), "
        "avg(case when actual between lower and upper then 1.0 else 0.0 end), count(distinct origin_ts) "
        f"from forecasts where {where}", params).fetchone()
    # PostgreSQL averages the 1.0 and 0.0 literals as numeric (Decimal): floats, as on SQLite.
    return {"count": count, "mae": mae, "mae_origin_close": mae_origin, "coverage": None if inside is None else float(inside),
            "origins": origins}


def matured_step_sums(db: Database, market: Market, since_target_ts: int, model_version: str) -> np.ndarray:
    """[steps, 4] over `model_version`'s matured forecasts since `since_target_ts`, step 1 first:
    the step, how many, and the mean absolute error of the forecast and of the origin close."""
    where, params = _matured_where(market, since_target_ts, None, None, model_version)
    rows = db.execute("select step, count(*), avg(abs(predicted - actual)), avg(abs(origin_close - actual)) from forecasts "
                      f"where {where} group by step order by step", params).fetchall()
    return np.array(rows, dtype=float).reshape(-1, 4)


def forecast_paths(db: Database, market: Market, model_version: str, since_origin_ts: int, horizon: int) -> np.ndarray:
    """[N, 3 + horizon] for `model_version`'s origins since `since_origin_ts` whose next candle
    is stored, oldest first: origin, its close, the next candle's close (step 1's actual), and
    the predicted close at each step; what a backtest of the live forecasts trades on."""
    where, params = forecasts_where(market, model_version)
    rows = np.array(db.execute(f"select origin_ts, step, predicted, origin_close, actual from forecasts where {where} "
                               "and target_ts >= ? and origin_ts >= ? order by origin_ts, step",
                               params + [int(since_origin_ts)] * 2).fetchall(), dtype=float).reshape(-1, 5)
    origins, position = np.unique(rows[:, 0], return_inverse=True)
    paths = np.full((len(origins), 3 + horizon), np.nan)
    paths[:, 0] = origins
    steps = rows[:, 1].astype(int)
    inside = (steps >= 1) & (steps <= horizon)
    paths[position[inside], 2 + steps[inside]] = rows[inside, 2]
    paths[position, 1] = rows[:, 3]
    first = steps == 1
    paths[position[first], 2] = rows[first, 4]
    return paths[~np.isnan(paths).any(axis=1)]


def origin_mean_errors(db: Database, market: Market, model_version: str, horizon: int, after_origin_ts: int,
                       limit: int) -> np.ndarray:
    """[N, 3] for the newest `limit` origins after `after_origin_ts` whose `horizon` steps by
    `model_version` have all matured, oldest first: the origin, and the mean absolute error over
    the steps of the forecast and of the origin close (the naive forecast)."""
    where, params = _matured_where(market, None, None, None, model_version)
    rows = db.execute(
        "select origin_ts, avg(abs(predicted - actual)), avg(abs(origin_close - actual)) from forecasts "
        f"where {where} and target_ts > ? and origin_ts > ? group by origin_ts having count(*) = ? order by origin_ts desc limit ?",
        params + [int(after_origin_ts)] * 2 + [int(horizon), int(limit)]).fetchall()
    return np.array(rows[::-1], dtype=float).reshape(-1, 3)


def stored_training_candles(db: Database, symbol: str, timeframe: str, exchange: str | None = None,
                            days: float | None = None) -> tuple[Market, pd.DataFrame]:
    """A market's stored closed candles to train on, the last `days` of them if given, from
    `exchange` or else the exchange with the most; ValueError naming what the store holds when
    there are none."""
    held = db.execute("select exchange, count(*) from candles where symbol = ? and timeframe = ? group by exchange "
                      "order by count(*) desc, exchange", [symbol, timeframe]).fetchall()
    exchanges = [row[0] for row in held]
    if exchange is None and exchanges:
        exchange = exchanges[0]
    if exchange not in exchanges:
        markets = db.execute("select distinct exchange, symbol, timeframe from candles order by 1, 2, 3").fetchall()
        listed = ", ".join(" ".join(row) for row in markets[:20]) or "none"
        raise ValueError(f"the store has no {symbol} {timeframe} candles{f' from {exchange}' if exchange else ''}; it holds: {listed}")
    market = Market(exchange, symbol, timeframe)
    start = None
    if days is not None:
        start = newest_candle_ts(db, market) - int(days * 86_400_000) + 1
    return market, read_candles(db, market, start=start)
