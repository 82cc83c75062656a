"""Alerts on the scheduler's side: every rule of a market is evaluated after each of its ticks,
a firing goes into the store's outbox before anything is sent, and a delivery thread calls the
webhooks: short timeouts, no redirects, retries with growing waits, a few in parallel so one
slow webhook delays neither the ticks nor the other deliveries. A firing is stored once per rule
and candle; a process that dies mid-delivery leaves it due again after a lease.

Webhook URLs are secrets: logs and stored errors name the rule, never the URL.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Callable

import pandas as pd
import requests

from chronoprice.evaluation.metrics import (
    ADAPTIVE_WINDOW,
    VOLATILITY_WINDOW,
    band_exits,
    matured_scores,
    wilson_interval,
)
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.features import HORIZON
from chronoprice.model.forecasters import score_quantiles
from chronoprice.service.alert_rules import big_move, crossed, firing, new_rule, webhook_body, webhook_problem
from chronoprice.service.guard import served_forecast
from chronoprice.service.metrics import ALERT_EVENTS
from chronoprice.service.overview import market_status
from chronoprice.service.status import TickStatus
from chronoprice.service.watchlist import watch_market
from chronoprice.store import STORE_UNAVAILABLE, log_failure
from chronoprice.store.alerts import (
    AlertRule,
    Firing,
    add_rule,
    claim_delivery,
    due_firings,
    finish_delivery,
    last_fired_ms,
    read_rule,
    read_rules,
    record_firing,
)
from chronoprice.store.records import read_candles, read_matured_forecasts

log = logging.getLogger(__name__)
RETRY_SECONDS = (2.0, 10.0, 30.0, 120.0, 600.0, 1800.0)  # waits after failed attempts; then it is given up
TIMEOUT_SECONDS = (3.05, 5.0)  # connect, read: a webhook that hangs is dropped after this
DELIVERY_LEASE_SECONDS = 60.0  # an attempt not finished by then (its process died) is due again
DELIVERY_THREADS = 4
OBSERVED_HOURS = 24  # the window of a band-exit rule's observed firing rate


def band_exit_record(db, market: Market, forecaster, step: int, level: float, since_target_ts: int | None = None) -> pd.DataFrame:
    """The market's matured step-`step` forecasts (oldest first) with `exited`: whether the close
    left the `level` band as it was set when the forecast was made."""
    matured = read_matured_forecasts(db, market, step=step, since_target_ts=since_target_ts)
    if matured.empty:
        return matured.assign(exited=pd.Series(dtype=bool))
    matured = matured[matured["model_version"] == matured["model_version"].iloc[-1]]
    length = timeframe_ms(market.timeframe)
    candles = read_candles(db, market, start=int(matured["origin_ts"].min()) - VOLATILITY_WINDOW * length,
                           end=int(matured["origin_ts"].max()))
    scores = matured_scores(matured, candles, length)
    fallback = float(score_quantiles(forecaster.metadata, level)[step - 1])
    matured = matured.loc[scores.index]
    return matured.assign(exited=band_exits(scores.to_numpy(), step, level, fallback))


def observed_rate(record: pd.DataFrame) -> dict:
    """How often the band was left: share, count and 95 % Wilson interval."""
    count = len(record)
    exits = int(record["exited"].sum()) if count else 0
    low, high = wilson_interval(exits, count)
    return {"rate": exits / count if count else None, "count": count, "ci_low": low if count else None, "ci_high": high if count else None}


def create_rule(ticker, body: dict, symbol: str, timeframe: str, watch_limit: int, allow_private_webhooks: bool) -> AlertRule:
    """Store a rule from an API or form body and watch its market (rules are evaluated on the
    scheduler's ticks). Raises RuleError, watchlist.NotListed or WatchlistFull."""
    forecaster = ticker.forecaster(timeframe)
    rule = new_rule(body, symbol, timeframe, forecaster.horizon if forecaster else HORIZON, ticker.now_ms(), allow_private_webhooks)
    watch_market(ticker, symbol, timeframe, watch_limit)
    add_rule(ticker.db(), rule)
    return rule


def observed_band_exits(ticker, rule: AlertRule) -> dict | None:
    """A band-exit rule's observed firing rate over the last OBSERVED_HOURS, beside its nominal one
    (a 90 % band should be left about 10 % of the time); None for other kinds."""
    forecaster = ticker.forecaster(rule.timeframe)
    if rule.kind != "band_exit" or forecaster is None:
        return None
    market = ticker.market(rule.symbol, None, rule.timeframe)
    since = ticker.now_ms() - OBSERVED_HOURS * 3_600_000
    warm_up = (ADAPTIVE_WINDOW + rule.params["step"]) * timeframe_ms(rule.timeframe)
    record = band_exit_record(ticker.db(), market, forecaster, rule.params["step"], rule.params["level"], since - warm_up)
    return {"nominal": round(1 - rule.params["level"], 4), "hours": OBSERVED_HOURS, **observed_rate(record[record["target_ts"] >= since])}


class Alerts:
    """Evaluates a ticker's alert rules after its ticks and delivers their firings."""

    def __init__(self, ticker, allow_private_webhooks: bool = False, post: Callable = requests.post,
                 retry_seconds: tuple = RETRY_SECONDS, lease_seconds: float = DELIVERY_LEASE_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.ticker, self._allow_private, self._post = ticker, allow_private_webhooks, post
        self._retry, self._lease, self._clock = retry_seconds, lease_seconds, clock
        self._wake, self._stop = threading.Event(), threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="chronoprice-webhook")
        # A claim's lease ends after the timeouts, but a webhook dripping its answer byte by byte can
        # outlast it: never send a firing again while this process is still sending it.
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._deliver_forever, daemon=True, name="chronoprice-alerts")

    def start(self) -> Alerts:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -------------------------------------------------------------- evaluation
    def after_tick(self, status: TickStatus) -> list[Firing]:
        """Evaluate every rule of the ticked market; the firings stored (each once per rule and candle)."""
        db = self.ticker.db()
        rules = read_rules(db, status.symbol, status.timeframe)
        if not rules:
            return []
        now_ms = int(self._clock() * 1000)
        market = self.ticker.market(status.symbol, status.exchange, status.timeframe)
        candles = read_candles(db, market, limit=2)
        fired = []
        for rule in rules:
            found = self._condition(rule, status, market, candles, now_ms)
            if found is None:
                continue
            candle_ts, message = found
            last = last_fired_ms(db, rule.id)
            if last is not None and now_ms - last < rule.cooldown_ms:
                continue
            each = firing(rule, candle_ts, now_ms, message)
            if record_firing(db, each):
                fired.append(each)
                ALERT_EVENTS.labels("fired").inc()
        if any(each.state == "pending" for each in fired):
            self._wake.set()
        return fired

    def _condition(self, rule: AlertRule, status: TickStatus, market: Market, candles: pd.DataFrame, now_ms: int):
        """(candle ts, message) if the rule holds on the market's newest candle, else None."""
        if rule.kind == "market_state":
            state = market_status(status, now_ms, timeframe_ms(status.timeframe))
            if state not in ("failing", "stale"):
                return None
            newest = int(candles["ts"].iloc[-1]) if not candles.empty else 0
            return newest, f"the market is {state}" + (f": {status.error}" if status.error else "")
        if len(candles) < 2:
            return None
        previous, newest = candles["close"].iloc[-2], candles["close"].iloc[-1]
        newest_ts = int(candles["ts"].iloc[-1])
        p = rule.params
        if rule.kind == "price_cross":
            way = crossed(previous, newest, p["level"], p["direction"])
            return None if way is None else (newest_ts, f"closed at {newest:,.2f}, crossing {p['level']:,.2f} going {way}")
        if rule.kind == "forecast_move":
            forecast = served_forecast(self.ticker.db(), market, status)
            if forecast.empty or int(forecast["origin_ts"].iloc[0]) != newest_ts or p["step"] > len(forecast):
                return None
            row = forecast.iloc[p["step"] - 1]
            move = big_move(newest, row["predicted"], row["lower"], row["upper"], p["percent"])
            return None if move is None else (newest_ts, f"the forecast {p['step']} candles ahead is {row['predicted']:,.2f} "
                                              f"({move:+.2f} %), its band {row['lower']:,.2f} – {row['upper']:,.2f} excluding the last close {newest:,.2f}")
        forecaster = self.ticker.forecaster(market.timeframe)
        if forecaster is None:
            return None
        since = newest_ts - (ADAPTIVE_WINDOW + p["step"] + VOLATILITY_WINDOW) * timeframe_ms(market.timeframe)
        record = band_exit_record(self.ticker.db(), market, forecaster, p["step"], p["level"], since)
        if record.empty or int(record["target_ts"].iloc[-1]) != newest_ts or not record["exited"].iloc[-1]:
            return None
        row = record.iloc[-1]
        return newest_ts, (f"the close {newest:,.2f} left the {p['level'] * 100:.0f} % band of the forecast made "
                           f"{p['step']} candle{'s' if p['step'] > 1 else ''} before (predicted {row['predicted']:,.2f})")

    # -------------------------------------------------------------- delivery
    def _deliver_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception as error:  # the store restarting, or a bug: delivery must go on
                log_failure(log, "alert delivery", error)
            self._wake.wait(1.0)
            self._wake.clear()

    def deliver_due(self) -> None:
        """Claim every due firing and send it on the pool."""
        db, now_ms = self.ticker.db(), int(self._clock() * 1000)
        for due in due_firings(db, now_ms):
            with self._lock:
                if due.id in self._in_flight:
                    continue
            if claim_delivery(db, due, now_ms, int(self._lease * 1000)):
                with self._lock:
                    self._in_flight.add(due.id)
                self._pool.submit(self._send, due, due.attempts + 1)

    def _send(self, due: Firing, attempt: int) -> None:
        try:
            rule = read_rule(self.ticker.db(), due.rule_id)
            if rule is None or rule.webhook is None:
                finish_delivery(self.ticker.db(), due, "dropped", None, None, "the rule was deleted")
                return
            error = webhook_problem(rule.webhook, self._allow_private)
            if error is None:
                error = self._call(rule, due)
            now_ms = int(self._clock() * 1000)
            if error is None:
                finish_delivery(self.ticker.db(), due, "delivered", None, now_ms, None)
                ALERT_EVENTS.labels("delivered").inc()
            elif attempt > len(self._retry) or error.startswith("webhook "):
                log.warning("alert %s: webhook of rule %s given up after %d attempts: %s", due.id, rule.id, attempt, error)
                finish_delivery(self.ticker.db(), due, "failed", None, None, error)
                ALERT_EVENTS.labels("failed").inc()
            else:
                log.warning("alert %s: webhook of rule %s failed (attempt %d: %s); retrying", due.id, rule.id, attempt, error)
                finish_delivery(self.ticker.db(), due, "pending", now_ms + int(self._retry[attempt - 1] * 1000), None, error)
                ALERT_EVENTS.labels("retried").inc()
        except STORE_UNAVAILABLE as error:  # the lease makes it due again
            log_failure(log, f"alert {due.id}", error)
        finally:
            with self._lock:
                self._in_flight.discard(due.id)
            self._wake.set()

    def _call(self, rule: AlertRule, due: Firing) -> str | None:
        """POST the firing; None if the webhook took it, else why not (never the URL)."""
        try:
            response = self._post(rule.webhook, json=webhook_body(rule, due), timeout=TIMEOUT_SECONDS, allow_redirects=False,
                                  headers={"Idempotency-Key": due.id, "User-Agent": "ChronoPrice-alerts"})
        except requests.RequestException as error:
            return f"{type(error).__name__} (no answer within {sum(TIMEOUT_SECONDS):.0f} s or no connection)"
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

