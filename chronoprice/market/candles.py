"""Candle rules, pure: validation, de-duplication, ordering and gaps.

A candles DataFrame has the columns of COLUMNS: `ts` (int64, UTC epoch milliseconds of the
candle's open time) and float64 open, high, low, close, volume, sorted by `ts`, one row per ts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One input row that did not become a candle: its position in the input, ts if known, why."""

    position: int
    ts: int | None
    reason: str


@dataclasses.dataclass(frozen=True)
class CleanCandles:
    candles: pd.DataFrame
    rejected: list[Rejection]


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in COLUMNS})
    return frame.astype({"ts": "int64"})


def _row_problem(ts: float, values: np.ndarray, timeframe_ms: int) -> str | None:
    open_, high, low, close, volume = values
    if not np.isfinite(ts):
        return "timestamp is missing or not a number"
    if int(ts) % timeframe_ms != 0:
        return f"timestamp {int(ts)} is not aligned to the {timeframe_ms} ms timeframe"
    if not np.all(np.isfinite(values)):
        return "a price or the volume is missing or not a number"
    if min(open_, high, low, close) <= 0:
        return "prices must be positive"
    if volume < 0:
        return "volume must not be negative"
    if high < low:
        return f"high {high} is below low {low}"
    if high < max(open_, close) or low > min(open_, close):
        return "open and close must lie between low and high"
    return None


def _as_numeric_frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows).reindex(columns=range(len(COLUMNS)))
    frame.columns = COLUMNS
    return frame.apply(pd.to_numeric, errors="coerce").astype("float64")


def clean_candles(rows, timeframe_ms: int) -> CleanCandles:
    """Validate raw [ts, open, high, low, close, volume] rows into a sorted candles DataFrame.

    Rows with a bad value are rejected with a reason. Exact duplicates collapse to one row;
    two different rows for one ts are both rejected, since neither can be trusted.
    """
    if len(rows) == 0:
        return CleanCandles(empty_candles(), [])
    try:
        frame = _as_numeric_frame(rows)
    except (TypeError, ValueError) as error:
        return CleanCandles(empty_candles(), [Rejection(0, None, f"reply is not a list of candles: {error}")])
    rejected = []
    values = frame[PRICE_COLUMNS + ["volume"]].to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    for position, ts in enumerate(frame["ts"].to_numpy()):
        problem = _row_problem(ts, values[position], timeframe_ms)
        if problem:
            keep[position] = False
            rejected.append(Rejection(position, int(ts) if np.isfinite(ts) else None, problem))
    valid = frame[keep].drop_duplicates()
    conflicting = valid["ts"].duplicated(keep=False)
    for position, ts in valid.loc[conflicting, "ts"].items():
        rejected.append(Rejection(int(position), int(ts), "two different candles for the same timestamp"))
    candles = valid[~conflicting].astype({"ts": "int64"}).sort_values("ts").reset_index(drop=True)
    return CleanCandles(candles, sorted(rejected, key=lambda rejection: rejection.position))


def trusted_prefix(result: CleanCandles) -> pd.DataFrame:
    """The candles that are safe to store from a reply that had rejected rows.

    Storing past a rejected row would leave a hole that catch-up (which resumes after the newest
    stored candle) never refills, so only candles before the earliest rejected timestamp are
    kept; a rejected row with no readable timestamp taints the whole reply.
    """
    if not result.rejected:
        return result.candles
    if any(rejection.ts is None for rejection in result.rejected):
        return result.candles.iloc[:0]
    first_bad = min(rejection.ts for rejection in result.rejected)
    return result.candles[result.candles["ts"] < first_bad].reset_index(drop=True)


def find_gaps(ts: np.ndarray, timeframe_ms: int) -> pd.DataFrame:
    """Missing candles between consecutive timestamps (sorted, ms).

    Returns a DataFrame with one row per gap: `after_ts` (last candle before the gap),
    `before_ts` (first candle after it) and `missing` (number of absent candles).
    """
    ts = np.asarray(ts, dtype="int64")
    steps = np.diff(ts) // timeframe_ms
    where = np.nonzero(steps > 1)[0]
    return pd.DataFrame(
        {"after_ts": ts[where], "before_ts": ts[where + 1], "missing": (steps[where] - 1).astype("int64")}
    )



def _merge_buckets(candles: pd.DataFrame, bucket_ts: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """One candle per bucket (open time `bucket_ts` of each row; rows sorted by ts): first open,
    highest high, lowest low, last close, summed volume; and how many rows each bucket had."""
    grouped = candles.groupby(bucket_ts, sort=True)
    frame = pd.DataFrame(
        {
            "ts": grouped["ts"].min().index.to_numpy(dtype="int64"),
            "open": grouped["open"].first().to_numpy(),
            "high": grouped["high"].max().to_numpy(),
            "low": grouped["low"].min().to_numpy(),
            "close": grouped["close"].last().to_numpy(),
            "volume": grouped["volume"].sum().to_numpy(),
        }
    )
    return frame, grouped.size().to_numpy()


def aggregate_candles(candles: pd.DataFrame, timeframe_ms: int, source_ms: int = 60_000) -> pd.DataFrame:
    """Candles of `timeframe_ms` from finer ones, each from a complete bucket only.

    A bucket starts at a multiple of `timeframe_ms` (as exchanges align them); it becomes a
    candle when all its `timeframe_ms // source_ms` finer candles are present, so a bucket still
    forming or holding a gap never becomes a candle that would have to be corrected later.
    """
    if timeframe_ms == source_ms or candles.empty:
        return candles[COLUMNS].reset_index(drop=True)
    frame, sizes = _merge_buckets(candles, candles["ts"].to_numpy() // timeframe_ms * timeframe_ms)
    return frame[sizes == timeframe_ms // source_ms].reset_index(drop=True)


def partial_candle(candle, fraction: float) -> dict:
    """A candle `fraction` of the way through: its move and volume scaled down to that, its
    range only what the scaled move covers (how a forming candle is approximated)."""
    close = candle["open"] + (candle["close"] - candle["open"]) * fraction
    return {"ts": int(candle["ts"]), "open": float(candle["open"]), "high": float(max(candle["open"], close)),
            "low": float(min(candle["open"], close)), "close": float(close), "volume": float(candle["volume"] * fraction)}


def forming_candle(minutes: pd.DataFrame, open_ts: int, elapsed_fraction: float) -> pd.DataFrame:
    """The candle opened at `open_ts` as it stands now, from its 1-minute candles so far, the
    last of which is only `elapsed_fraction` done (partial_candle): one row of COLUMNS, or none
    if no minute of it has started."""
    rows = minutes[minutes["ts"] >= open_ts]
    if rows.empty:
        return empty_candles()
    so_far = pd.concat([rows.iloc[:-1][COLUMNS], pd.DataFrame([partial_candle(rows.iloc[-1], elapsed_fraction)])],
                       ignore_index=True)
    return _merge_buckets(so_far, np.full(len(so_far), int(open_ts)))[0]
