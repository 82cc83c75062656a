"""Candle files of any timeframe, as the ecosystem writes them: CSV (the shared form, Binance Data
Vision klines; epoch seconds, milliseconds or ISO times) and freqtrade's JSON
(`[[ms, open, high, low, close, volume], ...]`), plain or gzipped.

The file's timeframe is inferred from its spacing (or given); candles are only ever aggregated
upward (5m to 15m), never invented: gaps are reported, irregular spacing is an error naming the
first bad row.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from chronoprice.market.candles import aggregate_candles, find_gaps
from chronoprice.market.files import CsvFormatError, parse_candle_csv_rows
from chronoprice.market.timeframes import TIMEFRAME_MS, timeframe_ms

MS_TIMEFRAMES = {length: name for name, length in TIMEFRAME_MS.items()}


@dataclasses.dataclass(frozen=True)
class CandleFile:
    """One file's candles, one series: `timeframe` is what they are now (after aggregation),
    `file_timeframe` what the file holds."""

    name: str
    candles: pd.DataFrame
    timeframe: str
    file_timeframe: str
    bad_rows: list[tuple[int, str]]
    gaps: pd.DataFrame  # find_gaps of the candles: after_ts, missing

    def describe(self) -> str:
        first, last = (pd.Timestamp(int(self.candles["ts"].iloc[end]), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")
                       for end in (0, -1))
        gaps = f", {len(self.gaps)} gaps ({int(self.gaps['missing'].sum())} candles missing)" if len(self.gaps) else ""
        return f"{self.name}: {len(self.candles)} {self.timeframe} candles, {first} to {last} UTC{gaps}"


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as error:
        raise CsvFormatError(f"cannot read {path}: {error}") from None


def _rows(path: Path, text: str) -> list[list[str]]:
    """Every row as strings: freqtrade JSON's lists, or the CSV's rows."""
    if text.lstrip().startswith("["):
        try:
            table = json.loads(text)
        except ValueError as error:
            raise CsvFormatError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(table, list) or not all(isinstance(row, list) for row in table):
            raise CsvFormatError(f"{path}: freqtrade JSON must be a list of [ms, open, high, low, close, volume] rows")
        return [["open_time", "open", "high", "low", "close", "volume"]] + [[str(value) for value in row] for row in table]
    return list(csv.reader(io.StringIO(text)))


def infer_spacing_ms(ts: np.ndarray) -> int:
    """The candles' spacing: the most common step between consecutive (sorted) times, of two or more."""
    steps = np.diff(np.unique(ts))
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def _spacing_problem(ts: np.ndarray, spacing_ms: int) -> str | None:
    """The first candle (in time) off the file's grid: not a whole number of candles from the first."""
    off_grid = np.flatnonzero((ts - ts[0]) % spacing_ms != 0)
    if len(off_grid):
        stamp = pd.Timestamp(int(ts[off_grid[0]]), unit="ms", tz="UTC")
        return (f"the row of {stamp:%Y-%m-%d %H:%M:%S} UTC is not a whole number of {spacing_ms // 1000} s candles "
                f"from the first (irregular spacing; {len(off_grid)} such rows)")
    return None


def read_candle_file(path: Path, timeframe: str | None = None) -> CandleFile:
    """Read one candle file; `timeframe` (default: the file's own) aggregates upward.

    Raises CsvFormatError naming the file for anything that makes it unusable: unreadable, no
    candles, a spacing that is not a supported timeframe, irregular spacing, or a timeframe
    finer than the file's.
    """
    path = Path(path)
    rows = _rows(path, _text(path))
    try:
        spacing = _file_spacing(rows)
        if spacing not in MS_TIMEFRAMES:
            raise CsvFormatError(f"candles {spacing // 1000} s apart are not a supported timeframe "
                                 f"({', '.join(TIMEFRAME_MS)})")
        loaded = parse_candle_csv_rows(rows, spacing)
    except CsvFormatError as error:
        raise CsvFormatError(f"{path}: {error}") from None
    if loaded.candles.empty:
        raise CsvFormatError(f"{path}: no valid candle in the file")
    file_timeframe = MS_TIMEFRAMES[spacing]
    target = timeframe or file_timeframe
    if timeframe_ms(target) < spacing:
        raise CsvFormatError(f"{path} holds {file_timeframe} candles: {target} candles cannot be made from them "
                             f"(only longer timeframes, by aggregation)")
    if timeframe_ms(target) % spacing:
        raise CsvFormatError(f"{path}: {target} is not a whole number of {file_timeframe} candles")
    candles = aggregate_candles(loaded.candles, timeframe_ms(target), spacing)
    if candles.empty:
        raise CsvFormatError(f"{path}: no complete {target} candle in the file")
    gaps = find_gaps(candles["ts"].to_numpy(), timeframe_ms(target))
    return CandleFile(path.name, candles, target, file_timeframe, loaded.bad_rows, gaps)


def _file_spacing(rows: list[list[str]]) -> int:
    """The spacing of the file's times, checked: every time a whole number of candles apart."""
    ts = parse_candle_csv_rows(rows, 1).candles["ts"].to_numpy()  # every row with a valid time and prices, sorted
    if len(ts) < 2:
        raise CsvFormatError(f"{len(ts)} valid candles: too few to tell the timeframe")
    spacing = infer_spacing_ms(ts)
    problem = _spacing_problem(ts, spacing)
    if problem:
        raise CsvFormatError(problem)
    return spacing
