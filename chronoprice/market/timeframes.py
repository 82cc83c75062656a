"""Candle timeframes: their length, how much history a cold start fetches, and how a number of
candles and a candle's time read to a person."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Mapping

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
TIMEFRAME_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": HOUR_MS}

# A cold start fetches enough candles for a window, a day of scores and an interval calibrated
# from matured errors at once: a day of 1m is 1,440 candles, a month of 1h only 720.
COLD_START_MS = {"1m": DAY_MS, "5m": 3 * DAY_MS, "15m": 7 * DAY_MS, "1h": 30 * DAY_MS}

_UNIT_NAMES = {MINUTE_MS: "minute", HOUR_MS: "hour"}


def utc_minute(ts: int) -> str:
    """An epoch-millisecond time as people read it, e.g. 2026-12-04 13:05 UTC."""
    return datetime.fromtimestamp(int(ts) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle in ms; ValueError naming the supported timeframes when unknown."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise ValueError(f"unsupported timeframe {timeframe!r}; supported: {', '.join(TIMEFRAME_MS)}") from None


def cold_start_candles(hours: float | None = None) -> dict[str, int]:
    """Candles a cold start fetches, per timeframe: COLD_START_MS, or `hours` of each."""
    return {
        timeframe: int((hours * HOUR_MS if hours is not None else COLD_START_MS[timeframe]) // length)
        for timeframe, length in TIMEFRAME_MS.items()
    }


def history_for(history: int | Mapping[str, int], timeframe: str) -> int:
    """A source's cold-start size for `timeframe`: one count for all, or one per timeframe."""
    return history if isinstance(history, int) else history[timeframe]


def span_text(candles: int, timeframe: str) -> str:
    """How long `candles` candles of `timeframe` last, in words: (10, "1m") -> "10 minutes"."""
    length = candles * timeframe_ms(timeframe)
    for unit_ms in sorted(_UNIT_NAMES, reverse=True):
        if length % unit_ms == 0:
            count = length // unit_ms
            return f"{count} {_UNIT_NAMES[unit_ms]}{'s' if count != 1 else ''}"
    return f"{candles} candles of {timeframe}"
