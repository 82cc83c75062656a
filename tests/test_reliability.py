"""Crash safety: the app is killed with SIGKILL again and again, during backfills and ticks."""

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd

from chronoprice.market.candles import find_gaps
from chronoprice.market.simulator import BinanceSimulator
from chronoprice.market.source import Market
from chronoprice.service.tick import CATCH_UP_ORIGINS
from chronoprice.store.sqlite import open_store, read_candles
from chronoprice.testing import free_port
from tests.conftest import MINUTE_MS, SERIES_START_MS, wait_until

PROJECT = Path(__file__).resolve().parents[1]
KILLS = 20


def start_app(kind: str, exchange_url: str, db_path: Path, model: Path, port: int) -> subprocess.Popen:
    """The real entry points: `python -m chronoprice backfill` or `python app.py` on the live source."""
    settings = ["--source", "live", "--exchange-url", exchange_url, "--fallback-exchanges", "none", "--db", str(db_path),
                "--model", str(model), "--refresh-seconds", "0.2"]
    command = ([sys.executable, "-m", "chronoprice", "backfill", *settings, "--hours", "24"] if kind == "backfill"
               else [sys.executable, "app.py", *settings, "--port", str(port), "--watch", "BTC/USDT@1m"])
    return subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def keep_ticking(port: int, until: float) -> None:
    """Ask the served app for forecasts (each read runs a tick) until `until`."""
    while time.monotonic() < until:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/forecast", timeout=2).read()
        except OSError:
            time.sleep(0.05)


def forecast_count(db_path: Path) -> int:
    """Stored forecast rows, read without writing (the app may be mid-transaction)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute("select count(*) from forecasts").fetchone()[0]
    except sqlite3.OperationalError:  # no file or no table yet
        return 0


def tick_until_written(port: int, db_path: Path, written_before: int) -> bool:
    """Ask the app for forecasts until it has stored more than `written_before` rows."""
    def written() -> bool:
        keep_ticking(port, time.monotonic() + 0.1)
        return forecast_count(db_path) > written_before

    return wait_until(written)


def test_kill_9_during_backfill_and_ticks_never_corrupts_the_store(series, tmp_path, tiny_model):
    rng = random.Random(11)
    db_path = tmp_path / "crash.db"
    market = Market("binance", "BTC/USDT", "1m")
    forecast_counts = []
    with BinanceSimulator(series, now_ms=SERIES_START_MS + 2000 * MINUTE_MS + 10_000) as exchange:
        for kill in range(KILLS):
            port = free_port()
            written_before = forecast_count(db_path)
            app = start_app("backfill" if kill % 2 == 0 else "serve", exchange.url, db_path, tiny_model, port)
            if kill % 4 < 2:  # at a random moment: start-up, fetching, history or ticks
                keep_ticking(port, time.monotonic() + rng.uniform(1.0, 4.0))
            else:  # soon after this run's first write, so the kill strikes amid writes on any machine
                assert tick_until_written(port, db_path, written_before), "the run wrote nothing"
                time.sleep(rng.uniform(0.0, 0.3))
            app.send_signal(signal.SIGKILL)
            app.wait(timeout=10)
            exchange.advance(rng.randint(1, 3))  # every run has a new candle to forecast

            db = open_store(db_path)
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            partial = db.execute(
                "select origin_ts, model_version, count(*) from forecasts group by exchange, symbol, timeframe, "
                "origin_ts, model_version having count(*) != 10").fetchall()
            assert partial == [], "every stored forecast has its 10 steps"
            stored = read_candles(db, market)
            if not stored.empty:
                expected = exchange.closed_candles("BTC/USDT")
                expected = expected[expected["ts"].between(stored["ts"].iloc[0], stored["ts"].iloc[-1])].reset_index(drop=True)
                pd.testing.assert_frame_equal(stored, expected)
            forecast_counts.append(db["forecasts"].count)
            db.conn.close()

        assert len(set(forecast_counts)) > KILLS // 2, f"most kills struck while the store was being written: {forecast_counts}"

        # After the last kill, one clean run catches up completely, with no duplicate and no hole.
        port = free_port()
        app = start_app("serve", exchange.url, db_path, tiny_model, port)
        keep_ticking(port, time.monotonic() + 8)
        app.kill()
        app.wait(timeout=10)
        db = open_store(db_path)
        stored = read_candles(db, market)
        assert stored["ts"].iloc[-1] == exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
        assert stored["ts"].is_unique and find_gaps(stored["ts"].to_numpy(), MINUTE_MS).empty
        forecast = {row[0] for row in db.execute(
            "select distinct origin_ts from forecasts where symbol = 'BTC/USDT' and timeframe = '1m'")}
        recent = stored["ts"].iloc[59:].tail(CATCH_UP_ORIGINS)
        assert set(recent) <= forecast, f"{len(set(recent) - forecast)} origins left without a forecast by the kills"
