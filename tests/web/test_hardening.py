import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from chronoprice.config import settings_from
from chronoprice.logs import MESSAGE_CHARACTERS, bounded, redact
from chronoprice.service.build import build_ticker
from chronoprice.testing.harness import free_port
from chronoprice.web.hardening import MAX_BODY_BYTES, callback_request_problem, content_security_policy
from chronoprice.web.server import create_app
from tests.helpers import LIVENESS_SECONDS

HOSTILE_TEXT = "a" * 1_000_000  # redaction that may start a match at every letter took hours on this


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("hardening")
    settings = settings_from({"source": "demo", "db": str(folder / "h.db"), "model": str(tiny_model)}, {})
    return create_app(settings, build_ticker(settings, history_hours=1), env={})


@pytest.fixture(scope="module")
def client(app):
    return app.server.test_client()


def test_redaction_is_linear_and_still_masks_secrets():
    started = time.monotonic()
    assert redact(HOSTILE_TEXT) == HOSTILE_TEXT
    assert redact("x://" * 200_000).count("***") == 0
    assert time.monotonic() - started < LIVENESS_SECONDS, "liveness: a megabyte must not take minutes"
    assert redact("postgresql://chrono:pw@db/prices " * 3) == "postgresql://chrono:***@db/prices " * 3


def test_bounded_cuts_long_messages_and_never_shows_half_a_secret():
    text = "x" * (MESSAGE_CHARACTERS - 10) + " postgresql://chrono:a-long-password@db"
    shown = bounded(text)
    assert "a-long" not in shown and shown.endswith("more characters)")
    assert len(bounded(HOSTILE_TEXT)) < MESSAGE_CHARACTERS + 40


@pytest.mark.parametrize("body", ["{}", '{"output": "x"}', "null", "[1, 2]", "not json", '"a string"',
                                  '{"output": "overview-sort.data", "outputs": {}, "inputs": "x"}',
                                  '{"output": "overview-sort.data", "outputs": {}, "inputs": [1]}'])
def test_malformed_dash_requests_get_400_and_no_traceback(client, body, caplog):
    with caplog.at_level(logging.INFO):
        response = client.post("/_dash-update-component", data=body, content_type="application/json")
    assert response.status_code == 400 and "not a dashboard callback request" in response.get_json()["error"]
    assert "Traceback" not in caplog.text


def test_a_callback_that_fails_on_client_values_is_a_400_with_one_line(app, client, caplog):
    output = "overview-sort.data"
    declared = app.callback_map[output]
    body = {"output": output, "outputs": {"id": "overview-sort", "property": "data"},
            "inputs": [{**each, "value": {"nested": ["x" * 100_000]}} for each in declared["inputs"]],
            "state": [{**each, "value": 12345} for each in declared.get("state", [])], "changedPropIds": []}
    with caplog.at_level(logging.INFO):
        response = client.post("/_dash-update-component", json=body)
    assert response.status_code in (200, 204, 400)
    assert "Traceback" not in caplog.text and all(len(record.getMessage()) < 2_000 for record in caplog.records)


def test_the_callback_shape_check_accepts_what_the_page_sends(app):
    output, declared = next(iter(app.callback_map.items()))
    body = {"output": output, "outputs": [], "changedPropIds": ["x.value"],
            "inputs": [{**each, "value": None} for each in declared["inputs"]],
            "state": [{**each, "value": None} for each in declared.get("state", [])]}
    assert callback_request_problem(body, app.callback_map) is None
    assert "inputs" in callback_request_problem({**body, "inputs": body["inputs"][:-1]}, app.callback_map)


