import gzip
import json

import numpy as np
import pytest

from chronoprice.market.candle_files import read_candle_file
from chronoprice.market.files import CsvFormatError

FIVE_MINUTES = 300_000
START = 1_709_251_200_000  # 2024-03-01 00:00 UTC


def candle_rows(count: int, step_ms: int = FIVE_MINUTES, start: int = START) -> list[list]:
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.001, count)))
    return [[start + number * step_ms, close, close * 1.001, close * 0.999, close, 10.0] for number, close in enumerate(closes)]


def write_csv(path, rows, iso: bool = False) -> None:
    def when(ts):
        return np.datetime64(int(ts), "ms").astype(str) + "+00:00" if iso else str(int(ts))

    lines = ["open_time,open,high,low,close,volume"] + [",".join([when(row[0]), *map(str, row[1:])]) for row in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("form", ["csv_ms", "csv_iso", "csv_gz", "json", "json_gz"])
def test_every_format_reads_the_same_candles_and_infers_the_timeframe(tmp_path, form):
    rows = candle_rows(50)
    path = tmp_path / f"candles.{form}"
    if form.startswith("json"):
        text = json.dumps(rows)
    else:
        write_csv(path, rows, iso=form == "csv_iso")
        text = path.read_text()
    path.write_bytes(gzip.compress(text.encode()) if form.endswith("gz") else text.encode())
    loaded = read_candle_file(path)
    assert loaded.timeframe == loaded.file_timeframe == "5m" and len(loaded.candles) == 50
    assert loaded.candles["ts"].iloc[0] == START and np.allclose(loaded.candles["close"], [row[4] for row in rows])


def test_longer_timeframes_are_aggregated_and_shorter_ones_refused(tmp_path):
    path = tmp_path / "five.csv"
    write_csv(path, candle_rows(31))
    fifteen = read_candle_file(path, "15m")
    assert fifteen.timeframe == "15m" and fifteen.file_timeframe == "5m" and len(fifteen.candles) == 10
    with pytest.raises(CsvFormatError, match="1m candles cannot be made"):
        read_candle_file(path, "1m")


def test_gaps_are_reported_never_filled(tmp_path):
    rows = candle_rows(40)
    path = tmp_path / "gappy.csv"
    write_csv(path, rows[:10] + rows[13:])
    loaded = read_candle_file(path)
    assert len(loaded.candles) == 37 and len(loaded.gaps) == 1 and int(loaded.gaps["missing"].iloc[0]) == 3
    assert "1 gaps (3 candles missing)" in loaded.describe()


def test_a_shuffled_file_is_read_in_time_order(tmp_path):
    rows = candle_rows(30)
    path = tmp_path / "shuffled.csv"
    write_csv(path, [rows[index] for index in np.random.default_rng(1).permutation(30)])
    assert list(read_candle_file(path).candles["ts"]) == [row[0] for row in rows]


def test_irregular_spacing_is_an_error_naming_the_first_bad_row(tmp_path):
    rows = candle_rows(30)
    rows[12][0] += 60_000
    path = tmp_path / "irregular.csv"
    write_csv(path, rows)
    with pytest.raises(CsvFormatError, match=r"irregular\.csv: the row of 2024-03-01 01:01:00 UTC .*irregular spacing"):
        read_candle_file(path)


@pytest.mark.parametrize("content, message", [(b"", "the file is empty"), (b"\x1f\x8bnot gzip", "cannot read"),
                                              (b"[[1, 2", "not valid JSON"), (b'{"a": 1}', "header")])
def test_unusable_files_get_a_clear_error_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises((CsvFormatError, ValueError), match=message):
        read_candle_file(path)
