"""The watchlist (setting, store, API) and the scheduler that ticks it on every candle close."""

import socket
import subprocess

import pytest

from chronoprice.config import settings_from
from chronoprice.market.candles import find_gaps
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.build import build_ticker
from chronoprice.service.scheduler import LEASE_SECONDS, STANDBY_SECONDS, Scheduler
from chronoprice.service.tick import NO_SCHEDULER_NOTE, Ticker
from chronoprice.service.watchlist import DEFAULT_WATCH, parse_watchlist, seed_watchlist
from chronoprice.store import open_store
from chronoprice.store.claims import hold_lease
from chronoprice.store.records import read_candles
from chronoprice.store.watchlist import add_to_watchlist, read_watchlist
from chronoprice.testing.harness import FakeClock
from chronoprice.web.server import create_app
from tests.helpers import MINUTE_MS, forecast_origins, wait_until

TOKEN = "a-long-admin-token-for-tests"


def test_watch_setting_keeps_good_entries_and_says_what_it_skipped():
    parsed = parse_watchlist(" btc/usdt , ETH/USDT@15m,BTC/USDT@1m, DOGE@1m, BTC/USDT@2m, kraken:BTC/USDT@1h,,", 50)
    assert parsed.markets == [("BTC/USDT", "1m"), ("ETH/USDT", "15m")]
    assert len(parsed.problems) == 3
    assert "DOGE@1m" in parsed.problems[0] and "BASE/QUOTE" in parsed.problems[0]
    assert "'2m' is not supported" in parsed.problems[1] and "1m, 5m, 15m, 1h" in parsed.problems[1]
    assert "exchange prefix" in parsed.problems[2]
    empty = parse_watchlist("  ", 50)
    assert empty.markets == [] and "empty" in empty.problems[0]


def test_ten_thousand_watch_entries_are_capped_with_a_message():
    entries = ",".join(f"C{number}/USDT@1m" for number in range(10_000))
    parsed = parse_watchlist(entries, 50)
    assert len(parsed.markets) == 50 and parsed.markets[0] == ("C0/USDT", "1m")
    assert parsed.problems == ["9950 watch entries beyond the limit of 50 skipped (--watch-limit)"]


def test_the_stored_watchlist_survives_restarts_until_the_setting_changes(db):
    assert seed_watchlist(db, None, 50).markets == parse_watchlist(DEFAULT_WATCH, 50).markets
    add_to_watchlist(db, "SOL/USDT", "5m", 50)
    assert ("SOL/USDT", "5m") in read_watchlist(db) and seed_watchlist(db, None, 50).problems == []
    assert ("SOL/USDT", "5m") in read_watchlist(db), "a restart without --watch keeps the edits"
    seed_watchlist(db, "ETH/USDT@1h", 50)
    assert read_watchlist(db) == [("ETH/USDT", "1h")]
    add_to_watchlist(db, "BTC/USDT", "1m", 50)
    seed_watchlist(db, "ETH/USDT@1h", 50)
    assert read_watchlist(db) == [("ETH/USDT", "1h"), ("BTC/USDT", "1m")], "the same --watch again keeps the edits"


def test_one_scheduler_lease_holder_per_store(db):
    assert hold_lease(db, "scheduler", "a", 1_000, 30_000)
    assert not hold_lease(db, "scheduler", "b", 20_000, 30_000)
    assert hold_lease(db, "scheduler", "a", 20_000, 30_000), "the holder renews"
    assert not hold_lease(db, "scheduler", "b", 49_000, 30_000)
    assert hold_lease(db, "scheduler", "b", 50_001, 30_000), "an expired lease passes to another process"


