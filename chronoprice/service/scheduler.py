"""The scheduler: every watched market is ticked a moment after each of its candles closes,
whether or not anyone is looking, with one scheduler per store.

A small loop over the candle boundaries, not a scheduling library: the due times follow each
market's own candle clock and its retries, the watchlist changes at run time, and the lease
that makes one process of many the scheduler lives in the store; APScheduler or schedule would
add a job store and a second clock without removing any of that.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Callable

from chronoprice.market.source import SourceError
from chronoprice.market.stream import CandleStream
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.service.alerts import Alerts
from chronoprice.service.metrics import record_schedule, record_store_pool, record_stream_revisions
from chronoprice.service.promotion import CHECK_SECONDS, check_promotions
from chronoprice.service.retention import Retention
from chronoprice.service.status import TickStatus
from chronoprice.service.streamed import reconcile_market
from chronoprice.service.tick import Ticker
from chronoprice.store import STORE_UNAVAILABLE, log_failure
from chronoprice.store.claims import SCHEDULER_LEASE, hold_lease, lease_holder, release_lease
from chronoprice.store.watchlist import read_watchlist

log = logging.getLogger(__name__)
SETTLE_SECONDS = 2.0  # exchanges publish a closed candle a moment after its boundary
LATE_RETRY_SECONDS = 2.0  # the candle that just closed is not published yet: ask again this soon
LATE_RETRIES = 3
BACKOFF_SECONDS = (5.0, 15.0, 60.0, 300.0)  # a failing market's waits between attempts
STORE_RETRY_SECONDS = 5.0  # a tick the store could not take is retried this often: the market is not to blame
LEASE_SECONDS = 30.0  # a killed scheduler's lease passes to a standby this long after its last renewal
STANDBY_SECONDS = 10.0  # a standby asks for the lease this often: it takes over at most this long after expiry
TICK_THREADS = 4  # markets ticked at once, so a slow one never delays the others
# REST's check of a streamed candle waits this long after its tick: past the moment the exchange's
# REST has the closed candle too (SETTLE_SECONDS) and past the close's burst of ticks.
CHECK_DELAY_SECONDS = 5.0
METRICS_SECONDS = 1.0  # how often a pass sets the schedule and pool gauges (Prometheus scrapes every 15 s or so)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def next_close_seconds(now: float, length_ms: int) -> float:
    """When the candle forming at `now` (epoch seconds) closes."""
    return (int(now * 1000) // length_ms + 1) * length_ms / 1000


def newest_closed_ts(now: float, length_ms: int) -> int:
    """Open time of the newest candle closed by `now`."""
    return (int(now * 1000) // length_ms - 1) * length_ms


@dataclasses.dataclass
class _Due:
    at: float
    failures: int = 0
    late: int = 0


def next_due(status: TickStatus, due: _Due, now: float, length_ms: int) -> _Due:
    """When to tick a market again after a tick at `now` that ended in `status`: at the next
    close once the newest closed candle is stored; soon if the exchange has not published it
    yet; with growing backoff while the market fails."""
    current = (status.newest_ts or 0) >= newest_closed_ts(now, length_ms)
    if status.symbol_unknown or (status.error and not current):
        wait = BACKOFF_SECONDS[min(due.failures, len(BACKOFF_SECONDS) - 1)]
        return _Due(now + wait, due.failures + 1)
    if not current and due.late < LATE_RETRIES:
        return _Due(now + LATE_RETRY_SECONDS, 0, due.late + 1)
    return _Due(next_close_seconds(now, length_ms) + SETTLE_SECONDS)


class Scheduler:
    """Ticks the store's watchlist on candle close while this process holds the scheduler lease,
    and stands by while another process holds it. Its ticker then fetches watched markets only
    through it (Ticker.tick)."""

    def __init__(self, ticker: Ticker, clock: Callable[[], float] = time.time, threads: int = TICK_THREADS):
        self.ticker, self._clock = ticker, clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._due: dict[tuple[str, str], _Due] = {}
        self._running: dict[tuple[str, str], concurrent.futures.Future] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="chronoprice-tick")
        # REST's checks of streamed candles queue here, behind no tick and ahead of none.
        self._reconciler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chronoprice-reconcile")
        self._streamed: dict[tuple[str, str], tuple] = {}  # the final candle the stream saw, until its tick
        self._last_check: concurrent.futures.Future | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a pass is due before its wait ends: stop, or a streamed candle closed
        self.stream: CandleStream | None = None  # build_scheduler attaches one when the exchange streams candles
        self.alerts: Alerts | None = None  # and the alert rules' evaluation and delivery
        self.retention: Retention | None = None  # and the folding of old scored forecasts
        self._closed_while_ticking: set[tuple[str, str]] = set()
        self._lease_until = self._next_lease_call = self._next_promotion_check = 0.0
        self._role: str | None = None
        self._reconnects_seen = 0
        self._next_metrics = 0.0
        ticker.holds_schedule = self.holds_lease_now
        self._thread: threading.Thread | None = None
        self.started_last_pass: list[tuple[str, str]] = []

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self.run, daemon=True, name="chronoprice-scheduler")
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Make the loop end after its current pass (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """End the loop, wait for running ticks, and hand the lease on at once."""
        self.request_stop()
        if self.stream:
            self.stream.stop()
        if self.alerts:
            self.alerts.stop()
        if self.retention:
            self.retention.stop()
        if self._thread:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reconciler.shutdown(wait=True, cancel_futures=True)
        self._lease_until = 0.0
        release_lease(self.ticker.db(), SCHEDULER_LEASE, self.owner)

    def run(self) -> None:
        log.info("scheduler %s started", self.owner)
        while not self._stop.is_set():
            try:
                wait = self.run_once()
            except Exception as error:  # the loop must outlive a restarting database or a bug in one market
                log_failure(log, "scheduler pass", error)
                wait = BACKOFF_SECONDS[0]
            self._wake.wait(wait)
            self._wake.clear()

    def holds_lease(self) -> bool:
        """Take or renew the store's scheduler lease when it is due, by this scheduler's clock:
        the holder renews it halfway through its term, a standby asks every STANDBY_SECONDS."""
        now = self._clock()
        if now >= self._next_lease_call:
            held = hold_lease(self.ticker.db(), SCHEDULER_LEASE, self.owner, int(now * 1000), int(LEASE_SECONDS * 1000))
            if not held and self._release_dead_holder(int(now * 1000)):
                held = hold_lease(self.ticker.db(), SCHEDULER_LEASE, self.owner, int(now * 1000), int(LEASE_SECONDS * 1000))
            self._lease_until = now + LEASE_SECONDS if held else 0.0
            self._next_lease_call = now + (LEASE_SECONDS / 2 if held else STANDBY_SECONDS)
            role = "active" if held else "standby"
            if role != self._role:
                log.info("scheduler %s %s", self.owner, "holds the lease: ticking the watchlist" if held
                         else "stands by: another process ticks the watchlist")
                self._role = role
        return self.holds_lease_now()

    def _release_dead_holder(self, now_ms: int) -> bool:
        """Free the lease of a holder on this machine whose process is gone (a restart after a
        crash or SIGKILL), so the new process schedules at once instead of after the lease's
        term. Holders elsewhere are waited for: their liveness cannot be seen from here."""
        holder = lease_holder(self.ticker.db(), SCHEDULER_LEASE, now_ms)
        host, _, pid = (holder or "").partition(":")
        pid = pid.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or process_alive(int(pid)):
            return False
        log.info("scheduler %s: the lease's holder %s is no longer running; taking over", self.owner, holder)
        release_lease(self.ticker.db(), SCHEDULER_LEASE, holder)
        return True

    def holds_lease_now(self) -> bool:
        """Whether this scheduler held the lease at its last call and the term has not run out."""
        return self._lease_until > self._clock()

    def run_once(self) -> float:
        """Start the ticks that are due; seconds until the loop should look again."""
        wait = self._pass()
        if time.monotonic() >= self._next_metrics:  # a pass may come 20 times a second; a scrape needs ~1
            self._next_metrics = time.monotonic() + METRICS_SECONDS
            self._record_metrics()
        return wait

    def _record_metrics(self) -> None:
        reconnects = self.stream.reconnects if self.stream else 0
        scheduled = list(self._due) if self.holds_lease_now() else []
        streaming = sum(self.feed(market) == "streaming" for market in scheduled)
        record_schedule(self.holds_lease_now(), len(scheduled), streaming, reconnects - self._reconnects_seen)
        self._reconnects_seen = reconnects
        try:
            record_store_pool(self.ticker.db())
        except STORE_UNAVAILABLE:  # the pass itself says so; the pool is counted on the next one
            pass

    def _pass(self) -> float:
        if not self.holds_lease():
            if self.stream:
                self.stream.watch([])
            return 1.0
        now = self._clock()
        watched = read_watchlist(self.ticker.db())
        if self.stream:
            # Under --source auto the offline demo may be serving: no socket to a dead exchange then.
            self.stream.watch(watched if self.ticker.source.exchange == self.stream.exchange_id else [])
        for market in list(self._due):
            if market not in watched:
                del self._due[market]
                self._streamed.pop(market, None)
        self.started_last_pass = []
        for market in watched:
            due = self._due.setdefault(market, _Due(now))
            running = self._running.get(market)
            if due.at <= now and (running is None or running.done()):
                self._due[market] = dataclasses.replace(due, at=math.inf)  # until the tick says when next
                self._running[market] = self._pool.submit(self._tick, market, due)
                self.started_last_pass.append(market)
        if now >= self._next_promotion_check:
            self._next_promotion_check = now + CHECK_SECONDS
            self.check_promotions(watched)
        if self.retention:
            self.retention.run_if_due()
        pending = [due.at for due in self._due.values()] or [now + 1.0]
        return min(1.0, max(0.05, min(pending) - self._clock()))  # at least once a second: the watchlist may change

    def check_promotions(self, watched: list[tuple[str, str]]) -> None:
        """Apply the promotion rule to the watched markets' shadows (service/promotion.py); a
        failure is logged and the next check tries again."""
        try:
            markets = [self.ticker.stored_market(symbol, timeframe) for symbol, timeframe in watched]
            if check_promotions(self.ticker.db(), markets, self.ticker.required_origins, int(self._clock() * 1000)):
                self.ticker.models.refresh()
        except Exception as error:  # the watchlist's ticks must go on
            log_failure(log, "promotion check", error)

    def candle_closed(self, symbol: str, timeframe: str, final: tuple | None = None) -> None:
        """The stream saw the market's candle close: tick it now rather than at its due time,
        with the `final` candle the stream saw, if any (called from the stream's thread)."""
        market = (symbol, timeframe)
        due = self._due.get(market)
        if due is None:
            return
        if final is not None:
            self._streamed[market] = final
        if due.at == math.inf:  # its tick is running: tick again once it ends
            self._closed_while_ticking.add(market)
            return
        self._due[market] = dataclasses.replace(due, at=min(due.at, self._clock()), late=0)
        self._wake.set()

    def feed(self, market: tuple[str, str]) -> str:
        """How the market's candles come now: "streaming" over the WebSocket, else "polling"."""
        return "streaming" if self.stream and self.stream.streaming(*market) else "polling"

    def wait_for_checks(self) -> None:
        """Wait for REST's checks of streamed candles asked so far (they run one after another)."""
        if self._last_check is not None:
            self._last_check.result()

    def wait_for_ticks(self) -> dict[tuple[str, str], float]:
        """Wait for the ticks the last pass started; when each finished (time.perf_counter)."""
        return {market: self._running[market].result() for market in self.started_last_pass}

    def _tick(self, market: tuple[str, str], due: _Due) -> float:
        symbol, timeframe = market
        length_ms = timeframe_ms(timeframe)
        streamed = self._streamed.pop(market, None)
        if streamed is not None and (self.stream is None or self.stream.exchange_id != self.ticker.source.exchange):
            streamed = None  # failed over: the stream's exchange is not the one ticked
        try:
            status = self.ticker.tick(symbol, timeframe, force=True, feed=self.feed(market), streamed=streamed)
        except STORE_UNAVAILABLE as error:
            # No backoff: a database restart must not leave every market minutes late once it is back.
            log_failure(log, f"tick of {symbol} {timeframe}", error)
            if market in self._due:
                self._due[market] = dataclasses.replace(due, at=self._clock() + STORE_RETRY_SECONDS)
            return time.perf_counter()
        except Exception as error:  # a bug in one market must not stop the others
            log_failure(log, f"tick of {symbol} {timeframe}", error)
            status = TickStatus(self.ticker.source.label, None, symbol, timeframe, error=f"{type(error).__name__}: {error}")
        if status.error:
            log.warning("%s %s: %s", symbol, timeframe, status.error)
        if streamed is not None:  # REST checks what the stream gave (a candle not taken was fetched: checked twice)
            self._last_check = self._reconciler.submit(self._reconcile, market, time.monotonic() + CHECK_DELAY_SECONDS)
        if self.alerts:
            try:
                self.alerts.after_tick(status)
            except Exception as error:  # the tick is done: alerts failing must not make the market late
                log_failure(log, f"alerts of {symbol} {timeframe}", error)
        if market in self._due:
            self._due[market] = next_due(status, due, self._clock(), length_ms)
            if market in self._closed_while_ticking:
                self._closed_while_ticking.discard(market)
                self.candle_closed(symbol, timeframe)
        return time.perf_counter()

    def _reconcile(self, market: tuple[str, str], not_before: float) -> None:
        """REST's check of the candles the stream gave (service/streamed.py), off the ticks' threads,
        from `not_before` (time.monotonic) on."""
        symbol, timeframe = market
        if self._stop.wait(max(0.0, not_before - time.monotonic())):
            return
        try:
            market_stored = self.ticker.stored_market(symbol, timeframe)
            revised = reconcile_market(self.ticker.db(), self.ticker.source, market_stored)
        except SourceError as error:
            log.warning("%s %s: REST could not check the streamed candle (%s); the next close checks it again",
                        symbol, timeframe, error)
        except Exception as error:  # the next close checks the last few candles again
            log_failure(log, f"check of {symbol} {timeframe}", error)
        else:
            if revised:
                record_stream_revisions(revised)
                log.info("%s %s: REST revised %d candle(s) the stream gave", symbol, timeframe, revised)

    def run_forever(self) -> None:
        """Run in this thread until interrupted (the worker command)."""
        try:
            self.run()
        finally:
            self.stop()
