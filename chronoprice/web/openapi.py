"""The OpenAPI 3 description of the JSON API, served at /api/openapi.json and fuzzed by the tests."""

from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS, INTERVAL_LEVELS
from chronoprice.market.markets import SYMBOL_PATTERN
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.model.features import HORIZON
from chronoprice.service.alert_rules import DIRECTIONS, FORMATS, MAX_COOLDOWN_MINUTES, MAX_WEBHOOK_LENGTH

_NUMBER = {"type": "number", "nullable": True}
_ERROR = {
    "type": "object",
    "required": ["error", "parameter"],
    "properties": {"error": {"type": "string"}, "parameter": {"type": "string", "nullable": True}},
}
_MARKET = {"exchange": {"type": "string"}, "symbol": {"type": "string"}, "timeframe": {"type": "string"}}
_CANDLE = {
    "type": "object", "required": ["ts", "time", "open", "high", "low", "close", "volume"],
    "properties": {"ts": {"type": "integer"}, "time": {"type": "string"}, "open": _NUMBER, "high": _NUMBER,
                   "low": _NUMBER, "close": _NUMBER, "volume": _NUMBER},
}
_SYMBOL = {
    "name": "symbol", "in": "query", "required": False,
    "description": "market as BASE/QUOTE; default: the server's --symbol",
    "schema": {"type": "string", "pattern": SYMBOL_PATTERN, "example": "BTC/USDT"},
}
_SYMBOL_FIELD = {"type": "string", "pattern": SYMBOL_PATTERN, "example": "BTC/USDT"}
_NEW_MARKET = {"type": "object", "required": ["symbol"], "properties": {
    "symbol": _SYMBOL_FIELD, "timeframe": {"type": "string", "enum": list(TIMEFRAME_MS), "default": "1m"}}}

_TIMEFRAME = {
    "name": "timeframe", "in": "query", "required": False, "description": "candle timeframe; default: the server's --timeframe",
    "schema": {"type": "string", "enum": list(TIMEFRAME_MS), "default": "1m"},
}



_STEP = {"type": "integer", "minimum": 1, "maximum": HORIZON}
# Each rule type's own parameters, as service/alert_rules.rule_params checks them.
_RULE_FIELDS = {
    "price_cross": ({"level": {"type": "number", "minimum": 1e-12, "maximum": 1e12, "description": "the price to cross"},
                     "direction": {"type": "string", "enum": list(DIRECTIONS), "default": "any"}}, ["level"]),
    "band_exit": ({"level": {"type": "number", "enum": list(INTERVAL_LEVELS), "default": 0.9, "description": "the band's level"},
                   "step": {**_STEP, "default": 1}}, []),
    "forecast_move": ({"step": {**_STEP, "default": HORIZON},
                       "percent": {"type": "number", "minimum": 1e-6, "maximum": 100}}, ["percent"]),
    "market_state": ({}, []),
}


def _alert_rule(kind: str, fields: tuple[dict, list[str]]) -> dict:
    """The body that creates an alert rule of one type: the shared fields and the type's own."""
    own, required = fields
    return {"type": "object", "required": ["symbol", "type", *required], "properties": {
        "symbol": _SYMBOL_FIELD, "timeframe": {"type": "string", "enum": list(TIMEFRAME_MS)},
        "type": {"type": "string", "enum": [kind]}, **own,
        "webhook": {"type": "string", "nullable": True, "pattern": "^(https?://.+)?$", "maxLength": MAX_WEBHOOK_LENGTH,
                    "description": "http(s) URL; a secret, never shown back. A host that does not resolve, or resolves "
                                   "to a private address while the server refuses those, is refused with 400"},
        "format": {"type": "string", "enum": list(FORMATS)},
        "cooldown_minutes": {"type": "integer", "minimum": 0, "maximum": MAX_COOLDOWN_MINUTES}}}


def _errors(*codes: int) -> dict:
    text = {400: "a bad parameter, named in `parameter`", 401: "a write without the admin token the server has",
            403: "a write from another machine while the server has no admin token", 404: "unknown symbol, rule or path",
            409: "the watchlist is full", 503: "no forecast available (model missing, or not enough candles yet)",
            413: "a body over 1 MB (web/hardening.py)", 414: "a path over 2 KB or a query over 4 KB (web/hardening.py)"}
    # Any request can be too large, whatever the operation.
    return {str(code): {"description": text[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code in (*codes, 413, 414)}


def _ok(schema: str, description: str) -> dict:
    return {"200": {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}}


def _get(summary: str, parameters: list, responses: dict) -> dict:
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


_LIMIT = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
_HISTORY_LIMIT = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500}}
_WINDOW = {"name": "window", "in": "query", "required": False,
           "description": "minutes of matured forecasts to score, ending at the newest candle; a window over a day "
           "starts at the UTC midnight at or before (since_ms), so that it sums whole days",
           "schema": {"type": "integer", "minimum": 10, "maximum": 43200, "default": ERROR_WINDOW_HOURS * 60}}
