"""Copying a store to another, SQLite or PostgreSQL either way (`python -m chronoprice migrate`):
the tables the track record is made of, in key order, a batch a transaction, upserted, so an
interrupted copy resumes after the last row the target holds; then each table's row count and
checksum on both sides, which must agree."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator

from tqdm import tqdm

from chronoprice.store.schema import Database

# table: (key columns, other columns). Tick statuses and the scheduler's lease are not copied:
# they describe the processes of the old store and are made again by the new one's.
TABLES = {
    "candles": (["exchange", "symbol", "timeframe", "ts"], ["open", "high", "low", "close", "volume"]),
    "forecasts": (["exchange", "symbol", "timeframe", "origin_ts", "step", "model_version"],
                  ["target_ts", "predicted", "lower", "upper", "created_at", "origin_close", "actual"]),
    "forecast_days": (["exchange", "symbol", "timeframe", "model_version", "day_ts", "step"],
                      ["scored", "model_error", "naive_error", "covered"]),
    "watchlist": (["symbol", "timeframe"], ["added_ms"]),
    "meta": (["key"], ["value"]),
    "alert_rules": (["id"], ["symbol", "timeframe", "kind", "params", "webhook", "format", "cooldown_ms", "created_ms"]),
    "alert_firings": (["rule_id", "candle_ts"], ["fired_ms", "symbol", "timeframe", "kind", "message", "state", "attempts",
                                                  "next_attempt_ms", "delivered_ms", "last_error"]),
    "models": (["version"], ["timeframe", "status", "artifact", "details", "registered_ms", "status_since_ms"]),
    "model_changes": (["version", "changed_ms", "status"], ["timeframe", "previous", "replaced", "reason"]),
}


@dataclasses.dataclass(frozen=True)
class TableCopy:
    table: str
    copied: int
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def exact(self) -> bool:
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum


def _pages(db: Database, table: str, after: tuple | None, size: int) -> Iterator[list[tuple]]:
    """The table's rows in key order, `size` at a time, from after the key `after`."""
    key, rest = TABLES[table]
    select = f"select {', '.join(key + rest)} from {table}"
    order = f" order by {', '.join(key)} limit ?"
    while True:
        if after is None:
            rows = db.execute(select + order, [size]).fetchall()
        else:
            placeholders = ", ".join("?" * len(key))
            rows = db.execute(f"{select} where ({', '.join(key)}) > ({placeholders}){order}", [*after, size]).fetchall()
        if not rows:
            return
        yield [tuple(row) for row in rows]
        after = tuple(rows[-1][: len(key)])


def _last_key(db: Database, table: str) -> tuple | None:
    key, _ = TABLES[table]
    row = db.execute(f"select {', '.join(key)} from {table} order by {', '.join(f'{column} desc' for column in key)} limit 1").fetchone()
    return tuple(row) if row else None


def table_checksum(db: Database, table: str, size: int = 10_000) -> tuple[int, str]:
    """(rows, SHA-256 of every row in key order): equal on two stores when their rows are."""
    digest, count = hashlib.sha256(), 0
    for page in _pages(db, table, None, size):
        for row in page:
            digest.update(repr(row).encode())
        count += len(page)
    return count, digest.hexdigest()


def copy_table(source: Database, target: Database, table: str, batch: int, progress: bool) -> TableCopy:
    key, rest = TABLES[table]
    columns = key + rest
    update = ", ".join(f"{column} = excluded.{column}" for column in rest)
    upsert = (f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))}) "
              f"on conflict ({', '.join(key)}) do update set {update}")
    total = source.execute(f"select count(*) from {table}").fetchone()[0]
    copied = 0
    with tqdm(total=total, desc=f"copying {table}", unit="row", disable=not progress) as bar:
        for page in _pages(source, table, _last_key(target, table), batch):
            with target.conn:
                target.conn.executemany(upsert, page)
            copied += len(page)
            bar.update(len(page))
    source_rows, source_checksum = table_checksum(source, table)
    target_rows, target_checksum = table_checksum(target, table)
    return TableCopy(table, copied, source_rows, target_rows, source_checksum, target_checksum)


def copy_store(source: Database, target: Database, batch: int = 5_000, progress: bool = True) -> list[TableCopy]:
    return [copy_table(source, target, table, batch, progress) for table in TABLES]
