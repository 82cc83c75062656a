"""GET /api/v1/candles and the seed-compatible GET /price/latest."""

from __future__ import annotations

import pandas as pd
from flask import jsonify, request

from chronoprice.market.source import Market
from chronoprice.store.records import read_candles
from chronoprice.web.api.context import (
    api_context,
    cached_json,
    iso_time,
    market_fields,
    number,
    ticked_market,
)
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import parse_int

MAX_CANDLES = 1000
blueprint = api_blueprint("candles")


def candle_entry(row) -> dict:
    """One candle (a mapping with ts, open, high, low, close, volume) as the API gives it."""
    return {"ts": int(row["ts"]), "time": iso_time(row["ts"]), **{key: number(row[key]) for key in ("open", "high", "low", "close", "volume")}}


def candles_payload(market: Market, candles: pd.DataFrame) -> dict:
    return {**market_fields(market), "candles": [candle_entry(row) for row in candles.to_dict("records")]}


@blueprint.get("/api/v1/candles")
def candles():
    limit = parse_int(request.args, "limit", 100, 1, MAX_CANDLES)
    market, status = ticked_market(request.args)
    db = api_context().ticker.db()
    return cached_json("candles", market, status, (limit,), lambda: candles_payload(market, read_candles(db, market, limit=limit)))


@blueprint.get("/price/latest")
def latest_price():
    market, status = ticked_market(request.args)
    if status.newest_ts is None:
        raise ApiError(503, f"no candle for {market.symbol} yet: {status.error or 'first update in progress'}")
    newest = read_candles(api_context().ticker.db(), market, limit=1).iloc[0]
    return jsonify({**market_fields(market), "ts": int(newest["ts"]), "time": iso_time(newest["ts"]), "price": number(newest["close"])})