def local_ticker(exchange, db_path, tiny_model, clock) -> Ticker:
    source = LiveSource("binance", exchange.url, (), history=300, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
    return Ticker(source, db_path, lambda: load_forecaster(tiny_model), clock=clock, progress=False)


def test_a_standby_scheduler_takes_over_within_a_lease_term_and_one_retry(exchange, db_path, tiny_model):
    clock = FakeClock(exchange.now_ms / 1000)
    active, standby = (Scheduler(local_ticker(exchange, db_path, tiny_model, clock), clock=clock) for _ in range(2))
    active.run_once()
    standby.run_once()
    assert active.holds_lease_now() and not standby.holds_lease_now()
    for _ in range(120):  # the active scheduler renews for two minutes: the standby never takes over
        clock.seconds += 1
        active.run_once()
        standby.run_once()
        assert active.holds_lease_now() and not standby.holds_lease_now()
    died = clock.seconds  # the active one stops renewing, as a process killed with SIGKILL does
    while not standby.holds_lease_now():
        clock.seconds += 1
        standby.run_once()
    assert LEASE_SECONDS / 2 <= clock.seconds - died <= LEASE_SECONDS + STANDBY_SECONDS


def test_a_restart_on_the_same_machine_takes_over_a_dead_process_lease_at_once(exchange, db_path, tiny_model):
    clock = FakeClock(exchange.now_ms / 1000)
    db = open_store(db_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert hold_lease(db, "scheduler", f"{socket.gethostname()}:{dead.pid}:killed", int(clock.seconds * 1000), 30_000)
    restarted = Scheduler(local_ticker(exchange, db_path, tiny_model, clock), clock=clock)
    restarted.run_once()
    assert restarted.holds_lease_now(), "a holder on this machine that no longer runs is replaced at once"

    assert hold_lease(db, "scheduler", "another-machine:1:alive", int(clock.seconds * 1000) + 60_000, 30_000)
    clock.seconds += 60
    standby = Scheduler(local_ticker(exchange, db_path, tiny_model, clock), clock=clock)
    standby.run_once()
    assert not standby.holds_lease_now(), "a holder elsewhere is waited for until its lease runs out"


def test_only_the_scheduling_process_fetches_a_watched_market(exchange, db_path, tiny_model):
    clock = FakeClock(exchange.now_ms / 1000)
    db = open_store(db_path)
    seed_watchlist(db, "ETH/USDT@1m", 50)
    web = local_ticker(exchange, db_path, tiny_model, clock)
    fetches = exchange.requests["/api/v3/klines"]
    orphaned = web.tick("ETH/USDT", "1m")
    assert exchange.requests["/api/v3/klines"] == fetches and NO_SCHEDULER_NOTE in orphaned.note

    worker = Scheduler(local_ticker(exchange, db_path, tiny_model, clock), clock=clock)
    run_pass(worker)
    assert exchange.requests["/api/v3/klines"] > fetches
    fetches = exchange.requests["/api/v3/klines"]
    clock.seconds += 10
    read = web.tick("ETH/USDT", "1m")
    assert exchange.requests["/api/v3/klines"] == fetches, "a web instance reads what the worker stored"
    assert read.newest_ts == exchange.closed_candles("ETH/USDT")["ts"].iloc[-1] and NO_SCHEDULER_NOTE not in (read.note or "")
    assert worker.ticker.tick("ETH/USDT", "1m").newest_ts == read.newest_ts, "the worker's process may tick on demand"
    assert exchange.requests["/api/v3/klines"] > fetches

    fetches = exchange.requests["/api/v3/klines"]
    assert web.tick("BTC/USDT", "1m").newest_ts == exchange.closed_candles("BTC/USDT")["ts"].iloc[-1]
    assert exchange.requests["/api/v3/klines"] > fetches, "a market nobody watches is fetched on demand"


# ----------------------------------------------------------------------------------- the API


@pytest.fixture
def demo_app(tmp_path, tiny_model):
    def make(**values):
        settings = settings_from({"source": "demo", "db": str(tmp_path / "watch.db"), "model": str(tiny_model), **values}, {})
        ticker = build_ticker(settings)
        seed_watchlist(ticker.db(), settings.watch, settings.watch_limit)
        return create_app(settings, ticker, env={}).server.test_client()

    return make


def test_markets_api_lists_adds_and_removes_watched_markets(demo_app):
    client = demo_app(watch="BTC/USDT@1m", watch_limit="2")
    listed = client.get("/api/v1/markets").get_json()
    assert listed["limit"] == 2
    assert [(entry["symbol"], entry["timeframe"], entry["status"]) for entry in listed["markets"]] == [("BTC/USDT", "1m", "waiting")]

    added = client.post("/api/v1/markets", json={"symbol": "eth/usdt", "timeframe": "15m"})
    assert added.status_code == 201
    assert (added.get_json()["symbol"], added.get_json()["timeframe"], added.get_json()["exchange"]) == ("ETH/USDT", "15m", "demo")
    assert client.post("/api/v1/markets", json={"symbol": "ETH/USDT", "timeframe": "15m"}).status_code == 200
    full = client.post("/api/v1/markets", json={"symbol": "SOL/USDT"})
    assert full.status_code == 409 and "full (2 of 2" in full.get_json()["error"]

    ticker = client.application.extensions["chronoprice"].ticker
    assert NO_SCHEDULER_NOTE in ticker.tick("ETH/USDT", "15m").note, "a read does not fetch a watched market"
    run_pass(Scheduler(ticker))
    ticker.wait_for_histories()
    entry = client.get("/api/v1/markets").get_json()["markets"][1]
    assert entry["status"] == "ok" and entry["error"] is None
    assert entry["newest_forecast_origin_ts"] == entry["newest_candle_ts"] and entry["newest_candle_ts"] % (15 * MINUTE_MS) == 0

    assert client.delete("/api/v1/markets?symbol=ETH/USDT&timeframe=15m").status_code == 200
    assert client.delete("/api/v1/markets?symbol=ETH/USDT&timeframe=15m").status_code == 404
    assert [entry["symbol"] for entry in client.get("/api/v1/markets").get_json()["markets"]] == ["BTC/USDT"]


@pytest.mark.parametrize("body, parameter", [
    ("not json", "body"), ([], "body"), ({}, "symbol"), ({"symbol": 5}, "symbol"), ({"symbol": "BTCUSDT"}, "symbol"),
    ({"symbol": "BTC/USDT", "timeframe": "2m"}, "timeframe"), ({"symbol": "BTC/USDT", "timeframe": 5}, "timeframe"),
])
def test_a_bad_market_body_gets_400_naming_the_field(demo_app, body, parameter):
    client = demo_app()
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, str) else {"json": body}
    response = client.post("/api/v1/markets", **kwargs)
    assert response.status_code == 400 and response.get_json()["parameter"] == parameter


def test_adding_a_symbol_the_source_does_not_list_gets_404(demo_app):
    response = demo_app().post("/api/v1/markets", json={"symbol": "DOGE/EUR"})
    assert response.status_code == 404 and "does not list DOGE/EUR" in response.get_json()["error"]


def test_watchlist_writes_need_loopback_or_the_admin_token(demo_app):
    public = demo_app()
    remote = {"environ_base": {"REMOTE_ADDR": "203.0.113.9"}}
    refused = public.post("/api/v1/markets", json={"symbol": "SOL/USDT"}, **remote)
    assert refused.status_code == 403 and "CHRONOPRICE_ADMIN_TOKEN" in refused.get_json()["error"]
    assert public.delete("/api/v1/markets?symbol=BTC/USDT", **remote).status_code == 403
    assert public.get("/api/v1/markets", **remote).status_code == 200, "reads stay public"

    guarded = demo_app(admin_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = guarded.post("/api/v1/markets", json={"symbol": "SOL/USDT"}, headers=headers)
        assert response.status_code == 401 and TOKEN not in response.get_data(as_text=True)
    allowed = guarded.post("/api/v1/markets", json={"symbol": "SOL/USDT"}, headers={"Authorization": f"Bearer {TOKEN}"}, **remote)
    assert allowed.status_code == 201


# ------------------------------------------------------------------------------ the scheduler


def run_pass(scheduler: Scheduler) -> None:
    """One scheduler pass, waiting for the ticks it started."""
    scheduler.run_once()
    scheduler.wait_for_ticks()


@pytest.mark.slow
def test_every_closed_candle_of_every_watched_market_gets_one_forecast_across_an_outage_and_a_restart(exchange, db_path, tiny_model):
    clock = FakeClock(exchange.now_ms / 1000)

    def start():
        source = LiveSource("binance", exchange.url, (), history=300, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
        ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model), clock=clock, progress=False)
        return Scheduler(ticker, clock=clock)

    markets = [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("BTC/USDT", "15m"), ("DOGE/EUR", "5m")]
    db = open_store(db_path)
    seed_watchlist(db, ",".join(f"{symbol}@{timeframe}" for symbol, timeframe in markets), 50)
    scheduler = start()

    def live_minutes(minutes: int) -> None:
        for _ in range(minutes):
            exchange.advance(1)
            clock.seconds += 60
            run_pass(scheduler)

    run_pass(scheduler)
    live_minutes(20)
    scheduler = start()  # a restart: nothing of the old process is kept but the store
    exchange.advance(30)  # an outage: half an hour with no process running
    clock.seconds += 30 * 60
    live_minutes(20)

    newest = exchange.now_ms // MINUTE_MS * MINUTE_MS - MINUTE_MS
    for symbol, timeframe in markets[:3]:
        market = Market("binance", symbol, timeframe)
        forecaster = scheduler.ticker.forecaster(timeframe)
        stored = read_candles(db, market)
        assert find_gaps(stored["ts"].to_numpy(), timeframe_ms(timeframe)).empty
        assert stored["ts"].iloc[-1] == exchange.closed_candles(symbol, timeframe)["ts"].iloc[-1]
        expected = stored["ts"].iloc[forecaster.window - 1:].tolist()
        assert wait_until(lambda: len(forecast_origins(db, market)) >= len(expected)), "cold-start history forecast"
        origins = forecast_origins(db, market)
        assert origins["origin_ts"].tolist() == expected, f"{symbol} {timeframe}: one forecast per closed candle, no gap"
        assert (origins["steps"] == forecaster.horizon).all()
    assert stored["ts"].iloc[-1] == newest // (15 * MINUTE_MS) * (15 * MINUTE_MS) - 15 * MINUTE_MS
    failing = scheduler.ticker.stored_status("DOGE/EUR", "5m")
    assert failing.symbol_unknown and "does not list" in failing.error
