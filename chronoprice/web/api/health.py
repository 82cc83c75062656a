"""GET /api/health (never ticks) and GET /api/openapi.json."""

from __future__ import annotations

import sys
import time

from flask import jsonify

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


@blueprint.get("/api/health")
def health():
    ticker = api_context().ticker
    forecaster = ticker.forecaster()
    return jsonify({
        "status": "ok",
        "source": ticker.source.label,
        "model_available": forecaster is not None,
        "model_version": forecaster.version if forecaster else None,
        "model_error": ticker.forecaster_error,
        "engine": forecaster.engine.name if forecaster else None,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "resident_mb": resident_mb(),
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
    })


@blueprint.get("/api/openapi.json")
def openapi():
    ticker = api_context().ticker
    forecaster = ticker.forecaster()
    return jsonify(openapi_document(forecaster.horizon if forecaster else None, ticker.timeframe))
