"""One tick: fetch new closed candles -> store -> forecast from the newest window -> store.

Ticks are deduplicated per market: at most one per refresh interval, never two at once; a
caller that finds a tick running, or one that ran recently, gets the last status at once.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from chronoprice.artifact import ModelUnavailable
from chronoprice.candles import find_gaps
from chronoprice.config import Settings
from chronoprice.evaluation import ADAPTIVE_MIN_ERRORS, ADAPTIVE_WINDOW, live_quantiles, matured_scores
from chronoprice.features import VOLATILITY_WINDOW, candle_rows
from chronoprice.sources import AutoSource, CandleSource, DemoSource, LiveSource, ReplaySource, SourceError, UnknownSymbol
from chronoprice.store import (
    Market,
    claim_tick,
    has_forecast,
    newest_candle_ts,
    open_store,
    read_candles,
    read_matured_forecasts,
    read_tick_status,
    save_tick_status,
    upsert_candles,
    write_forecast,
    write_forecasts,
)


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


REPAIR_CANDLES = 60  # holes this recent are fetched again each tick; older ones stay recorded gaps


class Pipeline:
    """Runs ticks for any symbol against one source, one SQLite file and one (lazily loaded) model.

    Ticks are claimed in the SQLite file, so processes sharing it (gunicorn workers) tick each
    market at most once per refresh interval between them, and share the resulting status.
    """

    def __init__(
        self,
        source: CandleSource,
        db_path,
        load_forecaster: Callable[[], object],
        timeframe: str = "1m",
        timeframe_ms: int = 60_000,
        refresh_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        quiet: bool = False,
    ):
        self.source = source
        self._db_path = db_path
        self._load_forecaster = load_forecaster
        self._forecaster = None
        self._forecaster_error: str | None = None
        self._forecaster_lock = threading.Lock()
        self._timeframe, self._timeframe_ms = timeframe, timeframe_ms
        self._refresh_ms = int(refresh_seconds * 1000)
        self._clock, self._quiet = clock, quiet
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
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

    @property
    def forecaster_error(self) -> str | None:
        return self._forecaster_error

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
        return f"{type(self.source).__name__}:{symbol}:{self._timeframe}"

    def _stored_status(self, symbol: str) -> TickStatus:
        text = read_tick_status(self.db(), self._tick_key(symbol))
        if text:
            return TickStatus(**json.loads(text))
        return TickStatus(self.source.label, None, symbol, note="first update in progress")

    # -------------------------------------------------------------------------- ticks
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
            status = self._run_tick(symbol, history_in_background=True)
            save_tick_status(self.db(), key, json.dumps(dataclasses.asdict(status)))
            return status
        finally:
            lock.release()

    def backfill(self, symbol: str, hours: float) -> TickStatus:
        """Catch up (an empty store gets the source's cold-start history), then forecast from
        every origin of the last `hours` that has no forecast yet, so accuracy is scored at once."""
        status = self._run_tick(symbol, history_in_background=False)
        if status.newest_ts is not None:
            market = self.market(symbol, status.exchange)
            written = self.forecast_history(market, status.newest_ts - int(hours * 3_600_000))
            status = dataclasses.replace(status, note="; ".join(filter(None, [status.note, f"{written} historical forecasts written"])))
        return status

    def _since_for(self, symbol: str, cold_starts: list) -> Callable[[str], int | None]:
        """Catch up from the newest stored candle, or from the first hole among the last
        REPAIR_CANDLES (an exchange may fill minutes late); None (the source's cold-start
        history) if nothing is stored."""

        def since(exchange: str) -> int | None:
            market = self.market(symbol, exchange)
            newest = newest_candle_ts(self.db(), market)
            if newest is None:
                cold_starts.append(exchange)
                return None
            recent = read_candles(self.db(), market, start=newest - REPAIR_CANDLES * self._timeframe_ms)
            gaps = find_gaps(recent["ts"].to_numpy(), self._timeframe_ms)
            if not gaps.empty:
                return int(gaps["after_ts"].iloc[0]) + self._timeframe_ms
            return newest + self._timeframe_ms

        return since

    def _run_tick(self, symbol: str, history_in_background: bool) -> TickStatus:
        started = time.perf_counter()
        error = note = None
        exchange = self.current_exchange()
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
        fetched_at = time.perf_counter()
        market = self.market(symbol, exchange)
        origin, version, forecast_note = self._forecast_newest(market)
        if forecast_note:
            error = "; ".join(filter(None, [error, forecast_note]))
        if new and exchange in cold_starts:
            self._say(f"cold start: stored {new} candles of {exchange} {symbol}")
            if history_in_background:
                oldest = int(fetched.candles["ts"].iloc[0])
                threading.Thread(target=self.forecast_history, args=(market, oldest), daemon=True,
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

    def _say(self, line: str) -> None:
        if not self._quiet:
            print(line, file=sys.stderr, flush=True)

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
            forecast = forecaster.forecast(candle_rows(window)[None], self._adapted_quantiles(market, forecaster))
            write_forecast(self.db(), market, origin, forecast_steps(origin, self._timeframe_ms, forecast), forecaster.version)
        return origin, forecaster.version, None

    def _adapted_quantiles(self, market: Market, forecaster) -> np.ndarray:
        """Interval quantiles adapted to this model's latest matured errors on this market."""
        matured = read_matured_forecasts(self.db(), market, limit=(ADAPTIVE_WINDOW + 1) * forecaster.horizon)
        matured = matured[matured["model_version"] == forecaster.version]
        if len(matured) < ADAPTIVE_MIN_ERRORS:
            return forecaster.calibrated_quantiles
        candles = read_candles(self.db(), market, start=int(matured["origin_ts"].min()) - VOLATILITY_WINDOW * self._timeframe_ms,
                               end=int(matured["origin_ts"].max()))
        scores = matured_scores(matured, candles, self._timeframe_ms)
        by_step = {int(step): group.to_numpy() for step, group in scores.groupby(matured["step"])}
        return live_quantiles(by_step, forecaster.level, forecaster.calibrated_quantiles)

    def forecast_history(self, market: Market, start_ts: int, chunk: int = 200) -> int:
        """Forecast from every gap-free stored origin at or after `start_ts` that lacks one; returns
        the count. Shows a progress bar on the log."""
        forecaster = self.forecaster()
        if forecaster is None:
            return 0
        window = forecaster.window
        candles = read_candles(self.db(), market, start=start_ts - window * self._timeframe_ms)
        ts, rows = candles["ts"].to_numpy(), candle_rows(candles)
        origins = [
            index for index in range(window - 1, len(candles))
            if ts[index] >= start_ts
            and ts[index] - ts[index - window + 1] == (window - 1) * self._timeframe_ms
            and not has_forecast(self.db(), market, int(ts[index]), forecaster.version)
        ]
        bar = tqdm(total=len(origins), desc=f"forecasting {market.symbol} history", unit="origin",
                   file=sys.stderr, disable=self._quiet, mininterval=2.0)
        for start in range(0, len(origins), chunk):
            batch = origins[start : start + chunk]
            forecast = forecaster.forecast(np.stack([rows[index - window + 1 : index + 1] for index in batch]))
            # One transaction a chunk: short, rare write locks leave room for the live ticks.
            steps = [(int(ts[index]), forecast_steps(int(ts[index]), self._timeframe_ms, forecast, row)) for row, index in enumerate(batch)]
            write_forecasts(self.db(), market, steps, forecaster.version)
            bar.update(len(batch))
        bar.close()
        return len(origins)


COLD_START_HOURS = 24


def build_source(settings: Settings, history_hours: float = COLD_START_HOURS) -> CandleSource:
    """The source of the settings; an empty store starts with `history_hours` of candles."""
    history = int(history_hours * 3_600_000 // settings.timeframe_ms)
    if settings.source == "demo":
        return DemoSource(history=history)
    if settings.source == "replay":
        return ReplaySource(settings.replay, settings.replay_speed, timeframe_ms=settings.timeframe_ms)
    live = LiveSource(settings.exchange, settings.exchange_url, settings.fallback_exchanges, settings.timeframe,
                      settings.timeframe_ms, history=history)
    return live if settings.source == "live" else AutoSource(live, DemoSource(history=history))


def build_pipeline(settings: Settings, history_hours: float = COLD_START_HOURS) -> Pipeline:
    from chronoprice.forecast import load_forecaster

    return Pipeline(
        build_source(settings, history_hours),
        settings.db,
        lambda: load_forecaster(settings.model, settings.engine),
        settings.timeframe,
        settings.timeframe_ms,
        settings.refresh_seconds,
    )
