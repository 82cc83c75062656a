"""Candle timeframes: their length, and how a number of candles reads to a person."""

from __future__ import annotations

# The shipped model is trained on 1-minute candles; other timeframes need their own model.
TIMEFRAME_MS = {"1m": 60_000}

_UNIT_NAMES = {60_000: "minute", 3_600_000: "hour"}


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle in ms; ValueError naming the supported timeframes when unknown."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise ValueError(f"unsupported timeframe {timeframe!r}; supported: {', '.join(TIMEFRAME_MS)}") from None


def span_text(candles: int, timeframe: str) -> str:
    """How long `candles` candles of `timeframe` last, in words: (10, "1m") -> "10 minutes"."""
    length = candles * timeframe_ms(timeframe)
    for unit_ms in sorted(_UNIT_NAMES, reverse=True):
        if length % unit_ms == 0:
            count = length // unit_ms
            return f"{count} {_UNIT_NAMES[unit_ms]}{'s' if count != 1 else ''}"
    return f"{candles} candles of {timeframe}"
