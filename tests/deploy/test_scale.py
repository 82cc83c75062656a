"""The scaled shape under faults: a worker, a standby worker and two gunicorn web instances on one
PostgreSQL (straight, with 3 watched markets, and behind PgBouncer in transaction mode with 20),
fifty API clients spread over both instances, an exchange that misbehaves, the active worker
killed with SIGKILL in the middle of a tick, and the database restarted once."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from chronoprice.config import settings_from
from chronoprice.logs import configure_logging
from chronoprice.market.source import Market
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.build import build_scheduler, build_ticker
from chronoprice.store import open_store
from chronoprice.store.records import newest_forecast_origin_ts
from chronoprice.testing.exchange import BinanceSimulator, Fault
from chronoprice.testing.harness import gunicorn_service, local_exchange_env
from tests.helpers import (
    MINUTE_MS,
    SERIES_START_MS,
    assert_one_whole_forecast_per_closed_candle,
    make_candles,
    wait_until,
)
from tests.pgbouncer_server import PgBouncer
from tests.postgres_server import PASSWORD

pytestmark = pytest.mark.slow  # PostgreSQL servers and processes killed and restarted: the whole suite runs it, `-m "not slow"` does not

WATCHED = [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("BTC/USDT", "5m")]
UNWATCHED = ("ETH/USDT", "5m")  # read on demand, so the web instances tick it themselves, claimed through the store
MORE_WATCHED = [(f"S{number}/USDT", "1m") for number in range(17)]  # behind PgBouncer: 20 markets in all
CLIENTS = 50


def run_worker(env: dict, clock_seconds, log_path: Path) -> None:
    """`python -m chronoprice worker` as cli.run_worker builds it, on the test's clock (a shared
    value the test moves), logging as the command does to its stderr, here a file."""
    sys.stderr = open(log_path, "a", buffering=1)

    def clock() -> float:
        return clock_seconds.value

    settings = settings_from({}, env)
    configure_logging(settings.log_format)
    build_scheduler(settings, build_ticker(settings, history_hours=6, clock=clock), clock=clock).run_forever()


def fetch(url: str) -> tuple[int, bool, dict | str | None]:
    """(status, whether a Retry-After header came, body: JSON, or text as /metrics answers) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
            is_json = response.headers.get_content_type() == "application/json"
            return response.status, "Retry-After" in response.headers, json.loads(body) if is_json else body.decode()
    except urllib.error.HTTPError as error:
        return error.code, "Retry-After" in error.headers, None


def client_paths(watched: list[tuple[str, str]]) -> list[str]:
    paths = ["/api/health", "/api/v1/markets", "/metrics"]  # the operator's scrape, throughout
    for symbol, timeframe in [*watched, UNWATCHED]:
        query = f"symbol={symbol}&timeframe={timeframe}"
        paths += [f"/api/v1/forecast?{query}", f"/api/v1/candles?{query}&limit=60", f"/api/v1/metrics?{query}"]
    return paths


def lease_owner(url: str) -> str | None:
    with contextlib.closing(psycopg.connect(url, connect_timeout=5)) as connection:
        row = connection.execute("select owner from leases where name = 'scheduler'").fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
def test_a_worker_a_standby_and_two_web_instances_on_postgresql_survive_a_kill_and_a_restart(
        series, tmp_path, tiny_model, postgres_server, postgres_url, route):
    if route == "pgbouncer":  # three server connections for the four processes' pools of 8, and 20 markets
        bouncer = PgBouncer(postgres_server)
        store_url, watched = bouncer.url(postgres_url), WATCHED + MORE_WATCHED
        series = {**series, **{symbol: make_candles(4000, symbol) for symbol, _ in MORE_WATCHED}}
    else:
        bouncer, store_url, watched = None, postgres_url, WATCHED
    try:
        soak(series, tmp_path, tiny_model, postgres_server, postgres_url, store_url, watched)
    finally:
        if bouncer:
            bouncer.stop()


