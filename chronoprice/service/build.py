"""Settings in, working objects out: the candle source, the ticker and the scheduler of the settings."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Mapping

from chronoprice.config import Settings
from chronoprice.market.auto import AutoSource
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.demo import DemoSource
from chronoprice.market.replay import ReplaySource
from chronoprice.market.source import CandleSource
from chronoprice.market.stream import CandleStream, supports_streaming
from chronoprice.market.timeframes import TIMEFRAME_MS, cold_start_candles
from chronoprice.model.artifact import timeframe_siblings
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.alerts import Alerts
from chronoprice.service.live_board import LiveBoard
from chronoprice.service.retention import Retention
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store.shared_cache import open_shared_cache


def build_source(settings: Settings, history_hours: float | None = None) -> CandleSource:
    """The source of the settings; an empty store starts with `history_hours` of candles of
    each timeframe, or by default with timeframes.COLD_START_MS."""
    history = cold_start_candles(history_hours)
    if settings.source == "demo":
        return DemoSource(history=history)
    if settings.source == "replay":
        return ReplaySource(settings.replay, settings.replay_speed, history=history["1m"])
    live = LiveSource(settings.exchange, settings.exchange_url, settings.fallback_exchanges, history=history)
    return live if settings.source == "live" else AutoSource(live, DemoSource(history=history))


def build_ticker(settings: Settings, history_hours: float | None = None, clock: Callable[[], float] = time.time,
                 env: Mapping[str, str] = os.environ) -> Ticker:
    """The ticker of the settings, its live board on the shared cache that `env` names."""
    return Ticker(
        build_source(settings, history_hours),
        settings.db,
        lambda: load_forecaster(settings.model, settings.engine),
        settings.timeframe,
        settings.refresh_seconds,
        clock=clock,
        live=LiveBoard(open_shared_cache(env, "live")),
        load_registered=lambda path: load_forecaster(path, settings.engine),
        timeframe_models={timeframe: functools.partial(load_forecaster, path, settings.engine)
                          for timeframe, path in timeframe_siblings(settings.model, TIMEFRAME_MS).items()},
        # Bars only on a terminal, and never among JSON log lines, which a log shipper reads line by line.
        progress=settings.log_format == "text" and sys.stderr.isatty(),
        db_pool=settings.db_pool,
    )


def build_scheduler(settings: Settings, ticker: Ticker, clock: Callable[[], float] = time.time) -> Scheduler:
    """The scheduler of the store's watchlist, seeded from the settings (it ticks only while
    its process holds the store's scheduler lease, and stands by while another one does), with
    the exchange's candle stream when it has one and streaming is on (under `auto`, it streams
    while the exchange answers and rests while the offline demo serves)."""
    seed_watchlist(ticker.db(), settings.watch, settings.watch_limit)
    scheduler = Scheduler(ticker, clock=clock)
    scheduler.alerts = Alerts(ticker, settings.allow_private_webhooks, clock=clock).start()
    scheduler.retention = Retention(ticker, settings.retain_days, clock=clock)
    # A moved REST endpoint (a proxy, the local exchange) streams only from a WebSocket endpoint moved with it.
    if (settings.stream and settings.source in ("live", "auto") and (settings.exchange_ws_url or not settings.exchange_url)
            and supports_streaming(settings.exchange)):
        scheduler.stream = CandleStream(settings.exchange, settings.exchange_url, settings.exchange_ws_url,
                                        scheduler.candle_closed, ticker.live.publish).start()
    return scheduler


def start_scheduler(settings: Settings, ticker: Ticker) -> Scheduler:
    """build_scheduler, ticking in a background thread."""
    return build_scheduler(settings, ticker).start()
