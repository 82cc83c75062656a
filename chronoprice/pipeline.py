"""One tick: fetch new closed candles -> store -> forecast from the newest window -> store.

Ticks are deduplicated per market: at most one per refresh interval, never two at once; a
caller that finds a tick running, or one that ran recently, gets the last status at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, TextIO

import numpy as np
import pandas as pd

from chronoprice.artifact import ModelUnavailable
from chronoprice.candles import find_gaps
from chronoprice.config import Settings
from chronoprice.sources import AutoSource, CandleSource, DemoSource, LiveSource, ReplaySource, SourceError, UnknownSymbol
from chronoprice.store import Market, has_forecast, newest_candle_ts, open_store, read_candles, upsert_candles, write_forecast


@dataclasses.dataclass(frozen=True)
class TickStatus:
    source: str
    exchange: str | None
    symbol: str
    newest_ts: int | None = None
    new_candles: int = 0
    forecast_origin_ts: int | None = None
    model_version: str | None = None
    error: str | None = None
    note: str | None = None
    symbol_unknown: bool = False
    fetch_ms: float = 0.0
    forecast_ms: float = 0.0
    total_ms: float = 0.0
    finished_at_ms: int = 0

    def summary(self) -> str:
        newest = pd.Timestamp(self.newest_ts, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC") if self.newest_ts else "none"
        parts = [f"{self.source} {self.symbol}: newest candle {newest}, {self.new_candles} new"]
        if self.forecast_origin_ts:
            parts.append(f"forecast by {self.model_version}")
        parts += [text for text in (self.note, f"error: {self.error}" if self.error else None) if text]
        return "; ".join(parts)


def forecast_steps(origin_ts: int, timeframe_ms: int, forecast: dict[str, np.ndarray], row: int = 0) -> pd.DataFrame:
    """One origin's forecast as store rows: step 1..horizon, target_ts, predicted, lower, upper."""
    horizon = forecast["mean"].shape[1]
    steps = np.arange(1, horizon + 1)
    return pd.DataFrame(
        {
            "step": steps,
            "target_ts": origin_ts + steps * timeframe_ms,
            "predicted": forecast["mean"][row],
            "lower": forecast["lower"][row],
            "upper": forecast["upper"][row],
        }
    )


@dataclasses.dataclass
class _MarketState:
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last_run: float = float("-inf")
    status: TickStatus | None = None


