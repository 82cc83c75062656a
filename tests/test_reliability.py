"""Crash safety: the app is killed with SIGKILL again and again, during backfills and ticks."""

import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd

from chronoprice.market.candles import find_gaps
from chronoprice.market.simulator import BinanceSimulator
from chronoprice.market.source import Market
from chronoprice.store.sqlite import open_store, read_candles
from chronoprice.testing import free_port
from tests.conftest import MINUTE_MS, SERIES_START_MS

PROJECT = Path(__file__).resolve().parents[1]
KILLS = 20


def start_app(kind: str, exchange_url: str, db_path: Path, model: Path, port: int) -> subprocess.Popen:
    """The real entry points: `python -m chronoprice backfill` or `python app.py` on the live source."""
    settings = ["--source", "live", "--exchange-url", exchange_url, "--fallback-exchanges", "none", "--db", str(db_path),
                "--model", str(model), "--refresh-seconds", "0.2"]
    command = ([sys.executable, "-m", "chronoprice", "backfill", *settings, "--hours", "24"] if kind == "backfill"
               else [sys.executable, "app.py", *settings, "--port", str(port)])
    return subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def keep_ticking(port: int, until: float) -> None:
    """Ask the served app for forecasts (each read runs a tick) until `until`."""
    while time.monotonic() < until:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/forecast", timeout=2).read()
        except OSError:
            time.sleep(0.05)


def test_kill_9_during_backfill_and_ticks_never_corrupts_the_store(series, tmp_path, tiny_model):
    rng = random.Random(11)
    db_path = tmp_path / "crash.db"
    market = Market("binance", "BTC/USDT", "1m")
    forecast_counts = []
    with BinanceSimulator(series, now_ms=SERIES_START_MS + 2000 * MINUTE_MS + 10_000) as exchange:
        for kill in range(KILLS):
            port = free_port()
            app = start_app("backfill" if kill % 2 == 0 else "serve", exchange.url, db_path, tiny_model, port)
            until = time.monotonic() + rng.uniform(1.5, 4.0)
            keep_ticking(port, until)
            app.send_signal(signal.SIGKILL)
            app.wait(timeout=10)
            exchange.advance(rng.randint(0, 3))

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
