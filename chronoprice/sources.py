"""Where candles come from: a live ccxt exchange, a CSV replay, or the offline demo market.

Every source answers `fetch_closed(symbol, since_for)` with closed, validated candles and the
exchange name they belong to in the store. `since_for(exchange)` gives the first timestamp the
caller still needs for that exchange (None when it has nothing), so a source that fails over
to another exchange catches up from that exchange's own history.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import math
import threading
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Protocol, Sequence
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from chronoprice.candles import COLUMNS, clean_candles, empty_candles, trusted_prefix

SinceFor = Callable[[str], "int | None"]


class SourceError(Exception):
    """A source could not deliver candles this time; the message says why, for the status bar."""


class SourceUnavailable(SourceError):
    """No exchange in the chain answered."""


class MalformedReply(SourceError):
    """The exchange answered with something that is not a list of valid candles."""


class RateLimited(SourceError):
    """The exchange asked us to wait (Retry-After); the source will not call it before then."""


class GeoBlocked(SourceError):
    """The exchange refuses this host's region (HTTP 451 or 403)."""


class UnknownSymbol(SourceError, ValueError):
    """The exchange does not list this symbol."""


class UnknownExchange(ValueError):
    """ccxt has no exchange with this id."""


@dataclasses.dataclass(frozen=True)
class Fetched:
    exchange: str
    candles: pd.DataFrame
    note: str | None = None


class CandleSource(Protocol):
    @property
    def label(self) -> str: ...

    def fetch_closed(self, symbol: str, since_for: SinceFor) -> Fetched: ...

    def symbols(self) -> list[str]: ...


