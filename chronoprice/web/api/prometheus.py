"""GET /metrics: the service's counters and latency histogram in Prometheus' text format
(service/metrics.py), open on loopback and, elsewhere, behind the metrics token when one is set;
on the web server's port, and for `worker`, which serves no pages, on a port of its own."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Response, request

from chronoprice.service.metrics import exposition, record_store_pool
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.web.access import bearer_token, metrics_refusal
from chronoprice.web.api.context import api_context
from chronoprice.web.api.errors import ApiError, api_blueprint

blueprint = api_blueprint("prometheus")


@blueprint.get("/metrics")
def metrics():
    refusal = metrics_refusal(request.remote_addr, bearer_token(request.headers.get("Authorization")),
                              api_context().metrics_token)
    if refusal:
        raise ApiError(*refusal)
    try:
        record_store_pool(api_context().ticker.db())  # this process's pool, as the scrape finds it
    except STORE_UNAVAILABLE:  # the counters are still worth reading while the database is away
        pass
    body, content_type = exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - wsgiref's name; a scrape a second must not fill the log
        logging.getLogger(__name__).debug("metrics: " + format, *args)


def start_metrics_server(host: str, port: int, metrics_token: str | None) -> WSGIServer:
    """GET /metrics (and nothing else) on host:port in a daemon thread, under the same token rule."""

    def metrics_app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics is served here\n"]
        token_given = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        refusal = metrics_refusal(environ.get("REMOTE_ADDR"), token_given, metrics_token)
        if refusal:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [refusal[1].encode() + b"\n"]
        body, content_type = exposition()
        start_response("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-store")])
        return [body]

    server = make_server(host, port, metrics_app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="chronoprice-metrics").start()
    return server
