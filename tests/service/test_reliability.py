"""Crash safety: the app is killed with SIGKILL again and again, during backfills and ticks, and
a scheduler process is killed amid a fast-clock soak of several markets."""

import contextlib
import logging
import multiprocessing
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from chronoprice.market.candles import find_gaps
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.source import Market
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.tick import CATCH_UP_ORIGINS, Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store import open_store
from chronoprice.store.records import newest_forecast_origin_ts, read_candles
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import free_port
from tests.helpers import MINUTE_MS, SERIES_START_MS, assert_one_whole_forecast_per_closed_candle, wait_until

pytestmark = pytest.mark.slow  # kill -9 restarts and outages: the whole suite runs it, `-m "not slow"` does not

PROJECT = Path(__file__).resolve().parents[2]
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


# ------------------------------------------------------------------ a scheduler process killed mid-soak
SOAK_MARKETS = [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("BTC/USDT", "5m")]


def run_scheduler(exchange_url: str, db_path: Path, model: Path, clock_seconds) -> None:
    """A scheduler process on the test's clock (a shared value the test moves), logging beside the store."""
    def clock() -> float:
        return clock_seconds.value

    logging.basicConfig(filename=db_path.with_suffix(".log"), level=logging.INFO,
                        format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    source = LiveSource("binance", exchange_url, (), history=300, backoff_seconds=0.0, attempts=1)
    ticker = Ticker(source, db_path, lambda: load_forecaster(model), clock=clock, progress=False)
    Scheduler(ticker, clock=clock).run_forever()


def test_a_scheduler_process_killed_with_sigkill_leaves_no_gap_and_no_duplicate(exchange, db_path, tiny_model):
    rng = random.Random(5)
    seed_watchlist(open_store(db_path), ",".join(f"{symbol}@{timeframe}" for symbol, timeframe in SOAK_MARKETS), 50)
    spawn = multiprocessing.get_context("spawn")
    clock_seconds = spawn.Value("d", exchange.now_ms / 1000)

    def start() -> multiprocessing.Process:
        worker = spawn.Process(target=run_scheduler, args=(exchange.url, db_path, tiny_model, clock_seconds), daemon=True)
        worker.start()
        return worker

    def move_clock(seconds: float) -> None:
        exchange.advance(seconds / 60)  # the exchange first, so the scheduler never sees a close it cannot fetch
        with clock_seconds.get_lock():
            clock_seconds.value += seconds

    def minutes_pass(minutes: int, seconds_each: float) -> None:
        for _ in range(minutes):
            time.sleep(seconds_each)
            move_clock(60)

    def caught_up() -> Callable[[], bool]:
        """A condition: every market forecast from its newest closed candle. Meanwhile the clock
        runs on for 40 s, as time does, so late retries and backoffs come due."""
        until = clock_seconds.value + 40

        def condition() -> bool:
            if clock_seconds.value < until:
                move_clock(0.5)
            return all(newest_forecast_origin_ts(db, Market("binance", symbol, timeframe))
                       == exchange.closed_candles(symbol, timeframe)["ts"].iloc[-1] for symbol, timeframe in SOAK_MARKETS)

        return condition

    def log_tail() -> str:
        return db_path.with_suffix(".log").read_text()[-3000:] if db_path.with_suffix(".log").exists() else "no log"

    db = open_store(db_path)
    worker = start()
    assert wait_until(caught_up()), f"the scheduler started and forecast every market; its log:\n{log_tail()}"
    minutes_pass(6, 0.4)
    time.sleep(rng.uniform(0.0, 0.8))
    worker.kill()  # SIGKILL, amid whatever it was doing
    worker.join(timeout=10)
    minutes_pass(7, 0.0)  # an outage: no scheduler while candles close
    worker = start()
    minutes_pass(6, 0.4)
    assert wait_until(caught_up()), f"the restarted scheduler caught up; its log:\n{log_tail()}"
    worker.terminate()
    worker.join(timeout=10)

    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    window = load_forecaster(tiny_model).window
    for symbol, timeframe in SOAK_MARKETS:
        assert_one_whole_forecast_per_closed_candle(db, exchange, symbol, timeframe, window)
