"""Live when an exchange answers, the offline demo when none does."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from chronoprice.market.demo import DemoSource
from chronoprice.market.live import LiveSource
from chronoprice.market.source import Fetched, SinceFor, SourceError, SourceUnavailable

log = logging.getLogger(__name__)


class AutoSource:
    """Live when an exchange answers; otherwise the offline demo, while live is retried in the background."""

    def __init__(self, live: LiveSource, demo: DemoSource, retry_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._live, self._demo = live, demo
        self._retry_seconds, self._clock = retry_seconds, clock
        self._use_live = True
        self._offline_reason = ""
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()

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
                return self._live.fetch_closed(symbol, timeframe, since_for)
            except SourceUnavailable as error:
                self._use_live, self._offline_reason = False, str(error)
                self._next_probe = self._clock() + self._retry_seconds
                log.warning("live unreachable, serving the offline demo and retrying live every %g s: %s", self._retry_seconds, error)
        self._probe_in_background(symbol)
        fetched = self._demo.fetch_closed(symbol, timeframe, since_for)
        note = f"live unreachable ({self._offline_reason}); showing the offline demo and retrying live"
        return dataclasses.replace(fetched, note=note)

    def _probe_in_background(self, symbol: str) -> None:
        if self._clock() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        self._next_probe = self._clock() + self._retry_seconds
        threading.Thread(target=self._probe, args=(symbol,), daemon=True, name="chronoprice-live-probe").start()

    def _probe(self, symbol: str) -> None:
        try:
            self._live.fetch_closed(symbol, "1m", lambda exchange: None)
            self._use_live = True
            log.info("live answers again: leaving the offline demo for %s", self._live.label)
        except SourceError as error:
            self._offline_reason = str(error)
        finally:
            self._probe_lock.release()
