"""Persistence: candles, forecasts, claims and the watchlist, on SQLite (a file path, the
default) or PostgreSQL (a postgresql:// URL), with the same schema and queries on both."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Callable

from chronoprice.store.schema import Database, StoreError, is_database_url
from chronoprice.store.sqlite import ConnectionPerThread, is_sqlite, open_sqlite

__all__ = ["Database", "StoreError", "STORE_UNAVAILABLE", "log_failure", "open_store", "store_connections", "is_database_url"]

# What a read or write raises while the store cannot answer for now: a SQLite lock held past the
# busy timeout, a PostgreSQL server down or restarting (the pool's wait for a connection
# included; store/postgres.py raises it as StoreError). The API answers 503 with Retry-After,
# the dashboard keeps its last good page.
STORE_UNAVAILABLE = (StoreError, sqlite3.OperationalError)


def open_store(target: Path | str) -> Database:
    """A connection to the store at `target` (a path or a postgresql:// URL), schema migrated."""
    return _postgres().open_postgres(str(target)) if is_database_url(target) else open_sqlite(target)


def store_connections(target: Path | str, pool_size: int | None = None) -> Callable[[], Database]:
    """What a thread calls for its connection: its own SQLite one, or the shared PostgreSQL pool
    (of at most `pool_size` connections; None: postgres.POOL_SIZE)."""
    if is_database_url(target):
        return _postgres().SharedPostgres(str(target), pool_size)
    return ConnectionPerThread(target)


def _postgres():
    """The PostgreSQL store, imported when a postgresql:// store is opened: its driver and pool
    hold 9 MB in a server process, which a process on SQLite, the default, does without."""
    from chronoprice.store import postgres

    return postgres


def log_failure(log: logging.Logger, what: str, error: Exception, **extra) -> None:
    """Log that `what` failed: in one line while the store cannot answer (expected, and retried),
    with its traceback for anything else."""
    if isinstance(error, STORE_UNAVAILABLE):
        log.warning("%s: store unavailable (%s); retrying", what, error, **extra)
    else:
        log.error("%s failed", what, exc_info=error, **extra)


def table_bytes(db: Database, table: str) -> int:
    """Bytes `table` and its indexes take in the database."""
    if not is_sqlite(db):
        return int(db.execute("select pg_total_relation_size(?::regclass)", [table]).fetchone()[0])
    return int(db.execute("select coalesce(sum(d.pgsize), 0) from dbstat d join sqlite_master m on m.name = d.name "
                          "where m.tbl_name = ?", [table]).fetchone()[0])
