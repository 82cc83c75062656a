"""One tick of one market (symbol and timeframe): fetch new closed candles -> store -> forecast
from the newest window -> store.

Ticks are deduplicated per market: at most one per refresh interval, never two at once, across
threads (a lock per market) and processes sharing the store (a claim in it); a caller that finds
a tick running, or one that ran recently, gets the saved status at once. A watched market is
fetched only by the process whose scheduler holds the store's lease: web instances beside a
worker read what it stored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
from typing import Callable, Mapping

from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS
from chronoprice.market.candles import find_gaps
from chronoprice.market.source import CandleSource, Market, SourceError, UnknownSymbol
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.features import HORIZON, WINDOW, candle_rows
from chronoprice.model.forecasters import LSTMForecaster, NaiveBandForecaster, load_forecaster
from chronoprice.model.registry import first_live_origin_ts
from chronoprice.service.backfill import forecast_history, forecast_rows
from chronoprice.service.guard import MaturedOrigins, last_close_band, skill_state
from chronoprice.service.live_board import LiveBoard
from chronoprice.service.metrics import record_exchange_error, record_tick
from chronoprice.service.models import ModelShelf, ModelSlot, TimeframeModels, register_started
from chronoprice.service.scoring import adapted_quantiles
from chronoprice.service.status import TickStatus, forming_row, status_from_json, status_to_json
from chronoprice.service.streamed import streamed_fetch
from chronoprice.store import log_failure, store_connections
from chronoprice.store.claims import SCHEDULER_LEASE, claim_tick, lease_holder, read_tick_status, save_tick_status
from chronoprice.store.records import (
    newest_candle_ts,
    newest_forecast_origin_ts,
    read_candles,
    upsert_candles,
    write_forecasts,
)
from chronoprice.store.watchlist import is_watched

log = logging.getLogger(__name__)
REPAIR_CANDLES = 60  # holes this recent are fetched again each tick; older ones stay recorded gaps
CATCH_UP_ORIGINS = 1_440  # origins a tick forecasts after an outage; a day of 1m, a month of 30 min
NO_SCHEDULER_NOTE = "no worker holds the scheduler lease, so this watched market is not updated: start `python -m chronoprice worker`"


class Ticker:
    """Runs ticks for any symbol and timeframe against one source, one SQLite file and one
    (lazily loaded) model; `timeframe` is the one a call that names none gets."""

    def __init__(
        self,
        source: CandleSource,
        db_path,
        load_forecaster: Callable[[], LSTMForecaster],
        timeframe: str = "1m",
        refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        progress: bool = True,
        live: LiveBoard | None = None,
        load_registered: Callable[[str], LSTMForecaster] = load_forecaster,
        timeframe_models: Mapping[str, Callable[[], LSTMForecaster]] | None = None,
        db_pool: int | None = None,
    ):
        self.source = source
        self.live = live or LiveBoard()  # forming candles streamed by the scheduler's process
        self.db = store_connections(db_path, db_pool)
        self._model = ModelSlot(load_forecaster)
        self._configured_registered = False
        self._timeframe_models = TimeframeModels(timeframe_models or {})
        self.models = ModelShelf(self.db, load_registered)
        self.timeframe = timeframe
        self._refresh_ms = int(refresh_seconds * 1000)
        self._clock, self._progress = clock, progress
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._completed: set[tuple[Market, str]] = set()  # markets and models whose recent origins this process has checked
        self.holds_schedule: Callable[[], bool] = lambda: False  # the Scheduler built on this ticker replaces it
        self.required_origins = REQUIRED_ORIGINS  # matured origins the skill guard and a promotion judge, per timeframe
        self._matured_origins = MaturedOrigins()
        # Cold-start histories run one at a time: each already keeps every core busy (the engine's
        # runs side by side), and concurrent ones only multiplied the memory. The pool's thread is
        # not a daemon, so exit waits for them, since ONNX Runtime aborts the process when the
        # interpreter stops a thread inside it.
        self._history_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chronoprice-history")
        self._histories: list[concurrent.futures.Future] = []

    def market(self, symbol: str, exchange: str | None = None, timeframe: str | None = None) -> Market:
        return Market(exchange or self.source.exchange, symbol, timeframe or self.timeframe)

    def forecaster(self, timeframe: str | None = None) -> LSTMForecaster | NaiveBandForecaster | None:
        """The forecaster served on `timeframe`: the registry's champion of it, or with none the
        configured model on the timeframe it was trained on or the model shipped for the timeframe,
        each loaded on first use (None, see model_error, if it is unavailable); on any other, the
        last close with a band, since no model has shown skill there."""
        timeframe = timeframe or self.timeframe
        configured = self._model.get()
        if configured is not None and not self._configured_registered:
            self._configured_registered = self._register(configured)
        shipped = self._timeframe_models.get(timeframe, self._register) if timeframe != self._model.timeframe else None
        champion = self.models.champion(timeframe)
        if champion is not None and (configured is None or champion.version != configured.version):
            return self.models.forecaster(champion)
        if timeframe == self._model.timeframe:
            return configured
        return shipped or self._naive_band(configured.window if configured else None, configured.horizon if configured else None)

    def model_error(self, timeframe: str | None = None) -> str | None:
        """Why the model served on `timeframe` is unavailable, if it is."""
        timeframe = timeframe or self.timeframe
        champion = self.models.champion(timeframe)
        if champion is not None and champion.version in self.models.errors:
            return self.models.errors[champion.version]
        error = self._timeframe_models.error(timeframe) if timeframe != self._model.timeframe else None
        return error or self._model.error

    def _register(self, forecaster: LSTMForecaster) -> bool:
        return register_started(self.db, forecaster, self.now_ms(), self.models)

    def symbols(self) -> list[str]:
        """Symbols the source offers, for the symbol picker; empty if it cannot say right now."""
        try:
            return self.source.symbols()
        except SourceError:
            return []

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _naive_band(window: int | None, horizon: int | None) -> NaiveBandForecaster:
        return NaiveBandForecaster(horizon or HORIZON, window or WINDOW)

    def _lock(self, symbol: str, timeframe: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault((symbol, timeframe), threading.Lock())

    def _tick_key(self, symbol: str, timeframe: str) -> str:
        return f"{type(self.source).__name__}:{symbol}:{timeframe}"

    def stored_market(self, symbol: str, timeframe: str) -> Market:
        """The market with the exchange its last tick was served by (a fail-over may have moved it)."""
        return self.market(symbol, self.stored_status(symbol, timeframe).exchange, timeframe)

    def stored_status(self, symbol: str, timeframe: str | None = None) -> TickStatus:
        """The status the last tick of this market saved, from any process sharing the store."""
        timeframe = timeframe or self.timeframe
        saved = status_from_json(read_tick_status(self.db(), self._tick_key(symbol, timeframe)))
        return saved or TickStatus(self.source.label, None, symbol, timeframe=timeframe, note="first update in progress")

    def tick(self, symbol: str, timeframe: str | None = None, force: bool = False, feed: str | None = None,
             streamed: tuple | None = None) -> TickStatus:
        """Run a tick for the market unless one is running or ran within the refresh interval (any
        time ago with `force`, as the scheduler asks) in any process sharing the database, or the
        market is watched and another process schedules the watchlist; otherwise return the
        stored status at once. `feed` (the scheduler's: streaming or polling) is saved with it;
        `streamed`, the closed candle the stream saw, is stored in place of a fetch where it fits."""
        timeframe = timeframe or self.timeframe
        if not force and not self.holds_schedule() and is_watched(self.db(), symbol, timeframe):
            return self.watched_status(symbol, timeframe)
        lock = self._lock(symbol, timeframe)
        if not lock.acquire(blocking=False):
            return self.stored_status(symbol, timeframe)
        try:
            key = self._tick_key(symbol, timeframe)
            if not claim_tick(self.db(), key, self.now_ms(), 0 if force else self._refresh_ms):
                return self.stored_status(symbol, timeframe)
            status = dataclasses.replace(self.run_tick(symbol, timeframe, True, streamed), feed=feed)
            save_tick_status(self.db(), key, status_to_json(status))
            record_tick(status)
            return status
        finally:
            lock.release()

    def watched_status(self, symbol: str, timeframe: str) -> TickStatus:
        """The stored status of a watched market, saying so when no scheduler is alive to update it."""
        status = self.stored_status(symbol, timeframe)
        if lease_holder(self.db(), SCHEDULER_LEASE, self.now_ms()) is None:
            status = dataclasses.replace(status, note="; ".join(filter(None, [status.note, NO_SCHEDULER_NOTE])))
        return status

    def backfill(self, symbol: str, hours: float, timeframe: str | None = None) -> TickStatus:
        """Catch up (an empty store gets the source's cold-start history), then forecast from
        every origin of the last `hours` that has no forecast yet, so accuracy is scored at once."""
        timeframe = timeframe or self.timeframe
        status = self.run_tick(symbol, timeframe, history_in_background=False)
        forecaster = self.forecaster(timeframe)
        if status.newest_ts is not None and forecaster is not None:
            market = self.market(symbol, status.exchange, timeframe)
            written = forecast_history(self.db(), market, forecaster, status.newest_ts - int(hours * 3_600_000), self._progress)
            status = dataclasses.replace(status, note="; ".join(filter(None, [status.note, f"{written} historical forecasts written"])))
        return status

    def _since_for(self, symbol: str, timeframe: str, cold_starts: list) -> Callable[[str], int | None]:
        """Catch up from the newest stored candle, or from the first hole among the last
        REPAIR_CANDLES (an exchange may fill candles late); None (the source's cold-start
        history) if nothing is stored."""

        step_ms = timeframe_ms(timeframe)

        def since(exchange: str) -> int | None:
            market = self.market(symbol, exchange, timeframe)
            newest = newest_candle_ts(self.db(), market)
            if newest is None:
                cold_starts.append(exchange)
                return None
            recent = read_candles(self.db(), market, start=newest - REPAIR_CANDLES * step_ms)
            gaps = find_gaps(recent["ts"].to_numpy(), step_ms)
            if not gaps.empty:
                return int(gaps["after_ts"].iloc[0]) + step_ms
            return newest + step_ms

        return since

    def run_tick(self, symbol: str, timeframe: str, history_in_background: bool,
                 streamed: tuple | None = None) -> TickStatus:
        """One tick now, unclaimed: fetch (or take the `streamed` closed candle: streamed_fetch),
        store, forecast every origin since the newest forecast (one after a tick a candle ago, all
        of them after an outage), and on a cold start forecast the fetched history (in a
        background thread if asked)."""
        started = time.perf_counter()
        error = note = None
        exchange = self.source.exchange
        new, cold_starts, forming = 0, [], None
        try:
            since = self._since_for(symbol, timeframe, cold_starts)
            fetched = streamed_fetch(streamed, exchange, since) or self.source.fetch_closed(symbol, timeframe, since)
            exchange, note, forming = fetched.exchange, fetched.note, forming_row(fetched.forming)
            new = upsert_candles(self.db(), self.market(symbol, exchange, timeframe), fetched.candles)
        except UnknownSymbol as failure:
            return TickStatus(self.source.label, exchange, symbol, timeframe=timeframe, error=str(failure),
                              symbol_unknown=True, finished_at_ms=self.now_ms())
        except SourceError as failure:
            error = str(failure)
            record_exchange_error(failure)
        market = self.market(symbol, exchange, timeframe)
        if error:
            log.warning("fetch failed: %s", error, extra=market.key())
        fetched_at = time.perf_counter()
        origin, version, forecast_note = self._forecast_newest(market, cold_start=bool(new and exchange in cold_starts))
        if forecast_note:
            error = "; ".join(filter(None, [error, forecast_note]))
        newest = newest_candle_ts(self.db(), market)
        skill = self._skill(market, newest)
        if new and exchange in cold_starts:
            log.info("cold start: stored %d candles", new, extra=market.key())
            if history_in_background and self.forecaster(timeframe) is not None:
                oldest = int(fetched.candles["ts"].iloc[0])
                self._histories.append(self._history_pool.submit(self._forecast_history_in_background, market, oldest))
        finished = time.perf_counter()
        return TickStatus(
            source=self.source.label, exchange=exchange, symbol=symbol, timeframe=timeframe, newest_ts=newest,
            new_candles=new, forecast_origin_ts=origin, model_version=version, error=error, note=note,
            fetch_ms=(fetched_at - started) * 1000, forecast_ms=(finished - fetched_at) * 1000,
            total_ms=(finished - started) * 1000, finished_at_ms=self.now_ms(), forming=forming, skill=skill,
            last_close_band=self._last_close_band(market, origin) if skill and skill["guarded"] else None,
        )

    def _skill(self, market: Market, newest: int | None) -> dict | None:
        """The skill guard's state after this tick, carried on from the last tick's; None where
        the last close is served anyway or nothing is stored yet."""
        forecaster = self.forecaster(market.timeframe)
        if forecaster is None or forecaster.name == NaiveBandForecaster.name or newest is None:
            return None
        needed = self.required_origins[market.timeframe]
        errors = self._matured_origins.newest(self.db(), market, forecaster.version, forecaster.horizon, newest, needed)
        return skill_state(errors, needed, forecaster.horizon, self.stored_status(market.symbol, market.timeframe).guarded)

    def _last_close_band(self, market: Market, origin: int | None) -> dict | None:
        forecaster = self.forecaster(market.timeframe)
        if origin is None:
            return None
        return last_close_band(self.db(), market, forecaster.version, forecaster.horizon, forecaster.level, origin)

    def wait_for_histories(self) -> None:
        """Wait until the cold starts' background history forecasts have finished."""
        while self._histories:
            self._histories.pop(0).result()

    def _forecast_history_in_background(self, market: Market, start_ts: int) -> None:
        forecaster = self.forecaster(market.timeframe)
        try:
            forecast_history(self.db(), market, forecaster, start_ts, self._progress)
        except Exception as error:  # nobody may ever wait for this future: say it here
            self._completed.discard((market, forecaster.version))  # so the next tick forecasts the origins this left out
            log_failure(log, "history forecast", error, extra=market.key())
            raise

    def _forecast_newest(self, market: Market, cold_start: bool) -> tuple[int | None, str | None, str | None]:
        """Forecast every origin the served model and the timeframe's shadows lack (see
        _forecast_missing); a shadow's failure is logged and never stops the tick. Returns
        (newest origin, served version, problem)."""
        forecaster = self.forecaster(market.timeframe)
        if forecaster is None:
            return None, None, f"model unavailable: {self.model_error(market.timeframe)}"
        origin, problem = self._forecast_missing(market, forecaster, cold_start)
        for entry, shadow in self.models.shadows(market.timeframe):
            try:
                self._forecast_missing(market, shadow, cold_start, first_live_origin_ts(entry.details))
            except Exception as error:
                log_failure(log, f"shadow {entry.version} forecast", error, extra=market.key())
        return origin, forecaster.version, problem

    def _forecast_missing(self, market: Market, forecaster, cold_start: bool,
                          first_origin_ts: int = 0) -> tuple[int | None, str | None]:
        """Forecast from every origin since this forecaster's newest, batched, so an outage
        leaves no origin unforecast; on this process's first tick of the market, from every
        origin of the last CATCH_UP_ORIGINS that lacks one, so a history a killed process left
        half done is completed; never before `first_origin_ts`. (A cold start's history is
        forecast in the background.) Returns (newest origin, problem)."""
        step_ms = timeframe_ms(market.timeframe)
        window = read_candles(self.db(), market, limit=forecaster.window)
        if len(window) < forecaster.window:
            return None, f"waiting for {forecaster.window} candles to forecast (have {len(window)})"
        origin = int(window["ts"].iloc[-1])
        previous = newest_forecast_origin_ts(self.db(), market, forecaster.version)
        oldest = origin - CATCH_UP_ORIGINS * step_ms
        checked = (market, forecaster.version)
        if cold_start or (previous is None and checked in self._completed):
            start = origin
        elif checked not in self._completed:
            start = oldest
        else:
            start = max(previous + step_ms, oldest)
        start = max(start, first_origin_ts)
        self._completed.add(checked)
        gap = not find_gaps(window["ts"].to_numpy(), step_ms).empty
        if start < origin:
            forecast_history(self.db(), market, forecaster, start, progress=False,
                             quantiles=adapted_quantiles(self.db(), market, forecaster))
        elif start == origin and not gap:
            # The routine tick, one new origin: its window is read already, so forecast it here.
            forecast = forecaster.forecast(candle_rows(window)[None], adapted_quantiles(self.db(), market, forecaster))
            write_forecasts(self.db(), market, forecast_rows([origin], step_ms, forecast), forecaster.version)
        if gap:
            return None, "gap in the last candles: no forecast until it fills"
        return origin, None
