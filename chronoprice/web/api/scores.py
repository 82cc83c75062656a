"""GET /api/v1/metrics (alias /metrics/model) and GET /api/v1/history: live scores of matured
forecasts against the naive forecaster."""

from __future__ import annotations

import pandas as pd
from flask import request

from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS, step_scores, total_metrics
from chronoprice.market.source import Market
from chronoprice.service.scoring import read_scored
from chronoprice.store.retention import day_start, step_score_sums
from chronoprice.web.api.context import (
    api_context,
    cached_json,
    market_fields,
    number,
    ticked_market,
)
from chronoprice.web.api.errors import api_blueprint
from chronoprice.web.api.params import parse_int, parse_time_ms

MAX_HISTORY = 5000
WINDOW_MINUTES = (10, 30 * 24 * 60)  # up to a month: 720 candles of 1h
blueprint = api_blueprint("scores")


def window_start(newest_ts: int, window_minutes: int) -> int:
    """The first target the scores of a window ending at the newest candle count: a window over a
    day starts at the UTC midnight at or before, so it sums whole days, which stay exact once
    retention has folded them (store/retention.py); a day or less lies inside the retained span."""
    since = newest_ts - window_minutes * 60_000
    return day_start(since) if window_minutes > ERROR_WINDOW_HOURS * 60 else since


def metrics_payload(market: Market, sums: pd.DataFrame, window_minutes: int, since_ms: int) -> dict:
    """The scores of a window from its per-step sums (store.retention.step_score_sums)."""
    overall = total_metrics(sums)
    steps = [
        {"step": int(row["step"]), "mae_model": number(row["mae_model"]), "mae_naive": number(row["mae_naive"]),
         "mae_ratio": None if pd.isna(row["mae_ratio"]) else number(row["mae_ratio"]),
         "coverage": number(row["coverage"]), "count": int(row["count"])}
        for row in step_scores(sums).to_dict("records")
    ]
    return {**market_fields(market), "window_minutes": window_minutes, "since_ms": since_ms,
            "matured": overall["count"], "mae_ratio": overall["mae_ratio"], "coverage": overall["coverage"],
            "steps": steps}


def history_payload(market: Market, matured: pd.DataFrame) -> dict:
    rows = [{"origin_ts": int(row["origin_ts"]), "step": int(row["step"]), "ts": int(row["target_ts"]),
             "close": number(row["predicted"]), "lower": number(row["lower"]), "upper": number(row["upper"]),
             "actual": number(row["actual"]), "naive": number(row["naive"]), "model_version": str(row["model_version"])}
            for row in matured.to_dict("records")]
    return {**market_fields(market), "forecasts": rows}


@blueprint.get("/api/v1/metrics")
@blueprint.get("/metrics/model")
def metrics():
    window = parse_int(request.args, "window", ERROR_WINDOW_HOURS * 60, *WINDOW_MINUTES)
    market, status = ticked_market(request.args)
    db = api_context().ticker.db()

    def build():
        since = window_start(status.newest_ts or 0, window)
        return metrics_payload(market, step_score_sums(db, market, since), window, since)

    return cached_json("metrics", market, status, (window,), build)


@blueprint.get("/api/v1/history")
def history():
    start, end = parse_time_ms(request.args, "start"), parse_time_ms(request.args, "end")
    limit = parse_int(request.args, "limit", 500, 1, MAX_HISTORY)
    market, status = ticked_market(request.args)
    db = api_context().ticker.db()
    return cached_json("history", market, status, (start, end, limit), lambda: history_payload(
        market, read_scored(db, market, since_target_ts=start, until_target_ts=end, limit=limit)))
