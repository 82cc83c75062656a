"""The store's schema, the same on SQLite and PostgreSQL: its migrations as SQL both run, the
keys, and the small interface (`Database`) that records.py, claims.py and watchlist.py use."""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

MARKET_KEY = ["exchange", "symbol", "timeframe"]
FORECAST_COLUMNS = ["origin_ts", "step", "target_ts", "predicted", "lower", "upper", "model_version", "created_at"]


def is_database_url(target) -> bool:
    """A PostgreSQL URL (the store is there), not a SQLite file path."""
    return str(target).startswith(("postgresql://", "postgres://"))


class StoreError(RuntimeError):
    """The database cannot be used; the message names it (never its password) and what to do."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Sequence[Any] | None: ...

    def fetchall(self) -> list[Sequence[Any]]: ...

    def __iter__(self): ...


class Connection(Protocol):
    """Used as `with db.conn:` for one transaction (committed, or rolled back on an exception)."""

    def __enter__(self): ...

    def __exit__(self, *exc) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    """What the store's queries use of a connection: sqlite_utils.Database has it, and
    postgres.PostgresDatabase gives the same on a pool. SQL is written with `?` placeholders."""

    @property
    def conn(self) -> Connection: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor: ...


# A forecast step keeps the close of its origin candle (the naive forecast) and of its target
# candle (the actual, once stored), copied from `candles` whenever either is written: scores are
# read on every page and API call, and joining every step with two candles dominated them.
_CLOSE_OF = ("(select close from candles c where c.exchange = forecasts.exchange and c.symbol = forecasts.symbol "
             "and c.timeframe = forecasts.timeframe and c.ts = forecasts.{})")
CLOSES_SET = f"origin_close = {_CLOSE_OF.format('origin_ts')}, actual = {_CLOSE_OF.format('target_ts')}"

# Each migration brings a database from version N to N + 1; an older one runs those it lacks,
# in one transaction, while it holds the lock that keeps other processes from migrating too.
# Types are spelled so that both engines read them alike: bigint is SQLite's integer, double
# precision its real.
MIGRATIONS: list[list[str]] = [
    [
        "create table if not exists candles (exchange text not null, symbol text not null, timeframe text not null, "
        "ts bigint not null, open double precision not null, high double precision not null, low double precision not null, "
        "close double precision not null, volume double precision not null, primary key (exchange, symbol, timeframe, ts))",
        "create table if not exists forecasts (exchange text not null, symbol text not null, timeframe text not null, "
        "origin_ts bigint not null, step integer not null, target_ts bigint not null, predicted double precision not null, "
        "lower double precision not null, upper double precision not null, model_version text not null, created_at bigint, "
        "primary key (exchange, symbol, timeframe, origin_ts, step, model_version))",
        "create index if not exists forecasts_by_target on forecasts (exchange, symbol, timeframe, target_ts)",
    ],
    ["create table if not exists ticks (key text primary key, claimed_ms bigint, status text)"],
    [
        "create table if not exists watchlist (symbol text not null, timeframe text not null, added_ms bigint, "
        "primary key (symbol, timeframe))",
        "create table if not exists meta (key text primary key, value text)",
        "create table if not exists leases (name text primary key, owner text, expires_ms bigint)",
    ],
    [
        "alter table forecasts add column origin_close double precision",
        "alter table forecasts add column actual double precision",
        f"update forecasts set {CLOSES_SET}",
        # Covering the scores' columns, so the overview's error sums and the metrics never leave
        # the index (about a third more bytes per forecast, three times faster scores).
        "drop index if exists forecasts_by_target",
        "create index if not exists forecasts_matured on forecasts "
        "(exchange, symbol, timeframe, target_ts, step, predicted, lower, upper, origin_close, actual)",
    ],
    [
        # Ids are made by the app (short random text), so both engines key them alike.
        "create table if not exists alert_rules (id text primary key, symbol text not null, timeframe text not null, "
        "kind text not null, params text not null, webhook text, format text not null, cooldown_ms bigint not null, "
        "created_ms bigint not null)",
        # The outbox: one row per rule and candle (the key is what keeps a firing from being sent twice),
        # kept after delivery as the bell's history; a rule's market and kind are copied so it outlives the rule.
        "create table if not exists alert_firings (rule_id text not null, candle_ts bigint not null, fired_ms bigint not null, "
        "symbol text not null, timeframe text not null, kind text not null, message text not null, state text not null, "
        "attempts integer not null, next_attempt_ms bigint, delivered_ms bigint, last_error text, primary key (rule_id, candle_ts))",
        "create index if not exists alert_firings_due on alert_firings (state, next_attempt_ms)",
        "create index if not exists alert_firings_by_time on alert_firings (fired_ms)",
    ],
    [
        # The model registry (store/registry.py); details is JSON (model.registry.registry_details).
        "create table if not exists models (version text primary key, timeframe text not null, status text not null, "
        "artifact text not null, details text not null, registered_ms bigint not null, status_since_ms bigint not null)",
        "create index if not exists models_by_timeframe on models (timeframe, status)",
        # One champion a timeframe, even when two processes change it at once on PostgreSQL.
        "create unique index if not exists models_one_champion on models (timeframe) where status = 'champion'",
        "create table if not exists model_changes (version text not null, timeframe text not null, changed_ms bigint not null, "
        "status text not null, previous text, replaced text, reason text not null, primary key (version, changed_ms, status))",
        # Shadows forecast the same markets as the champion, and every reader picks one version
        # (records.SERVED): the covering index holds the version, so the scores still never
        # leave it.
        "drop index if exists forecasts_matured",
        "create index if not exists forecasts_scored on forecasts "
        "(exchange, symbol, timeframe, target_ts, step, model_version, predicted, lower, upper, origin_close, actual)",
    ],
    [
        # Retention (store/retention.py): scored steps past the retained span, summed per market, model,
        # day of their target candle and step, so every score over whole days stays exact once they are deleted.
        "create table if not exists forecast_days (exchange text not null, symbol text not null, "
        "timeframe text not null, model_version text not null, day_ts bigint not null, step integer not null, "
        "scored bigint not null, model_error double precision not null, naive_error double precision not null, covered bigint not null, "
        "primary key (exchange, symbol, timeframe, model_version, day_ts, step))",
    ],
]
