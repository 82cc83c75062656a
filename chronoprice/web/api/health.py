"""GET /api/health (never ticks) and GET /api/openapi.json."""

from __future__ import annotations

import sys
import time

from flask import jsonify

from chronoprice.service.tick import Ticker
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.claims import SCHEDULER_LEASE, lease_holder
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import api_blueprint
from chronoprice.web.openapi import openapi_document

STARTED = time.monotonic()
blueprint = api_blueprint("health")


def resident_mb(field: str = "VmRSS") -> float | None:
    """This process's resident memory in MB (`VmHWM`: its peak), from Linux's /proc; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def scheduler_state(ticker: Ticker) -> str:
    """Who ticks the watchlist: "this process", "another process", "none" (watched markets are
    not being updated), or "unknown" while the store cannot answer (health stays 200 then, so a
    platform's health check does not restart web instances over a database blip)."""
    if ticker.holds_schedule():
        return "this process"
    try:
        holder = lease_holder(ticker.db(), SCHEDULER_LEASE, ticker.now_ms())
    except STORE_UNAVAILABLE:
        return "unknown"
    return "another process" if holder else "none"


@blueprint.get("/api/health")
def health():
    ticker = api_context().ticker
    forecaster = ticker.forecaster()
    return jsonify({
        "status": "ok",
        "source": ticker.source.label,
        "model_available": forecaster is not None,
        "model_version": forecaster.version if forecaster else None,
        "model_error": ticker.model_error(),
        "engine": forecaster.engine.name if forecaster else None,
        "scheduler": scheduler_state(ticker),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "resident_mb": resident_mb(),
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
    })


@blueprint.get("/api/openapi.json")
def openapi():
    ticker = api_context().ticker
    forecaster = ticker.forecaster()
    return jsonify(openapi_document(forecaster.horizon if forecaster else None, ticker.timeframe))
