"""What an operator watches, in Prometheus' terms: counters and a latency histogram the always-on
part updates as it works, and their text exposition for GET /metrics.

Under gunicorn every worker is its own process: with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py
sets it before the app is imported) prometheus_client keeps each process's values in files there
and a scrape adds them up, so any worker answers for all. Labels are bounded: timeframes, outcomes
and kinds of error are fixed sets, never a message; a market is a label only for the watched
markets, which the watchlist caps. A gauge adds up over the live processes, or for a market's
guard takes the highest (1 where any process serves the last close).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from chronoprice.market.markets import market_key
from chronoprice.market.source import GeoBlocked, MalformedReply, RateLimited, SourceError
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.status import TickStatus

# The budgets (1m within 2 s of the close, every market within 5 s) fall on bucket edges, and
# between them, where nearly every tick lands (the scheduler waits 2 s for the exchange to publish
# a close), edges a quarter second apart keep a quantile read off the buckets within a few per cent.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 1.5, *(2.0 + 0.25 * step for step in range(13)), 7.5, 10.0, 30.0, 60.0, 300.0)

CLOSE_TO_STORED = Histogram("chronoprice_close_to_stored_seconds", "From a candle's close to its forecast being stored",
                            ["timeframe"], buckets=LATENCY_BUCKETS)
TICKS = Counter("chronoprice_ticks_total", "Ticks of a market by how they ended", ["timeframe", "outcome"])
EXCHANGE_ERRORS = Counter("chronoprice_exchange_errors_total", "Failed exchange fetches by kind", ["kind"])
# event: fired, delivered, retried (a failed attempt to be tried again), failed (given up)
ALERT_EVENTS = Counter("chronoprice_alert_events_total", "Alert firings and webhook delivery attempts", ["event"])
LEASE_HELD = Gauge("chronoprice_scheduler_lease_held", "1 while this process holds the store's scheduler lease",
                   multiprocess_mode="livesum")
SCHEDULED_MARKETS = Gauge("chronoprice_scheduled_markets", "Watched markets this process ticks (0 while it stands by)",
                          multiprocess_mode="livesum")
STREAMING_MARKETS = Gauge("chronoprice_streaming_markets", "Watched markets whose candles come over a live stream now",
                          multiprocess_mode="livesum")
STREAM_RECONNECTS = Counter("chronoprice_stream_reconnects_total", "Candle stream connections lost and made again")
STREAM_REVISIONS = Counter("chronoprice_stream_revisions_total", "Streamed closed candles REST's check found different")
SKILL_GUARDED = Gauge("chronoprice_skill_guarded", "1 while the skill guard serves the last close in the model's place",
                      ["market"], multiprocess_mode="livemax")
# state: open (connections the pool holds), in_use, waiting (requests queued for one)
STORE_POOL = Gauge("chronoprice_store_pool_connections", "PostgreSQL pool connections and waiting requests", ["state"],
                   multiprocess_mode="livesum")
STORE_POOL_WAITS = Counter("chronoprice_store_pool_waits_total", "Requests that had to wait for a pooled connection")
CACHE_LOOKUPS = Counter("chronoprice_cache_lookups_total", "Response and page cache lookups", ["result"])  # hit, miss
LIVE_BOARD_UPDATED = Gauge(
    "chronoprice_live_board_updated_timestamp_seconds",
    "When a stream last put a forming candle on the live board (Unix time; its age: time() minus it)",
    multiprocess_mode="livemax",
)
RETENTION_FOLDED = Counter("chronoprice_retention_folded_steps_total", "Scored forecast steps folded into daily sums")


def tick_outcome(status: TickStatus) -> str:
    """A tick's ending as a bounded label: ok, fetch_failed (stored candles served), unknown_symbol."""
    if status.symbol_unknown:
        return "unknown_symbol"
    return "fetch_failed" if status.error else "ok"


def close_to_stored_seconds(status: TickStatus) -> float | None:
    """Seconds from the close of the candle a tick forecast from to the end of that tick; None when
    the tick stored no forecast of a new candle (nothing new, or an older origin caught up)."""
    if not status.new_candles or status.forecast_origin_ts is None or status.forecast_origin_ts != status.newest_ts:
        return None
    closed_at_ms = status.forecast_origin_ts + timeframe_ms(status.timeframe)
    return max(0.0, (status.finished_at_ms - closed_at_ms) / 1000)


def record_tick(status: TickStatus) -> None:
    TICKS.labels(status.timeframe, tick_outcome(status)).inc()
    latency = close_to_stored_seconds(status)
    if latency is not None:
        CLOSE_TO_STORED.labels(status.timeframe).observe(latency)
    if status.feed is not None and status.skill is not None:  # the scheduler's ticks: watched markets only
        SKILL_GUARDED.labels(market_key(status.symbol, status.timeframe)).set(int(status.guarded))


def record_schedule(holds_lease: bool, scheduled: int, streaming: int, reconnects: int) -> None:
    """After a scheduler pass: whether it holds the lease, how many markets it ticks and streams,
    and the stream's reconnections since the last pass."""
    LEASE_HELD.set(int(holds_lease))
    SCHEDULED_MARKETS.set(scheduled)
    STREAMING_MARKETS.set(streaming)
    if reconnects:
        STREAM_RECONNECTS.inc(reconnects)


def record_stream_revisions(candles: int) -> None:
    STREAM_REVISIONS.inc(candles)


def record_store_pool(db) -> None:
    """The PostgreSQL pool's connections and waits (nothing on SQLite, which pools nothing)."""
    pool = getattr(db, "pool", None)
    if pool is None:
        return
    stats = pool.pop_stats()  # the counts since the last pop: each wait is counted once
    STORE_POOL.labels("open").set(stats.get("pool_size", 0))
    STORE_POOL.labels("in_use").set(stats.get("pool_size", 0) - stats.get("pool_available", 0))
    STORE_POOL.labels("waiting").set(stats.get("requests_waiting", 0))
    STORE_POOL_WAITS.inc(stats.get("requests_queued", 0))


def record_live_board_update() -> None:
    LIVE_BOARD_UPDATED.set_to_current_time()


def record_cache_lookup(hit: bool) -> None:
    CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()


def error_kind(failure: SourceError) -> str:
    """A failed fetch as a bounded label (429, geo-blocked, malformed reply, unreachable)."""
    for kind, error in (("rate_limited", RateLimited), ("geo_blocked", GeoBlocked), ("bad_data", MalformedReply)):
        if isinstance(failure, error):
            return kind
    return "unreachable"


def record_exchange_error(failure: SourceError) -> None:
    EXCHANGE_ERRORS.labels(error_kind(failure)).inc()


def exposition(env=os.environ) -> tuple[bytes, str]:
    """The text a scrape gets and its content type: every process's values under gunicorn."""
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
