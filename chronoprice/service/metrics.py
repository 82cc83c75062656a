"""What an operator watches, in Prometheus' terms: counters and a latency histogram the always-on
part updates as it works, and their text exposition for GET /metrics.

Under gunicorn every worker is its own process: with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py
sets it before the app is imported) prometheus_client keeps each process's values in files there
and a scrape adds them up, so any worker answers for all. Labels are bounded: timeframes, outcomes
and kinds of error are fixed sets, never a market or a message.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from chronoprice.market.source import GeoBlocked, MalformedReply, RateLimited, SourceError
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.status import TickStatus

# The budgets (1m within 2 s of the close, every market within 5 s) fall on bucket edges.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)

CLOSE_TO_STORED = Histogram("chronoprice_close_to_stored_seconds", "From a candle's close to its forecast being stored",
                            ["timeframe"], buckets=LATENCY_BUCKETS)
TICKS = Counter("chronoprice_ticks_total", "Ticks of a market by how they ended", ["timeframe", "outcome"])
EXCHANGE_ERRORS = Counter("chronoprice_exchange_errors_total", "Failed exchange fetches by kind", ["kind"])
# event: fired, delivered, retried (a failed attempt to be tried again), failed (given up)
ALERT_EVENTS = Counter("chronoprice_alert_events_total", "Alert firings and webhook delivery attempts", ["event"])


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
