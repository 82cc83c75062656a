"""One tick of one market: fetch new closed candles -> store -> forecast from the newest window
-> store.

Ticks are deduplicated per market: at most one per refresh interval, never two at once, across
threads (a lock per market) and processes sharing the SQLite file (a claim in the store); a
caller that finds a tick running, or one that ran recently, gets the saved status at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from chronoprice.market.candles import find_gaps
from chronoprice.market.source import CandleSource, Market, SourceError, UnknownSymbol
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.features import candle_rows
from chronoprice.model.forecasters import LSTMForecaster
from chronoprice.service.backfill import forecast_history, forecast_rows
from chronoprice.service.models import ModelSlot
from chronoprice.service.scoring import adapted_quantiles
from chronoprice.service.status import TickStatus, status_from_json, status_to_json
from chronoprice.store.claims import claim_tick, read_tick_status, save_tick_status
from chronoprice.store.sqlite import (
    ConnectionPerThread,
    has_forecast,
    newest_candle_ts,
    read_candles,
    upsert_candles,
    write_forecasts,
)

log = logging.getLogger(__name__)
REPAIR_CANDLES = 60  # holes this recent are fetched again each tick; older ones stay recorded gaps


class Ticker:
    """Runs ticks for any symbol against one source, one SQLite file and one (lazily loaded) model."""

    def __init__(
        self,
        source: CandleSource,
        db_path,
        load_forecaster: Callable[[], LSTMForecaster],
        timeframe: str = "1m",
        refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        progress: bool = True,
    ):
        self.source = source
        self.db = ConnectionPerThread(db_path)
        self._model = ModelSlot(load_forecaster)
        self.timeframe, self._step_ms = timeframe, timeframe_ms(timeframe)
        self._refresh_ms = int(refresh_seconds * 1000)
        self._clock, self._progress = clock, progress
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def market(self, symbol: str, exchange: str | None = None) -> Market:
        return Market(exchange or self.source.exchange, symbol, self.timeframe)

    def forecaster(self) -> LSTMForecaster | None:
        """The model's forecaster, loaded on first use; None (see forecaster_error) if unavailable."""
        return self._model.get()

    @property
    def forecaster_error(self) -> str | None:
        return self._model.error

    def symbols(self) -> list[str]:
        """Symbols the source offers, for the symbol picker; empty if it cannot say right now."""
        try:
            return self.source.symbols()
        except SourceError:
            return []

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _lock(self, symbol: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(symbol, threading.Lock())

    def _tick_key(self, symbol: str) -> str:
        return f"{type(self.source).__name__}:{symbol}:{self.timeframe}"

    def _stored_status(self, symbol: str) -> TickStatus:
        saved = status_from_json(read_tick_status(self.db(), self._tick_key(symbol)))
        return saved or TickStatus(self.source.label, None, symbol, note="first update in progress")

    def tick(self, symbol: str, force: bool = False) -> TickStatus:
        """Run a tick for `symbol` unless one is running or ran within the refresh interval
        (in any process sharing the database); otherwise return the stored status at once."""
        lock = self._lock(symbol)
        if not lock.acquire(blocking=False):
            return self._stored_status(symbol)
        try:
            key = self._tick_key(symbol)
            if not claim_tick(self.db(), key, self._now_ms(), 0 if force else self._refresh_ms):
                return self._stored_status(symbol)
            status = self.run_tick(symbol, history_in_background=True)
            save_tick_status(self.db(), key, status_to_json(status))
            return status
        finally:
            lock.release()

    def backfill(self, symbol: str, hours: float) -> TickStatus:
        """Catch up (an empty store gets the source's cold-start history), then forecast from
        every origin of the last `hours` that has no forecast yet, so accuracy is scored at once."""
        status = self.run_tick(symbol, history_in_background=False)
        forecaster = self.forecaster()
        if status.newest_ts is not None and forecaster is not None:
            market = self.market(symbol, status.exchange)
            written = forecast_history(self.db(), market, forecaster, status.newest_ts - int(hours * 3_600_000), self._progress)
            status = dataclasses.replace(status, note="; ".join(filter(None, [status.note, f"{written} historical forecasts written"])))
        return status

    def _since_for(self, symbol: str, cold_starts: list) -> Callable[[str], int | None]:
        """Catch up from the newest stored candle, or from the first hole among the last
        REPAIR_CANDLES (an exchange may fill candles late); None (the source's cold-start
        history) if nothing is stored."""

        def since(exchange: str) -> int | None:
            market = self.market(symbol, exchange)
            newest = newest_candle_ts(self.db(), market)
            if newest is None:
                cold_starts.append(exchange)
                return None
            recent = read_candles(self.db(), market, start=newest - REPAIR_CANDLES * self._step_ms)
            gaps = find_gaps(recent["ts"].to_numpy(), self._step_ms)
            if not gaps.empty:
                return int(gaps["after_ts"].iloc[0]) + self._step_ms
            return newest + self._step_ms

        return since

    def run_tick(self, symbol: str, history_in_background: bool) -> TickStatus:
        """One tick now, unclaimed: fetch, store, forecast the newest origin, and on a cold
        start forecast the fetched history (in a background thread if asked)."""
        started = time.perf_counter()
        error = note = None
        exchange = self.source.exchange
        new, cold_starts = 0, []
        try:
            fetched = self.source.fetch_closed(symbol, self._since_for(symbol, cold_starts))
            exchange, note = fetched.exchange, fetched.note
            new = upsert_candles(self.db(), self.market(symbol, exchange), fetched.candles)
        except UnknownSymbol as failure:
            return TickStatus(self.source.label, exchange, symbol, error=str(failure), symbol_unknown=True,
                              finished_at_ms=self._now_ms())
        except SourceError as failure:
            error = str(failure)
        market = self.market(symbol, exchange)
        if error:
            log.warning("fetch failed: %s", error, extra=market.key())
        fetched_at = time.perf_counter()
        origin, version, forecast_note = self._forecast_newest(market)
        if forecast_note:
            error = "; ".join(filter(None, [error, forecast_note]))
        if new and exchange in cold_starts:
            log.info("cold start: stored %d candles", new, extra=market.key())
            if history_in_background and self.forecaster() is not None:
                oldest = int(fetched.candles["ts"].iloc[0])
                threading.Thread(target=self._forecast_history_in_background, args=(market, oldest), daemon=True,
                                 name="chronoprice-history").start()
        finished = time.perf_counter()
        return TickStatus(
            source=self.source.label,
            exchange=exchange,
            symbol=symbol,
            newest_ts=newest_candle_ts(self.db(), market),
            new_candles=new,
            forecast_origin_ts=origin,
            model_version=version,
            error=error,
            note=note,
            fetch_ms=(fetched_at - started) * 1000,
            forecast_ms=(finished - fetched_at) * 1000,
            total_ms=(finished - started) * 1000,
            finished_at_ms=self._now_ms(),
        )

    def _forecast_history_in_background(self, market: Market, start_ts: int) -> None:
        forecast_history(self.db(), market, self.forecaster(), start_ts, self._progress)

    def _forecast_newest(self, market: Market) -> tuple[int | None, str | None, str | None]:
        """Forecast from the newest stored window unless already done; (origin, version, problem)."""
        forecaster = self.forecaster()
        if forecaster is None:
            return None, None, f"model unavailable: {self.forecaster_error}"
        window = read_candles(self.db(), market, limit=forecaster.window)
        if len(window) < forecaster.window:
            return None, forecaster.version, f"waiting for {forecaster.window} candles to forecast (have {len(window)})"
        if not find_gaps(window["ts"].to_numpy(), self._step_ms).empty:
            return None, forecaster.version, "gap in the last candles: no forecast until it fills"
        origin = int(window["ts"].iloc[-1])
        if not has_forecast(self.db(), market, origin, forecaster.version):
            forecast = forecaster.forecast(candle_rows(window)[None], adapted_quantiles(self.db(), market, forecaster))
            write_forecasts(self.db(), market, forecast_rows([origin], self._step_ms, forecast), forecaster.version)
        return origin, forecaster.version, None
