"""Query parameters, pure: each parser returns the value or raises ApiError naming the parameter."""

from __future__ import annotations

import pandas as pd

from chronoprice.config import SettingsError, settings_from
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.web.api.errors import ApiError


def parse_symbol(args, default: str) -> str:
    raw = args.get("symbol")
    if raw is None:
        return default
    try:
        return settings_from({"symbol": raw}, {}).symbol
    except SettingsError:
        raise ApiError(400, f"symbol {raw[:40]!r} must look like BASE/QUOTE, for example BTC/USDT", "symbol") from None


def parse_timeframe(args, default: str) -> str:
    raw = args.get("timeframe")
    if raw is None:
        return default
    if raw not in TIMEFRAME_MS:
        raise ApiError(400, f"timeframe {raw[:20]!r} is not supported; use one of {', '.join(TIMEFRAME_MS)}", "timeframe")
    return raw


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