class Pipeline:
    """Runs ticks for any symbol against one source, one SQLite file and one (lazily loaded) model."""

    def __init__(
        self,
        source: CandleSource,
        db_path,
        load_forecaster: Callable[[], object],
        timeframe: str = "1m",
        timeframe_ms: int = 60_000,
        refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self._db_path = db_path
        self._load_forecaster = load_forecaster
        self._forecaster = None
        self._forecaster_error: str | None = None
        self._forecaster_lock = threading.Lock()
        self._timeframe, self._timeframe_ms = timeframe, timeframe_ms
        self._refresh, self._clock = refresh_seconds, clock
        self._states: dict[str, _MarketState] = {}
        self._states_lock = threading.Lock()
        self._local = threading.local()

    # ------------------------------------------------------------------------- access
    def db(self):
        """This thread's connection (sqlite3 connections are not shared between threads)."""
        if getattr(self._local, "db", None) is None:
            self._local.db = open_store(self._db_path)
        return self._local.db

    def market(self, symbol: str, exchange: str | None = None) -> Market:
        return Market(exchange or self.current_exchange(), symbol, self._timeframe)

    def current_exchange(self) -> str:
        return getattr(self.source, "exchange", None) or "unknown"

    def forecaster(self):
        """The model's forecaster, loaded on first use; None (with the reason kept) if unavailable."""
        with self._forecaster_lock:
            if self._forecaster is None and self._forecaster_error is None:
                try:
                    self._forecaster = self._load_forecaster()
                except ModelUnavailable as error:
                    self._forecaster_error = str(error)
            return self._forecaster

    def symbols(self) -> list[str]:
        """Symbols the source offers, for the symbol picker; empty if it cannot say right now."""
        try:
            return self.source.symbols()
        except SourceError:
            return []

    def _state(self, symbol: str) -> _MarketState:
        with self._states_lock:
            return self._states.setdefault(symbol, _MarketState())

    # -------------------------------------------------------------------------- ticks
    def tick(self, symbol: str, force: bool = False) -> TickStatus:
        """Run a tick for `symbol` unless one is running or ran within the refresh interval."""
        state = self._state(symbol)
        if not state.lock.acquire(blocking=False):
            return state.status or TickStatus(self.source.label, None, symbol, note="first update in progress")
        try:
            if force or self._clock() - state.last_run >= self._refresh or state.status is None:
                state.status = self._run_tick(symbol)
                state.last_run = self._clock()
            return state.status
        finally:
            state.lock.release()

    def _since_for(self, symbol: str) -> Callable[[str], int | None]:
        def since(exchange: str) -> int | None:
            newest = newest_candle_ts(self.db(), self.market(symbol, exchange))
            return None if newest is None else newest + self._timeframe_ms

        return since

    def _run_tick(self, symbol: str) -> TickStatus:
        started = time.perf_counter()
        error = note = None
        exchange = self.current_exchange()
        new = 0
        try:
            fetched = self.source.fetch_closed(symbol, self._since_for(symbol))
            exchange, note = fetched.exchange, fetched.note
            new = upsert_candles(self.db(), self.market(symbol, exchange), fetched.candles)
        except UnknownSymbol as failure:
            return TickStatus(self.source.label, exchange, symbol, error=str(failure), symbol_unknown=True,
                              finished_at_ms=int(time.time() * 1000))
        except SourceError as failure:
            error = str(failure)
        fetched_at = time.perf_counter()
        market = self.market(symbol, exchange)
        origin, version, forecast_note = self._forecast_newest(market)
        if forecast_note:
            error = "; ".join(filter(None, [error, forecast_note]))
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
            finished_at_ms=int(time.time() * 1000),
        )

    def _forecast_newest(self, market: Market) -> tuple[int | None, str | None, str | None]:
        """Forecast from the newest stored window unless already done; (origin, version, problem)."""
        forecaster = self.forecaster()
        if forecaster is None:
            return None, None, f"model unavailable: {self._forecaster_error}"
        window = read_candles(self.db(), market, limit=forecaster.window)
        if len(window) < forecaster.window:
            return None, forecaster.version, f"waiting for {forecaster.window} candles to forecast (have {len(window)})"
        if not find_gaps(window["ts"].to_numpy(), self._timeframe_ms).empty:
            return None, forecaster.version, "gap in the last candles: no forecast until it fills"
        origin = int(window["ts"].iloc[-1])
        if not has_forecast(self.db(), market, origin, forecaster.version):
            forecast = forecaster.forecast(window["close"].to_numpy())
            write_forecast(self.db(), market, origin, forecast_steps(origin, self._timeframe_ms, forecast), forecaster.version)
        return origin, forecaster.version, None

    # ----------------------------------------------------------------------- backfill
    def backfill(self, symbol: str, hours: float, progress: TextIO | None = None) -> TickStatus:
        """Fetch `hours` of history (or catch up from the newest stored candle), then forecast
        from every origin in it that has no forecast yet, so accuracy can be scored at once."""
        oldest_wanted = int(time.time() * 1000 - hours * 3_600_000) // self._timeframe_ms * self._timeframe_ms

        def since(exchange: str) -> int:
            newest = newest_candle_ts(self.db(), self.market(symbol, exchange))
            return oldest_wanted if newest is None else max(oldest_wanted, newest + self._timeframe_ms)

        status = TickStatus(self.source.label, None, symbol)
        try:
            fetched = self.source.fetch_closed(symbol, since)
        except SourceError as failure:
            return dataclasses.replace(status, error=str(failure))
        market = self.market(symbol, fetched.exchange)
        new = upsert_candles(self.db(), market, fetched.candles)
        if progress:
            print(f"stored {new} candles of {market.exchange} {symbol}", file=progress)
        forecasts = self.forecast_history(market, oldest_wanted, progress)
        return dataclasses.replace(
            status, exchange=market.exchange, new_candles=new, newest_ts=newest_candle_ts(self.db(), market),
            note="; ".join(filter(None, [fetched.note, f"{forecasts} historical forecasts written"])),
            error=None if self.forecaster() else f"model unavailable: {self._forecaster_error}",
        )

    def forecast_history(self, market: Market, start_ts: int, progress: TextIO | None = None, chunk: int = 200) -> int:
        """Forecast from every gap-free stored origin at or after `start_ts` that lacks one; returns the count."""
        forecaster = self.forecaster()
        if forecaster is None:
            return 0
        window = forecaster.window
        candles = read_candles(self.db(), market, start=start_ts - window * self._timeframe_ms)
        ts, closes = candles["ts"].to_numpy(), candles["close"].to_numpy()
        origins = [
            index for index in range(window - 1, len(candles))
            if ts[index] >= start_ts
            and ts[index] - ts[index - window + 1] == (window - 1) * self._timeframe_ms
            and not has_forecast(self.db(), market, int(ts[index]), forecaster.version)
        ]
        from tqdm import tqdm

        bar = tqdm(total=len(origins), desc="forecasting history", unit="origin", file=progress, disable=progress is None)
        for start in range(0, len(origins), chunk):
            batch = origins[start : start + chunk]
            forecast = forecaster.forecast(np.stack([closes[index - window + 1 : index + 1] for index in batch]))
            for row, index in enumerate(batch):
                write_forecast(self.db(), market, int(ts[index]), forecast_steps(int(ts[index]), self._timeframe_ms, forecast, row), forecaster.version)
            bar.update(len(batch))
        bar.close()
        return len(origins)


def build_source(settings: Settings) -> CandleSource:
    if settings.source == "demo":
        return DemoSource()
    if settings.source == "replay":
        return ReplaySource(settings.replay, settings.replay_speed, timeframe_ms=settings.timeframe_ms)
    live = LiveSource(settings.exchange, settings.exchange_url, settings.fallback_exchanges, settings.timeframe, settings.timeframe_ms)
    return live if settings.source == "live" else AutoSource(live, DemoSource())


def build_pipeline(settings: Settings) -> Pipeline:
    from chronoprice.forecast import load_forecaster

    return Pipeline(
        build_source(settings),
        settings.db,
        lambda: load_forecaster(settings.model, settings.engine),
        settings.timeframe,
        settings.timeframe_ms,
        settings.refresh_seconds,
    )