def soak(series, tmp_path, tiny_model, postgres_server, postgres_url: str, store_url: str,
         watched: list[tuple[str, str]]) -> None:
    now = SERIES_START_MS + 1200 * MINUTE_MS + 30_000
    spawn = multiprocessing.get_context("spawn")
    clock_seconds = spawn.Value("d", now / 1000)
    watch = ",".join(f"{symbol}@{timeframe}" for symbol, timeframe in watched)
    with BinanceSimulator(series, now_ms=now) as exchange, BinanceSimulator(series, now_ms=now) as web_exchange, \
            contextlib.ExitStack() as stack:
        # The workers and the web instances ask different copies of the exchange, so the test can
        # tell who fetched what.
        worker_env = local_exchange_env(exchange.url, store_url, 10, CHRONOPRICE_WATCH=watch,
                                        CHRONOPRICE_MODEL=str(tiny_model), CHRONOPRICE_CACHE_DIR=str(tmp_path / "cache"))
        logs = {name: tmp_path / f"{name}.log" for name in ("first", "second")}

        def start_worker(name: str) -> multiprocessing.Process:
            process = spawn.Process(target=run_worker, args=(worker_env, clock_seconds, logs[name]), daemon=True)
            process.start()
            stack.callback(process.kill)
            return process

        def move_clock(seconds: float) -> None:
            for simulator in (exchange, web_exchange):
                simulator.advance(seconds / 60)  # the exchange first: the scheduler never sees a close it cannot fetch
            with clock_seconds.get_lock():
                clock_seconds.value += seconds

        def run_clock(seconds: float) -> None:
            """Time passes at ten times its pace, smoothly enough that a live worker renews its lease."""
            for _ in range(int(seconds / 0.5)):
                time.sleep(0.05)
                move_clock(0.5)

        def minutes_pass(minutes: int, seconds_each: float) -> None:
            for _ in range(minutes):
                time.sleep(seconds_each)
                move_clock(60)

        db = stack.enter_context(contextlib.closing(open_store(postgres_url)))

        def caught_up(seconds_on: float = 40.0):
            """A condition: every watched market forecast from its newest closed candle. Meanwhile
            the clock runs on for `seconds_on`, as time does, so retries and backoffs come due."""
            until = clock_seconds.value + seconds_on

            def condition() -> bool:
                if clock_seconds.value < until:
                    move_clock(0.5)
                try:
                    return all(newest_forecast_origin_ts(db, Market("binance", symbol, timeframe))
                               == exchange.closed_candles(symbol, timeframe)["ts"].iloc[-1] for symbol, timeframe in watched)
                except psycopg.OperationalError:  # the database is still starting
                    return False

            return condition

        def log_text(name: str) -> str:
            return logs[name].read_text() if logs[name].exists() else ""

        def log_tails() -> str:
            return "\n".join(f"--- {name}\n{log_text(name)[-2500:]}" for name in logs)

        # A worker starts and schedules; a second one stands by.
        workers = {"first": start_worker("first")}
        assert wait_until(lambda: lease_owner(postgres_url) is not None), log_tails()
        workers["second"] = start_worker("second")
        assert wait_until(caught_up()), f"the first worker caught up every market; logs:\n{log_tails()}"
        assert wait_until(lambda: "stands by" in log_text("second")), log_tails()

        web_env = local_exchange_env(web_exchange.url, store_url, 10, CHRONOPRICE_SCHEDULER="false",
                                     CHRONOPRICE_MODEL=str(tiny_model), CHRONOPRICE_CACHE_DIR=str(tmp_path / "web-cache"))
        services = [gunicorn_service(web_env, workers=1, threads=8) for _ in range(2)]
        with concurrent.futures.ThreadPoolExecutor(2) as starting:  # both start at once: half the wait
            instances = list(starting.map(lambda service: service.__enter__(), services))
        for service in services:
            stack.push(service.__exit__)
        bases = [base for base, *_ in instances]

        # Fifty clients, spread over both instances, read for the whole soak.
        stop_reading = threading.Event()
        paths = client_paths(watched)

        def client(number: int) -> list[tuple[float, int, bool]]:
            seen, base = [], bases[number % 2]
            for request in itertools.count(number):  # each client goes round every path, from its own
                if stop_reading.is_set():
                    break
                status, retry_after, _ = fetch(base + paths[request % len(paths)])
                seen.append((time.monotonic(), status, retry_after))
                time.sleep(0.1)  # a viewer's pace, not a flood: the soak is about faults, `bench --scale` about load
            return seen

        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(CLIENTS))
        stack.callback(stop_reading.set)  # before the pool waits for its clients, however the test ends
        readers = [pool.submit(client, number) for number in range(CLIENTS)]

        # The exchange misbehaves while candles close.
        for fault in (Fault(status=500, times=2), Fault(status=200, body="<html>busy</html>"),
                      Fault(status=429, headers={"Retry-After": "1"}), Fault(status=0, delay_seconds=2.0)):
            exchange.queue(fault)
        minutes_pass(4, 0.5)
        assert wait_until(caught_up()), f"caught up after the exchange's faults; logs:\n{log_tails()}"

        # The active worker is killed with SIGKILL while a tick waits for the exchange.
        slow = Fault(status=0, delay_seconds=3.0, symbol="ETHUSDT")
        exchange.queue(slow)
        run_clock(60 + 3)  # a candle closes and its settle time passes: the ticks start
        assert wait_until(lambda: slow not in exchange.faults), "the tick asked for the slow reply"
        time.sleep(0.5)
        active = lease_owner(postgres_url)
        victim = next(name for name, process in workers.items() if f":{process.pid}:" in active)
        os.kill(workers[victim].pid, signal.SIGKILL)
        killed_at = clock_seconds.value
        while lease_owner(postgres_url) == active:
            assert clock_seconds.value - killed_at < 5 * 60, f"nobody took over; logs:\n{log_tails()}"
            time.sleep(0.05)
            move_clock(0.5)
        takeover_seconds = clock_seconds.value - killed_at
        assert wait_until(caught_up()), f"the standby caught up; logs:\n{log_tails()}"

        # PostgreSQL restarts while a candle closes.
        postgres_server.stop()
        down = time.monotonic()
        minutes_pass(2, 3.5)  # longer than a web instance waits for a connection (5 s): some reads get 503
        postgres_server.start()
        up = time.monotonic()
        assert wait_until(caught_up()), f"caught up after the database restart; logs:\n{log_tails()}"

        stop_reading.set()
        seen = [entry for reader in readers for entry in reader.result()]
        newest = {}
        for symbol, timeframe in watched:
            answers = [fetch(f"{base}/api/v1/forecast?symbol={symbol}&timeframe={timeframe}") for base in bases]
            assert [status for status, *_ in answers] == [200, 200]
            assert answers[0][2] == answers[1][2], f"both web instances serve the same newest {symbol} {timeframe} forecast"
            newest[(symbol, timeframe)] = answers[0][2]
        gunicorn_logs = "".join(log_path.read_text() for *_, log_path in instances)
        worker_logs = log_text("first") + log_text("second")

    statuses = [status for _, status, _ in seen]
    print(f"\nscale soak: {len(statuses)} requests, {statuses.count(503)} answered 503 (database down), "
          f"the standby took over {takeover_seconds:.0f} s after the kill")
    assert statuses.count(200) > 0.9 * len(statuses), sorted(set(statuses))
    assert {status for status in statuses if status >= 500} <= {503}, sorted(set(statuses))
    assert any(status == 503 and down <= at <= up + 10 for at, status, _ in seen), "the clients saw the database go down"
    assert all(retry_after for _, status, retry_after in seen if status == 503), "every 503 says when to retry"
    assert "Traceback" not in gunicorn_logs and PASSWORD not in gunicorn_logs + worker_logs

    assert takeover_seconds <= 60, f"the standby takes over within one candle, not {takeover_seconds:.0f} s"
    web_fetched = {key for key, count in web_exchange.kline_requests.items() if count}
    assert web_fetched == {("ETHUSDT", "5m")}, "the web instances fetched only the market nobody watches"

    window = load_forecaster(tiny_model).window
    db = open_store(postgres_url)
    for symbol, timeframe in watched:
        stored = assert_one_whole_forecast_per_closed_candle(db, exchange, symbol, timeframe, window)
        assert newest[(symbol, timeframe)]["origin_ts"] == stored["ts"].iloc[-1]
