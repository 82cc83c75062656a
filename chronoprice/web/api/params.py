"""Query parameters, pure: each parser returns the value or raises ApiError naming the parameter."""

from __future__ import annotations

import pandas as pd

from chronoprice.market.markets import SYMBOL_RULE, parse_symbol, parse_timeframe
from chronoprice.web.api.errors import ApiError


def symbol_param(args, default: str) -> str:
    raw = args.get("symbol")
    if raw is None:
        return default
    try:
        return parse_symbol(raw)
    except ValueError:
        raise ApiError(400, f"symbol {str(raw)[:40]!r} {SYMBOL_RULE}", "symbol") from None


def timeframe_param(args, default: str) -> str:
    raw = args.get("timeframe")
    if raw is None:
        return default
    try:
        return parse_timeframe(raw)
    except ValueError as error:
        raise ApiError(400, str(error), "timeframe") from None


def parse_int(args, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", name)
    return value


def parse_time_ms(args, name: str) -> int | None:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    raw = args.get(name)
    if raw is None:
        return None
    if raw.lstrip("-").isdigit():
        value = int(raw)
    else:
        stamp = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        if pd.isna(stamp):
            raise ApiError(400, f"{name} must be epoch milliseconds or an ISO 8601 time", name)
        # In milliseconds from the stamp's own unit: nanoseconds overflow outside 1677-2262.
        value = int(stamp.asm8.astype("datetime64[ms]").astype("int64"))
    if not 0 <= value <= 10**14:
        raise ApiError(400, f"{name} is out of range (epoch milliseconds from 0)", name)
    return value
