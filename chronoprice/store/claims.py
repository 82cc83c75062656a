"""Who ticks which market, and who schedules: a row per tick key in the store, claimed in one
statement so that processes sharing the SQLite file (gunicorn workers) never both win, with the
last tick's status beside it for everyone who did not run it; and leases, held by one owner
until they expire unless renewed."""

from __future__ import annotations

from chronoprice.store.schema import Database

SCHEDULER_LEASE = "scheduler"  # held by the one process that ticks the watchlist


def claim_tick(db: Database, key: str, now_ms: int, interval_ms: int) -> bool:
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


def save_tick_status(db: Database, key: str, status_json: str) -> None:
    with db.conn:
        db.execute("update ticks set status = ? where key = ?", [status_json, key])


def read_tick_status(db: Database, key: str) -> str | None:
    row = db.execute("select status from ticks where key = ?", [key]).fetchone()
    return row[0] if row else None


def hold_lease(db: Database, name: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
    """Take or renew the lease `name` for `owner` until now + ttl; False while another owner's
    lease has not expired. One statement, so two processes never both hold it."""
    with db.conn:
        cursor = db.execute(
            "insert into leases (name, owner, expires_ms) values (?, ?, ?) on conflict(name) do update "
            "set owner = excluded.owner, expires_ms = excluded.expires_ms "
            "where leases.owner = excluded.owner or leases.expires_ms < ?",
            [name, owner, int(now_ms + ttl_ms), int(now_ms)],
        )
    return cursor.rowcount == 1


def release_lease(db: Database, name: str, owner: str) -> None:
    with db.conn:
        db.execute("delete from leases where name = ? and owner = ?", [name, owner])


def lease_holder(db: Database, name: str, now_ms: int) -> str | None:
    """The owner of the lease `name` if it has not expired by `now_ms`."""
    row = db.execute("select owner from leases where name = ? and expires_ms >= ?", [name, int(now_ms)]).fetchone()
    return row[0] if row else None
