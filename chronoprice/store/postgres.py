"""The store on PostgreSQL, for more than one machine: psycopg 3 on a psycopg_pool pool shared
by every thread, statements bounded by a timeout, connections checked before use so a
restarted server is reconnected to, and the same schema and queries as SQLite (schema.py,
records.py) behind the same small interface."""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from chronoprice.logs import redact
from chronoprice.store.schema import MIGRATIONS, StoreError

log = logging.getLogger(__name__)
STATEMENT_TIMEOUT_MS = 5_000
TIMEOUT_OPTION = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
CONNECT_TIMEOUT_SECONDS = 5
POOL_WAIT_SECONDS = 5  # a request waits this long for a connection, then fails (the API answers 503)
POOL_SIZE = 8  # the scheduler's tick threads, the history thread and a few web requests at once
MIGRATION_LOCK = 7_302_117  # the advisory lock held while a process migrates the schema


@contextlib.contextmanager
def _unavailable_as_store_error():
    """A server down, restarting or past the statement timeout (psycopg's OperationalError, the
    pool's wait included) as the store's own StoreError, which store.STORE_UNAVAILABLE names:
    so nothing outside this module needs the driver, and a process on SQLite never loads it."""
    try:
        yield
    except psycopg.OperationalError as error:
        raise StoreError(f"PostgreSQL unavailable: {redact(str(error))}") from error


def _postgres_sql(sql: str) -> str:
    """The store's SQL, written with SQLite's `?` placeholders, in psycopg's."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Rows:
    """A statement's rows, read before its connection goes back to the pool."""

    def __init__(self, cursor: psycopg.Cursor):
        self.rowcount = cursor.rowcount
        self._rows = cursor.fetchall() if cursor.description else []
        self._next = 0

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self):
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self):
        return iter(self.fetchall())


class _Transaction:
    """`with db.conn:` on PostgreSQL: this thread's statements run on one pooled connection in
    one transaction, committed at the end, or rolled back if it ends with an exception. Nested
    ones join it."""

    def __init__(self, database: PostgresDatabase):
        self._database = database

    def __enter__(self):
        local = self._database.local
        if getattr(local, "depth", 0) == 0:
            with _unavailable_as_store_error(), contextlib.ExitStack() as stack:
                local.connection = stack.enter_context(self._database.pool.connection())  # PoolTimeout while the server is down
                stack.enter_context(local.connection.transaction())
                local.held = stack.pop_all()
        local.depth = getattr(local, "depth", 0) + 1
        return self

    def __exit__(self, *exc):
        local = self._database.local
        local.depth -= 1
        if local.depth == 0:
            held, local.held, local.connection = local.held, None, None
            with _unavailable_as_store_error():
                held.__exit__(*exc)  # commits, or rolls back on an exception; then the connection goes back
        return None

    def executemany(self, sql: str, rows) -> None:
        with self, _unavailable_as_store_error():
            with self._database.local.connection.cursor() as cursor:
                cursor.executemany(_postgres_sql(sql), list(rows))


class PostgresDatabase:
    """What the store's queries use (schema.Database): `execute`, and `conn` for a transaction."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE, startup_options: str | None = TIMEOUT_OPTION):
        self.url = url
        self.local = threading.local()
        # No server-side prepared statements (psycopg prepares a statement run five times): a
        # pooler in transaction mode (PgBouncer) gives each transaction whichever server
        # connection is free, where that statement was never prepared.
        options = {"options": startup_options} if startup_options else {}
        self.pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=POOL_WAIT_SECONDS, name="chronoprice",
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "autocommit": True, "prepare_threshold": None,
                    **options},
        )

    @property
    def conn(self) -> _Transaction:
        return _Transaction(self)

    def execute(self, sql: str, parameters=()) -> _Rows:
        with _unavailable_as_store_error():
            if getattr(self.local, "depth", 0):
                return _Rows(self.local.connection.execute(_postgres_sql(sql), list(parameters)))
            # A statement on its own commits by itself (autocommit): no COMMIT round trip, which
            # was a third of a web request's time on reads.
            with self.pool.connection() as connection:
                return _Rows(connection.execute(_postgres_sql(sql), list(parameters)))

    def close(self) -> None:
        self.pool.close()


def migrate_postgres(db: PostgresDatabase) -> None:
    """Bring the schema to the newest version in one transaction, under an advisory lock, so
    processes starting at once migrate one after the other."""
    with db.conn:
        db.execute("select pg_advisory_xact_lock(?)", [MIGRATION_LOCK])
        db.execute("create table if not exists schema_version (version integer not null)")
        row = db.execute("select version from schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(f"{redact(db.url)} has schema version {version}, newer than this ChronoPrice "
                             f"({len(MIGRATIONS)}); upgrade ChronoPrice or point --db at another database")
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                db.execute(statement)
        db.execute("delete from schema_version")
        db.execute("insert into schema_version (version) values (?)", [len(MIGRATIONS)])


def startup_options(url: str) -> str | None:
    """The statement timeout as a startup option, or None where a pooler in front refuses startup
    options (PgBouncer does, unless told to ignore them): the timeout is then the pooler's to set
    (`connect_query` in pgbouncer.ini), and a warning says so."""
    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS, options=TIMEOUT_OPTION).close()
        return TIMEOUT_OPTION
    except psycopg.OperationalError as error:
        if "unsupported startup parameter" not in str(error):
            raise
    psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    log.warning("%s refuses startup options, as PgBouncer does: statements are not cut at %d ms unless the pooler sets "
                "statement_timeout (connect_query in pgbouncer.ini)", redact(url), STATEMENT_TIMEOUT_MS)
    return None


def open_postgres(url: str, pool_size: int | None = None) -> PostgresDatabase:
    """Connect to the database at `url` with a pool of at most `pool_size` connections (None:
    POOL_SIZE) and migrate it; StoreError (password hidden) if it cannot."""
    db = None
    try:
        # One connection first, so a wrong password or an absent server is reported as such
        # at once, not as a pool that never filled.
        db = PostgresDatabase(url, pool_size or POOL_SIZE, startup_options(url))
        db.pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
        migrate_postgres(db)
    except (psycopg.Error, PoolTimeout) as error:
        if db is not None:
            db.close()
        raise StoreError(f"cannot use database {redact(url)}: {redact(str(error))}. Check that the server runs and the URL "
                         "(--db, CHRONOPRICE_DB or DATABASE_URL) is right") from None
    return db


class SharedPostgres:
    """The pool every thread shares, opened on first use (`ticker.db()`, as sqlite.ConnectionPerThread)."""

    def __init__(self, url: str, pool_size: int | None = None):
        self.url, self.pool_size = url, pool_size
        self._db: PostgresDatabase | None = None
        self._lock = threading.Lock()

    def __call__(self) -> PostgresDatabase:
        with self._lock:
            if self._db is None:
                self._db = open_postgres(self.url, self.pool_size)
            return self._db
