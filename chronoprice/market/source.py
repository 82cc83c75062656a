"""What every candle source shares: the interface, the market key and the errors a source raises.

Every source answers `fetch_closed(symbol, timeframe, since_for)` with closed, validated candles
of that timeframe and the exchange name they belong to in the store. `since_for(exchange)` gives the first timestamp the
caller still needs for that exchange (None when it has nothing), so a source that fails over
to another exchange catches up from that exchange's own history.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import pandas as pd

SinceFor = Callable[[str], "int | None"]


@dataclasses.dataclass(frozen=True)
class Market:
    """One market as the store keys it: candles, forecasts and ticks all carry these three."""

    exchange: str
    symbol: str
    timeframe: str = "1m"

    def key(self) -> dict:
        return dataclasses.asdict(self)


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
    """Closed candles to store, and the candle still forming (one row, or None where the source
    cannot tell): shown, never stored, never a model input."""

    exchange: str
    candles: pd.DataFrame
    note: str | None = None
    forming: pd.DataFrame | None = None


class CandleSource(Protocol):
    """`exchange` is where the next fetch goes (it changes on fail-over); `label` is what the
    status badge shows."""

    @property
    def exchange(self) -> str: ...

    @property
    def label(self) -> str: ...

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched: ...

    def symbols(self) -> list[str]: ...
