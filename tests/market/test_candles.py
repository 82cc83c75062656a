import math

import numpy as np
import pytest

from chronoprice.market.candles import aggregate_candles, clean_candles, find_gaps, trusted_prefix
from tests.helpers import MINUTE_MS, SERIES_START_MS, make_candles

M = 60_000


def row(ts, open_=100.0, high=101.0, low=99.0, close=100.5, volume=1.0):
    return [ts, open_, high, low, close, volume]


def test_clean_candles_sorts_and_collapses_exact_duplicates():
    result = clean_candles([row(2 * M), row(0), row(M), row(M)], M)
    assert result.candles["ts"].tolist() == [0, M, 2 * M]
    assert result.rejected == []
    assert result.candles["ts"].dtype == np.int64


def test_clean_candles_rejects_each_kind_of_bad_row_with_a_reason():
    rows = [
        row(0),
        row(M, close=math.nan),
        row(2 * M, low=-1.0),
        row(3 * M, high=98.0),
        row(4 * M, volume=-5.0),
        row(5 * M + 7),
        row(6 * M, close=105.0),
        [None, 1, 2, 0.5, 1, 1],
        ["garbage", "x", "y", "z", "w", "v"],
    ]
    result = clean_candles(rows, M)
    assert result.candles["ts"].tolist() == [0]
    reasons = {rejection.position: rejection.reason for rejection in result.rejected}
    assert "not a number" in reasons[1]
    assert "positive" in reasons[2]
    assert "below low" in reasons[3]
    assert "volume" in reasons[4]
    assert "aligned" in reasons[5]
    assert "between low and high" in reasons[6]
    assert "timestamp" in reasons[7] and "timestamp" in reasons[8]


def test_clean_candles_rejects_both_rows_of_a_conflicting_duplicate():
    result = clean_candles([row(0), row(M), row(M, close=100.9)], M)
    assert result.candles["ts"].tolist() == [0]
    assert [rejection.ts for rejection in result.rejected] == [M, M]


def test_trusted_prefix_stops_before_the_first_bad_timestamp():
    result = clean_candles([row(0), row(M), row(2 * M, high=1.0), row(3 * M)], M)
    assert trusted_prefix(result)["ts"].tolist() == [0, M]


def test_trusted_prefix_keeps_nothing_when_a_timestamp_is_unreadable():
    result = clean_candles([row(0), [None, 1, 1, 1, 1, 1]], M)
    assert trusted_prefix(result).empty


def test_find_gaps_reports_missing_candles():
    gaps = find_gaps(np.array([0, M, 4 * M, 5 * M, 7 * M]), M)
    assert gaps.to_dict("records") == [
        {"after_ts": M, "before_ts": 4 * M, "missing": 2},
        {"after_ts": 5 * M, "before_ts": 7 * M, "missing": 1},
    ]
    assert find_gaps(np.array([0, M, 2 * M]), M).empty



def test_aggregate_candles_builds_whole_buckets_only():
    minutes = make_candles(47, start_ms=SERIES_START_MS + 3 * MINUTE_MS)  # starts 3 minutes into a bucket
    minutes = minutes.drop(index=30)  # minute 33: a hole in the third bucket
    fifteen = aggregate_candles(minutes, 15 * MINUTE_MS)
    bucket = SERIES_START_MS + 15 * MINUTE_MS
    assert fifteen["ts"].tolist() == [bucket], "the partial first, the holed and the unfinished last bucket are dropped"
    inside = minutes[(minutes["ts"] >= bucket) & (minutes["ts"] < bucket + 15 * MINUTE_MS)]
    candle = fifteen.iloc[0]
    assert candle["open"] == inside["open"].iloc[0] and candle["close"] == inside["close"].iloc[-1]
    assert candle["high"] == inside["high"].max() and candle["low"] == inside["low"].min()
    assert candle["volume"] == pytest.approx(inside["volume"].sum())
