"""GET /api/v1/forecast (alias /price/prediction): the newest forecast with its interval, as
served (the last close's while the skill guard is on)."""

from __future__ import annotations

import pandas as pd
from flask import request

from chronoprice.market.source import Market
from chronoprice.service.guard import served_forecast
from chronoprice.service.status import TickStatus
from chronoprice.web.api.context import (
    api_context,
    cached_json,
    market_fields,
    number,
    ticked_market,
)
from chronoprice.web.api.errors import ApiError, api_blueprint

blueprint = api_blueprint("forecasts")


def forecast_payload(market: Market, steps: pd.DataFrame, status: TickStatus) -> dict:
    """`served` says whose forecast the steps are: the model's, or the last close's while the
    skill guard (`skill_guard`: its state after the last tick) keeps the model off."""
    return {
        **market_fields(market),
        "origin_ts": int(steps["origin_ts"].iloc[0]),
        "model_version": str(steps["model_version"].iloc[0]),
        "served": "last_close" if status.guarded else "model",
        "skill_guard": status.skill,
        "steps": [{"step": int(row["step"]), "ts": int(row["target_ts"]), "close": number(row["predicted"]),
                   "lower": number(row["lower"]), "upper": number(row["upper"])} for row in steps.to_dict("records")],
    }


def latest_forecast(market: Market, status: TickStatus) -> pd.DataFrame:
    """The newest stored forecast's steps; 503 saying why there is none."""
    ticker = api_context().ticker
    steps = served_forecast(ticker.db(), market, status)
    if steps.empty:
        if ticker.model_error(market.timeframe):
            raise ApiError(503, f"model unavailable: {ticker.model_error(market.timeframe)}")
        raise ApiError(503, f"no forecast for {market.symbol} yet: {status.error or 'no forecast yet'}")
    return steps


@blueprint.get("/api/v1/forecast")
@blueprint.get("/price/prediction")
def forecast():
    market, status = ticked_market(request.args)
    return cached_json("forecast", market, status, (), lambda: forecast_payload(market, latest_forecast(market, status), status))
