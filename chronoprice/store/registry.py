"""The model registry in the store: every model version a timeframe has had, its artifact and
what it was trained on (`details`), its status (champion, shadow or retired), and the history of
its changes. A status change is one transaction that also writes its history row, so readers in
other processes see the old champion or the new one, never both or neither."""

from __future__ import annotations

import dataclasses
import json

from chronoprice.store.schema import Database

STATUSES = ("champion", "shadow", "retired")
_COLUMNS = "version, timeframe, status, artifact, details, registered_ms, status_since_ms"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    version: str
    timeframe: str
    status: str
    artifact: str  # the artifact's base path on the machines that serve it
    details: dict  # model.registry.registry_details
    registered_ms: int
    status_since_ms: int


@dataclasses.dataclass(frozen=True)
class StatusChange:
    version: str
    timeframe: str
    changed_ms: int
    status: str
    previous: str | None  # None: the version was registered by this change
    replaced: str | None  # for a new champion, the champion it replaced
    reason: str


def _entry(row) -> ModelEntry:
    version, timeframe, status, artifact, details, registered, since = row
    return ModelEntry(version, timeframe, status, artifact, json.loads(details), int(registered), int(since))


def read_models(db: Database, timeframe: str | None = None, statuses: tuple[str, ...] = STATUSES) -> list[ModelEntry]:
    """Registered models (of `timeframe` if given) with one of `statuses`: champions first, then
    shadows, then retired ones, newest first within each."""
    where, params = f"status in ({', '.join('?' * len(statuses))})", list(statuses)
    if timeframe is not None:
        where, params = where + " and timeframe = ?", params + [timeframe]
    rows = db.execute(f"select {_COLUMNS} from models where {where} order by timeframe, registered_ms desc, version", params)
    return sorted(map(_entry, rows), key=lambda entry: STATUSES.index(entry.status))


def read_model(db: Database, version: str) -> ModelEntry | None:
    row = db.execute(f"select {_COLUMNS} from models where version = ?", [version]).fetchone()
    return _entry(row) if row else None


def register_model(db: Database, entry: ModelEntry, reason: str) -> bool:
    """Add `entry` (its status included) unless its version is registered already; False if it
    was. A new champion retires the timeframe's current one in the same transaction."""
    with db.conn:
        inserted = db.execute(
            f"insert into models ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?) on conflict (version) do nothing",
            [entry.version, entry.timeframe, "registering", entry.artifact, json.dumps(entry.details),
             entry.registered_ms, entry.registered_ms]).rowcount == 1
        if inserted:
            _change(db, entry.version, entry.status, reason, entry.registered_ms)
    return inserted


def change_status(db: Database, version: str, status: str, reason: str, now_ms: int) -> StatusChange:
    """Give `version` the status `status` (a new champion retires the current one), logged in the
    history with `reason`; one transaction. KeyError if the version is not registered."""
    with db.conn:
        return _change(db, version, status, reason, now_ms)


def _change(db: Database, version: str, status: str, reason: str, now_ms: int) -> StatusChange:
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}; one of {', '.join(STATUSES)}")
    row = db.execute("select timeframe, status from models where version = ?", [version]).fetchone()
    if row is None:
        raise KeyError(version)
    timeframe, previous = row
    replaced = None
    if status == "champion":
        current = db.execute("select version from models where timeframe = ? and status = 'champion' and version != ?",
                             [timeframe, version]).fetchone()
        if current is not None:
            replaced = current[0]
            _write_change(db, StatusChange(replaced, timeframe, now_ms, "retired", "champion", None, f"replaced by {version}"))
    change = StatusChange(version, timeframe, now_ms, status, None if previous == "registering" else previous, replaced, reason)
    _write_change(db, change)
    return change


def _write_change(db: Database, change: StatusChange) -> None:
    db.execute("update models set status = ?, status_since_ms = ? where version = ?", [change.status, change.changed_ms, change.version])
    db.execute("insert into model_changes (version, timeframe, changed_ms, status, previous, replaced, reason) "
               "values (?, ?, ?, ?, ?, ?, ?) on conflict do nothing",
               [change.version, change.timeframe, change.changed_ms, change.status, change.previous, change.replaced, change.reason])


def read_changes(db: Database, version: str | None = None, timeframe: str | None = None, limit: int = 100) -> list[StatusChange]:
    """The newest `limit` status changes (of `version` or `timeframe` if given), newest first."""
    where, params = "1 = 1", []
    for column, value in (("version", version), ("timeframe", timeframe)):
        if value is not None:
            where, params = f"{where} and {column} = ?", params + [value]
    rows = db.execute("select version, timeframe, changed_ms, status, previous, replaced, reason from model_changes "
                      f"where {where} order by changed_ms desc, status limit ?", params + [int(limit)])
    return [StatusChange(*row) for row in rows]


def rollback_champion(db: Database, timeframe: str, now_ms: int) -> StatusChange:
    """Undo the timeframe's last change of champion: the champion it replaced serves again and
    the current one is retired (not made a shadow again, which the next check could promote
    straight back). ValueError saying why when there is nothing to undo."""
    with db.conn:
        current = db.execute("select version from models where timeframe = ? and status = 'champion'", [timeframe]).fetchone()
        if current is None:
            raise ValueError(f"no {timeframe} model is champion, so there is nothing to roll back")
        made = db.execute("select replaced from model_changes where version = ? and status = 'champion' "
                          "order by changed_ms desc limit 1", [current[0]]).fetchone()
        if made is None or made[0] is None:
            raise ValueError(f"{current[0]} became the {timeframe} champion without replacing one; there is nothing to roll back to")
        _write_change(db, StatusChange(current[0], timeframe, now_ms, "retired", "champion", None, f"rolled back to {made[0]}"))
        previous = db.execute("select status from models where version = ?", [made[0]]).fetchone()[0]
        change = StatusChange(made[0], timeframe, now_ms, "champion", previous, current[0], f"rollback of {current[0]}")
        _write_change(db, change)
        return change


def _checked_key(version: str) -> str:
    return f"promotion_checked:{version}"


def checked_through(db: Database, version: str) -> int:
    """The newest origin the shadow's last promotion check judged (0 before its first): the next
    check is made on origins after it only."""
    row = db.execute("select value from meta where key = ?", [_checked_key(version)]).fetchone()
    return int(row[0]) if row else 0


def save_checked_through(db: Database, version: str, origin_ts: int) -> None:
    with db.conn:
        db.execute("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
                   [_checked_key(version), str(int(origin_ts))])
