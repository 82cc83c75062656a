"""The watchlist benchmark: N watched markets of mixed timeframes on the local exchange, ticked by
the scheduler through simulated candle closes, in a process of its own with the exchange in
another (so its memory is the scheduler's alone, not the bench's or the exchange's): from each
close to its forecast stored, the track record's completeness, resident memory, and the
overview's server-side time. Alert rules on those markets (five a market by default) are
evaluated after every tick, as the app's scheduler does, and their webhooks are called on a
local receiver: from each firing, stored at the end of the tick that fired it, to its webhook
receiving it.

Run by `python -m chronoprice bench` (`--watch-markets`, `--alert-rules`); `python -m
chronoprice.bench.watchlist MODEL N MINUTES RULES` prints the same JSON alone.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.demo import demo_candles
from chronoprice.market.markets import market_key
from chronoprice.market.source import Market
from chronoprice.market.stream import CandleStream
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.alert_rules import new_rule
from chronoprice.service.alerts import Alerts
from chronoprice.service.overview import summarise_watchlist
from chronoprice.service.scheduler import SETTLE_SECONDS, Scheduler
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store.alerts import add_rule, read_firings
from chronoprice.store.records import forecast_origins_since, read_candles
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import FakeClock, WebhookReceiver
from chronoprice.testing.stream import BinanceStreamSimulator
from chronoprice.web.api.health import resident_mb
from chronoprice.web.dashboard.overview import overview_row

START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC
HISTORY_DAYS = 31  # a month of 1-minute candles, so a 1h market's cold start is whole
OTHER_TIMEFRAMES = ("5m", "15m", "1h")
STREAM_PUSH_SECONDS = 0.25  # how often the local stream sends each forming candle (Binance: about every 2 s)
# The rules each market gets in turn: bands left at 80 % and 90 % (about one close in five and in
# ten) and closes crossing levels just above and below the price, so that many fire; no cooldown.
RULE_BODIES = (
    {"type": "band_exit", "step": 1, "level": 0.8, "format": "generic"},
    {"type": "band_exit", "step": 1, "level": 0.9, "format": "slack"},
    {"type": "band_exit", "step": 3, "level": 0.8, "format": "discord"},
    {"type": "price_cross", "offset": 0.0005, "format": "generic"},
    {"type": "price_cross", "offset": -0.0005, "format": "slack"},
)


def watched_markets(count: int) -> list[tuple[str, str]]:
    """Half on 1m (the model), half on 5m, 15m and 1h in turn (the last close), over count // 2 symbols."""
    symbols = [f"S{number}/USDT" for number in range((count + 1) // 2)]
    markets = [(symbol, "1m") for symbol in symbols]
    markets += [(symbol, OTHER_TIMEFRAMES[number % 3]) for number, symbol in enumerate(symbols)]
    return markets[:count]


def _serve_exchange(symbols: list[str], end_ms: int, now_ms: int, commands: Connection, stream: bool) -> None:
    """The local exchange in a child process (with its kline WebSocket stream if asked): sends
    its URLs (REST, WebSocket or None), then advances its clock by each number of minutes
    received, until None."""
    with contextlib.ExitStack() as stack:
        series = {symbol: demo_candles(symbol, START_MS, end_ms) for symbol in symbols}
        exchange = stack.enter_context(BinanceSimulator(series, now_ms=now_ms))
        ws_url = stack.enter_context(BinanceStreamSimulator(exchange, STREAM_PUSH_SECONDS)).url if stream else None
        commands.send((exchange.url, ws_url))
        while (minutes := commands.recv()) is not None:
            exchange.advance(minutes)
            commands.send(exchange.now_ms)


@contextlib.contextmanager
def exchange_process(symbols: list[str], end_ms: int, now_ms: int,
                     stream: bool = False) -> Iterator[tuple[str, Callable[[int], None], str | None]]:
    """(REST URL, advance, WebSocket URL or None) of the local exchange serving `symbols` from a
    process of its own, streaming their candles if asked."""
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_serve_exchange, args=(symbols, end_ms, now_ms, theirs, stream), daemon=True)
    child.start()
    try:
        if not ours.poll(120):
            raise RuntimeError("the local exchange did not start")

        def advance(minutes: int) -> None:
            ours.send(minutes)
            ours.recv()

        url, ws_url = ours.recv()
        yield url, advance, ws_url
    finally:
        ours.send(None)
        child.join(timeout=10)


def cold_started_scheduler(url: str, store: Path | str, model_path: Path, markets: list[tuple[str, str]],
                           clock: Callable[[], float], history: int | None = None) -> Scheduler:
    """The scheduler of `markets` on the local exchange at `url`, their cold start done and its
    history forecast (`history` candles each, or the default cold start)."""
    ticker = Ticker(LiveSource("binance", url, (), history=history), store, lambda: load_forecaster(model_path),
                    clock=clock, progress=False)
    seed_watchlist(ticker.db(), ",".join(market_key(*market) for market in markets), len(markets))
    scheduler = Scheduler(ticker, clock=clock)
    scheduler.run_once()
    scheduler.wait_for_ticks()
    ticker.wait_for_histories()
    return scheduler


class TickTimes:
    """Where the scheduler hands each finished tick to the alerts (Scheduler.alerts): when
    (time.perf_counter) each market's forecast from an origin was stored."""

    def __init__(self):
        self._stored: dict[tuple[str, str, int], float] = {}
        self._changed = threading.Condition()

    def after_tick(self, status) -> None:
        if status.forecast_origin_ts is not None:
            with self._changed:
                key = (status.symbol, status.timeframe, status.forecast_origin_ts)
                self._stored.setdefault(key, time.perf_counter())
                self._changed.notify_all()

    def wait_for(self, markets: list[tuple[str, str]], origin_ts: int,
                 timeout: float = 600) -> dict[tuple[str, str], float]:
        """When each market's forecast from `origin_ts` was stored, once all are."""
        keys = {market: (*market, origin_ts) for market in markets}
        with self._changed:
            if not self._changed.wait_for(lambda: all(key in self._stored for key in keys.values()), timeout):
                raise RuntimeError(f"no forecast from the close for some of {len(markets)} markets in {timeout:.0f} s")
            return {market: self._stored[key] for market, key in keys.items()}

    def stop(self) -> None:
        """Scheduler.stop stops its alerts; timing holds nothing to stop."""


def start_streaming(scheduler, url: str, ws_url: str, markets: list[tuple[str, str]]) -> None:
    """The scheduler with the local exchange's candle stream, in its own thread as in the
    worker, its finished ticks timed (TickTimes), once every market streams and the first
    events' catch-up ticks are done."""
    scheduler.alerts = TickTimes()
    scheduler.stream = CandleStream("binance", url, ws_url, scheduler.candle_closed,
                                    scheduler.ticker.live.publish).start()
    scheduler.start()
    deadline = time.monotonic() + 120
    while not all(scheduler.stream.streaming(*market) for market in markets):
        if time.monotonic() > deadline:
            raise RuntimeError("the local exchange's stream did not start")
        time.sleep(0.05)
    time.sleep(2.0)  # each market's first event on the connection ticks it over REST: let those end


def add_alert_rules(ticker: Ticker, markets: list[tuple[str, str]], count: int, webhook: str) -> None:
    """`count` rules over `markets` in turn (RULE_BODIES), every one calling `webhook`."""
    for number in range(count):
        symbol, timeframe = markets[number % len(markets)]
        body = {**RULE_BODIES[number // len(markets) % len(RULE_BODIES)], "webhook": webhook, "cooldown_minutes": 0}
        if body["type"] == "price_cross":
            close = float(read_candles(ticker.db(), Market("binance", symbol, timeframe), limit=1)["close"].iloc[-1])
            body["level"] = close * (1 + body.pop("offset"))
        add_rule(ticker.db(), new_rule(body, symbol, timeframe, ticker.forecaster(timeframe).horizon, ticker.now_ms(), True))


def delivery_report(firings: list, received: list) -> dict:
    """From each firing stored to its webhook first receiving it, and how many arrived twice."""
    arrived: dict[str, float] = {}
    for seconds, key, _ in received:
        arrived.setdefault(key, seconds)
    seconds = [arrived[each.id] - each.fired_ms / 1000 for each in firings if each.id in arrived]
    return {
        "firings": len(firings), "delivered": sum(each.state == "delivered" for each in firings),
        "received_twice": len(received) - len(arrived),
        "delivery_seconds_p50": round(float(np.percentile(seconds, 50)), 3) if seconds else None,
        "delivery_seconds_p95": round(float(np.percentile(seconds, 95)), 3) if seconds else None,
        "delivery_seconds_max": round(float(np.max(seconds)), 3) if seconds else None,
    }


def run(model_path: Path, count: int, minutes: int, rules: int = 0) -> dict:
    markets = watched_markets(count)
    first_open = START_MS + HISTORY_DAYS * 86_400_000
    symbols = sorted({symbol for symbol, _ in markets})
    clock = FakeClock(first_open / 1000 + SETTLE_SECONDS)
    with (exchange_process(symbols, first_open + (minutes + 1) * 60_000, int(clock.seconds * 1000)) as (
            url, advance, _),
          tempfile.TemporaryDirectory() as folder):
        scheduler = cold_started_scheduler(url, Path(folder) / "watch.db", model_path, markets, clock)
        ticker = scheduler.ticker
        receiver = WebhookReceiver()
        add_alert_rules(ticker, markets, rules, receiver.url)
        # On the wall clock, as in the app: a firing's time is when its tick ended.
        scheduler.alerts = Alerts(ticker, allow_private_webhooks=True).start()
        cold_origins = {market: _newest(ticker, market) for market in markets}
        latencies = []
        for _ in range(minutes):
            advance(1)
            clock.seconds += 60
            started = time.perf_counter()
            scheduler.run_once()
            for seconds in scheduler.wait_for_ticks().values():
                latencies.append(SETTLE_SECONDS + seconds - started)
        missing = sum(_missing_origins(ticker, market, cold_origins[market]) for market in markets)
        overview_ms = []
        for _ in range(20):
            began = time.perf_counter()
            [overview_row(summary, ticker.now_ms()) for summary in summarise_watchlist(ticker, markets)]
            overview_ms.append((time.perf_counter() - began) * 1000)
        deadline = time.monotonic() + 60
        while any(each.state == "pending" for each in read_firings(ticker.db(), limit=100_000)) and time.monotonic() < deadline:
            time.sleep(0.2)
        scheduler.stop()
        receiver.close()
        return {
            "markets": count, "simulated_minutes": minutes, "ticks_timed": len(latencies),
            "close_to_forecast_seconds_p50": round(float(np.percentile(latencies, 50)), 2),
            "close_to_forecast_seconds_p95": round(float(np.percentile(latencies, 95)), 2),
            "close_to_forecast_seconds_max": round(float(np.max(latencies)), 2),
            "origins_missing": int(missing), "resident_mb": resident_mb(),
            "peak_resident_mb": resident_mb("VmHWM"),
            "overview_ms_median": round(float(np.median(overview_ms)), 1),
            "overview_ms_p95": round(float(np.percentile(overview_ms, 95)), 1),
            "alerts": {"rules": rules, **delivery_report(read_firings(ticker.db(), limit=100_000), receiver.received)},
        }


def _newest(ticker: Ticker, market: tuple[str, str]) -> int:
    return int(read_candles(ticker.db(), Market("binance", *market), limit=1)["ts"].iloc[-1])


def _missing_origins(ticker: Ticker, market: tuple[str, str], since_ts: int) -> int:
    """Closed candles after the cold start with no forecast from their origin."""
    key = Market("binance", *market)
    stored = read_candles(ticker.db(), key, start=since_ts)["ts"]
    forecast = forecast_origins_since(ticker.db(), key, ticker.forecaster(market[1]).version, since_ts)
    return int((~stored.isin(forecast)).sum())


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
