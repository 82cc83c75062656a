"""GET /api/v1/models and GET /api/v1/models/VERSION: the model registry, each model with its
status and its live record against the last close on the watched markets of its timeframe
(service/model_record.py); one model adds its history of status changes."""

from __future__ import annotations

from flask import request

from chronoprice.service.model_record import model_entries, model_with_changes, registered, registered_model
from chronoprice.web.api.context import api_context, cached_payload
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import timeframe_param

blueprint = api_blueprint("models")


@blueprint.get("/api/v1/models")
def list_models():
    ticker = api_context().ticker
    timeframe = timeframe_param(request.args, None) if "timeframe" in request.args else None
    return cached_payload(f"api:models:{timeframe}", lambda: {"models": model_entries(ticker, registered(ticker, timeframe))})


@blueprint.get("/api/v1/models/<version>")
def show_model(version: str):
    ticker = api_context().ticker
    entry = registered_model(ticker, version[:64])
    if entry is None:
        raise ApiError(404, f"no model {version[:64]!r} is registered; GET /api/v1/models lists them", "version")
    return cached_payload(f"api:model:{entry.version}", lambda: model_with_changes(ticker, entry))
