"""GET /api/v1/live: a market's forming candle and when it last changed, for the dashboard's
one-second poll and any client. It reads only the live board (memory or Redis) and, when nothing
is streamed, the last tick's saved status: never the exchange, never a tick, so a poll per
viewer a second costs the deployment almost nothing."""

from __future__ import annotations

from flask import jsonify, request

from chronoprice.service.live_board import candle_fields
from chronoprice.service.status import fresh_forming_row
from chronoprice.web.api.candles import candle_entry
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import symbol_param, timeframe_param

blueprint = api_blueprint("live")


def live_payload(candle, updated_ms: int | None, via: str | None, now_ms: int) -> dict:
    return {
        "candle": None if candle is None else candle_entry(candle_fields(candle)),
        "updated_ms": updated_ms,
        "age_seconds": None if updated_ms is None else round(max(0, now_ms - updated_ms) / 1000, 3),
        "via": via,
    }


@blueprint.get("/api/v1/live")
def live():
    context = api_context()
    ticker = context.ticker
    symbol = symbol_param(request.args, context.default_symbol)
    timeframe = timeframe_param(request.args, ticker.timeframe)
    market, now_ms = {"symbol": symbol, "timeframe": timeframe}, ticker.now_ms()
    streamed = ticker.live.read(symbol, timeframe)
    if streamed is not None:
        payload = live_payload(streamed.candle, streamed.received_ms, "stream", now_ms)
    else:
        status = ticker.stored_status(symbol, timeframe)
        if status.finished_at_ms == 0:
            raise ApiError(404, f"no candles of {symbol} {timeframe} yet: watch it, or read /api/v1/candles once to tick it", "symbol")
        fetched = fresh_forming_row(status, now_ms)
        payload = live_payload(fetched, fetched and status.finished_at_ms, fetched and "tick", now_ms)
    response = jsonify({"exchange": ticker.market(symbol).exchange, **market, **payload})
    response.headers["Cache-Control"] = "no-store"
    return response
