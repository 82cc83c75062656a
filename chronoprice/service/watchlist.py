"""The watchlist setting: `SYMBOL[@TIMEFRAME]` entries, read leniently so one bad entry is
reported and skipped while the others are watched, and seeded into the store once."""

from __future__ import annotations

import dataclasses
import logging
import threading

from chronoprice.market.markets import market_key, parse_market
from chronoprice.service.tick import Ticker
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.schema import Database
from chronoprice.store.watchlist import add_to_watchlist, read_watchlist, replace_watchlist, seeded_from

log = logging.getLogger(__name__)
DEFAULT_WATCH = "BTC/USDT@1m,ETH/USDT@1m,BTC/USDT@15m,BTC/USDT@1h"


@dataclasses.dataclass(frozen=True)
class ParsedWatchlist:
    markets: list[tuple[str, str]]
    problems: list[str]


def parse_watchlist(text: str, limit: int) -> ParsedWatchlist:
    """The markets of a comma-separated watch setting, in order, without duplicates and at most
    `limit` of them, with a sentence for every entry that was skipped."""
    markets, problems = [], []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            market = parse_market(entry)
        except ValueError as error:
            problems.append(f"watch entry skipped: {error}")
            continue
        if market not in markets:
            markets.append(market)
    if len(markets) > limit:
        problems.append(f"{len(markets) - limit} watch entries beyond the limit of {limit} skipped (--watch-limit)")
        markets = markets[:limit]
    if not markets:
        problems.append("the watchlist is empty: markets are ticked only when read, until one is added")
    return ParsedWatchlist(markets, problems)


def seed_watchlist(db: Database, watch: str | None, limit: int) -> ParsedWatchlist:
    """The store's watchlist at start. A new store is seeded from `watch` (DEFAULT_WATCH when not
    given); a watch setting that differs from the one last seeded replaces the list; otherwise
    the list stays as the dashboard and the API left it, across restarts and gunicorn workers."""
    seeded = seeded_from(db)
    if seeded is not None and watch in (None, seeded):
        return ParsedWatchlist(read_watchlist(db), [])
    setting = DEFAULT_WATCH if watch is None else watch
    parsed = parse_watchlist(setting, limit)
    replace_watchlist(db, parsed.markets, setting)
    for problem in parsed.problems:
        log.warning("%s", problem)
    log.info("watching %d markets: %s", len(parsed.markets), ", ".join(market_key(*market) for market in parsed.markets))
    return parsed


class NotListed(ValueError):
    """The source does not list the symbol."""


def watch_market(ticker: Ticker, symbol: str, timeframe: str, limit: int) -> bool:
    """Add the market to the store's watchlist; False if it was watched already. Raises
    NotListed when the source lists symbols and not this one, WatchlistFull at the limit.
    A newly watched market is ticked at once in the background, so its history and first
    forecast show now rather than at its next close."""
    offered = ticker.symbols()
    if offered and symbol not in offered:
        raise NotListed(f"{ticker.source.label} does not list {symbol}")
    added = add_to_watchlist(ticker.db(), symbol, timeframe, limit)
    if added:
        threading.Thread(target=_first_tick, args=(ticker, symbol, timeframe), daemon=True,
                         name=f"first tick {market_key(symbol, timeframe)}").start()
    return added


def _first_tick(ticker: Ticker, symbol: str, timeframe: str) -> None:
    try:
        log.info("%s", ticker.tick(symbol, timeframe, force=True).summary())  # force: it is watched, and not yet ticked
    except STORE_UNAVAILABLE as error:  # the scheduler ticks it at its next close anyway
        log.warning("%s@%s: first tick postponed to its next close: %s", symbol, timeframe, error)
