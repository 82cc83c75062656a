"""The JSON API on the Dash Flask server, one module per resource (contract in
docs/ARCHITECTURE.md).

Every read of a market runs its deduplicated tick first, so API users get fresh forecasts with
no dashboard open. Responses are cached under a key holding the market's newest candle, so a
new candle invalidates them.
"""

from __future__ import annotations

from flask import Flask, request
from flask_caching import Cache

from chronoprice.config import Settings
from chronoprice.service.tick import Ticker
from chronoprice.web.api import alerts, candles, forecasts, forming, health, markets, models, prometheus, scores
from chronoprice.web.api.context import ApiContext
from chronoprice.web.api.errors import (
    ApiError,
    api_blueprint,
    method_not_allowed_response,
)

unknown_paths = api_blueprint("unknown")


@unknown_paths.get("/api/<path:rest>")
@unknown_paths.get("/price/<path:rest>")
@unknown_paths.get("/metrics/<path:rest>")
def unknown(rest):
    raise ApiError(404, f"no such endpoint: {request.path}; see /api/openapi.json")


def register_api(server: Flask, ticker: Ticker, settings: Settings, cache: Cache) -> None:
    """Add the API's routes and JSON error handling to the Flask server."""
    server.extensions["chronoprice"] = ApiContext(ticker, settings.symbol, cache, settings.refresh_seconds,
                                                  settings.watch_limit, settings.admin_token, settings.allow_private_webhooks,
                                                  settings.metrics_token)
    for blueprint in (health.blueprint, candles.blueprint, forecasts.blueprint, scores.blueprint, markets.blueprint,
                      forming.blueprint, alerts.blueprint, models.blueprint, prometheus.blueprint, unknown_paths):
        server.register_blueprint(blueprint)
    server.register_error_handler(405, method_not_allowed_response)
