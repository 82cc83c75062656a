"""GET, POST and DELETE /api/v1/markets: the watchlist, each market with its freshness and status.

Writes need the admin token when one is set (Authorization: Bearer) and come only from
loopback when none is, so a public deployment is read-only by default.
"""

from __future__ import annotations

import hmac

from flask import jsonify, request

from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.overview import market_status
from chronoprice.store.sqlite import newest_candle_ts, newest_forecast_origin_ts
from chronoprice.store.watchlist import WatchlistFull, add_to_watchlist, read_watchlist, remove_from_watchlist
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import parse_symbol, parse_timeframe

LOOPBACK = ("127.0.0.1", "::1")
blueprint = api_blueprint("markets")


def market_entry(symbol: str, timeframe: str) -> dict:
    ticker = api_context().ticker
    status = ticker.stored_status(symbol, timeframe)
    market = Market(status.exchange or ticker.source.exchange, symbol, timeframe)
    return {
        "symbol": symbol, "timeframe": timeframe, "exchange": market.exchange,
        "newest_candle_ts": newest_candle_ts(ticker.db(), market),
        "newest_forecast_origin_ts": newest_forecast_origin_ts(ticker.db(), market),
        "status": market_status(status, ticker.now_ms(), timeframe_ms(timeframe)),
        "error": status.error,
        "last_tick_ms": status.finished_at_ms or None,
    }


def require_write_access() -> None:
    token = api_context().admin_token
    if token is None:
        if request.remote_addr not in LOOPBACK:
            raise ApiError(403, "watchlist writes come only from this machine unless CHRONOPRICE_ADMIN_TOKEN is set")
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "watchlist writes need the header Authorization: Bearer <CHRONOPRICE_ADMIN_TOKEN>")


def market_from_body() -> tuple[str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"symbol": "BTC/USDT", "timeframe": "15m"}', "body")
    if not isinstance(body.get("symbol"), str):
        raise ApiError(400, "symbol is required, as a string like BTC/USDT", "symbol")
    if not isinstance(body.get("timeframe", "1m"), str):
        raise ApiError(400, "timeframe must be a string", "timeframe")
    return parse_symbol(body, ""), parse_timeframe(body, "1m")


@blueprint.get("/api/v1/markets")
def list_markets():
    context = api_context()
    markets = [market_entry(symbol, timeframe) for symbol, timeframe in read_watchlist(context.ticker.db())]
    return jsonify({"markets": markets, "limit": context.watch_limit})


@blueprint.post("/api/v1/markets")
def add_market():
    require_write_access()
    symbol, timeframe = market_from_body()
    context = api_context()
    offered = context.ticker.symbols()
    if offered and symbol not in offered:
        raise ApiError(404, f"{context.ticker.source.label} does not list {symbol}", "symbol")
    try:
        added = add_to_watchlist(context.ticker.db(), symbol, timeframe, context.watch_limit)
    except WatchlistFull as error:
        raise ApiError(409, str(error)) from None
    return jsonify(market_entry(symbol, timeframe)), 201 if added else 200


@blueprint.delete("/api/v1/markets")
def remove_market():
    require_write_access()
    if request.args.get("symbol") is None:
        raise ApiError(400, "symbol is required", "symbol")
    symbol = parse_symbol(request.args, "")
    timeframe = parse_timeframe(request.args, "1m")
    if not remove_from_watchlist(api_context().ticker.db(), symbol, timeframe):
        raise ApiError(404, f"{symbol} {timeframe} is not watched", "symbol")
    return jsonify({"removed": {"symbol": symbol, "timeframe": timeframe}})
