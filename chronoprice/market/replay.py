"""A CSV of 1-minute candles replayed as if it were a live market, at a chosen speed; longer
timeframes are aggregated from the minutes shown so far."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from chronoprice.market.candles import aggregate_candles
from chronoprice.market.files import read_candle_csv
from chronoprice.market.source import Fetched, SinceFor
from chronoprice.market.timeframes import MINUTE_MS, timeframe_ms


class ReplaySource:
    """A 1-minute candle CSV replayed at `speed` candles per second of a simulated clock,
    starting with `history` of them shown."""

    exchange = "replay"

    def __init__(
        self,
        path: Path,
        speed: float = 1.0,
        history: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._path = Path(path)
        loaded = read_candle_csv(self._path, MINUTE_MS)
        self._candles, self.bad_rows = loaded.candles, loaded.bad_rows
        self._speed, self._history, self._clock = speed, history, clock
        self._started = clock()

    @property
    def label(self) -> str:
        return f"replay: {self._path.name}"

    def symbols(self) -> list[str]:
        return []

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched:
        shown = min(len(self._candles), self._history + int((self._clock() - self._started) * self._speed))
        visible = aggregate_candles(self._candles.iloc[:shown], timeframe_ms(timeframe))
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
