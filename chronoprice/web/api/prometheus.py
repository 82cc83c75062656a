"""GET /metrics: the service's counters and latency histogram in Prometheus' text format
(service/metrics.py), open on loopback and, elsewhere, behind the metrics token when one is set."""

from __future__ import annotations

from flask import Response, request

from chronoprice.service.metrics import exposition
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
    body, content_type = exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
