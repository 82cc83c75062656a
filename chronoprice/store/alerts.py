"""Alert rules and the outbox of their firings, in the store. A firing is keyed by its rule and
candle, so a rule fires at most once per candle however many processes evaluate it; a delivery
is claimed by pushing its next attempt past a lease, so a process that dies mid-delivery leaves
it due again, never lost."""

from __future__ import annotations

import dataclasses
import json

from chronoprice.store.schema import Database

RULE_COLUMNS = "id, symbol, timeframe, kind, params, webhook, format, cooldown_ms, created_ms"
FIRING_COLUMNS = ("rule_id, candle_ts, fired_ms, symbol, timeframe, kind, message, state, attempts, next_attempt_ms, "
                  "delivered_ms, last_error")


@dataclasses.dataclass(frozen=True)
class AlertRule:
    id: str
    symbol: str
    timeframe: str
    kind: str
    params: dict
    webhook: str | None = dataclasses.field(repr=False)  # a secret: masked wherever it is shown
    format: str
    cooldown_ms: int
    created_ms: int


@dataclasses.dataclass(frozen=True)
class Firing:
    rule_id: str
    candle_ts: int
    fired_ms: int
    symbol: str
    timeframe: str
    kind: str
    message: str
    state: str  # pending (a webhook to call), delivered, failed (gave up), shown (no webhook), dropped (rule deleted)
    attempts: int = 0
    next_attempt_ms: int | None = None
    delivered_ms: int | None = None
    last_error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.rule_id}:{self.candle_ts}"


def _rule(row) -> AlertRule:
    return AlertRule(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], int(row[7]), int(row[8]))


def add_rule(db: Database, rule: AlertRule) -> None:
    with db.conn:
        db.execute(f"insert into alert_rules ({RULE_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [rule.id, rule.symbol, rule.timeframe, rule.kind, json.dumps(rule.params), rule.webhook, rule.format,
                    rule.cooldown_ms, rule.created_ms])


def read_rules(db: Database, symbol: str | None = None, timeframe: str | None = None) -> list[AlertRule]:
    """Rules, oldest first; of one market when `symbol` (and `timeframe`) are given."""
    where, params = ["1 = 1"], []
    for column, value in (("symbol", symbol), ("timeframe", timeframe)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = db.execute(f"select {RULE_COLUMNS} from alert_rules where {' and '.join(where)} order by created_ms, id", params)
    return [_rule(row) for row in rows]


def read_rule(db: Database, rule_id: str) -> AlertRule | None:
    row = db.execute(f"select {RULE_COLUMNS} from alert_rules where id = ?", [rule_id]).fetchone()
    return None if row is None else _rule(row)


def delete_rule(db: Database, rule_id: str) -> bool:
    """Delete the rule; its undelivered firings are dropped (their webhook goes with it)."""
    with db.conn:
        deleted = db.execute("delete from alert_rules where id = ?", [rule_id]).rowcount == 1
        db.execute("update alert_firings set state = 'dropped', next_attempt_ms = null where rule_id = ? and state = 'pending'", [rule_id])
    return deleted


def last_fired_ms(db: Database, rule_id: str) -> int | None:
    row = db.execute("select max(fired_ms) from alert_firings where rule_id = ?", [rule_id]).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def record_firing(db: Database, firing: Firing) -> bool:
    """Put the firing in the outbox; False if the rule already fired on that candle."""
    with db.conn:
        cursor = db.execute(
            f"insert into alert_firings ({FIRING_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing",
            [firing.rule_id, firing.candle_ts, firing.fired_ms, firing.symbol, firing.timeframe, firing.kind, firing.message,
             firing.state, firing.attempts, firing.next_attempt_ms, firing.delivered_ms, firing.last_error])
    return cursor.rowcount == 1


def read_firings(db: Database, limit: int = 50, since_ms: int | None = None) -> list[Firing]:
    """The newest firings first (the bell's list)."""
    rows = db.execute(f"select {FIRING_COLUMNS} from alert_firings where fired_ms >= ? order by fired_ms desc, rule_id limit ?",
                      [since_ms or 0, int(limit)])
    return [Firing(*row) for row in rows]


def due_firings(db: Database, now_ms: int, limit: int = 100) -> list[Firing]:
    rows = db.execute(f"select {FIRING_COLUMNS} from alert_firings where state = 'pending' and next_attempt_ms <= ? "
                      "order by next_attempt_ms limit ?", [now_ms, int(limit)])
    return [Firing(*row) for row in rows]


def claim_delivery(db: Database, firing: Firing, now_ms: int, lease_ms: int) -> bool:
    """Take the firing's next attempt: it is due again after `lease_ms` unless the attempt ends first."""
    with db.conn:
        cursor = db.execute("update alert_firings set next_attempt_ms = ?, attempts = attempts + 1 where rule_id = ? and candle_ts = ? "
                            "and state = 'pending' and next_attempt_ms <= ?", [now_ms + lease_ms, firing.rule_id, firing.candle_ts, now_ms])
    return cursor.rowcount == 1


def finish_delivery(db: Database, firing: Firing, state: str, next_attempt_ms: int | None, delivered_ms: int | None,
                    error: str | None) -> None:
    with db.conn:
        db.execute("update alert_firings set state = ?, next_attempt_ms = ?, delivered_ms = ?, last_error = ? "
                   "where rule_id = ? and candle_ts = ? and state = 'pending'",
                   [state, next_attempt_ms, delivered_ms, error, firing.rule_id, firing.candle_ts])