def test_bodies_and_urls_are_capped_before_they_are_read(client):
    too_large = client.post("/_dash-update-component", data="x" * (MAX_BODY_BYTES + 1), content_type="application/json")
    assert too_large.status_code == 413 and "too large" in too_large.get_json()["error"]
    assert client.post("/api/v1/markets", data="{" * (MAX_BODY_BYTES + 1), content_type="application/json").status_code == 413
    assert client.post("/api/v1/alerts", data="[" * 500_000, content_type="application/json").status_code == 400
    long_query = client.get("/api/v1/forecast?symbol=" + "A" * 60_000)
    assert long_query.status_code == 414 and "too long" in long_query.get_json()["error"]
    started = time.monotonic()
    answer = client.get("/api/v1/forecast?symbol=" + "A" * 4_000)
    assert answer.status_code == 400 and answer.get_json()["parameter"] == "symbol"
    assert time.monotonic() - started < LIVENESS_SECONDS


@pytest.mark.parametrize("path", ["/", "/api/health", "/_dash-layout", "/api/v1/nothing", "/assets/style.css"])
def test_every_response_carries_the_security_headers(client, path):
    headers = client.get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_the_csp_allows_only_this_origin_and_the_inline_scripts_by_hash():
    policy = content_security_policy(["'sha256-abc='"])
    assert "script-src 'self' 'sha256-abc='" in policy and "unsafe-eval" not in policy
    assert "script-src 'self' 'unsafe-inline'" not in policy


def test_a_hostile_request_does_not_stall_the_server(app):
    """A live server (werkzeug, as python app.py serves): while megabyte bodies and long URLs
    arrive, the health check keeps answering, and the Server header names no version."""
    from werkzeug.serving import make_server

    from chronoprice.web.hardening import QuietRequestHandler

    port = free_port()
    server = make_server("127.0.0.1", port, app.server, threaded=True, request_handler=QuietRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    failures = []
    try:
        def attack():
            for body in (json.dumps({"output": "x" * 100_000}), "x" * (MAX_BODY_BYTES - 10), "[" * 500_000):
                request = urllib.request.Request(f"{base}/_dash-update-component", body.encode(), {"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(request, timeout=120)
                except urllib.error.HTTPError as error:
                    if error.code >= 500:
                        failures.append((body[:20], error.code))

        attackers = [threading.Thread(target=attack) for _ in range(4)]
        for each in attackers:
            each.start()
        with urllib.request.urlopen(f"{base}/api/health", timeout=60) as health:
            assert health.status == 200 and health.headers["Server"] == "ChronoPrice"
        for each in attackers:
            each.join(timeout=120)
            assert not each.is_alive()
        assert failures == []
    finally:
        server.shutdown()


@pytest.mark.slow
def test_the_fuzz_draws_every_kind_of_request_reproducibly_and_within_the_cap(app):
    from chronoprice.bench.fuzz import MAX_BODY_BYTES as FUZZ_CAP
    from chronoprice.bench.fuzz import fuzz_requests

    callbacks = app.server.test_client().get("/_dash-dependencies").get_json()
    drawn = list(fuzz_requests(3000, 7, callbacks))
    assert drawn == list(fuzz_requests(3000, 7, callbacks))
    sizes = [len(request.body or b"") for request in drawn]
    assert max(sizes) <= FUZZ_CAP and sum(size > MAX_BODY_BYTES for size in sizes) >= 10
    paths = {request.path.partition("?")[0] for request in drawn}
    assert {"/_dash-update-component", "/api/v1/alerts", "/api/v1/markets", "/api/v1/forecast"} <= paths
    assert {request.method for request in drawn} >= {"GET", "POST", "DELETE", "PUT", "PATCH"}


@pytest.mark.slow
def test_a_fuzz_run_against_gunicorn_gets_no_server_error_and_no_traceback():
    from chronoprice.bench.fuzz import run_fuzz

    report = run_fuzz(300, seed=3, clients=2)
    assert report["server_errors"] == 0, report["server_errors_by_path"]
    assert report["unanswered"] == 0 and report["tracebacks_logged"] == 0 and report["server_alive"]
    assert report["health_samples"] >= 1 and set(report["statuses"]) >= {"200", "400"}