# ---------------------------------------------------------------------------------- live (ccxt)


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
    import ccxt

    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see ccxt.exchanges for the list"
        raise UnknownExchange(f"unknown exchange id {exchange_id!r}{hint}")
    client = getattr(ccxt, exchange_id)({"enableRateLimit": True, "timeout": timeout_ms, "enableLastJsonResponse": True})
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
    """One exchange of the fail-over chain, with its client made on first use."""

    exchange_id: str
    url: str | None
    client: object = None
    last_status: int | None = None
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
        timeframe: str = "1m",
        timeframe_ms: int = 60_000,
        history: int = 500,
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
        self._timeframe, self._timeframe_ms = timeframe, timeframe_ms
        self._history = history
        self._attempts, self._backoff, self._max_wait = attempts, backoff_seconds, max_wait_seconds
        self._page_limit, self._max_pages = page_limit, max_pages
        self._failures_before_failover = failures_before_failover
        self._failures = 0
        self._resume_at = 0.0
        self._sleep, self._clock = sleep, clock
        self._failed_over_from: list[str] = []

    @property
    def exchange(self) -> str:
        return self._venues[self._index].exchange_id

    @property
    def label(self) -> str:
        return f"live: {self.exchange}"

    def _client(self, venue: _Venue):
        if venue.client is None:
            client = create_exchange(venue.exchange_id, venue.url, self._timeout_ms)
            original = client.on_rest_response

            def record_status(code, *rest):
                venue.last_status = code
                return original(code, *rest)

            client.on_rest_response = record_status
            venue.client = client
        return venue.client

    def symbols(self) -> list[str]:
        venue = self._venues[self._index]
        markets = self._call(venue, lambda client: client.load_markets())
        return sorted(symbol for symbol, market in markets.items() if market.get("spot") and market.get("active") is not False)

    def fetch_closed(self, symbol: str, since_for: SinceFor) -> Fetched:
        wait = self._resume_at - self._clock()
        if wait > 0:
            raise RateLimited(f"{self.exchange} asked us to wait; next request in {math.ceil(wait)} s")
        while True:
            venue = self._venues[self._index]
            try:
                candles, note = self._fetch_from(venue, symbol, since_for(venue.exchange_id))
            except GeoBlocked as error:
                reason = str(error)
            except SourceUnavailable as error:
                self._failures += 1
                if venue.answered and self._failures < self._failures_before_failover:
                    raise
                reason = str(error)
            else:
                venue.answered, self._failures = True, 0
                if self._failed_over_from:
                    note = "; ".join(filter(None, [f"failed over from {', '.join(self._failed_over_from)}", note]))
                return Fetched(venue.exchange_id, candles, note)
            self._fail_over(reason)

    def _fail_over(self, reason: str) -> None:
        self._failures = 0
        self._failed_over_from.append(self.exchange)
        if self._index + 1 < len(self._venues):
            self._index += 1
            return
        tried = ", ".join(self._failed_over_from)
        self._index, self._failed_over_from = 0, []
        raise SourceUnavailable(f"no exchange answered (tried {tried}); last error: {reason}")

    def _fetch_from(self, venue: _Venue, symbol: str, since: int | None) -> tuple[pd.DataFrame, str | None]:
        if since is None and self._history + 1 > self._page_limit:
            # More history than one page: start from the exchange's own newest candle, not our clock.
            since = self._newest_ts(venue, symbol) - self._history * self._timeframe_ms
        if since is None:
            rows = self._fetch_page(venue, symbol, None, self._history + 1)
        else:
            rows = []
            cursor = since
            for _ in range(self._max_pages):
                page = self._fetch_page(venue, symbol, cursor, self._page_limit)
                rows.extend(page)
                if len(page) < self._page_limit:
                    break
                cursor = self._next_cursor(page, cursor)
        result = clean_candles(rows, self._timeframe_ms)
        if rows and result.candles.empty:
            raise MalformedReply(f"{venue.exchange_id} sent no valid candle: {result.rejected[0].reason}")
        trusted = trusted_prefix(result)
        if since is not None:
            trusted = trusted[trusted["ts"] >= since]
        # The newest candle an exchange returns is normally still forming, and its clock may
        # differ from ours, so it is never stored; the next catch-up fetches it once closed.
        closed = trusted.iloc[:-1].reset_index(drop=True)
        note = None
        if result.rejected:
            first = result.rejected[0]
            note = f"{venue.exchange_id}: {len(result.rejected)} malformed candle rows not stored ({first.reason})"
        return closed, note

    def _newest_ts(self, venue: _Venue, symbol: str) -> int:
        page = self._fetch_page(venue, symbol, None, 1)
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

    def _fetch_page(self, venue: _Venue, symbol: str, since: int | None, limit: int) -> list:
        rows = self._call(venue, lambda client: client.fetch_ohlcv(symbol, self._timeframe, since, limit))
        if venue.client.last_json_response is None:
            body = (venue.client.last_http_response or "")[:60]
            raise MalformedReply(f"{venue.exchange_id} answered with something that is not JSON: {body!r}")
        if not isinstance(rows, list):
            raise MalformedReply(f"{venue.exchange_id} answered with {type(rows).__name__}, not a list of candles")
        return rows

    def _call(self, venue: _Venue, request):
        """Run `request(client)`, retrying transient failures with backoff and honouring Retry-After."""
        import ccxt

        client = self._client(venue)
        last_error: Exception | None = None
        for attempt in range(self._attempts):
            venue.last_status = None
            try:
                return request(client)
            except ccxt.BaseError as error:
                if venue.last_status in (403, 451):
                    raise GeoBlocked(f"{venue.exchange_id} refuses this region (HTTP {venue.last_status})") from None
                if isinstance(error, ccxt.BadSymbol):
                    raise UnknownSymbol(f"{venue.exchange_id} does not list this symbol ({error})") from None
                if isinstance(error, ccxt.BadResponse):
                    raise MalformedReply(f"{venue.exchange_id} sent a malformed reply: {_short(error)}") from None
                if not isinstance(error, ccxt.OperationFailed):  # ccxt's class for transient failures
                    raise SourceError(f"{venue.exchange_id} error: {_short(error)}") from None
                last_error, wait = error, self._backoff * 2**attempt
                if isinstance(error, ccxt.DDoSProtection):
                    wait = _retry_after_seconds(client.last_response_headers) or wait
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


