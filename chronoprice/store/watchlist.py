"""The watchlist in the store: which (symbol, timeframe) markets the scheduler ticks, shared by
every process on the store, and the watch setting it was last seeded from."""

from __future__ import annotations

import time

from chronoprice.store.schema import Database

SEEDED_KEY = "watchlist_seeded_from"


def read_watchlist(db: Database) -> list[tuple[str, str]]:
    """Watched (symbol, timeframe) pairs, in the order they were added."""
    return [tuple(row) for row in db.execute("select symbol, timeframe from watchlist order by added_ms, symbol, timeframe")]


def is_watched(db: Database, symbol: str, timeframe: str) -> bool:
    return db.execute("select 1 from watchlist where symbol = ? and timeframe = ?", [symbol, timeframe]).fetchone() is not None


def add_to_watchlist(db: Database, symbol: str, timeframe: str, limit: int) -> bool:
    """Watch the market unless `limit` markets are watched already; False if it was watched.
    Raises WatchlistFull when there is no room."""
    with db.conn:
        if is_watched(db, symbol, timeframe):
            return False
        count, newest = db.execute("select count(*), max(added_ms) from watchlist").fetchone()
        if count >= limit:
            raise WatchlistFull(f"the watchlist is full ({count} of {limit} markets); remove one first or raise --watch-limit")
        # After every market already listed, even one added in the same millisecond: the list's order is added_ms.
        added = max(int(time.time() * 1000), (newest or 0) + 1)
        db.execute("insert into watchlist (symbol, timeframe, added_ms) values (?, ?, ?)", [symbol, timeframe, added])
    return True


def remove_from_watchlist(db: Database, symbol: str, timeframe: str) -> bool:
    """Stop watching the market; False if it was not watched."""
    with db.conn:
        cursor = db.execute("delete from watchlist where symbol = ? and timeframe = ?", [symbol, timeframe])
    return cursor.rowcount == 1


def replace_watchlist(db: Database, markets: list[tuple[str, str]], setting: str) -> None:
    """Watch exactly `markets` (the caller has capped them), parsed from the watch `setting`."""
    now = int(time.time() * 1000)
    with db.conn:
        db.execute("delete from watchlist")
        # A millisecond apart, so the list keeps the setting's order.
        db.conn.executemany("insert into watchlist (symbol, timeframe, added_ms) values (?, ?, ?) on conflict do nothing",
                            [(symbol, timeframe, now + position) for position, (symbol, timeframe) in enumerate(markets)])
        db.execute("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
                   [SEEDED_KEY, setting])


def seeded_from(db: Database) -> str | None:
    """The watch setting the list was last replaced with; None on a new store."""
    row = db.execute("select value from meta where key = ?", [SEEDED_KEY]).fetchone()
    return row[0] if row else None


class WatchlistFull(ValueError):
    """The watchlist holds its limit of markets."""
