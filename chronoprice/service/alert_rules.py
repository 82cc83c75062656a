"""Alert rules, pure: reading one from a request body, checking its webhook, the condition of
each kind, and the message and webhook bodies of a firing. The scheduler's side (evaluating them
on every tick, the outbox, delivery) is alerts.py.

Kinds, with their parameters:
- price_cross: the newest close crossed `level` from the close before (`direction` up, down or any);
- band_exit: the newest close left the `level` (0.8, 0.9, 0.95) band of the forecast made `step`
  candles before it, the band as it was set then (the live adaptive band the page draws);
- forecast_move: the newest forecast's move at `step` is at least `percent` % and its band there
  excludes the last close;
- market_state: the market is failing or stale.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import Callable
from urllib.parse import urlsplit

from chronoprice.evaluation.metrics import INTERVAL_LEVELS
from chronoprice.market.timeframes import utc_minute
from chronoprice.store.alerts import AlertRule, Firing

KINDS = ("price_cross", "band_exit", "forecast_move", "market_state")
FORMATS = ("generic", "slack", "discord")
DIRECTIONS = ("any", "up", "down")
DEFAULT_COOLDOWN_MINUTES = 10
MAX_COOLDOWN_MINUTES = 7 * 24 * 60
MAX_WEBHOOK_LENGTH = 2000


class RuleError(ValueError):
    """A rule body that cannot be used; `parameter` names the field."""

    def __init__(self, message: str, parameter: str):
        super().__init__(message)
        self.parameter = parameter


def _number(body: dict, name: str, default=None, low: float = 0.0, high: float = float("inf"), whole: bool = False):
    value = body.get(name, default)
    kind = int if whole else (int, float)
    if value is None or isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise RuleError(f"{name} must be a {'whole ' if whole else ''}number from {low:g} to {high:g}", name)
    return value


def rule_params(body: dict, horizon: int) -> dict:
    """The parameters of the rule's kind, checked; RuleError naming the first bad one."""
    kind = body.get("type")
    if kind not in KINDS:
        raise RuleError(f"type must be one of {', '.join(KINDS)}", "type")
    if kind == "price_cross":
        direction = body.get("direction", "any")
        if direction not in DIRECTIONS:
            raise RuleError(f"direction must be one of {', '.join(DIRECTIONS)}", "direction")
        return {"level": float(_number(body, "level", low=1e-12, high=1e12)), "direction": direction}
    if kind == "band_exit":
        level = body.get("level", 0.9)
        if level not in INTERVAL_LEVELS:
            raise RuleError(f"level must be one of {', '.join(map(str, INTERVAL_LEVELS))}", "level")
        return {"step": _number(body, "step", 1, 1, horizon, whole=True), "level": float(level)}
    if kind == "forecast_move":
        return {"step": _number(body, "step", horizon, 1, horizon, whole=True), "percent": float(_number(body, "percent", low=1e-6, high=100))}
    return {}


def webhook_problem(url: str, allow_private: bool, resolve: Callable = socket.getaddrinfo) -> str | None:
    """Why a webhook URL may not be called (None if it may): http(s) only, and, unless private
    webhooks are allowed, never a loopback, link-local, private or otherwise non-public address,
    checked on every address its host resolves to (again before each delivery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhook must be an http:// or https:// URL"
    if allow_private:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in resolve(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError, ValueError):
        return "webhook host does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_global or ip.is_multicast:
            return ("webhook host is a loopback, link-local or private address; "
                    "set CHRONOPRICE_ALLOW_PRIVATE_WEBHOOKS=1 to allow that")
    return None


def mask_webhook(url: str | None) -> str | None:
    """What the API and page show of a webhook: its scheme and host, never its path (the secret)."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


def new_rule(body: dict, symbol: str, timeframe: str, horizon: int, now_ms: int, allow_private: bool,
             resolve: Callable = socket.getaddrinfo) -> AlertRule:
    """A rule from an API or form body (symbol and timeframe parsed already); RuleError if bad."""
    params = rule_params(body, horizon)
    webhook = body.get("webhook")
    if webhook == "":
        webhook = None  # the page's form sends an empty field for "no webhook"
    if webhook is not None:
        if not isinstance(webhook, str) or len(webhook) > MAX_WEBHOOK_LENGTH:
            raise RuleError(f"webhook must be a URL of at most {MAX_WEBHOOK_LENGTH} characters", "webhook")
        problem = webhook_problem(webhook, allow_private, resolve)
        if problem:
            raise RuleError(problem, "webhook")
    format_ = body.get("format", "generic")
    if format_ not in FORMATS:
        raise RuleError(f"format must be one of {', '.join(FORMATS)}", "format")
    cooldown = _number(body, "cooldown_minutes", DEFAULT_COOLDOWN_MINUTES, 0, MAX_COOLDOWN_MINUTES, whole=True)
    return AlertRule(secrets.token_hex(6), symbol, timeframe, body["type"], params, webhook, format_, cooldown * 60_000, now_ms)


def describe(rule: AlertRule) -> str:
    """The rule in words, e.g. 'close leaves the 90 % band at step 1'."""
    p = rule.params
    if rule.kind == "price_cross":
        return f"close crosses {p['level']:,.2f}" + ("" if p["direction"] == "any" else f" going {p['direction']}")
    if rule.kind == "band_exit":
        return f"close leaves the {p['level'] * 100:.0f} % band at step {p['step']}"
    if rule.kind == "forecast_move":
        return f"forecast at step {p['step']} moves {p['percent']:g} % or more, its band excluding the last close"
    return "market goes stale or failing"


# ------------------------------------------------------------------ conditions
def crossed(previous_close: float, close: float, level: float, direction: str) -> str | None:
    """'up' or 'down' if the close crossed `level` that way (and the rule wants it), else None."""
    if previous_close < level <= close and direction in ("any", "up"):
        return "up"
    if previous_close > level >= close and direction in ("any", "down"):
        return "down"
    return None


def big_move(last_close: float, predicted: float, lower: float, upper: float, percent: float) -> float | None:
    """The forecast's move in % if it is at least `percent` and its band excludes the last close."""
    move = (predicted / last_close - 1) * 100
    return move if abs(move) >= percent and not lower <= last_close <= upper else None


# ------------------------------------------------------------------ firings
def firing(rule: AlertRule, candle_ts: int, now_ms: int, message: str) -> Firing:
    """The outbox row of a rule that fired on a candle: pending while it has a webhook to call."""
    pending = rule.webhook is not None
    return Firing(rule.id, int(candle_ts), now_ms, rule.symbol, rule.timeframe, rule.kind,
                  f"{rule.symbol} {rule.timeframe}: {message} ({utc_minute(candle_ts)})",
                  "pending" if pending else "shown", 0, now_ms if pending else None)


def webhook_body(rule: AlertRule, fired: Firing) -> dict:
    """What the webhook receives: ChronoPrice's JSON, or Slack's or Discord's message shape."""
    text = f"ChronoPrice alert: {fired.message}"
    if rule.format == "slack":
        return {"text": text}
    if rule.format == "discord":
        return {"content": text}
    return {"id": fired.id, "rule_id": rule.id, "type": rule.kind, "rule": describe(rule), "symbol": rule.symbol,
            "timeframe": rule.timeframe, "candle_ts": fired.candle_ts, "fired_ms": fired.fired_ms, "message": fired.message}
