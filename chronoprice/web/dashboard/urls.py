"""The URL is the page's state: which page, and on the market page the symbol, timeframe and
overlays (/market?symbol=ETH/USDT&timeframe=15m&overlays=ema50,rsi). Pure: reading a URL into a
view with what it got wrong, and writing a view back into a query."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlencode

from chronoprice.market.markets import parse_symbol
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.web.dashboard.figures import OVERLAYS

PAGES = ("market", "models")  # and the overview, at / or any other path


@dataclasses.dataclass(frozen=True)
class PageView:
    page: str  # overview, market or models
    symbol: str
    timeframe: str
    overlays: tuple[str, ...]
    problems: tuple[str, ...] = ()  # what the URL got wrong, each said on the page with what is shown instead


def _first(query: dict[str, list[str]], key: str) -> str | None:
    return query[key][0] if key in query else None


def page_view(pathname: str | None, search: str | None, symbol: str, timeframe: str) -> PageView:
    """The view a URL asks for; what it lacks stays as given (`symbol`, `timeframe`, no
    overlays), and what it gets wrong is a problem, never a silent default."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=True)
    last = (pathname or "/").rstrip("/").rpartition("/")[2]
    page = last if last in PAGES else "overview"
    problems = []
    asked = _first(query, "symbol")
    if asked is not None:
        try:
            symbol = parse_symbol(asked.strip())
        except ValueError:
            problems.append(f"“{asked[:40]}” in the link is not a symbol (BASE/QUOTE, e.g. ETH/USDT): showing {symbol}")
    asked = _first(query, "timeframe")
    if asked is not None:
        if asked in TIMEFRAME_MS:
            timeframe = asked
        else:
            problems.append(f"“{asked[:20]}” in the link is not a timeframe ({', '.join(TIMEFRAME_MS)}): showing {timeframe}")
    overlays = []
    for name in filter(None, (_first(query, "overlays") or "").split(",")):
        if name in OVERLAYS:
            overlays.append(name)
        else:
            problems.append(f"“{name[:20]}” in the link is not an overlay ({', '.join(OVERLAYS)})")
    return PageView(page, symbol, timeframe, tuple(dict.fromkeys(overlays)), tuple(problems))


def market_search(symbol: str, timeframe: str, overlays=()) -> str:
    """The query of the market page showing this view, e.g. ?symbol=ETH%2FUSDT&timeframe=15m."""
    fields = {"symbol": symbol, "timeframe": timeframe}
    chosen = [name for name in OVERLAYS if name in set(overlays or ())]
    if chosen:
        fields["overlays"] = ",".join(chosen)
    return "?" + urlencode(fields)
