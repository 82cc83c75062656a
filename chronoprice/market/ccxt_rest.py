"""Closed candles from a live ccxt exchange over REST, with retries, Retry-After and fail-over."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import threading
import time
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import ccxt
import pandas as pd

from chronoprice.market.candles import clean_candles, trusted_prefix
from chronoprice.market.source import (
    Fetched,
    GeoBlocked,
    MalformedReply,
    RateLimited,
    SinceFor,
    SourceError,
    SourceUnavailable,
    UnknownExchange,
    UnknownSymbol,
)
from chronoprice.market.timeframes import cold_start_candles, history_for, timeframe_ms

log = logging.getLogger(__name__)


def rewrite_urls(urls, base: str):
    """Replace scheme and host of every URL in a (nested) ccxt `urls['api']` value with `base`.

    Paths are kept, and a path in `base` is put in front of them.
    """
    if isinstance(urls, dict):
        return {key: rewrite_urls(value, base) for key, value in urls.items()}
    if isinstance(urls, str) and urls.startswith(("http://", "https://")):
        return base.rstrip("/") + urlsplit(urls).path
    return urls


def create_exchange(exchange_id: str, url: str | None, timeout_ms: int):
    """A ccxt exchange client, public endpoints only, with every REST URL moved to `url` if given."""
    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see ccxt.exchanges for the list"
        raise UnknownExchange(f"unknown exchange id {exchange_id!r}{hint}")
    client = getattr(ccxt, exchange_id)({"enableRateLimit": True, "timeout": timeout_ms})
    if url:
        client.urls["api"] = rewrite_urls(client.urls["api"], url)
    return client


def _retry_after_seconds(headers) -> float | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


@dataclasses.dataclass
class _Venue:
    """One exchange of the fail-over chain, with its client made on first use. The scheduler's
    threads share the client, so what a reply said is kept per thread (`reply`), not in the
    client's last_* attributes, which the next thread's reply overwrites."""

    exchange_id: str
    url: str | None
    client: object = None
    reply: threading.local = dataclasses.field(default_factory=threading.local)
    answered: bool = False


def parse_exchange_chain(primary: str, primary_url: str | None, fallbacks: Sequence[str]) -> list[_Venue]:
    venues = [_Venue(primary, primary_url)]
    for entry in fallbacks:
        exchange_id, _, url = entry.partition("=")
        if exchange_id != primary:
            venues.append(_Venue(exchange_id, url or None))
    return venues


class LiveSource:
    """Closed candles from a ccxt exchange, with retries, Retry-After and exchange fail-over."""

    def __init__(
        self,
        exchange: str,
        exchange_url: str | None = None,
        fallback_exchanges: Sequence[str] = (),
        history: int | Mapping[str, int] | None = None,
        timeout_ms: int = 4_000,
        attempts: int = 3,
        backoff_seconds: float = 0.5,
        max_wait_seconds: float = 5.0,
        page_limit: int = 1000,
        max_pages: int = 20,
        failures_before_failover: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._venues = parse_exchange_chain(exchange, exchange_url, fallback_exchanges)
        self._timeout_ms = timeout_ms
        for venue in self._venues:
            self._client(venue)  # makes every client now, so an unknown id is refused at start-up
        self._index = 0
        self._history = cold_start_candles() if history is None else history
        self._attempts, self._backoff, self._max_wait = attempts, backoff_seconds, max_wait_seconds
        self._page_limit, self._max_pages = page_limit, max_pages
        self._failures_before_failover = failures_before_failover
        self._failures = 0
        self._resume_at = 0.0
        self._sleep, self._clock = sleep, clock
        self._failed_over_from: list[str] = []
        self._lock = threading.Lock()  # the fail-over state, shared by the markets ticked at once

    @property
    def exchange(self) -> str:
        return self._venues[self._index].exchange_id

    @property
    def label(self) -> str:
        return f"live: {self.exchange}"

    def _client(self, venue: _Venue):
        if venue.client is None:
            client = create_exchange(venue.exchange_id, venue.url, self._timeout_ms)
            on_rest_response, parse_json = client.on_rest_response, client.parse_json
            throttle, turn = client.throttle, threading.Lock()

            def record_reply(code, reason, url, method, headers, body, *rest):
                venue.reply.status, venue.reply.headers, venue.reply.preview = code, headers, (body or "")[:60]
                return on_rest_response(code, reason, url, method, headers, body, *rest)

            def record_parse(text):
                parsed = parse_json(text)
                venue.reply.json = parsed is not None
                return parsed

            def throttle_in_turn(cost=None):
                # ccxt's limiter spaces requests from its last one, unaware of threads: take turns.
                with turn:
                    throttle(cost)
                    client.lastRestRequestTimestamp = client.milliseconds()

            client.on_rest_response, client.parse_json, client.throttle = record_reply, record_parse, throttle_in_turn
            venue.client = client
        return venue.client

    def symbols(self) -> list[str]:
        venue = self._venues[self._index]
        markets = self._call(venue, lambda client: client.load_markets())
        return sorted(symbol for symbol, market in markets.items() if market.get("spot") and market.get("active") is not False)

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched:
        wait = self._resume_at - self._clock()
        if wait > 0:
            raise RateLimited(f"{self.exchange} asked us to wait; next request in {math.ceil(wait)} s")
        while True:
            index = self._index
            venue = self._venues[index]
            try:
                candles, note, forming = self._fetch_from(venue, symbol, timeframe, since_for(venue.exchange_id))
            except GeoBlocked as error:
                reason = str(error)
            except SourceUnavailable as error:
                with self._lock:
                    self._failures += 1
                    keep_venue = venue.answered and self._failures < self._failures_before_failover
                if keep_venue:
                    raise
                reason = str(error)
            else:
                with self._lock:
                    venue.answered, self._failures = True, 0
                    failed_over_from = list(self._failed_over_from)
                if failed_over_from:
                    note = "; ".join(filter(None, [f"failed over from {', '.join(failed_over_from)}", note]))
                return Fetched(venue.exchange_id, candles, note, forming)
            self._fail_over(index, reason)

    def _fail_over(self, index: int, reason: str) -> None:
        """Move on from the venue at `index`, unless another market's fetch has moved on already."""
        with self._lock:
            if self._index != index:
                return
            self._failures = 0
            self._failed_over_from.append(self._venues[index].exchange_id)
            if index + 1 < len(self._venues):
                self._index = index + 1
                log.warning("failing over from %s to %s: %s", self._venues[index].exchange_id, self.exchange, reason)
                return
            tried = ", ".join(self._failed_over_from)
            self._index, self._failed_over_from = 0, []
        raise SourceUnavailable(f"no exchange answered (tried {tried}); last error: {reason}")

    def _fetch_from(self, venue: _Venue, symbol: str, timeframe: str, since: int | None
                    ) -> tuple[pd.DataFrame, str | None, pd.DataFrame | None]:
        history, length = history_for(self._history, timeframe), timeframe_ms(timeframe)
        if since is None and history + 1 > self._page_limit:
            # More history than one page: start from the exchange's own newest candle, not our clock.
            since = self._newest_ts(venue, symbol, timeframe) - history * length
        if since is None:
            rows = self._fetch_page(venue, symbol, timeframe, None, history + 1)
        else:
            rows = []
            cursor = since
            for _ in range(self._max_pages):
                page = self._fetch_page(venue, symbol, timeframe, cursor, self._page_limit)
                rows.extend(page)
                if len(page) < self._page_limit:
                    break
                cursor = self._next_cursor(page, cursor)
        result = clean_candles(rows, length)
        if rows and result.candles.empty:
            raise MalformedReply(f"{venue.exchange_id} sent no valid candle: {result.rejected[0].reason}")
        trusted = trusted_prefix(result)
        if since is not None:
            trusted = trusted[trusted["ts"] >= since]
        # The newest candle an exchange returns is normally still forming, and its clock may
        # differ from ours, so it is never stored; the next catch-up fetches it once closed.
        closed = trusted.iloc[:-1].reset_index(drop=True)
        forming = trusted.tail(1).reset_index(drop=True) if not result.rejected and not trusted.empty else None
        note = None
        if result.rejected:
            first = result.rejected[0]
            note = f"{venue.exchange_id}: {len(result.rejected)} malformed candle rows not stored ({first.reason})"
        return closed, note, forming

    def _newest_ts(self, venue: _Venue, symbol: str, timeframe: str) -> int:
        page = self._fetch_page(venue, symbol, timeframe, None, 1)
        try:
            return int(page[-1][0])
        except (TypeError, ValueError, IndexError):
            raise MalformedReply(f"{venue.exchange_id} sent no readable newest candle for {symbol}") from None

    @staticmethod
    def _next_cursor(page: list, cursor: int) -> int:
        try:
            newest = max(int(row[0]) for row in page)
        except (TypeError, ValueError, IndexError) as error:
            raise MalformedReply(f"candle timestamps unreadable: {error}") from None
        if newest < cursor:
            raise MalformedReply("exchange returned candles older than requested")
        return newest + 1

    def _fetch_page(self, venue: _Venue, symbol: str, timeframe: str, since: int | None, limit: int) -> list:
        rows = self._call(venue, lambda client: client.fetch_ohlcv(symbol, timeframe, since, limit))
        if not venue.reply.json:
            raise MalformedReply(f"{venue.exchange_id} answered with something that is not JSON: {venue.reply.preview!r}")
        if not isinstance(rows, list):
            raise MalformedReply(f"{venue.exchange_id} answered with {type(rows).__name__}, not a list of candles")
        return rows

    def _call(self, venue: _Venue, request):
        """Run `request(client)`, retrying transient failures with backoff and honouring Retry-After."""
        client = self._client(venue)
        last_error: Exception | None = None
        for attempt in range(self._attempts):
            venue.reply.status = None
            try:
                return request(client)
            except ccxt.BaseError as error:
                if venue.reply.status in (403, 451):
                    raise GeoBlocked(f"{venue.exchange_id} refuses this region (HTTP {venue.reply.status})") from None
                if isinstance(error, ccxt.BadSymbol):
                    raise UnknownSymbol(f"{venue.exchange_id} does not list this symbol ({error})") from None
                if isinstance(error, ccxt.BadResponse):
                    raise MalformedReply(f"{venue.exchange_id} sent a malformed reply: {_short(error)}") from None
                if not isinstance(error, ccxt.OperationFailed):  # ccxt's class for transient failures
                    raise SourceError(f"{venue.exchange_id} error: {_short(error)}") from None
                last_error, wait = error, self._backoff * 2**attempt
                if isinstance(error, ccxt.DDoSProtection):
                    wait = _retry_after_seconds(getattr(venue.reply, "headers", None)) or wait
                    if wait > self._max_wait or attempt == self._attempts - 1:
                        self._resume_at = self._clock() + wait
                        raise RateLimited(f"{venue.exchange_id} rate limit: waiting {math.ceil(wait)} s as it asked") from None
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
                raise MalformedReply(f"{venue.exchange_id} sent a reply ccxt could not parse: {error!r}") from None
            if attempt < self._attempts - 1:
                self._sleep(wait)
        raise SourceUnavailable(f"{venue.exchange_id} unreachable after {self._attempts} attempts: {_short(last_error)}")


def _short(error: Exception | None, length: int = 160) -> str:
    text = f"{type(error).__name__}: {error}" if error else "unknown error"
    return text if len(text) <= length else text[: length - 1] + "…"
