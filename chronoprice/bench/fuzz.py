"""`bench --fuzz`: random and malformed requests against the deployed shape (gunicorn as
render.yaml starts it, on the offline demo), with `/api/health` timed throughout.

The requests are drawn from one seed: API reads with hostile query values, writes with random
JSON, Dash callback requests shaped like the page's with random values and malformed ones,
random paths and methods, and bodies up to 20 MB. Budgets (issue 32): no 5xx, every answer within
2 s, the health check within 1 s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import http.client
import json
import math
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlencode, urlsplit

import numpy as np

from chronoprice.testing.harness import get_json, gunicorn_service
from chronoprice.web.openapi import OPENAPI

MAX_BODY_BYTES = 20_000_000
ANSWER_BUDGET_SECONDS = 2.0
HEALTH_BUDGET_SECONDS = 1.0
HEALTH_EVERY_SECONDS = 0.2
REQUEST_TIMEOUT_SECONDS = 10.0
QUERY_NAMES = ("symbol", "timeframe", "limit", "window", "start", "end", "since_ms", "id")
TEXT_PIECES = ("BTC/USDT", "ETH/USDT", "1m", "15m", "-1", "0", "1e309", "NaN", "null", "'", '"', "%00", "\x00", "\u202e",
               "😀", "../", "<script>", "; drop table candles;--", "{", "[", "\\", " ", "@", "9" * 30, "2024-01-01T00:00:00Z")


@dataclasses.dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str
    body: bytes | None = None
    content_type: str = "application/json"


def body_size(rng: random.Random) -> int:
    """Log-uniform sizes: 60 % up to 100 bytes, 30 % up to 100 KB, 8 % up to 1 MB, 2 % from 1 MB to
    20 MB (over the server's 1 MB cap)."""
    roll = rng.random()
    low, high = (1, 100) if roll < 0.6 else (1, 100_000) if roll < 0.9 else (1, 1_000_000) if roll < 0.98 \
        else (1_000_000, MAX_BODY_BYTES)
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def hostile_text(rng: random.Random, size: int) -> str:
    """About `size` characters of pieces that break parsers, joined with random characters."""
    chunk = "".join(rng.choice(TEXT_PIECES) if rng.random() < 0.5 else chr(rng.randrange(1, 0x2FFF)) for _ in range(16))
    return (chunk * (size // max(len(chunk), 1) + 1))[:size]


def random_json(rng: random.Random, size: int, depth: int = 0):
    """A JSON value of about `size` characters: scalars, strings, lists and objects, nested."""
    roll = rng.random()
    if depth > 3 or size < 8 or roll < 0.3:
        return rng.choice([None, True, False, rng.randint(-10**20, 10**20), rng.uniform(-1e12, 1e12), hostile_text(rng, size)])
    parts = rng.randint(1, 4)
    if roll < 0.6:
        return [random_json(rng, size // parts, depth + 1) for _ in range(parts)]
    keys = ["symbol", "timeframe", "type", "level", "webhook", "output", "inputs", "state", hostile_text(rng, 8)]
    return {rng.choice(keys): random_json(rng, size // parts, depth + 1) for _ in range(parts)}


def malformed_body(rng: random.Random, size: int) -> bytes:
    """Bytes that are not the JSON they claim to be: truncated, deeply nested, binary."""
    kind = rng.randrange(3)
    if kind == 0:
        return json.dumps(random_json(rng, size)).encode()[: max(size // 2, 1)]
    if kind == 1:
        return b"[" * size
    return (rng.randbytes(min(size, 4096)) * (size // 4096 + 1))[:size]


def api_read(rng: random.Random) -> FuzzRequest:
    path = rng.choice([p.replace("{id}", "x").replace("{version}", "lstm") for p, item in OPENAPI["paths"].items() if "get" in item])
    query = {rng.choice(QUERY_NAMES) if rng.random() < 0.8 else hostile_text(rng, 6): hostile_text(rng, body_size(rng) % 6000)
             for _ in range(rng.randint(0, 3))}
    return FuzzRequest("GET", f"{path}?{urlencode(query)}" if query else path)


def api_write(rng: random.Random) -> FuzzRequest:
    method, path = rng.choice([("POST", "/api/v1/alerts"), ("POST", "/api/v1/markets"), ("DELETE", "/api/v1/markets?symbol=x"),
                               ("DELETE", "/api/v1/alerts/" + quote(hostile_text(rng, 20), safe=""))])
    size = body_size(rng)
    body = json.dumps(random_json(rng, size)).encode() if rng.random() < 0.7 else malformed_body(rng, size)
    return FuzzRequest(method, path, body, rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"]))


def dash_callback(rng: random.Random, callbacks: list[dict]) -> FuzzRequest:
    """A request shaped like one of the page's callbacks, its values random, or malformed."""
    size = body_size(rng)
    if rng.random() < 0.3:
        return FuzzRequest("POST", "/_dash-update-component", malformed_body(rng, size))
    callback = rng.choice(callbacks)
    outputs = [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in callback["output"].strip(".").split("...")]
    values = [{**item, "value": random_json(rng, size // max(len(callback["inputs"]), 1))} for item in callback["inputs"]]
    state = [{**item, "value": random_json(rng, 50)} for item in callback["state"]]
    body = {"output": callback["output"], "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": values,
            "state": state, "changedPropIds": [f"{values[0]['id']}.{values[0]['property']}"] if values else []}
    if rng.random() < 0.2:
        body[rng.choice(list(body))] = random_json(rng, 40)
    return FuzzRequest("POST", "/_dash-update-component", json.dumps(body).encode())


def anything_else(rng: random.Random) -> FuzzRequest:
    method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    path = rng.choice(["/", "/market", "/models", "/_dash-layout", "/_dash-dependencies", "/assets/style.css", "/api/openapi.json",
                       "/" + quote(hostile_text(rng, rng.randint(1, 3000)), safe="/")])
    body = malformed_body(rng, body_size(rng)) if method in ("POST", "PUT", "PATCH") else None
    return FuzzRequest(method, path, body)


def fuzz_requests(count: int, seed: int, callbacks: list[dict]) -> Iterator[FuzzRequest]:
    """`count` requests drawn from `seed`: 35 % API reads, 15 % writes, 35 % Dash callbacks, 15 % anything else."""
    rng = random.Random(seed)
    for _ in range(count):
        roll = rng.random()
        request = (api_read(rng) if roll < 0.35 else api_write(rng) if roll < 0.5
                   else dash_callback(rng, callbacks) if roll < 0.85 else anything_else(rng))
        # JSON escapes can make a body longer than drawn; past the cap it is cut (and malformed).
        yield dataclasses.replace(request, body=request.body[:MAX_BODY_BYTES]) if request.body else request


def send(host: str, port: int, request: FuzzRequest) -> tuple[int | None, float]:
    """(status, seconds to the whole answer); status None when no answer came in time. A server
    that refuses a large body before reading it closes the socket under the sender, and its
    answer is read after the broken pipe."""
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_SECONDS)
    started = time.perf_counter()
    try:
        try:
            connection.request(request.method, request.path, request.body, {"Content-Type": request.content_type})
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return None, time.perf_counter() - started
    finally:
        connection.close()


def health_timings(host: str, port: int, stop: threading.Event, timings: list[float]) -> None:
    while not stop.is_set():
        status, seconds = send(host, port, FuzzRequest("GET", "/api/health"))
        timings.append(seconds if status == 200 else REQUEST_TIMEOUT_SECONDS)
        stop.wait(HEALTH_EVERY_SECONDS)


def _described(request: FuzzRequest) -> str:
    """The request in a few words: method, path and, for a Dash callback, the callback it names."""
    text = f"{request.method} {request.path.partition('?')[0][:60]}"
    if request.path == "/_dash-update-component":
        try:
            text += f" ({json.loads(request.body)['output'][:60]})"
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            text += " (malformed)"
    return text


def fuzz_summary(results: list[tuple[FuzzRequest, int | None, float]], health: list[float], seconds: float) -> dict:
    """The budgets' figures from every (request, status, seconds) and the health check's timings."""
    answers = np.array([elapsed for _, _, elapsed in results])
    statuses = collections.Counter(str(status or "no answer") for _, status, _ in results)
    server_errors = collections.Counter(f"{status} {_described(request)}" for request, status, _ in results
                                        if status is not None and status >= 500)
    return {
        "requests": len(results), "seconds": round(seconds, 1), "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(server_errors.values()), "server_errors_by_path": dict(server_errors),
        "unanswered": statuses.get("no answer", 0),
        "bytes_sent": sum(len(request.body or b"") for request, _, _ in results),
        "largest_body_bytes": max(len(request.body or b"") for request, _, _ in results),
        "answer_seconds_p50": round(float(np.percentile(answers, 50)), 4),
        "answer_seconds_p99": round(float(np.percentile(answers, 99)), 3),
        "answer_seconds_max": round(float(answers.max()), 3),
        "answers_over_budget": int((answers > ANSWER_BUDGET_SECONDS).sum()),
        "slowest": [f"{elapsed:.3f} s {status} {_described(request)}"
                    for request, status, elapsed in sorted(results, key=lambda result: -result[2])[:3]],
        "health_samples": len(health), "health_seconds_max": round(max(health), 3),
        "health_over_budget": sum(1 for each in health if each > HEALTH_BUDGET_SECONDS),
    }


def wait_for_first_forecast(base: str, timeout_seconds: float = 60.0) -> None:
    """Until the demo's first forecast is stored: before it, forecast reads answer 503 by design."""
    deadline = time.monotonic() + timeout_seconds
    while get_json(base + "/api/v1/forecast")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the offline demo forecast nothing in time")
        time.sleep(0.2)


def run_fuzz(count: int = 10_000, seed: int = 0, clients: int = 4) -> dict:
    """`count` fuzz requests from `clients` threads against gunicorn on the offline demo."""
    with tempfile.TemporaryDirectory() as folder:
        env = {"CHRONOPRICE_SOURCE": "demo", "CHRONOPRICE_DB": str(Path(folder) / "fuzz.db")}
        with gunicorn_service(env) as (base, process, _, log_path):
            address = urlsplit(base)
            _, callbacks = get_json(base + "/_dash-dependencies")
            wait_for_first_forecast(base)
            stop, health = threading.Event(), []
            monitor = threading.Thread(target=health_timings, args=(address.hostname, address.port, stop, health))
            monitor.start()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                requests = list(fuzz_requests(count, seed, callbacks))
                answers = pool.map(lambda request: send(address.hostname, address.port, request), requests)
                results = [(request, *answer) for request, answer in zip(requests, answers)]
            seconds = time.monotonic() - started
            stop.set()
            monitor.join()
            summary = fuzz_summary(results, health, seconds)
            summary["tracebacks_logged"] = log_path.read_text(errors="replace").count("Traceback")
            summary["server_alive"] = process.poll() is None
    return {**summary, "seed": seed, "clients": clients}


def format_fuzz(report: dict) -> str:
    return "\n".join([
        f"fuzz, {report['requests']} requests from {report['clients']} clients (seed {report['seed']}) in {report['seconds']} s, "
        f"{report['bytes_sent'] / 1e6:.0f} MB sent, largest body {report['largest_body_bytes'] / 1e6:.1f} MB",
        "statuses: " + ", ".join(f"{status} x{count}" for status, count in report["statuses"].items()),
        f"server errors {report['server_errors']}, unanswered {report['unanswered']}, tracebacks logged "
        f"{report['tracebacks_logged']}, server alive {report['server_alive']}",
        f"answer time p50 {report['answer_seconds_p50']} s, p99 {report['answer_seconds_p99']} s, max {report['answer_seconds_max']} s; "
        f"over {ANSWER_BUDGET_SECONDS:g} s: {report['answers_over_budget']}; slowest: " + "; ".join(report["slowest"]),
        f"/api/health every {HEALTH_EVERY_SECONDS} s, {report['health_samples']} samples: max {report['health_seconds_max']} s; "
        f"over {HEALTH_BUDGET_SECONDS:g} s: {report['health_over_budget']}",
    ])
