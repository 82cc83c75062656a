"""Crash safety: a process storing candles and forecasts is killed with SIGKILL again and again."""

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from chronoprice.candles import find_gaps
from chronoprice.exchange_sim import BinanceSimulator
from chronoprice.store import Market, open_store, read_candles
from tests.conftest import MINUTE_MS, SERIES_START_MS

PROJECT = Path(__file__).resolve().parents[1]
KILLS = 20

WORKER = textwrap.dedent(
    """
    import sys
    from chronoprice.forecast import load_forecaster
    from chronoprice.pipeline import Pipeline
    from chronoprice.sources import LiveSource

    url, db, model = sys.argv[1:4]
    pipeline = Pipeline(LiveSource("binance", url, (), history=1440), db, lambda: load_forecaster(model, "litert"),
                        refresh_seconds=0, quiet=True)
    print("ready", flush=True)
    while True:
        pipeline.tick("BTC/USDT", force=True)
        pipeline.forecast_history(pipeline.market("BTC/USDT", "binance"), 0)
    """
)


def test_kill_9_during_backfill_and_ticks_never_corrupts_the_store(series, tmp_path, tiny_model):
    rng = random.Random(11)
    db_path = tmp_path / "crash.db"
    market = Market("binance", "BTC/USDT", "1m")
    forecast_counts = []
    with BinanceSimulator(series, now_ms=SERIES_START_MS + 2000 * MINUTE_MS + 10_000) as exchange:
        for _ in range(KILLS):
            worker = subprocess.Popen([sys.executable, "-c", WORKER, exchange.url, str(db_path), str(tiny_model)],
                                      cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
            time.sleep(rng.uniform(0.05, 1.5))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
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

        assert len(set(forecast_counts)) > KILLS // 2, f"most kills struck while forecasts were being written: {forecast_counts}"

        # After the last kill, one clean run catches up completely, with no duplicate and no hole.
        worker = subprocess.Popen([sys.executable, "-c", WORKER, exchange.url, str(db_path), str(tiny_model)],
                                  cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert worker.stdout.readline().strip() == "ready"
        closed = exchange.closed_candles("BTC/USDT")
        db = open_store(db_path)
        for _ in range(200):
            stored = read_candles(db, market)
            if not stored.empty and stored["ts"].iloc[-1] == closed["ts"].iloc[-1]:
                break
            time.sleep(0.1)
        worker.kill()
        worker.wait(timeout=10)
        assert stored["ts"].iloc[-1] == closed["ts"].iloc[-1]
        assert stored["ts"].is_unique and find_gaps(stored["ts"].to_numpy(), MINUTE_MS).empty
