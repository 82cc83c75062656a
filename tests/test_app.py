import importlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from chronoprice.testing import free_port
from tests.conftest import LIVENESS_SECONDS

PROJECT = Path(__file__).resolve().parents[1]


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
