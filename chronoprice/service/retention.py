"""Retention on the scheduler's side: every RETENTION_SECONDS, on a thread of its own (never on
the tick path), each market's scored forecast steps older than the retained span are folded into
daily sums and deleted in small batches (store/retention.py); `python -m chronoprice prune` runs
one pass. The span reaches further back where the skill guard and the promotion rule judge more
matured origins than `retain_days` hold, or the served band adapts to more (ADAPTIVE_WINDOW; 1h:
361 origins, 16 days), so pruning never changes what they decide or the band that is served."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Callable, Iterable, Mapping

from chronoprice.evaluation.metrics import ADAPTIVE_WINDOW
from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.features import HORIZON
from chronoprice.service.metrics import RETENTION_FOLDED
from chronoprice.store import log_failure
from chronoprice.store.records import newest_candle_ts
from chronoprice.store.retention import DAY_MS, fold_scored_steps, stored_markets
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
RETENTION_SECONDS = 600.0  # between passes: a 1m market adds 10 steps a minute, folded 5,000 a batch


@dataclasses.dataclass(frozen=True)
class Pruned:
    markets: int
    steps: int


def retention_cutoff(newest_ts: int, timeframe: str, retain_days: int, required_origins: Mapping[str, int]) -> int:
    """The target candle before which a market's scored steps are folded: `retain_days` before its
    newest candle, or earlier to keep the newest origins the skill guard and the promotion rule
    judge (required_origins) or the live band adapts to (ADAPTIVE_WINDOW and the one before it),
    with twice the horizon for the steps still maturing."""
    judged = max(required_origins.get(timeframe, 0), ADAPTIVE_WINDOW + 1)
    guarded = (judged + 2 * HORIZON) * timeframe_ms(timeframe)
    return int(newest_ts) - max(retain_days * DAY_MS, guarded)


def prune_market(
    db: Database,
    market: Market,
    retain_days: int,
    required_origins: Mapping[str, int],
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Fold the market's scored steps past its retained span, a batch a transaction until none
    are left or `stopping()`; how many were folded."""
    newest = newest_candle_ts(db, market)
    if newest is None:
        return 0
    cutoff = retention_cutoff(newest, market.timeframe, retain_days, required_origins)
    folded = 0
    while not stopping() and (batch := fold_scored_steps(db, market, cutoff)):
        folded += batch
    return folded


def prune_store(
    db: Database,
    retain_days: int,
    required_origins: Mapping[str, int] = REQUIRED_ORIGINS,
    stopping: Callable[[], bool] = lambda: False,
    progress: Callable[[list[Market]], Iterable[Market]] = iter,
) -> Pruned:
    """prune_market on every market with forecasts in the store (`progress` wraps their list, as
    a progress bar does)."""
    markets = stored_markets(db)
    steps = sum(prune_market(db, market, retain_days, required_origins, stopping) for market in progress(markets))
    return Pruned(len(markets), steps)


class Retention:
    """prune_store every RETENTION_SECONDS, the first a pass after start, on its own thread; the
    scheduler asks while it holds the lease (run_if_due), so one process prunes a store."""

    def __init__(self, ticker, retain_days: int, clock: Callable[[], float] = time.time):
        self.ticker, self.retain_days, self._clock = ticker, retain_days, clock
        self._next = clock() + RETENTION_SECONDS
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chronoprice-retention")
        self._running: concurrent.futures.Future | None = None

    def run_if_due(self) -> concurrent.futures.Future | None:
        """Start a pass if one is due and none runs; the pass started."""
        now = self._clock()
        if now < self._next or (self._running is not None and not self._running.done()):
            return None
        self._next = now + RETENTION_SECONDS
        self._running = self._pool.submit(self.prune_once)
        return self._running

    def wait_for_pass(self) -> Pruned | None:
        """Wait for the pass run_if_due last started, and forget it; what it pruned, or None if
        none was started (or it failed)."""
        running, self._running = self._running, None
        return None if running is None else running.result()

    def prune_once(self) -> Pruned | None:
        """One pass, logged; None if it failed (the next pass tries again)."""
        try:
            pruned = prune_store(self.ticker.db(), self.retain_days, self.ticker.required_origins, self._stop.is_set)
        except Exception as error:  # the ticks must go on; what is left is folded next time
            log_failure(log, "retention pass", error)
            return None
        RETENTION_FOLDED.inc(pruned.steps)
        if pruned.steps:
            log.info(
                "retention: folded %d scored forecast steps older than %d days into daily sums (%d markets)",
                pruned.steps,
                self.retain_days,
                pruned.markets,
            )
        return pruned

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
