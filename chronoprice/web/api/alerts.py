"""GET, POST /api/v1/alerts, GET and DELETE /api/v1/alerts/ID and GET /api/v1/firings: alert
rules per market (the same write rules as the watchlist) and what they fired. Webhook URLs are
secrets: answers show only their scheme and host."""

from __future__ import annotations

from flask import jsonify, request

from chronoprice.service.alert_rules import RuleError, describe, mask_webhook
from chronoprice.service.alerts import create_rule, observed_band_exits
from chronoprice.service.watchlist import NotListed
from chronoprice.store.alerts import AlertRule, Firing, delete_rule, last_fired_ms, read_firings, read_rule, read_rules
from chronoprice.store.watchlist import WatchlistFull
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.markets import market_from_body, require_write_access
from chronoprice.web.api.params import parse_int, symbol_param, timeframe_param

blueprint = api_blueprint("alerts")
MAX_FIRINGS = 200


def rule_entry(rule: AlertRule) -> dict:
    ticker = api_context().ticker
    return {"id": rule.id, "symbol": rule.symbol, "timeframe": rule.timeframe, "type": rule.kind, "params": rule.params,
            "description": describe(rule), "webhook": mask_webhook(rule.webhook), "format": rule.format,
            "cooldown_minutes": rule.cooldown_ms // 60_000, "created_ms": rule.created_ms,
            "last_fired_ms": last_fired_ms(ticker.db(), rule.id), "observed": observed_band_exits(ticker, rule)}


def firing_entry(fired: Firing) -> dict:
    return {"id": fired.id, "rule_id": fired.rule_id, "symbol": fired.symbol, "timeframe": fired.timeframe, "type": fired.kind,
            "candle_ts": fired.candle_ts, "fired_ms": fired.fired_ms, "message": fired.message, "delivery": fired.state,
            "attempts": fired.attempts, "delivered_ms": fired.delivered_ms, "last_error": fired.last_error}


@blueprint.get("/api/v1/alerts")
def list_alerts():
    ticker = api_context().ticker
    symbol = symbol_param(request.args, None) if "symbol" in request.args else None
    timeframe = timeframe_param(request.args, None) if "timeframe" in request.args else None
    return jsonify({"rules": [rule_entry(rule) for rule in read_rules(ticker.db(), symbol, timeframe)]})


@blueprint.get("/api/v1/firings")
def list_firings():
    limit = parse_int(request.args, "limit", 20, 1, MAX_FIRINGS)
    since = parse_int(request.args, "since_ms", 0, 0, 10**14)
    return jsonify({"firings": [firing_entry(each) for each in read_firings(api_context().ticker.db(), limit, since)]})


@blueprint.post("/api/v1/alerts")
def add_alert():
    require_write_access()
    symbol, timeframe = market_from_body()
    context = api_context()
    try:
        rule = create_rule(context.ticker, request.get_json(), symbol, timeframe, context.watch_limit, context.allow_private_webhooks)
    except RuleError as error:
        raise ApiError(400, str(error), error.parameter) from None
    except NotListed as error:
        raise ApiError(404, str(error), "symbol") from None
    except WatchlistFull as error:
        raise ApiError(409, f"{error}; a rule needs its market watched") from None
    return jsonify(rule_entry(rule)), 201


@blueprint.get("/api/v1/alerts/<rule_id>")
def show_alert(rule_id: str):
    rule = read_rule(api_context().ticker.db(), rule_id[:64])
    if rule is None:
        raise ApiError(404, f"no alert rule {rule_id[:64]!r}", "id")
    return jsonify(rule_entry(rule))


@blueprint.delete("/api/v1/alerts/<rule_id>")
def remove_alert(rule_id: str):
    require_write_access()
    if not delete_rule(api_context().ticker.db(), rule_id[:64]):
        raise ApiError(404, f"no alert rule {rule_id[:64]!r}", "id")
    return jsonify({"removed": rule_id})
