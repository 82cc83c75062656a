"""Live when an exchange answers, the offline demo when none does."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Callable

from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.demo import DemoSource
from chronoprice.market.source import Fetched, SinceFor, SourceError, SourceUnavailable

log = logging.getLogger(__name__)


FIRST_ANSWER_SECONDS = 3.0  # an offline start shows the demo this soon; live takes over once it answers


class AutoSource:
    """Live when an exchange answers; otherwise the offline demo, while live is retried in the background.

    Until live has answered once, one fetch at a time asks it and waits at most
    `first_answer_seconds` (the others wait for that verdict instead of each failing over on its
    own: a cold start ticks every watched market at once); a later answer still switches to live."""

    def __init__(self, live: LiveSource, demo: DemoSource, retry_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 first_answer_seconds: float = FIRST_ANSWER_SECONDS):
        self._live, self._demo = live, demo
        self._retry_seconds, self._clock = retry_seconds, clock
        self._first_answer_seconds = first_answer_seconds
        self._use_live = True
        self._offline_reason = ""
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()
        self._first_lock = threading.Lock()
        self._answered = threading.Event()

    @property
    def exchange(self) -> str:
        return self._live.exchange if self._use_live else self._demo.exchange

    @property
    def label(self) -> str:
        return self._live.label if self._use_live else self._demo.label

    def symbols(self) -> list[str]:
        return self._live.symbols() if self._use_live else self._demo.symbols()

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched:
        if self._use_live:
            try:
                fetched = self._fetch_live(symbol, timeframe, since_for)
                if fetched is not None:
                    return fetched
            except SourceUnavailable as error:
                self._fail_over(str(error))
        self._probe_in_background(symbol)
        fetched = self._demo.fetch_closed(symbol, timeframe, since_for)
        note = f"live unreachable ({self._offline_reason}); showing the offline demo and retrying live"
        return dataclasses.replace(fetched, note=note)

    def _fetch_live(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched | None:
        """Live's answer; None when, while this waited, another fetch found live unreachable."""
        if self._answered.is_set():
            return self._live.fetch_closed(symbol, timeframe, since_for)
        with self._first_lock:
            if not self._use_live:
                return None
            if self._answered.is_set():
                return self._live.fetch_closed(symbol, timeframe, since_for)
            attempt = concurrent.futures.Future()
            threading.Thread(target=self._first_attempt, args=(attempt, symbol, timeframe, since_for), daemon=True,
                             name="chronoprice-live-first").start()
            try:
                return attempt.result(timeout=self._first_answer_seconds)
            except concurrent.futures.TimeoutError:
                raise SourceUnavailable(f"{self._live.label} did not answer within {self._first_answer_seconds:g} s") from None

    def _first_attempt(self, attempt: concurrent.futures.Future, symbol: str, timeframe: str, since_for: SinceFor) -> None:
        try:
            attempt.set_result(self._live.fetch_closed(symbol, timeframe, since_for))
        except Exception as error:  # whatever it raised reaches the waiting fetch, as it would without the wait
            attempt.set_exception(error)
            return
        if not self._answered.is_set():
            self._answered.set()
            if not self._use_live:  # it answered after the wait: leave the demo now
                self._use_live = True
                log.info("live answered: leaving the offline demo for %s", self._live.label)

    def _fail_over(self, reason: str) -> None:
        if not self._use_live:
            return
        self._use_live, self._offline_reason = False, reason
        self._next_probe = self._clock() + self._retry_seconds
        log.warning("live unreachable, serving the offline demo and retrying live every %g s: %s", self._retry_seconds, reason)

    def _probe_in_background(self, symbol: str) -> None:
        if self._clock() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        self._next_probe = self._clock() + self._retry_seconds
        threading.Thread(target=self._probe, args=(symbol,), daemon=True, name="chronoprice-live-probe").start()

    def _probe(self, symbol: str) -> None:
        try:
            self._live.fetch_closed(symbol, "1m", lambda exchange: None)
            self._answered.set()
            self._use_live = True
            log.info("live answers again: leaving the offline demo for %s", self._live.label)
        except SourceError as error:
            self._offline_reason = str(error)
        finally:
            self._probe_lock.release()