_TIME = {"type": "integer", "minimum": 0, "maximum": 100_000_000_000_000,
         "description": "candle open time in epoch milliseconds (an ISO 8601 time is accepted too)"}

_LIVE_RECORD = {
    "type": "object", "description": f"over the last {ERROR_WINDOW_HOURS} h of matured forecasts on one watched market",
    "required": ["symbol", "matured_origins", "mae_ratio", "dm_p_value", "steps"],
    "properties": {**_MARKET, "since_ms": {"type": "integer"}, "matured_forecasts": {"type": "integer"},
                   "matured_origins": {"type": "integer"}, "mae": _NUMBER, "mae_last_close": _NUMBER,
                   "mae_ratio": {**_NUMBER, "description": "mean MAE over the steps / the last close's; below 1 beats it"},
                   "dm_p_value": {**_NUMBER, "description": "Diebold-Mariano, HAC variance, of that difference"},
                   "coverage": _NUMBER, "steps": {"type": "array", "items": {"type": "object"}},
                   "backtest": {"type": "object", "nullable": True,
                                "description": "evaluate --backtest on these live forecasts: long/flat, long/short, buy-and-hold, flat"}},
}
_MODEL = {
    "type": "object", "required": ["version", "timeframe", "status", "status_since_ms", "serving", "live"],
    "properties": {"version": {"type": "string"}, "timeframe": {"type": "string"},
                   "status": {"type": "string", "enum": ["champion", "shadow", "retired"]},
                   "status_since_ms": {"type": "integer"}, "registered_ms": {"type": "integer"}, "artifact": {"type": "string"},
                   "data": {"type": "string", "nullable": True}, "first_ts": {"type": "integer", "nullable": True},
                   "last_ts": {"type": "integer", "nullable": True}, "architecture": {"type": "string", "nullable": True},
                   "input": {"type": "string"}, "window": {"type": "integer"}, "horizon": {"type": "integer"},
                   "validation_mae_ratio": _NUMBER, "holdout_mae_ratio": _NUMBER,
                   "serving": {"type": "boolean", "description": "this server forecasts its timeframe with it"},
                   "load_error": {"type": "string", "nullable": True}, "live": {"type": "array", "items": _LIVE_RECORD}},
}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "ChronoPrice API", "version": "1"},
    "paths": {
        "/metrics": {"get": {
            "summary": "counters and the close-to-stored latency histogram in Prometheus' text format; open on loopback, "
                       "elsewhere it needs the metrics token when the server has one",
            "responses": {"200": {"description": "the exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(401)}}},
        "/api/health": _get("liveness and runtime facts (never runs a tick)", [], {**_ok("Health", "the service is up"), **_errors()}),
        "/api/v1/candles": _get("the newest closed candles", [_SYMBOL, _TIMEFRAME, _LIMIT], {**_ok("Candles", "candles, oldest first"), **_errors(400, 404)}),
        "/api/v1/forecast": _get("the newest forecast, one step per candle of the model's horizon", [_SYMBOL, _TIMEFRAME], {**_ok("Forecast", "the forecast"), **_errors(400, 404, 503)}),
        "/api/v1/metrics": _get("live accuracy against the naive baseline", [_SYMBOL, _TIMEFRAME, _WINDOW], {**_ok("Metrics", "scores"), **_errors(400, 404)}),
        "/api/v1/history": _get(
            "matured forecasts with their actual closes",
            [_SYMBOL, _TIMEFRAME, {"name": "start", "in": "query", "required": False, "schema": _TIME},
             {"name": "end", "in": "query", "required": False, "schema": _TIME}, _HISTORY_LIMIT],
            {**_ok("History", "forecast steps, oldest target first"), **_errors(400, 404)},
        ),
        "/api/v1/live": _get(
            "the forming candle (streamed, or as the last tick fetched it) and when it last changed; never stored",
            [_SYMBOL, _TIMEFRAME], {**_ok("Live", "the forming candle, null when none is known to be forming"), **_errors(400, 404)},
        ),
        "/api/v1/alerts": {
            **_get("alert rules (webhooks masked), each band-exit rule with its observed firing rate",
                   [_SYMBOL, _TIMEFRAME], {**_ok("AlertRules", "the rules, oldest first"), **_errors(400)}),
            "post": {"summary": "add an alert rule (and watch its market); needs the admin token when the server has one",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewAlertRule"}}}},
                     "responses": {"201": {"description": "the rule, its webhook masked"}, **_errors(400, 401, 403, 404, 409)}},
        },
        "/api/v1/alerts/{id}": {"get": {
            "summary": "one alert rule, its webhook masked",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the rule"}, **_errors(404)}}, "delete": {
            "summary": "delete an alert rule; needs the admin token when the server has one",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "deleted"}, **_errors(401, 403, 404)}}},
        "/api/v1/markets": {
            **_get("the watchlist: every watched market with its newest candle and forecast and its state", [],
                   {**_ok("Markets", "the watched markets, in order"), **_errors()}),
            "post": {"summary": "watch a market (its history is fetched at once); needs the admin token when the server has one",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _NEW_MARKET}}},
                     "responses": {"200": {"description": "watched already"}, "201": {"description": "now watched"},
                                   **_errors(400, 401, 403, 404, 409)}},
            "delete": {"summary": "stop watching a market (its candles and forecasts stay); needs the admin token when the server has one",
                       "parameters": [{**_SYMBOL, "required": True, "description": "market as BASE/QUOTE"}, _TIMEFRAME],
                       "responses": {"200": {"description": "no longer watched"}, **_errors(400, 401, 403, 404)}},
        },
        "/api/v1/firings": _get(
            "the newest alert firings and their delivery",
            [{"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}},
             {"name": "since_ms", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "maximum": 100_000_000_000_000}}],
            {**_ok("AlertFirings", "firings, newest first"), **_errors(400)},
        ),
        "/api/v1/models": _get("the model registry: every version with its status and live record on the watched markets of its timeframe",
                               [{**_TIMEFRAME, "description": "only this timeframe's models; default: all"}],
                               {**_ok("Models", "champions, then shadows, then retired models"), **_errors(400)}),
        "/api/v1/models/{version}": _get(
            "one registered model, with its history of status changes",
            [{"name": "version", "in": "path", "required": True, "schema": {"type": "string", "example": "lstm-e086b51e6fbd"}}],
            {**_ok("Model", "the model"), **_errors(404)}),
        "/price/latest": _get("the newest close (seed-compatible)", [_SYMBOL, _TIMEFRAME], {**_ok("LatestPrice", "the newest close"), **_errors(400, 404, 503)}),
        "/price/prediction": _get("alias of /api/v1/forecast", [_SYMBOL, _TIMEFRAME], {**_ok("Forecast", "the forecast"), **_errors(400, 404, 503)}),
        "/metrics/model": _get("alias of /api/v1/metrics", [_SYMBOL, _TIMEFRAME, _WINDOW], {**_ok("Metrics", "scores"), **_errors(400, 404)}),
    },
    "components": {
        "schemas": {
            "Error": _ERROR,
            "Health": {
                "type": "object",
                "required": ["status", "source", "model_available", "tensorflow_imported"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok"]}, "source": {"type": "string"},
                    "model_available": {"type": "boolean"}, "model_version": {"type": "string", "nullable": True},
                    "model_error": {"type": "string", "nullable": True}, "engine": {"type": "string", "nullable": True},
                    "scheduler": {"type": "string", "enum": ["this process", "another process", "none", "unknown"]},
                    "tensorflow_imported": {"type": "boolean"}, "resident_mb": _NUMBER, "uptime_seconds": {"type": "number"},
                },
            },
            "Candles": {
                "type": "object", "required": ["exchange", "symbol", "timeframe", "candles"],
                "properties": {**_MARKET, "candles": {"type": "array", "items": _CANDLE}},
            },
            "Forecast": {
                "type": "object", "required": ["exchange", "symbol", "timeframe", "origin_ts", "model_version", "served", "steps"],
                "properties": {**_MARKET, "origin_ts": {"type": "integer"}, "model_version": {"type": "string"},
                               "served": {"type": "string", "enum": ["model", "last_close"]},
                               "skill_guard": {"type": "object", "nullable": True, "properties": {
                                   "guarded": {"type": "boolean"}, "origins": {"type": "integer"}, "required": {"type": "integer"},
                                   "mae_ratio": _NUMBER, "p_value": _NUMBER}},
                               "steps": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "required": ["step", "ts", "close", "lower", "upper"],
                                   "properties": {"step": {"type": "integer", "minimum": 1}, "ts": {"type": "integer"},
                                                  "close": _NUMBER, "lower": _NUMBER, "upper": _NUMBER}}}},
            },
            "Metrics": {
                "type": "object",
                "required": ["exchange", "symbol", "timeframe", "window_minutes", "since_ms", "matured", "mae_ratio",
                             "coverage", "steps"],
                "properties": {**_MARKET, "window_minutes": {"type": "integer"},
                               "since_ms": {"type": "integer", "description": "the first target candle scored"},
                               "matured": {"type": "integer"},
                               "mae_ratio": _NUMBER, "coverage": _NUMBER,
                               "steps": {"type": "array", "items": {
                                   "type": "object", "required": ["step", "mae_model", "mae_naive", "mae_ratio", "coverage", "count"],
                                   "properties": {"step": {"type": "integer"}, "mae_model": _NUMBER, "mae_naive": _NUMBER,
                                                  "mae_ratio": _NUMBER, "coverage": _NUMBER, "count": {"type": "integer"}}}}},
            },
            "History": {
                "type": "object", "required": ["exchange", "symbol", "timeframe", "forecasts"],
                "properties": {**_MARKET, "forecasts": {"type": "array", "items": {
                    "type": "object", "required": ["origin_ts", "step", "ts", "close", "lower", "upper", "actual", "naive", "model_version"],
                    "properties": {"origin_ts": {"type": "integer"}, "step": {"type": "integer"}, "ts": {"type": "integer"},
                                   "close": _NUMBER, "lower": _NUMBER, "upper": _NUMBER, "actual": _NUMBER, "naive": _NUMBER,
                                   "model_version": {"type": "string"}}}}},
            },
            "Live": {
                "type": "object", "required": ["exchange", "symbol", "timeframe", "candle", "updated_ms", "age_seconds", "via"],
                "properties": {**_MARKET, "candle": {**_CANDLE, "nullable": True},
                               "updated_ms": {"type": "integer", "nullable": True}, "age_seconds": _NUMBER,
                               "via": {"type": "string", "enum": ["stream", "tick"], "nullable": True}},
            },
            "AlertRules": {"type": "object", "required": ["rules"], "properties": {"rules": {"type": "array", "items": {
                "type": "object", "required": ["id", "symbol", "timeframe", "type", "params", "webhook", "observed"],
                "properties": {"id": {"type": "string"}, "symbol": {"type": "string"}, "timeframe": {"type": "string"},
                               "type": {"type": "string"}, "params": {"type": "object"}, "description": {"type": "string"},
                               "webhook": {"type": "string", "nullable": True}, "format": {"type": "string"},
                               "cooldown_minutes": {"type": "integer"}, "created_ms": {"type": "integer"},
                               "last_fired_ms": {"type": "integer", "nullable": True},
                               "observed": {"type": "object", "nullable": True}}}}}},
            "NewAlertRule": {"oneOf": [_alert_rule(kind, fields) for kind, fields in _RULE_FIELDS.items()],
                             "discriminator": {"propertyName": "type"}},
            "AlertFirings": {"type": "object", "required": ["firings"], "properties": {"firings": {"type": "array", "items": {
                "type": "object", "required": ["id", "rule_id", "symbol", "timeframe", "message", "delivery"],
                "properties": {"id": {"type": "string"}, "rule_id": {"type": "string"}, "symbol": {"type": "string"},
                               "timeframe": {"type": "string"}, "message": {"type": "string"}, "delivery": {"type": "string"}}}}}},
            "Models": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": _MODEL}}},
            "Model": {**_MODEL, "properties": {**_MODEL["properties"], "changes": {"type": "array", "items": {
                "type": "object", "required": ["version", "changed_ms", "status", "reason"],
                "properties": {"version": {"type": "string"}, "timeframe": {"type": "string"}, "changed_ms": {"type": "integer"},
                               "status": {"type": "string"}, "previous": {"type": "string", "nullable": True},
                               "replaced": {"type": "string", "nullable": True}, "reason": {"type": "string"}}}}}},
            "Markets": {"type": "object", "required": ["markets", "limit"], "properties": {
                "limit": {"type": "integer"}, "markets": {"type": "array", "items": {
                    "type": "object", "required": ["symbol", "timeframe", "exchange", "status"],
                    "properties": {**_MARKET, "newest_candle_ts": {"type": "integer", "nullable": True},
                                   "newest_forecast_origin_ts": {"type": "integer", "nullable": True}, "status": {"type": "string"},
                                   "error": {"type": "string", "nullable": True}, "feed": {"type": "string", "nullable": True},
                                   "last_tick_ms": {"type": "integer", "nullable": True}}}}}},
            "LatestPrice": {
                "type": "object", "required": ["exchange", "symbol", "timeframe", "ts", "time", "price"],
                "properties": {**_MARKET, "ts": {"type": "integer"}, "time": {"type": "string"}, "price": _NUMBER},
            },
        }
    },
}


def openapi_document(horizon: int | None, timeframe: str) -> dict:
    """OPENAPI with a description of what this server forecasts (horizon None: no model loaded)."""
    steps = f"{horizon}-step" if horizon else "multi-step"
    description = f"Live {steps} forecasts of {timeframe} candles, scored against the last close."
    return {**OPENAPI, "info": {**OPENAPI["info"], "description": description}}
