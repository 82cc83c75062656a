"""What every API route needs: the ticker, the default symbol and the response cache, kept on
the Flask app (`app.extensions["chronoprice"]`) rather than in a closure or a global."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
from flask import current_app, jsonify
from flask_caching import Cache

from chronoprice.market.source import Market
from chronoprice.service.metrics import record_cache_lookup
from chronoprice.service.status import TickStatus
from chronoprice.service.tick import Ticker
from chronoprice.web.api.errors import ApiError
from chronoprice.web.api.params import symbol_param, timeframe_param
from chronoprice.web.cache import cached_seconds


@dataclasses.dataclass(frozen=True)
class ApiContext:
    ticker: Ticker
    default_symbol: str
    cache: Cache
    refresh_seconds: float
    watch_limit: int = 50
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    allow_private_webhooks: bool = False
    metrics_token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def retry_after_seconds(self) -> int:
        return max(1, int(self.refresh_seconds))

    @property
    def cache_seconds(self) -> int:
        return cached_seconds(self.refresh_seconds)


def api_context() -> ApiContext:
    return current_app.extensions["chronoprice"]


def ticked_market(args) -> tuple[Market, TickStatus]:
    """The market the request names (symbol and timeframe, or the defaults), after its
    deduplicated tick; 404 if the source does not list it."""
    context = api_context()
    symbol = symbol_param(args, context.default_symbol)
    timeframe = timeframe_param(args, context.ticker.timeframe)
    status = context.ticker.tick(symbol, timeframe)
    if status.symbol_unknown:
        raise ApiError(404, status.error, "symbol")
    return context.ticker.market(symbol, status.exchange, timeframe), status


def cached_json(name: str, market: Market, status: TickStatus, parameters: tuple, build):
    """`build()`'s payload as JSON, cached under a key that holds the newest candle and forecast,
    so a new candle invalidates it."""
    return cached_payload(f"api:{name}:{market.exchange}:{market.symbol}:{market.timeframe}:{status.newest_ts}:"
                          f"{status.forecast_origin_ts}:{parameters}", build)


def cached_payload(key: str, build):
    """`build()`'s payload as JSON, worked out once for every caller until the cache drops it
    (after a refresh interval at most)."""
    context = api_context()
    payload = context.cache.get(key)
    record_cache_lookup(payload is not None)
    if payload is None:
        payload = build()
        context.cache.set(key, payload, timeout=context.cache_seconds)
    return jsonify(payload)


def number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def iso_time(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")


def market_fields(market: Market) -> dict:
    return {"exchange": market.exchange, "symbol": market.symbol, "timeframe": market.timeframe}
