"""Who ticks which market: a row per tick key in the store, claimed in one statement so that
processes sharing the SQLite file (gunicorn workers) never both win, with the last tick's
status beside it for everyone who did not run it."""

from __future__ import annotations

import sqlite_utils


def claim_tick(db: sqlite_utils.Database, key: str, now_ms: int, interval_ms: int) -> bool:
    """Atomically claim the right to tick `key` unless it was claimed within `interval_ms`.

    One statement, so processes sharing the file (gunicorn workers) cannot both win.
    """
    with db.conn:
        cursor = db.execute(
            "insert into ticks (key, claimed_ms) values (?, ?) on conflict(key) do update "
            "set claimed_ms = excluded.claimed_ms where ticks.claimed_ms <= excluded.claimed_ms - ?",
            [key, int(now_ms), int(interval_ms)],
        )
    return cursor.rowcount == 1


def save_tick_status(db: sqlite_utils.Database, key: str, status_json: str) -> None:
    with db.conn:
        db.execute("update ticks set status = ? where key = ?", [status_json, key])


def read_tick_status(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("select status from ticks where key = ?", [key]).fetchone()
    return row[0] if row else None
