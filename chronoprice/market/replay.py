"""A candle file (candle_files.py: CSV or freqtrade JSON, any timeframe) replayed as if it were a
live market, at a chosen speed; longer timeframes are aggregated from the candles shown so far."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from chronoprice.market.candle_files import read_candle_file
from chronoprice.market.candles import aggregate_candles
from chronoprice.market.source import Fetched, SinceFor, SourceError
from chronoprice.market.timeframes import timeframe_ms


class ReplaySource:
    """A candle file replayed at `speed` of its candles per second of a simulated clock, starting
    with `history` of them shown; timeframes finer than the file's have no candles."""

    exchange = "replay"

    def __init__(
        self,
        path: Path,
        speed: float = 1.0,
        history: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._path = Path(path)
        loaded = read_candle_file(self._path)
        self._candles, self.bad_rows, self.file_timeframe = loaded.candles, loaded.bad_rows, loaded.timeframe
        self._speed, self._history, self._clock = speed, history, clock
        self._started = clock()

    @property
    def label(self) -> str:
        return f"replay: {self._path.name}"

    def symbols(self) -> list[str]:
        return []

    def fetch_closed(self, symbol: str, timeframe: str, since_for: SinceFor) -> Fetched:
        if timeframe_ms(timeframe) < timeframe_ms(self.file_timeframe):
            raise SourceError(f"the replay file holds {self.file_timeframe} candles: no {timeframe} candles can be made from them")
        shown = min(len(self._candles), self._history + int((self._clock() - self._started) * self._speed))
        visible = aggregate_candles(self._candles.iloc[:shown], timeframe_ms(timeframe), timeframe_ms(self.file_timeframe))
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
