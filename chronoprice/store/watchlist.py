"""The watchlist in the store: which (symbol, timeframe) markets the scheduler ticks, shared by
every process on the store, and the watch setting it was last seeded from."""

from __future__ import annotations

import time

import sqlite_utils

SEEDED_KEY = "watchlist_seeded_from"


def read_watchlist(db: sqlite_utils.Database) -> list[tuple[str, str]]:
    """Watched (symbol, timeframe) pairs, in the order they were added."""
    return [tuple(row) for row in db.execute("select symbol, timeframe from watchlist order by rowid")]


def add_to_watchlist(db: sqlite_utils.Database, symbol: str, timeframe: str, limit: int) -> bool:
    """Watch the market unless `limit` markets are watched already; False if it was watched.
    Raises WatchlistFull when there is no room."""
    with db.conn:
        if db.execute("select 1 from watchlist where symbol = ? and timeframe = ?", [symbol, timeframe]).fetchone():
            return False
        count = db.execute("select count(*) from watchlist").fetchone()[0]
        if count >= limit:
            raise WatchlistFull(f"the watchlist is full ({count} of {limit} markets); remove one first or raise --watch-limit")
        db.execute("insert into watchlist (symbol, timeframe, added_ms) values (?, ?, ?)", [symbol, timeframe, int(time.time() * 1000)])
    return True


def remove_from_watchlist(db: sqlite_utils.Database, symbol: str, timeframe: str) -> bool:
    """Stop watching the market; False if it was not watched."""
    with db.conn:
        cursor = db.execute("delete from watchlist where symbol = ? and timeframe = ?", [symbol, timeframe])
    return cursor.rowcount == 1


def replace_watchlist(db: sqlite_utils.Database, markets: list[tuple[str, str]], setting: str) -> None:
    """Watch exactly `markets` (the caller has capped them), parsed from the watch `setting`."""
    now = int(time.time() * 1000)
    with db.conn:
        db.execute("delete from watchlist")
        db.conn.executemany("insert or ignore into watchlist (symbol, timeframe, added_ms) values (?, ?, ?)",
                            [(symbol, timeframe, now) for symbol, timeframe in markets])
        db.execute("insert or replace into meta (key, value) values (?, ?)", [SEEDED_KEY, setting])


def seeded_from(db: sqlite_utils.Database) -> str | None:
    """The watch setting the list was last replaced with; None on a new store."""
    row = db.execute("select value from meta where key = ?", [SEEDED_KEY]).fetchone()
    return row[0] if row else None


class WatchlistFull(ValueError):
    """The watchlist holds its limit of markets."""
