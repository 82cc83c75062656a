"""Fixtures only: the candle series, a local Binance-compatible exchange, PostgreSQL and Redis
servers, temporary stores and a tiny model trained for one epoch. Helpers are in tests/helpers.py."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from chronoprice.logs import StderrHandler  # noqa: E402
from chronoprice.store import open_store  # noqa: E402
from chronoprice.testing.exchange import BinanceSimulator  # noqa: E402
from chronoprice.testing.harness import free_port  # noqa: E402
from tests.helpers import MINUTE_MS, SERIES_START_MS, make_candles, wait_until  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "btcusdt_1m_binanceus_2023-03-01_14.csv"
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "chronoprice-lstm"


@pytest.fixture(autouse=True)
def no_log_handler_left_behind():
    """Commands run in-process set up logging (chronoprice.logs); take it down after each test,
    so later tests' records go to pytest's capture, not to the terminal."""
    yield
    root = logging.getLogger()
    for handler in [each for each in root.handlers if isinstance(each, StderrHandler)]:
        root.removeHandler(handler)


@pytest.fixture(scope="session")
def series():
    return {"BTC/USDT": make_candles(4000), "ETH/USDT": make_candles(4000, "ETH/USDT")}


@pytest.fixture
def exchange(series):
    """A Binance-compatible server on 127.0.0.1, its clock 30 s into candle 1200 (1199 closed)."""
    now = SERIES_START_MS + 1200 * MINUTE_MS + 30_000
    with BinanceSimulator(series, now_ms=now) as simulator:
        yield simulator


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (tests/postgres_server.py); each test takes a new database."""
    server = PostgresServer()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server.new_database()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "chronoprice.db"


@pytest.fixture
def db(db_path):
    return open_store(db_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A store contract runs on both backends: a new SQLite file, or a new PostgreSQL database."""
    target = tmp_path / "store.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = open_store(target)
    yield db
    db.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real artifact (.keras, .tflite, .json) in the shipped model's form (log returns with
    high-low range and volume), trained for one epoch a fold on 3000 synthetic candles."""
    from chronoprice.model.artifact import artifact_at
    from chronoprice.model.training import train_artifact

    out = tmp_path_factory.mktemp("model") / "tiny"
    train_artifact(make_candles(3000), artifact_at(out), epochs=1, data_description="synthetic demo candles")
    return out


@pytest.fixture(scope="session")
def shared_csv():
    if not SHARED_CSV.exists():
        pytest.skip(f"shared test data not found at {SHARED_CSV} (it lives beside the checkout in ../shared/data)")
    return SHARED_CSV


@pytest.fixture(scope="session")
def shipped_model():
    if not SHIPPED_MODEL.with_suffix(".json").exists():
        pytest.fail(f"the shipped model is missing at {SHIPPED_MODEL}.json")
    return SHIPPED_MODEL


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server on a free loopback port (Debian's redis-server, installed by .ci/run)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: install Debian's redis-server package (.ci/run does)")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        def answers():
            try:
                return redis.Redis.from_url(url).ping()
            except redis.ConnectionError:
                return False

        assert wait_until(answers), "redis-server did not answer"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
