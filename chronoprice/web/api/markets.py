"""GET, POST and DELETE /api/v1/markets: the watchlist, each market with its freshness and status.

Writes need the admin token when one is set (Authorization: Bearer) and come only from
loopback when none is, so a public deployment is read-only by default.
"""

from __future__ import annotations

from flask import jsonify, request

from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.overview import market_status
from chronoprice.service.watchlist import NotListed, watch_market
from chronoprice.store.records import newest_candle_ts, newest_forecast_origin_ts
from chronoprice.store.watchlist import WatchlistFull, read_watchlist, remove_from_watchlist
from chronoprice.web.access import bearer_token, write_refusal
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import symbol_param, timeframe_param

blueprint = api_blueprint("markets")


def market_entry(symbol: str, timeframe: str) -> dict:
    ticker = api_context().ticker
    status = ticker.stored_status(symbol, timeframe)
    market = ticker.market(symbol, status.exchange, timeframe)
    return {
        "symbol": symbol, "timeframe": timeframe, "exchange": market.exchange,
        "newest_candle_ts": newest_candle_ts(ticker.db(), market),
        "newest_forecast_origin_ts": newest_forecast_origin_ts(ticker.db(), market),
        "status": market_status(status, ticker.now_ms(), timeframe_ms(timeframe)),
        "error": status.error,
        "feed": status.feed,
        "last_tick_ms": status.finished_at_ms or None,
    }


def require_write_access() -> None:
    refusal = write_refusal(request.remote_addr, bearer_token(request.headers.get("Authorization")),
                            api_context().admin_token)
    if refusal:
        raise ApiError(*refusal)


def market_from_body() -> tuple[str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"symbol": "BTC/USDT", "timeframe": "15m"}', "body")
    if not isinstance(body.get("symbol"), str):
        raise ApiError(400, "symbol is required, as a string like BTC/USDT", "symbol")
    if not isinstance(body.get("timeframe", "1m"), str):
        raise ApiError(400, "timeframe must be a string", "timeframe")
    return symbol_param(body, ""), timeframe_param(body, "1m")


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
    try:
        added = watch_market(context.ticker, symbol, timeframe, context.watch_limit)
    except NotListed as error:
        raise ApiError(404, str(error), "symbol") from None
    except WatchlistFull as error:
        raise ApiError(409, str(error)) from None
    return jsonify(market_entry(symbol, timeframe)), 201 if added else 200


@blueprint.delete("/api/v1/markets")
def remove_market():
    require_write_access()
    if request.args.get("symbol") is None:
        raise ApiError(400, "symbol is required", "symbol")
    symbol = symbol_param(request.args, "")
    timeframe = timeframe_param(request.args, "1m")
    if not remove_from_watchlist(api_context().ticker.db(), symbol, timeframe):
        raise ApiError(404, f"{symbol} {timeframe} is not watched", "symbol")
    return jsonify({"removed": {"symbol": symbol, "timeframe": timeframe}})
