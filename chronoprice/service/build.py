"""Settings in, working objects out: the candle source and the ticker of the settings."""

from __future__ import annotations

from chronoprice.config import Settings
from chronoprice.market.auto import AutoSource
from chronoprice.market.demo import DemoSource
from chronoprice.market.live import LiveSource
from chronoprice.market.replay import ReplaySource
from chronoprice.market.source import CandleSource
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.tick import Ticker

COLD_START_HOURS = 24


def build_source(settings: Settings, history_hours: float = COLD_START_HOURS) -> CandleSource:
    """The source of the settings; an empty store starts with `history_hours` of candles."""
    step_ms = timeframe_ms(settings.timeframe)
    history = int(history_hours * 3_600_000 // step_ms)
    if settings.source == "demo":
        return DemoSource(history=history)
    if settings.source == "replay":
        return ReplaySource(settings.replay, settings.replay_speed, timeframe_ms=step_ms)
    live = LiveSource(settings.exchange, settings.exchange_url, settings.fallback_exchanges, settings.timeframe,
                      step_ms, history=history)
    return live if settings.source == "live" else AutoSource(live, DemoSource(history=history))


def build_ticker(settings: Settings, history_hours: float = COLD_START_HOURS) -> Ticker:
    return Ticker(
        build_source(settings, history_hours),
        settings.db,
        lambda: load_forecaster(settings.model, settings.engine),
        settings.timeframe,
        settings.refresh_seconds,
    )
