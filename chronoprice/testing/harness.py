"""The app as the tests and the benchmark run it: a free local port, JSON over HTTP, the app's
settings on a local exchange, gunicorn started the way render.yaml starts it, Debian's Chromium
for Playwright, and a local webhook receiver.

Product code never imports this module; `bench` and the tests do.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from chronoprice.config import PROJECT_ROOT
from chronoprice.store import open_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class FakeClock:
    """A clock moved by hand: `clock.seconds += 10`."""

    def __init__(self, seconds: float = 1000.0):
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


class RunningClock:
    """A clock that runs at real time's pace from where it is set: `clock.seconds = close + 2`
    jumps to a moment, and the work after it takes the time it really takes, so latencies read
    off this clock (the /metrics histogram's) are real ones."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    @property
    def seconds(self) -> float:
        return time.monotonic() + self._offset

    @seconds.setter
    def seconds(self, value: float) -> None:
        self._offset = value - time.monotonic()

    def __call__(self) -> float:
        return self.seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    """(status, parsed JSON body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for_history(db_file: Path, expected_origins: int, timeout_seconds: float = 180.0) -> None:
    """Wait until the store at `db_file` holds forecasts from `expected_origins` origins (a cold
    start's history, forecast in the background)."""
    deadline = time.monotonic() + timeout_seconds
    db = open_store(db_file)
    while db.execute("select count(distinct origin_ts) from forecasts").fetchone()[0] < expected_origins:
        if time.monotonic() > deadline:
            raise RuntimeError("the cold-start history was not forecast in time")
        time.sleep(0.5)


def dashboard_refresh_body(dependencies: list[dict], symbol: str, timeframe: str = "1m") -> dict:
    """The body the browser POSTs to /_dash-update-component when the market page refreshes,
    from the app's /_dash-dependencies."""
    dependency = next(item for item in dependencies if "price-chart.figure" in item["output"])
    outputs = [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in dependency["output"].strip(".").split("...")]
    values = {"refresh.n_intervals": 1, "active-symbol.data": symbol, "timeframe.value": timeframe, "theme.data": "dark",
              "overlays.value": [], "viewport-width.data": 1440, "chart-view.data": None}
    inputs, state = ([{**item, "value": values[f"{item['id']}.{item['property']}"]} for item in dependency[kind]]
                     for kind in ("inputs", "state"))
    return {"output": dependency["output"], "outputs": outputs, "inputs": inputs, "changedPropIds": ["refresh.n_intervals"],
            "state": state}


def local_exchange_env(exchange_url: str, db_path: Path, refresh_seconds: float, workers: int = 1, **extra: str) -> dict:
    """CHRONOPRICE_* settings for the app on the live source of one local exchange, no fail-over;
    several workers share a file cache beside the database."""
    env = {"CHRONOPRICE_SOURCE": "live", "CHRONOPRICE_EXCHANGE": "binance", "CHRONOPRICE_EXCHANGE_URL": exchange_url,
           "CHRONOPRICE_FALLBACK_EXCHANGES": "none", "CHRONOPRICE_REFRESH_SECONDS": str(refresh_seconds),
           "CHRONOPRICE_DB": str(db_path), "WEB_CONCURRENCY": str(workers), "CHRONOPRICE_CACHE_DIR": str(Path(db_path).parent / "cache")}
    return {**env, **extra}


@contextlib.contextmanager
def gunicorn_service(env: dict, workers: int = 1, threads: int = 8):
    """`gunicorn app:server` as render.yaml starts it, on a free local port.

    Yields (base URL, process, seconds until GET / first answered 200, path of its log).
    """
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "app:server", "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--threads", str(threads), "--timeout", "120"]
    with app_process(command, env, port) as (base, process, first_200_seconds, log_path):
        yield base, process, first_200_seconds, log_path


@contextlib.contextmanager
def app_process(command: list[str], env: dict, port: int):
    """The app started by `command` in the project folder with `env` added, once GET / on `port`
    answers 200; stopped on exit. Yields (base URL, process, seconds until that 200, path of its log)."""
    started = time.monotonic()
    log = tempfile.NamedTemporaryFile(prefix="chronoprice-app-", suffix=".log", delete=False)
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"{' '.join(command[:3])} exited: {Path(log.name).read_text()[-2000:]}") from None
                if time.monotonic() - started > 60:
                    raise RuntimeError(f"{' '.join(command[:3])} did not answer GET / within 60 s") from None
                time.sleep(0.05)
        yield base, process, time.monotonic() - started, Path(log.name)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        os.unlink(log.name)


class WebhookReceiver:
    """A local webhook on a port of its own: answers `codes` in turn (then 200), each after `hang`
    seconds; `received` holds (time.time() on arrival, Idempotency-Key, JSON body) of every call,
    `completed` the keys answered 200."""

    def __init__(self, codes=(), hang: float = 0.0):
        self.codes, self.hang, self.received, self.completed = list(codes), hang, [], []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                arrived = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.received.append((arrived, self.headers["Idempotency-Key"], body))
                time.sleep(receiver.hang)
                code = receiver.codes.pop(0) if receiver.codes else 200
                try:
                    self.send_response(code)
                    self.end_headers()
                except OSError:  # the caller gave up waiting
                    return
                if code == 200:
                    receiver.completed.append(self.headers["Idempotency-Key"])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver").start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/secret-path-123"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
