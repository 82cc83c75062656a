"""Bounded work for any request, and the headers every response carries.

Bodies are capped before they are read (Flask's MAX_CONTENT_LENGTH answers 413), query strings
and paths before routing (414), and a Dash callback request must have the shape the page sends
for a callback this app has, or it gets 400 before Dash touches it: Dash itself answers `{}` or
`null` with a 500 and a traceback.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

import dash
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler

from chronoprice.logs import bounded

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_QUERY_BYTES = 4_096
MAX_PATH_BYTES = 2_048
DASH_CALLBACK_PATH = "/_dash-update-component"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def content_security_policy(script_hashes: list[str]) -> str:
    """A CSP that Dash works under: its scripts from this origin and its inline renderer start-up
    by hash, inline styles (Dash and Plotly set element styles), images as data: and blob: URLs
    (Plotly's downloads), nothing framing the page."""
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", *script_hashes],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


def callback_request_problem(body, callback_map: dict) -> str | None:
    """Why `body` is not a callback request this app's page could send, or None when it is.

    The page sends {"output": KEY, "outputs": ..., "inputs": [...], "state": [...],
    "changedPropIds": [...]} with one input (and state) entry per dependency the callback KEY
    declares, each an {"id", "property"} object (a list of them for pattern-matching ids).
    """
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or output not in callback_map:
        return "output must name one of this page's callbacks"
    declared = callback_map[output]
    if not isinstance(body.get("outputs"), (dict, list)):
        return "outputs must be an object or a list"
    for part in ("inputs", "state"):
        problem = _dependencies_problem(body.get(part, []), len(declared.get(part, [])), part)
        if problem:
            return problem
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(each, str) for each in changed):
        return "changedPropIds must be a list of strings"
    return None


def _dependencies_problem(entries, expected: int, part: str) -> str | None:
    if not isinstance(entries, list) or len(entries) != expected:
        return f"{part} must be a list of {expected} entries for this callback"
    for entry in entries:
        items = entry if isinstance(entry, list) else [entry]
        if not all(isinstance(item, dict) and "id" in item and isinstance(item.get("property"), str) for item in items):
            return f"each of {part} must be an object with id and property"
    return None


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply for Python's parser (`[[[[...`) refused as bad
    JSON (400) rather than raising RecursionError (500)."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _bad_request(message: str):
    return jsonify({"error": message, "parameter": None}), 400


def _guarded_callback_view(view: Callable, callback_map: dict) -> Callable:
    """Dash's callback view, refusing malformed requests with 400 and answering a callback that
    fails on what a client sent with 400 and one log line (no traceback a client can trigger
    at will)."""

    def guarded():
        body = request.get_json(silent=True)
        problem = callback_request_problem(body, callback_map)
        if problem:
            return _bad_request(f"not a dashboard callback request: {problem}")
        try:
            return view()
        except (HTTPException, dash.exceptions.PreventUpdate):
            raise
        except Exception as error:
            where = traceback.extract_tb(error.__traceback__)[-1]
            log.error("dashboard callback %s failed at %s:%d: %s: %s", bounded(body["output"], 200), where.filename,
                      where.lineno, type(error).__name__, bounded(str(error), 300))
            return _bad_request("the dashboard could not use this request")

    guarded.__name__ = view.__name__
    return guarded


def _body_too_large(_error):
    return jsonify({"error": f"the body is too large (at most {MAX_BODY_BYTES:,} bytes)", "parameter": None}), 413


def _refuse_oversized_request():
    if len(request.query_string) > MAX_QUERY_BYTES or len(request.path) > MAX_PATH_BYTES:
        return jsonify({"error": f"the URL is too long (path at most {MAX_PATH_BYTES} bytes, query at most "
                                 f"{MAX_QUERY_BYTES})", "parameter": None}), 414
    return None


def harden(app: dash.Dash) -> None:
    """Cap every request, guard Dash's callback endpoint and add the security headers to every
    response. Call once every callback is attached (the CSP hashes the inline scripts)."""
    server: Flask = app.server
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    server.json = BoundedJSONProvider(server)
    server.before_request(_refuse_oversized_request)
    server.register_error_handler(413, _body_too_large)
    endpoint = app.config.routes_pathname_prefix + DASH_CALLBACK_PATH.lstrip("/")
    server.view_functions[endpoint] = _guarded_callback_view(server.view_functions[endpoint], app.callback_map)
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(list(app.csp_hashes()))}

    @server.after_request
    def add_security_headers(response: Response) -> Response:
        response.headers.update(headers)
        return response


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without its version (and Python's) in the Server header."""

    def version_string(self) -> str:
        return "ChronoPrice"
