"""Retention: scored forecast steps past the retained span folded into daily sums (per market,
model, UTC day of the target candle and step) and deleted, a batch a transaction; and the
per-step score sums read over both. Candles are never pruned.

A sum over folded days is exact for a window that starts at a UTC midnight, and so is one that
starts inside the retained span, so windows are chosen that way (web/api/scores.py). A candle
revised after its steps were folded no longer changes their score: revisions come within
minutes of a close, the retained span is at least a day."""

from __future__ import annotations

import pandas as pd

from chronoprice.evaluation.metrics import score_sums
from chronoprice.market.source import Market
from chronoprice.store.records import MATURED, forecasts_where, market_where
from chronoprice.store.schema import Database

DAY_MS = 86_400_000
FOLD_BATCH = 5_000  # steps a transaction: a batch holds the write lock for milliseconds, never a whole backlog
_FOLDED = ["model_version", "target_ts", "step", "predicted", "lower", "upper", "origin_close", "actual"]
_DAY_KEY = ("model_version", "day_ts", "step")
SUM_COLUMNS = ["step", "count", "model_error", "naive_error", "covered"]  # evaluation.metrics.step_scores reads them
_ADD_DAY = (
    "insert into forecast_days (exchange, symbol, timeframe, model_version, day_ts, step, scored, model_error, "
    "naive_error, covered) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "on conflict (exchange, symbol, timeframe, model_version, day_ts, step) do update set "
    "scored = forecast_days.scored + excluded.scored, model_error = forecast_days.model_error + excluded.model_error, "
    "naive_error = forecast_days.naive_error + excluded.naive_error, covered = forecast_days.covered + excluded.covered"
)


def day_start(ts: int) -> int:
    """The UTC midnight at or before `ts`."""
    return int(ts) - int(ts) % DAY_MS


def daily_sums(rows: list) -> pd.DataFrame:
    """Deleted steps (_FOLDED columns) summed per model, day of their target and step: _DAY_KEY,
    then count, model_error, naive_error and covered (the naive forecast of every step is its
    origin's close)."""
    steps = pd.DataFrame(rows, columns=_FOLDED)
    steps = steps.assign(day_ts=steps["target_ts"] - steps["target_ts"] % DAY_MS, naive=steps["origin_close"])
    return score_sums(steps, by=_DAY_KEY)


def fold_scored_steps(db: Database, market: Market, before_target_ts: int, batch: int = FOLD_BATCH) -> int:
    """Fold the oldest scored steps of `market` whose target is before `before_target_ts` (about
    `batch` of them, whole target candles) into forecast_days and delete them, in one
    transaction; how many were folded, 0 once none are left. The delete returns what it
    deleted, so exactly those rows are summed, whatever a concurrent writer does."""
    where, params = market_where(market)
    scored = f"{where} and {MATURED} and target_ts < ?"
    params = params + [int(before_target_ts)]
    with db.conn:
        bound = db.execute(
            f"select target_ts from forecasts where {scored} order by target_ts limit 1 offset ?",
            params + [int(batch) - 1],
        ).fetchone()
        within = "" if bound is None else " and target_ts <= ?"
        rows = db.execute(
            f"delete from forecasts where {scored}{within} returning {', '.join(_FOLDED)}",
            params + ([] if bound is None else [int(bound[0])]),
        ).fetchall()
        if rows:
            sums = daily_sums(rows)
            key = [market.exchange, market.symbol, market.timeframe]
            db.conn.executemany(
                _ADD_DAY,
                [
                    key + [str(version), int(day), int(step), int(count), float(model), float(naive), int(covered)]
                    for version, day, step, count, model, naive, covered in sums.itertuples(index=False, name=None)
                ],
            )
    return len(rows)


def step_score_sums(
    db: Database, market: Market, since_target_ts: int, model_version: str | None = None
) -> pd.DataFrame:
    """SUM_COLUMNS (how many, the summed absolute errors of the forecast and of the origin close,
    how many inside the band) per step of the matured steps (by `model_version`, or SERVED) whose target is at
    or after `since_target_ts`, with the folded days from then on, step 1 first."""
    where, params = forecasts_where(market, model_version)
    params = params + [int(since_target_ts)]
    stored = db.execute(
        "select step, count(*), sum(abs(predicted - actual)), sum(abs(origin_close - actual)), "
        f"sum(case when actual between lower and upper then 1 else 0 end) from forecasts where {where} and {MATURED} "
        "and target_ts >= ? group by step",
        params,
    ).fetchall()
    folded = db.execute(
        "select step, sum(scored), sum(model_error), sum(naive_error), sum(covered) from forecast_days "
        f"where {where} and day_ts >= ? group by step",
        params,
    ).fetchall()
    # PostgreSQL sums bigint columns as numeric (Decimal): floats, as on SQLite.
    both = pd.DataFrame([[float(value) for value in row] for row in stored + folded], columns=SUM_COLUMNS)
    summed = both.groupby("step", as_index=False).sum().sort_values("step")
    return summed.astype({"step": int, "count": int, "covered": int}).reset_index(drop=True)


def stored_markets(db: Database) -> list[Market]:
    """Every market with forecasts in the store, found a key at a time by seeking the index
    (no scan of the table, however large)."""
    markets, after = [], ("", "", "")
    while row := db.execute(
        "select exchange, symbol, timeframe from forecasts where (exchange, symbol, timeframe) > "
        "(?, ?, ?) order by exchange, symbol, timeframe limit 1",
        list(after),
    ).fetchone():
        after = tuple(row)
        markets.append(Market(*after))
    return markets
