"""JSON API on the Dash Flask server (DESIGN.md "JSON API").

Every read of a market runs its deduplicated tick first, so API users get fresh forecasts with
no dashboard open. Responses are cached under a key holding the market's newest candle, so a
new candle invalidates them. Bad parameters get 400 JSON naming the parameter, unknown symbols
and paths 404 JSON, a missing model 503 JSON.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import time

import pandas as pd
from flask import Blueprint, Flask, jsonify, request
from flask_caching import Cache
from werkzeug.exceptions import HTTPException

from chronoprice.config import SettingsError, settings_from
from chronoprice.evaluation import matured_metrics, overall_metrics
from chronoprice.openapi import OPENAPI
from chronoprice.pipeline import Pipeline, TickStatus
from chronoprice.store import Market, StoreError, read_candles, read_latest_forecast, read_matured_forecasts

API_PREFIXES = ("/api/", "/price/", "/metrics/")
MAX_CANDLES = 1000
MAX_HISTORY = 5000
DEFAULT_WINDOW_MINUTES = 1440
STARTED = time.monotonic()


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.parameter = status, message, parameter


def cache_config(env) -> dict:
    """RedisCache when CACHE_REDIS_URL is set; FileSystemCache when gunicorn runs several workers
    (WEB_CONCURRENCY > 1, which gunicorn reads as its worker count); SimpleCache otherwise."""
    if env.get("CACHE_REDIS_URL"):
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": env["CACHE_REDIS_URL"], "CACHE_KEY_PREFIX": "chronoprice:"}
    if int(env.get("WEB_CONCURRENCY", "1") or 1) > 1:
        folder = env.get("CHRONOPRICE_CACHE_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "chronoprice-cache")
        return {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": folder, "CACHE_THRESHOLD": 2000}
    return {"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 2000}


# ------------------------------------------------------------------------- parameters (pure)


def parse_symbol(args, default: str) -> str:
    raw = args.get("symbol")
    if raw is None:
        return default
    try:
        return settings_from({"symbol": raw}, {}).symbol
    except SettingsError:
        raise ApiError(400, f"symbol {raw[:40]!r} must look like BASE/QUOTE, for example BTC/USDT", "symbol") from None


def parse_int(args, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", name)
    return value


def parse_time_ms(args, name: str) -> int | None:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    raw = args.get(name)
    if raw is None:
        return None
    if raw.lstrip("-").isdigit():
        value = int(raw)
    else:
        stamp = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        if pd.isna(stamp):
            raise ApiError(400, f"{name} must be epoch milliseconds or an ISO 8601 time", name)
        value = int(stamp.value // 1_000_000)
    if not 0 <= value <= 10**14:
        raise ApiError(400, f"{name} is out of range (epoch milliseconds from 0)", name)
    return value


# ---------------------------------------------------------------------------- payloads (pure)


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _iso(ts: int) -> str:
    return pd.Timestamp(int(ts), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")


def market_fields(market: Market) -> dict:
    return {"exchange": market.exchange, "symbol": market.symbol, "timeframe": market.timeframe}


def candles_payload(market: Market, candles: pd.DataFrame) -> dict:
    rows = [{"ts": int(row["ts"]), "time": _iso(row["ts"]), **{key: _number(row[key]) for key in ("open", "high", "low", "close", "volume")}}
            for row in candles.to_dict("records")]
    return {**market_fields(market), "candles": rows}


def forecast_payload(market: Market, steps: pd.DataFrame) -> dict:
    return {
        **market_fields(market),
        "origin_ts": int(steps["origin_ts"].iloc[0]),
        "model_version": str(steps["model_version"].iloc[0]),
        "steps": [{"step": int(row["step"]), "ts": int(row["target_ts"]), "close": _number(row["predicted"]),
                   "lower": _number(row["lower"]), "upper": _number(row["upper"])} for row in steps.to_dict("records")],
    }


def metrics_payload(market: Market, matured: pd.DataFrame, window_minutes: int) -> dict:
    overall = overall_metrics(matured)
    steps = [] if matured.empty else [
        {"step": int(row["step"]), "mae_model": _number(row["mae_model"]), "mae_naive": _number(row["mae_naive"]),
         "mae_ratio": None if pd.isna(row["mae_ratio"]) else _number(row["mae_ratio"]),
         "coverage": _number(row["coverage"]), "count": int(row["count"])}
        for row in matured_metrics(matured).to_dict("records")
    ]
    return {**market_fields(market), "window_minutes": window_minutes, "matured": overall["count"],
            "mae_ratio": overall["mae_ratio"], "coverage": overall["coverage"], "steps": steps}


def history_payload(market: Market, matured: pd.DataFrame) -> dict:
    rows = [{"origin_ts": int(row["origin_ts"]), "step": int(row["step"]), "ts": int(row["target_ts"]),
             "close": _number(row["predicted"]), "lower": _number(row["lower"]), "upper": _number(row["upper"]),
             "actual": _number(row["actual"]), "naive": _number(row["origin_close"]), "model_version": str(row["model_version"])}
            for row in matured.to_dict("records")]
    return {**market_fields(market), "forecasts": rows}


def _resident_mb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------- the routes


def register_api(server: Flask, pipeline: Pipeline, default_symbol: str, cache: Cache, refresh_seconds: float) -> None:
    """Add the API's routes and JSON error handling to the Flask server."""
    api = Blueprint("api", __name__)
    cache_seconds = max(60, int(10 * refresh_seconds))

    def ticked_market(args) -> tuple[Market, TickStatus]:
        symbol = parse_symbol(args, default_symbol)
        status = pipeline.tick(symbol)
        if status.symbol_unknown:
            raise ApiError(404, status.error, "symbol")
        return pipeline.market(symbol, status.exchange), status

    def cached(name: str, market: Market, status: TickStatus, parameters: tuple, build):
        key = f"api:{name}:{market.exchange}:{market.symbol}:{status.newest_ts}:{status.forecast_origin_ts}:{parameters}"
        payload = cache.get(key)
        if payload is None:
            payload = build()
            cache.set(key, payload, timeout=cache_seconds)
        return jsonify(payload)

    def latest_forecast(market: Market, status: TickStatus):
        steps = read_latest_forecast(pipeline.db(), market)
        if steps.empty:
            reason = status.error or "no forecast yet"
            if pipeline.forecaster_error:
                raise ApiError(503, f"model unavailable: {pipeline.forecaster_error}")
            raise ApiError(503, f"no forecast for {market.symbol} yet: {reason}")
        return steps

    @api.get("/api/health")
    def health():
        forecaster = pipeline.forecaster()
        return jsonify({
            "status": "ok",
            "source": pipeline.source.label,
            "model_available": forecaster is not None,
            "model_version": forecaster.version if forecaster else None,
            "model_error": pipeline.forecaster_error,
            "engine": forecaster.engine.name if forecaster else None,
            "tensorflow_imported": "tensorflow" in sys.modules,
            "resident_mb": _resident_mb(),
            "uptime_seconds": round(time.monotonic() - STARTED, 1),
        })

    @api.get("/api/openapi.json")
    def openapi():
        return jsonify(OPENAPI)

    @api.get("/api/v1/candles")
    def candles():
        limit = parse_int(request.args, "limit", 100, 1, MAX_CANDLES)
        market, status = ticked_market(request.args)
        return cached("candles", market, status, (limit,),
                      lambda: candles_payload(market, read_candles(pipeline.db(), market, limit=limit)))

    @api.get("/api/v1/forecast")
    @api.get("/price/prediction")
    def forecast():
        market, status = ticked_market(request.args)
        return cached("forecast", market, status, (), lambda: forecast_payload(market, latest_forecast(market, status)))

    @api.get("/api/v1/metrics")
    @api.get("/metrics/model")
    def metrics():
        window = parse_int(request.args, "window", DEFAULT_WINDOW_MINUTES, 10, 10_080)
        market, status = ticked_market(request.args)

        def build():
            since = (status.newest_ts or 0) - window * 60_000
            return metrics_payload(market, read_matured_forecasts(pipeline.db(), market, since_target_ts=since), window)

        return cached("metrics", market, status, (window,), build)

    @api.get("/api/v1/history")
    def history():
        start, end = parse_time_ms(request.args, "start"), parse_time_ms(request.args, "end")
        limit = parse_int(request.args, "limit", 500, 1, MAX_HISTORY)
        market, status = ticked_market(request.args)
        return cached("history", market, status, (start, end, limit), lambda: history_payload(
            market, read_matured_forecasts(pipeline.db(), market, since_target_ts=start, until_target_ts=end, limit=limit)))

    @api.get("/price/latest")
    def latest_price():
        market, status = ticked_market(request.args)
        if status.newest_ts is None:
            raise ApiError(503, f"no candle for {market.symbol} yet: {status.error or 'first update in progress'}")
        newest = read_candles(pipeline.db(), market, limit=1).iloc[0]
        return jsonify({**market_fields(market), "ts": int(newest["ts"]), "time": _iso(newest["ts"]), "price": _number(newest["close"])})

    @api.get("/api/<path:rest>")
    @api.get("/price/<path:rest>")
    @api.get("/metrics/<path:rest>")
    def unknown(rest):
        raise ApiError(404, f"no such endpoint: {request.path}; see /api/openapi.json")

    @api.errorhandler(ApiError)
    def api_error(error: ApiError):
        response = jsonify({"error": error.message, "parameter": error.parameter})
        if error.status == 503:
            response.headers["Retry-After"] = str(max(1, int(refresh_seconds)))
        return response, error.status

    @api.errorhandler(Exception)
    def unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return jsonify({"error": error.description, "parameter": None}), error.code
        if isinstance(error, (StoreError, sqlite3.OperationalError)):  # e.g. a lock held past the busy timeout
            return api_error(ApiError(503, f"database busy, try again: {error}"))
        server.logger.exception("API request failed")
        return jsonify({"error": f"internal error: {type(error).__name__}", "parameter": None}), 500

    server.register_blueprint(api)

    @server.errorhandler(405)
    def method_not_allowed(error):
        if not request.path.startswith(API_PREFIXES):
            return error
        response = jsonify({"error": f"{request.method} is not allowed on {request.path}", "parameter": None})
        response.headers["Allow"] = ", ".join(error.valid_methods or ["GET"])
        return response, 405
