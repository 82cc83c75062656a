"""The operator's metrics: what a tick, a failed fetch and an alert add, with bounded labels."""

import json
import re
import time

import pytest
from prometheus_client import REGISTRY

from chronoprice.config import PROJECT_ROOT
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.source import GeoBlocked, MalformedReply, RateLimited, SourceUnavailable
from chronoprice.market.stream import Forming
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.live_board import LiveBoard
from chronoprice.service.metrics import close_to_stored_seconds, error_kind, record_store_pool, tick_outcome
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.status import TickStatus
from chronoprice.service.tick import Ticker
from chronoprice.store import open_store
from chronoprice.store.claims import SCHEDULER_LEASE, hold_lease
from chronoprice.store.shared_cache import open_shared_cache
from chronoprice.store.watchlist import replace_watchlist
from chronoprice.testing.exchange import Fault
from chronoprice.testing.harness import FakeClock
from tests.helpers import MINUTE_MS


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_close_to_stored_counts_from_the_close_of_the_candle_forecast_from():
    fresh = TickStatus("live", "binance", "BTC/USDT", "15m", newest_ts=15 * MINUTE_MS, new_candles=1,
                       forecast_origin_ts=15 * MINUTE_MS, finished_at_ms=30 * MINUTE_MS + 1_500)
    assert close_to_stored_seconds(fresh) == 1.5, "the 15m candle opened at 0:15 closed at 0:30"
    assert close_to_stored_seconds(TickStatus("live", "binance", "BTC/USDT", new_candles=0)) is None
    caught_up = TickStatus("live", "binance", "BTC/USDT", newest_ts=5 * MINUTE_MS, new_candles=3,
                           forecast_origin_ts=4 * MINUTE_MS, finished_at_ms=6 * MINUTE_MS)
    assert close_to_stored_seconds(caught_up) is None, "no forecast of the newest candle: nothing to time"
    assert tick_outcome(fresh) == "ok" and tick_outcome(TickStatus("live", None, "X/Y", symbol_unknown=True)) == "unknown_symbol"
    assert tick_outcome(TickStatus("live", "binance", "BTC/USDT", error="timeout")) == "fetch_failed"


def test_every_failed_fetch_is_one_of_four_kinds():
    kinds = [error_kind(error("x")) for error in (RateLimited, GeoBlocked, MalformedReply, SourceUnavailable)]
    assert kinds == ["rate_limited", "geo_blocked", "bad_data", "unreachable"]


def test_a_tick_counts_itself_its_latency_and_its_exchange_errors(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=120, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
    clock = FakeClock(exchange.now_ms / 1000)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock,
                    progress=False)
    ticks, latencies = sample("chronoprice_ticks_total", timeframe="1m", outcome="ok"), sample(
        "chronoprice_close_to_stored_seconds_count", timeframe="1m")
    seconds = sample("chronoprice_close_to_stored_seconds_sum", timeframe="1m")
    status = ticker.tick("BTC/USDT")
    assert status.error is None
    assert sample("chronoprice_ticks_total", timeframe="1m", outcome="ok") == ticks + 1
    assert sample("chronoprice_close_to_stored_seconds_count", timeframe="1m") == latencies + 1
    expected = (exchange.now_ms - (status.forecast_origin_ts + MINUTE_MS)) / 1000
    assert sample("chronoprice_close_to_stored_seconds_sum", timeframe="1m") - seconds == pytest.approx(expected)
    failures = sample("chronoprice_exchange_errors_total", kind="unreachable")
    exchange.queue(Fault(status=500, times=5))
    clock.seconds += 10
    assert ticker.tick("BTC/USDT").error
    assert sample("chronoprice_exchange_errors_total", kind="unreachable") == failures + 1
    assert sample("chronoprice_ticks_total", timeframe="1m", outcome="fetch_failed") >= 1
    ticker.wait_for_histories()


def test_a_scheduler_pass_counts_its_lease_its_markets_and_each_watched_markets_guard(exchange, db_path, tiny_model):
    source = LiveSource("binance", exchange.url, (), history=120, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
    clock = FakeClock(exchange.now_ms / 1000)
    ticker = Ticker(source, db_path, lambda: load_forecaster(tiny_model, "litert"), refresh_seconds=10, clock=clock,
                    progress=False)
    replace_watchlist(ticker.db(), [("BTC/USDT", "1m"), ("ETH/USDT", "1m")], "test")
    scheduler = Scheduler(ticker, clock=clock)
    scheduler.run_once()
    scheduler.wait_for_ticks()
    scheduler.run_once()
    assert sample("chronoprice_scheduler_lease_held") == 1 and sample("chronoprice_scheduled_markets") == 2
    assert sample("chronoprice_streaming_markets") == 0, "no stream attached: both polled"
    guard = REGISTRY.get_sample_value("chronoprice_skill_guarded", {"market": "BTC/USDT@1m"})
    assert guard == 0, "a watched market's guard, off"
    ticker.tick("SOL/USDT")
    assert REGISTRY.get_sample_value("chronoprice_skill_guarded", {"market": "SOL/USDT@1m"}) is None, (
        "a market ticked on demand gets no label: labels stay bounded by the watchlist")
    scheduler.stop()
    standby = Scheduler(ticker, clock=clock)
    hold_lease(ticker.db(), SCHEDULER_LEASE, "someone-else:1:x", ticker.now_ms(), 60_000)
    standby.run_once()
    assert sample("chronoprice_scheduler_lease_held") == 0 and sample("chronoprice_scheduled_markets") == 0
    ticker.wait_for_histories()


def test_the_postgresql_pool_is_counted_and_sqlite_adds_nothing(postgres_url, db):
    db_before = sample("chronoprice_store_pool_connections", state="open")
    record_store_pool(db)
    assert sample("chronoprice_store_pool_connections", state="open") == db_before, "SQLite pools nothing"
    store = open_store(postgres_url)
    with store.conn:  # one connection held while the pool is counted
        record_store_pool(store)
        assert sample("chronoprice_store_pool_connections", state="in_use") == 1
    assert sample("chronoprice_store_pool_connections", state="open") >= 1
    store.close()


def test_the_live_board_age_counts_from_the_last_forming_candle_it_took():
    candle = Forming((1_735_689_600_000, 100.0, 101.0, 99.5, 100.5, 3.0), 1_735_689_630_000)
    before = time.time()
    LiveBoard().publish("BTC/USDT", "1m", candle)
    updated = sample("chronoprice_live_board_updated_timestamp_seconds")
    assert before <= updated <= time.time()
    gone = LiveBoard(open_shared_cache({"CACHE_REDIS_URL": "redis://127.0.0.1:1/0"}, "live"))
    gone.publish("BTC/USDT", "1m", candle)
    assert sample("chronoprice_live_board_updated_timestamp_seconds") == updated, (
        "a candle the shared cache refused leaves the board as old as it is")


def test_the_grafana_dashboard_reads_only_metrics_the_service_exports():
    dashboard = json.loads((PROJECT_ROOT / "docs" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", name) for expr in expressions
            for name in re.findall(r"chronoprice_[a-z_]+", expr)}
    exported = {family.name for family in REGISTRY.collect() if family.name.startswith("chronoprice_")}
    assert used and used <= exported, f"not exported: {used - exported}"
    latency = next(panel for panel in dashboard["panels"] if "p95" in panel["title"])
    assert [step["value"] for step in latency["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 2, 5], (
        "the budgets: a 1m close in 2 s, every market in 5 s")
