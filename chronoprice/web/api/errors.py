"""JSON errors: 400 naming the parameter, 404, 405, 503 with Retry-After; never a 500 for
anything a client can send."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from chronoprice.store import STORE_UNAVAILABLE

API_PREFIXES = ("/api/", "/price/", "/metrics/")
log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status, self.message, self.parameter = status, message, parameter


def api_error_response(error: ApiError):
    response = jsonify({"error": error.message, "parameter": error.parameter})
    if error.status == 503:
        response.headers["Retry-After"] = str(current_app.extensions["chronoprice"].retry_after_seconds)
    return response, error.status


def unexpected_error_response(error: Exception):
    if isinstance(error, HTTPException):
        return jsonify({"error": error.description, "parameter": None}), error.code
    if isinstance(error, STORE_UNAVAILABLE):  # e.g. a lock held past the busy timeout
        return api_error_response(ApiError(503, "database busy, try again"))
    log.exception("API request %s failed", request.path)
    return jsonify({"error": f"internal error: {type(error).__name__}", "parameter": None}), 500


def method_not_allowed_response(error):
    if not request.path.startswith(API_PREFIXES):
        return error
    response = jsonify({"error": f"{request.method} is not allowed on {request.path}", "parameter": None})
    response.headers["Allow"] = ", ".join(error.valid_methods or ["GET"])
    return response, 405


def api_blueprint(name: str) -> Blueprint:
    """A blueprint whose routes answer every error as JSON."""
    blueprint = Blueprint(name, __name__)
    blueprint.register_error_handler(ApiError, api_error_response)
    blueprint.register_error_handler(Exception, unexpected_error_response)
    return blueprint
