"""The store on SQLite through sqlite-utils, the default: one file, WAL, a busy timeout, the
schema migrated (schema.py), and a connection per thread. Its queries are records.py's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from chronoprice.store.schema import MIGRATIONS, StoreError

BUSY_TIMEOUT_MS = 5_000


def migrate(db: sqlite_utils.Database) -> None:
    """Bring the file's schema to the newest version, one migration at a time."""
    # BEGIN IMMEDIATE takes the write lock (waiting on the busy timeout) before the version is
    # read, so processes opening a new file at once migrate one after the other.
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{db_path(db)} has schema version {version}, newer than this ChronoPrice ({len(MIGRATIONS)}); "
                "upgrade ChronoPrice or point --db at another file"
            )
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        if db.conn.in_transaction:
            db.conn.commit()
    except BaseException:
        if db.conn.in_transaction:
            db.conn.rollback()
        raise


def is_sqlite(db) -> bool:
    """Whether `db` is a SQLite store (else a PostgreSQL one)."""
    return isinstance(db, sqlite_utils.Database)


def db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def _use_wal(db: sqlite_utils.Database) -> None:
    """Switch the file to WAL. SQLite answers "database is locked" at once, without the busy
    handler, while another connection is switching a new file too, so wait here instead."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def open_sqlite(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database at `path`, in WAL mode with the schema up to date."""
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        db = sqlite_utils.Database(connection)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"cannot use database {path}: {error}. If the file is damaged, move it aside "
            "(candles are fetched again) or pass --db with another path"
        ) from None
    return db


class ConnectionPerThread:
    """One connection to the file at `path` per thread: sqlite3 connections are not shared
    between threads, and web servers answer each request on a thread of their own."""

    def __init__(self, path: Path | str):
        self.path = path
        self._local = threading.local()

    def __call__(self) -> sqlite_utils.Database:
        if getattr(self._local, "db", None) is None:
            self._local.db = open_sqlite(self.path)
        return self._local.db
