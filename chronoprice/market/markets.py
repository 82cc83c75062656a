"""What a market is called, pure: its symbol (BASE/QUOTE), its timeframe, and both together as
`SYMBOL@TIMEFRAME`. Every door (settings, the API, the page, the watchlist) parses them here, so
the OpenAPI document's pattern and the server agree on every symbol."""

from __future__ import annotations

import re

from chronoprice.market.timeframes import TIMEFRAME_MS

SYMBOL_PATTERN = "^[A-Za-z0-9]+/[A-Za-z0-9]+$"
SYMBOL_RULE = "must look like BASE/QUOTE, for example BTC/USDT"
_SYMBOL = re.compile(SYMBOL_PATTERN.strip("^$"), re.ASCII)


def parse_symbol(text: str) -> str:
    """`text` as a symbol in capitals; ValueError(SYMBOL_RULE) unless it is BASE/QUOTE of ASCII
    letters and digits exactly (callers strip what a person typed)."""
    if not isinstance(text, str) or not _SYMBOL.fullmatch(text):
        raise ValueError(SYMBOL_RULE)
    return text.upper()


def parse_timeframe(text: str) -> str:
    """`text` if it is a supported timeframe; ValueError naming them otherwise."""
    if text not in TIMEFRAME_MS:
        raise ValueError(f"timeframe {str(text)[:20]!r} is not supported; use one of {', '.join(TIMEFRAME_MS)}")
    return text


def parse_market(entry: str) -> tuple[str, str]:
    """`SYMBOL[@TIMEFRAME]` -> (symbol, timeframe), 1m when no timeframe is given; ValueError
    saying what is wrong."""
    symbol_text, _, timeframe = entry.strip().partition("@")
    if ":" in symbol_text:
        raise ValueError(f"{entry!r}: an exchange prefix is not supported; markets are watched on --exchange")
    try:
        symbol = parse_symbol(symbol_text.strip())
    except ValueError:
        raise ValueError(f"{entry!r}: the symbol {SYMBOL_RULE}") from None
    try:
        return symbol, parse_timeframe(timeframe.strip() or "1m")
    except ValueError as error:
        raise ValueError(f"{entry!r}: {error}") from None


def market_key(symbol: str, timeframe: str) -> str:
    """The market as one string, `SYMBOL@TIMEFRAME`, as --watch and the page name it."""
    return f"{symbol}@{timeframe}"
