"""What the tests share besides fixtures: synthetic candles, the liveness timeout and a wait
that polls until it. (What the bench needs too, such as free ports, a fake clock and the gunicorn
harness, is in chronoprice/testing/.)"""

from __future__ import annotations

import time

from chronoprice.market.demo import demo_candles

SERIES_START_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC
MINUTE_MS = 60_000


LIVENESS_SECONDS = 120  # how long a wait may last before it counts as hung: generous for a machine 3x slower


def wait_until(condition, liveness_seconds: float = LIVENESS_SECONDS, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true (True) or the liveness timeout passes (False)."""
    deadline = time.monotonic() + liveness_seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def make_candles(minutes: int, symbol: str = "BTC/USDT", start_ms: int = SERIES_START_MS):
    """`minutes` consecutive synthetic 1-minute candles (the demo market), deterministic."""
    return demo_candles(symbol, start_ms, start_ms + minutes * MINUTE_MS)
