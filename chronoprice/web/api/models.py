"""GET /api/v1/models and GET /api/v1/models/VERSION: the model registry, each model with its
status and its live record against the last close on the watched markets of its timeframe
(service/model_record.py); one model adds its history of status changes."""

from __future__ import annotations

from flask import request

from chronoprice.service.model_record import model_entry
from chronoprice.store.registry import read_model, read_models
from chronoprice.web.api.context import api_context, cached_payload
from chronoprice.web.api.errors import ApiError, api_blueprint
from chronoprice.web.api.params import parse_timeframe

blueprint = api_blueprint("models")


@blueprint.get("/api/v1/models")
def list_models():
    ticker = api_context().ticker
    timeframe = parse_timeframe(request.args, None) if "timeframe" in request.args else None
    ticker.forecaster(timeframe)  # the configured model registers itself on its first load
    return cached_payload(f"api:models:{timeframe}", lambda: {
        "models": [model_entry(ticker, entry) for entry in read_models(ticker.db(), timeframe)]})


@blueprint.get("/api/v1/models/<version>")
def show_model(version: str):
    ticker = api_context().ticker
    entry = read_model(ticker.db(), version[:64])
    if entry is None:
        raise ApiError(404, f"no model {version[:64]!r} is registered; GET /api/v1/models lists them", "version")
    return cached_payload(f"api:model:{entry.version}", lambda: model_entry(ticker, entry, with_changes=True))
