"""What a tick did, as the status line shows it and as it is saved beside the tick's claim."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from chronoprice.market.candles import COLUMNS
from chronoprice.market.timeframes import timeframe_ms, utc_minute

STATUS_FORMAT = 4  # bump when a field changes meaning; saved statuses of another format are ignored


@dataclasses.dataclass(frozen=True)
class TickStatus:
    source: str
    exchange: str | None
    symbol: str
    timeframe: str = "1m"
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
    forming: list | None = None  # [ts, open, high, low, close, volume] of the candle still forming, as fetched
    feed: str | None = None  # how the scheduler gets the market's candles: "streaming" or "polling"; None on demand
    skill: dict | None = None  # the model's skill guard after this tick (service/guard.py); None where no model serves
    last_close_band: dict | None = None  # while guarded, what is served for the newest origin: origin_ts, close, lower, upper

    @property
    def guarded(self) -> bool:
        return bool(self.skill and self.skill["guarded"])

    def summary(self) -> str:
        newest = utc_minute(self.newest_ts) if self.newest_ts else "none"
        parts = [f"{self.source} {self.symbol} {self.timeframe}: newest candle {newest}, {self.new_candles} new"]
        if self.forecast_origin_ts:
            parts.append(f"forecast by {self.model_version}")
        if self.guarded:
            parts.append("skill guard on: the last close is served")
        parts += [text for text in (self.note, f"error: {self.error}" if self.error else None) if text]
        return "; ".join(parts)


def status_to_json(status: TickStatus) -> str:
    return json.dumps({"format": STATUS_FORMAT, **dataclasses.asdict(status)})


def status_from_json(text: str | None) -> TickStatus | None:
    """The saved status, or None when there is none or it was saved in another format (an older
    or newer ChronoPrice sharing the file): the caller then shows "first update in progress"."""
    if not text:
        return None
    try:
        saved = json.loads(text)
    except ValueError:
        return None
    if not isinstance(saved, dict) or saved.pop("format", None) != STATUS_FORMAT:
        return None
    fields = {field.name for field in dataclasses.fields(TickStatus)}
    try:
        return TickStatus(**{key: value for key, value in saved.items() if key in fields})
    except TypeError:
        return None


def forming_frame(forming: list) -> pd.DataFrame:
    """A forming candle as the status carries it, as a one-row candles frame."""
    return pd.DataFrame([forming], columns=COLUMNS)


def fresh_forming_row(status: TickStatus, now_ms: int) -> list | None:
    """The forming candle the tick fetched while it may still be forming: fetched less than a
    candle ago (by our clock: an exchange's may differ) and after the newest closed candle."""
    forming = status.forming
    fresh = forming is not None and now_ms - status.finished_at_ms < timeframe_ms(status.timeframe)
    return forming if fresh and forming[0] > (status.newest_ts or -1) else None


def forming_row(forming: pd.DataFrame | None) -> list | None:
    """A source's forming candle (one-row frame) as the status carries it: [ts, open, high, low, close, volume]."""
    if forming is None or forming.empty:
        return None
    row = forming.iloc[0]
    return [int(row["ts"]), *(float(row[column]) for column in COLUMNS[1:])]
