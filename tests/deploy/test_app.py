import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from chronoprice.testing.harness import free_port, get_json, wait_for_history
from tests.helpers import LIVENESS_SECONDS, wait_until
from tests.postgres_server import PASSWORD

pytestmark = pytest.mark.slow  # python app.py started as a process: the whole suite runs it, `-m "not slow"` does not

PROJECT = Path(__file__).resolve().parents[2]


def test_app_module_exposes_a_flask_server_for_gunicorn(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setenv("CHRONOPRICE_SOURCE", "demo")
    monkeypatch.setenv("CHRONOPRICE_DB", str(tmp_path / "app.db"))
    monkeypatch.setenv("CHRONOPRICE_MODEL", str(tiny_model))
    sys.modules.pop("app", None)
    app_module = importlib.import_module("app")
    client = app_module.server.test_client()
    assert client.get("/").status_code == 200
    assert b"price-chart" in client.get("/_dash-layout").data
    assert not (tmp_path / "app.db").exists(), "importing the app does no I/O"


def test_a_demo_server_on_sqlite_leaves_out_ipython_ccxts_websocket_half_and_the_postgresql_driver(tmp_path, tiny_model):
    pytest.importorskip("IPython")
    env = {**os.environ, "CHRONOPRICE_SOURCE": "demo", "CHRONOPRICE_DB": str(tmp_path / "app.db"),
           "CHRONOPRICE_MODEL": str(tiny_model)}
    loaded = "import sys; print(*(bool(sys.modules.get(name)) for name in ('IPython', 'ccxt.pro', 'psycopg', 'dash')))"
    server = subprocess.run([sys.executable, "-c", f"import app; app.start_worker_scheduler(); {loaded}"], cwd=PROJECT,
                            env=env, capture_output=True, text=True, timeout=LIVENESS_SECONDS)
    assert server.stdout.split() == ["False", "False", "False", "True"], server.stderr
    # Inside a notebook, IPython is already loaded: the dashboard leaves it there.
    notebook = subprocess.run([sys.executable, "-c", f"import IPython, app; {loaded}"], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=LIVENESS_SECONDS)
    assert notebook.stdout.split() == ["True", "False", "False", "True"], notebook.stderr


def test_python_app_py_serves_the_offline_demo(tmp_path):
    port = free_port()
    env = {**os.environ, "CHRONOPRICE_DB": str(tmp_path / "run.db")}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--source", "demo", "--port", str(port)],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + LIVENESS_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, f"the app did not answer within {LIVENESS_SECONDS} s"
                time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("command", [["app.py"], ["-m", "chronoprice", "worker"]], ids=["app", "worker"])
def test_with_json_logs_every_line_through_a_cold_start_with_history_is_one_json_object(command, tmp_path):
    db_file = tmp_path / "json.db"
    output = tmp_path / "output.txt"
    metrics_port = free_port()  # the worker's own /metrics (the app has it on its web port)
    with output.open("w") as sink:
        process = subprocess.Popen([sys.executable, *command, "--source", "demo", "--db", str(db_file), "--port",
                                    str(free_port()), "--metrics-port", str(metrics_port), "--log-format", "json"],
                                   cwd=PROJECT, stdout=sink, stderr=sink)
        try:
            wait_for_history(db_file, 1000, LIVENESS_SECONDS)
            time.sleep(1)  # the history's last log lines
            if "worker" in command:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
                    scraped = answer.read().decode()
                assert "chronoprice_scheduled_markets 4.0" in scraped
                assert "chronoprice_scheduler_lease_held 1.0" in scraped
        finally:
            process.terminate()
            process.wait(timeout=15)
    lines = output.read_text().split("\n")
    assert lines[-1] == "" and len(lines) > 10
    entries = []
    for number, line in enumerate(lines[:-1], 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line[:200]!r}")
    messages = " ".join(entry["message"] for entry in entries)
    assert "historical origins" in messages and "\x1b" not in messages and "\r" not in messages


def test_python_app_py_refuses_a_corrupt_database_with_a_clear_message(tmp_path):
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"definitely not sqlite" * 200)
    result = subprocess.run([sys.executable, "app.py", "--source", "demo", "--db", str(broken), "--port", str(free_port())],
                            cwd=PROJECT, capture_output=True, text=True, timeout=LIVENESS_SECONDS)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot use database") and str(broken) in result.stderr
    assert "Traceback" not in result.stderr


def test_python_app_py_names_a_bad_setting(tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--exchange", "binanse", "--db", str(tmp_path / "x.db")],
                            cwd=PROJECT, capture_output=True, text=True, timeout=LIVENESS_SECONDS)
    assert result.returncode == 2 and "did you mean binance" in result.stderr and "Traceback" not in result.stderr


def test_python_app_py_on_postgresql_keeps_its_track_record_through_a_server_restart(postgres_server, postgres_url, tiny_model):
    """DATABASE_URL as Render sets it: the demo ticks into PostgreSQL; while the server is down
    the API answers 503 with Retry-After, then serves again; the password shows nowhere."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": postgres_url, "CHRONOPRICE_MODEL": str(tiny_model), "CHRONOPRICE_WATCH": "BTC/USDT@1m"}
    process = subprocess.Popen([sys.executable, "app.py", "--source", "demo", "--port", str(port)],
                               cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def status_of(path: str) -> int | None:
        try:
            return get_json(base + path, timeout=10)[0]
        except OSError:  # not listening yet
            return None

    try:
        assert wait_until(lambda: process.poll() is not None or status_of("/api/v1/forecast") == 200)
        assert process.poll() is None, "the app is serving"
        status, health = get_json(base + "/api/health")
        assert status == 200 and PASSWORD not in json.dumps(health)
        with contextlib.closing(psycopg.connect(postgres_url)) as connection:
            assert connection.execute("select count(*) from forecasts").fetchone()[0] >= 10, "forecasts stored in PostgreSQL"
        postgres_server.stop()
        try:
            with urllib.request.urlopen(base + "/api/v1/candles?limit=1", timeout=30):
                raise AssertionError("a read with the database down cannot succeed")
        except urllib.error.HTTPError as error:
            assert error.code == 503 and error.headers["Retry-After"]
        postgres_server.start()
        assert wait_until(lambda: status_of("/api/v1/candles?limit=1") == 200), "served again once the server is back"

        def history_complete() -> bool:
            status_of("/api/v1/forecast")  # a read ticks the market
            with contextlib.closing(psycopg.connect(postgres_url)) as connection:
                candles = connection.execute("select count(*) from candles where timeframe = '1m'").fetchone()[0]
                origins = connection.execute("select count(distinct origin_ts) from forecasts where timeframe = '1m'").fetchone()[0]
            return origins == candles - 59  # every origin with a full window of 60 candles

        assert wait_until(history_complete, interval=1.0), "the history the outage cut short is completed"
    finally:
        if not postgres_server.running():
            postgres_server.start()
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert PASSWORD not in output and "Traceback" not in output, output[-2000:]