# -------------------------------------------------------------------------------- offline demo

DEMO_ANCHOR_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC: the demo market's first minute
MINUTES_PER_DAY = 1440
DEMO_START_PRICES = {"BTC": 42_000.0, "ETH": 2_300.0, "SOL": 100.0, "BNB": 310.0}


@lru_cache(maxsize=16)
def _demo_day(seed: int, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One day of demo minutes: log returns, upper and lower wick (log) and volume.

    Volatility clusters: a per-day level plus hourly shocks interpolated across the hour, so
    calm and busy stretches alternate. Returns are Student-t (4 degrees of freedom, fat tails)
    scaled to unit variance, with a base standard deviation of 0.07 % a minute, like BTC.
    """
    rng = np.random.default_rng([seed, day])
    hourly = rng.normal(0.0, 0.45, 25)
    minutes = np.arange(MINUTES_PER_DAY)
    log_sigma = math.log(0.0007) + rng.normal(0.0, 0.25) + np.interp(minutes / 60.0, np.arange(25), hourly)
    sigma = np.exp(log_sigma)
    returns = sigma * rng.standard_t(4, MINUTES_PER_DAY) / math.sqrt(2.0)
    wick_up = np.abs(rng.normal(0.0, 0.45, MINUTES_PER_DAY)) * sigma
    wick_down = np.abs(rng.normal(0.0, 0.45, MINUTES_PER_DAY)) * sigma
    volume = rng.lognormal(math.log(6.0), 0.6, MINUTES_PER_DAY) * (1.0 + np.abs(returns) / sigma)
    return returns, wick_up, wick_down, volume


@lru_cache(maxsize=8)
def _demo_day_opens(seed: int, last_day: int, start_log_price: float) -> np.ndarray:
    """Opening log price of days 0..last_day (cumulative, computed once per seed and cached)."""
    totals = [0.0] + [float(_demo_day(seed, day)[0].sum()) for day in range(last_day)]
    return start_log_price + np.cumsum(totals)


def demo_candles(symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The demo market's 1-minute candles with open time in [start_ms, end_ms), deterministic.

    The same symbol and minute always give the same candle, across restarts, so stored demo
    history stays continuous.
    """
    start_ms = max(DEMO_ANCHOR_MS, start_ms - start_ms % 60_000)
    if end_ms <= start_ms:
        return empty_candles()
    seed = zlib.crc32(symbol.encode())
    start_log_price = math.log(DEMO_START_PRICES.get(symbol.split("/")[0], 100.0))
    first_day = (start_ms - DEMO_ANCHOR_MS) // (MINUTES_PER_DAY * 60_000)
    last_day = (end_ms - 1 - DEMO_ANCHOR_MS) // (MINUTES_PER_DAY * 60_000)
    opens = _demo_day_opens(seed, int(last_day), start_log_price)
    parts = []
    for day in range(int(first_day), int(last_day) + 1):
        returns, wick_up, wick_down, volume = _demo_day(seed, day)
        log_close = opens[day] + np.cumsum(returns)
        log_open = np.concatenate([[opens[day]], log_close[:-1]])
        ts = DEMO_ANCHOR_MS + (day * MINUTES_PER_DAY + np.arange(MINUTES_PER_DAY, dtype="int64")) * 60_000
        parts.append(
            pd.DataFrame(
                {
                    "ts": ts,
                    "open": np.exp(log_open),
                    "high": np.exp(np.maximum(log_open, log_close) + wick_up),
                    "low": np.exp(np.minimum(log_open, log_close) - wick_down),
                    "close": np.exp(log_close),
                    "volume": volume,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[(frame["ts"] >= start_ms) & (frame["ts"] < end_ms)]
    return frame[COLUMNS].round({"open": 2, "high": 2, "low": 2, "close": 2, "volume": 6}).reset_index(drop=True)


class DemoSource:
    """A synthetic market on the local clock, for when no exchange can be reached."""

    exchange = "demo"
    label = "offline demo"

    def __init__(
        self,
        history: int = 500,
        max_catch_up: int = 7 * MINUTES_PER_DAY,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self._history, self._max_catch_up, self._now_ms = history, max_catch_up, now_ms

    def symbols(self) -> list[str]:
        return sorted(f"{base}/USDT" for base in DEMO_START_PRICES)

    def fetch_closed(self, symbol: str, since_for: SinceFor) -> Fetched:
        if symbol.split("/")[0] not in DEMO_START_PRICES:
            raise UnknownSymbol(f"the offline demo has no {symbol}; it offers {', '.join(self.symbols())}")
        forming = self._now_ms() // 60_000 * 60_000
        since = since_for(self.exchange)
        oldest = forming - (self._history if since is None else self._max_catch_up) * 60_000
        start = oldest if since is None else max(since, oldest)
        return Fetched(self.exchange, demo_candles(symbol, start, forming))


# ------------------------------------------------------------------------------------- replay

TIME_COLUMN_NAMES = ("open_time", "timestamp", "time", "date", "datetime", "ts", "open time")


class CsvFormatError(ValueError):
    """The CSV cannot be read as candles at all (as opposed to a few bad rows)."""


@dataclasses.dataclass(frozen=True)
class CsvCandles:
    candles: pd.DataFrame
    bad_rows: list[tuple[int, str]]  # (line number in the file, reason)


def _epoch_to_ms(values: pd.Series) -> pd.Series:
    """Epoch seconds, milliseconds or microseconds (told apart by magnitude) to milliseconds."""
    scale = np.where(values >= 1e14, 1e-3, np.where(values >= 1e11, 1.0, 1e3))
    return values * scale


def _times_to_ms(texts: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(texts, errors="coerce")
    iso = pd.to_datetime(texts.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    iso_ms = (iso - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return _epoch_to_ms(numeric).fillna(iso_ms.astype("float64"))


def _column_positions(header: list[str]) -> list[int]:
    names = [name.strip().lower() for name in header]
    time_column = next((names.index(name) for name in TIME_COLUMN_NAMES if name in names), None)
    missing = [name for name in COLUMNS[1:] if name not in names]
    if time_column is None or missing:
        wanted = "a time column (" + ", ".join(TIME_COLUMN_NAMES) + ")"
        absent = ", ".join(([wanted] if time_column is None else []) + missing)
        raise CsvFormatError(f"header {header} lacks {absent}")
    return [time_column] + [names.index(name) for name in COLUMNS[1:]]


def parse_candle_csv_rows(rows: list[list[str]], timeframe_ms: int = 60_000) -> CsvCandles:
    """Candles from CSV rows: Binance Data Vision klines (no header) or a headed OHLCV table.

    Returns the valid candles and, for every skipped row, its 1-based line number and reason.
    """
    if not rows:
        raise CsvFormatError("the file is empty")
    has_header = pd.isna(pd.to_numeric(rows[0][0] if rows[0] else "", errors="coerce")) and not _looks_like_time(rows[0])
    positions = _column_positions(rows[0]) if has_header else list(range(len(COLUMNS)))
    first_line = 2 if has_header else 1
    body = rows[1:] if has_header else rows
    bad_rows, table, lines = [], [], []
    for offset, row in enumerate(body):
        line = first_line + offset
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(positions):
            bad_rows.append((line, f"expected at least {max(positions) + 1} fields, found {len(row)}"))
            continue
        table.append([row[position].strip() for position in positions])
        lines.append(line)
    frame = pd.DataFrame(table, columns=COLUMNS, dtype="object")
    if table:
        frame["ts"] = _times_to_ms(frame["ts"])
    result = clean_candles(frame.to_numpy().tolist(), timeframe_ms)
    bad_rows += [(lines[rejection.position], rejection.reason) for rejection in result.rejected]
    return CsvCandles(result.candles, sorted(bad_rows))


def _looks_like_time(row: list[str]) -> bool:
    return bool(row) and not pd.isna(pd.to_datetime(row[0], utc=True, errors="coerce", format="ISO8601"))


def read_candle_csv(path: Path, timeframe_ms: int = 60_000) -> CsvCandles:
    """Read a candle CSV file; raise CsvFormatError naming the file if it cannot be used."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise CsvFormatError(f"cannot read {path}: {error}") from None
    try:
        result = parse_candle_csv_rows(rows, timeframe_ms)
    except CsvFormatError as error:
        raise CsvFormatError(f"{path}: {error}") from None
    if result.candles.empty:
        raise CsvFormatError(f"{path}: no valid candle in the file")
    return result


class ReplaySource:
    """A candle CSV replayed at `speed` candles per second of a simulated clock."""

    exchange = "replay"

    def __init__(
        self,
        path: Path,
        speed: float = 1.0,
        history: int = 500,
        timeframe_ms: int = 60_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._path = Path(path)
        loaded = read_candle_csv(self._path, timeframe_ms)
        self._candles, self.bad_rows = loaded.candles, loaded.bad_rows
        self._speed, self._history, self._clock = speed, history, clock
        self._started = clock()

    @property
    def label(self) -> str:
        return f"replay: {self._path.name}"

    def symbols(self) -> list[str]:
        return []

    def fetch_closed(self, symbol: str, since_for: SinceFor) -> Fetched:
        shown = min(len(self._candles), self._history + int((self._clock() - self._started) * self._speed))
        visible = self._candles.iloc[:shown]
        since = since_for(self.exchange)
        if since is not None:
            visible = visible[visible["ts"] >= since]
        notes = []
        if self.bad_rows:
            line, reason = self.bad_rows[0]
            notes.append(f"{len(self.bad_rows)} bad CSV rows skipped (first: line {line}: {reason})")
        if shown == len(self._candles):
            notes.append("replay finished")
        return Fetched(self.exchange, visible.reset_index(drop=True), "; ".join(notes) or None)


# --------------------------------------------------------------------------------------- auto


class AutoSource:
    """Live when an exchange answers; otherwise the offline demo, while live is retried in the background."""

    def __init__(self, live: LiveSource, demo: DemoSource, retry_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._live, self._demo = live, demo
        self._retry_seconds, self._clock = retry_seconds, clock
        self._use_live = True
        self._offline_reason = ""
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()

    @property
    def exchange(self) -> str:
        return self._live.exchange if self._use_live else self._demo.exchange

    @property
    def label(self) -> str:
        return self._live.label if self._use_live else self._demo.label

    def symbols(self) -> list[str]:
        return self._live.symbols() if self._use_live else self._demo.symbols()

    def fetch_closed(self, symbol: str, since_for: SinceFor) -> Fetched:
        if self._use_live:
            try:
                return self._live.fetch_closed(symbol, since_for)
            except SourceUnavailable as error:
                self._use_live, self._offline_reason = False, str(error)
                self._next_probe = self._clock() + self._retry_seconds
        self._probe_in_background(symbol)
        fetched = self._demo.fetch_closed(symbol, since_for)
        note = f"live unreachable ({self._offline_reason}); showing the offline demo and retrying live"
        return dataclasses.replace(fetched, note=note)

    def _probe_in_background(self, symbol: str) -> None:
        if self._clock() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        self._next_probe = self._clock() + self._retry_seconds
        threading.Thread(target=self._probe, args=(symbol,), daemon=True, name="chronoprice-live-probe").start()

    def _probe(self, symbol: str) -> None:
        try:
            self._live.fetch_closed(symbol, lambda exchange: None)
            self._use_live = True
        except SourceError as error:
            self._offline_reason = str(error)
        finally:
            self._probe_lock.release()
