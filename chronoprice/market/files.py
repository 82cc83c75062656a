"""Candle CSV files: Binance Data Vision klines (no header) or a headed OHLCV table."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from chronoprice.market.candles import COLUMNS, clean_candles

TIME_COLUMN_NAMES = ("open_time", "timestamp", "time", "date", "datetime", "ts", "open time")


class CsvFormatError(ValueError):
    """The CSV cannot be read as candles at all (as opposed to a few bad rows)."""


@dataclasses.dataclass(frozen=True)
class CsvCandles:
    candles: pd.DataFrame
    bad_rows: list[tuple[int, str]]  # (line number in the file, reason)


def _epoch_to_ms(values: pd.Series) -> pd.Series:
    """Epoch seconds, milliseconds or microseconds (told apart by magnitude) to milliseconds."""
    scale = np.where(values >= 1e14, 1e-3, np.where(values >= 1e11, 1.0, 1e3))
    return values * scale


def _times_to_ms(texts: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(texts, errors="coerce")
    iso = pd.to_datetime(texts.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    iso_ms = (iso - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return _epoch_to_ms(numeric).fillna(iso_ms.astype("float64"))


def _column_positions(header: list[str]) -> list[int]:
    names = [name.strip().lower() for name in header]
    time_column = next((names.index(name) for name in TIME_COLUMN_NAMES if name in names), None)
    missing = [name for name in COLUMNS[1:] if name not in names]
    if time_column is None or missing:
        wanted = "a time column (" + ", ".join(TIME_COLUMN_NAMES) + ")"
        absent = ", ".join(([wanted] if time_column is None else []) + missing)
        raise CsvFormatError(f"header {header} lacks {absent}")
    return [time_column] + [names.index(name) for name in COLUMNS[1:]]


def parse_candle_csv_rows(rows: list[list[str]], timeframe_ms: int = 60_000) -> CsvCandles:
    """Candles from CSV rows: Binance Data Vision klines (no header) or a headed OHLCV table.

    Returns the valid candles and, for every skipped row, its 1-based line number and reason.
    """
    if not rows:
        raise CsvFormatError("the file is empty")
    has_header = pd.isna(pd.to_numeric(rows[0][0] if rows[0] else "", errors="coerce")) and not _looks_like_time(rows[0])
    positions = _column_positions(rows[0]) if has_header else list(range(len(COLUMNS)))
    first_line = 2 if has_header else 1
    body = rows[1:] if has_header else rows
    bad_rows, table, lines = [], [], []
    for offset, row in enumerate(body):
        line = first_line + offset
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(positions):
            bad_rows.append((line, f"expected at least {max(positions) + 1} fields, found {len(row)}"))
            continue
        table.append([row[position].strip() for position in positions])
        lines.append(line)
    frame = pd.DataFrame(table, columns=COLUMNS, dtype="object")
    if table:
        frame["ts"] = _times_to_ms(frame["ts"])
    result = clean_candles(frame.to_numpy().tolist(), timeframe_ms)
    bad_rows += [(lines[rejection.position], rejection.reason) for rejection in result.rejected]
    return CsvCandles(result.candles, sorted(bad_rows))


def _looks_like_time(row: list[str]) -> bool:
    return bool(row) and not pd.isna(pd.to_datetime(row[0], utc=True, errors="coerce", format="ISO8601"))


def read_candle_csv(path: Path, timeframe_ms: int = 60_000) -> CsvCandles:
    """Read a candle CSV file; raise CsvFormatError naming the file if it cannot be used."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise CsvFormatError(f"cannot read {path}: {error}") from None
    try:
        result = parse_candle_csv_rows(rows, timeframe_ms)
    except CsvFormatError as error:
        raise CsvFormatError(f"{path}: {error}") from None
    if result.candles.empty:
        raise CsvFormatError(f"{path}: no valid candle in the file")
    return result
