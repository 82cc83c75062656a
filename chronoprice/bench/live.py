"""The forming candle from the exchange to a browser's screen, as a user of the Render
configuration sees it: the local exchange and its kline stream in this process, on the wall
clock; `gunicorn app:server` (one worker, its scheduler streaming the watched market); the
market page in headless Chromium. Each sample moves the exchange's clock to now, which changes
the forming candle's close in the stream's next push, and times until the page has painted the
new last price.

Run by `python -m chronoprice bench` (`--live-samples`); `python -m chronoprice.bench.live MODEL
SAMPLES` prints the same JSON alone. It needs the test requirements (Playwright) and Debian's
chromium.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
from playwright.sync_api import sync_playwright

from chronoprice.market.demo import demo_candles
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    get_json,
    gunicorn_service,
    local_exchange_env,
    wait_for_history,
)
from chronoprice.testing.stream import BinanceStreamSimulator
from chronoprice.web.dashboard.layout import LIVE_POLL_MS

SYMBOL = "BTC/USDT"
MINUTE_MS = 60_000
HISTORY_MINUTES = 1500  # the app's 24-hour cold start, and some
PUSH_SECONDS = 0.05  # the stream's push interval: a close changed by the clock is sent within this
LIVE_PATH = f"/api/v1/live?symbol={SYMBOL}&timeframe=1m"

# Every change of the last-price card, with the time of the animation frame that paints it. The
# whole page is observed: a refresh may replace the card itself.
RECORD_PAINTS = """() => {
    window.chronopricePaints = [];
    let shown = null;
    new MutationObserver(() => {
        const card = document.querySelector('#kpi-last-price');
        const text = card ? card.innerText : null;
        if (text === shown) { return; }
        shown = text;
        requestAnimationFrame(() => window.chronopricePaints.push([text, Date.now()]));
    }).observe(document.body, {childList: true, characterData: true, subtree: true});
}"""
PAINTED_AFTER = """([text, after]) => {
    const found = window.chronopricePaints.find(([shown, ms]) => shown === text && ms >= after);
    return found ? found[1] : null;
}"""


def sync_clock(exchange: BinanceSimulator) -> float:
    """Move the exchange's clock to now; the time it moved."""
    moved = time.time()
    exchange.advance((moved * 1000 - exchange.now_ms) / MINUTE_MS)
    return moved


@contextlib.contextmanager
def clock_following(exchange: BinanceSimulator, every_seconds: float = 0.5) -> Iterator[None]:
    """Keep the exchange's clock on the wall clock while the service starts: the scheduler ticks
    on the wall clock, and an exchange lagging it would close candles late."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(every_seconds):
            sync_clock(exchange)

    thread = threading.Thread(target=follow, daemon=True, name="exchange-clock")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _streamed_candle(base: str) -> dict | None:
    status, body = get_json(base + LIVE_PATH, timeout=5)
    return body["candle"] if status == 200 and body.get("via") == "stream" else None


def _new_close(base: str, previous: float | None, forming_ts: int, timeout_seconds: float = 3.0) -> float | None:
    """The streamed close of the candle opened at `forming_ts` once it differs from `previous`;
    None if it did not change in time. Just after a boundary the stream first sends the closed
    candle's last state, which the page shows only until the new candle's first push."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        candle = _streamed_candle(base)
        if candle is not None and candle["ts"] == forming_ts and candle["close"] != previous:
            return candle["close"]
        time.sleep(0.02)
    return None


def _wait_for_stream(base: str, timeout_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while _streamed_candle(base) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not stream the forming candle within two minutes")
        time.sleep(0.2)


def _message_bytes(base: str) -> int:
    with urllib.request.urlopen(base + LIVE_PATH, timeout=5) as response:
        return len(response.read())


def run_screen_latency(model_path: Path, samples: int = 40, seed: int = 0) -> dict:
    """Exchange event to the painted last price, over `samples` price changes."""
    now_ms = int(time.time() * 1000)
    first = now_ms // MINUTE_MS * MINUTE_MS - HISTORY_MINUTES * MINUTE_MS
    candles = demo_candles(SYMBOL, first, now_ms + 120 * MINUTE_MS)
    with BinanceSimulator({SYMBOL: candles}, now_ms=now_ms) as exchange, \
            BinanceStreamSimulator(exchange, push_seconds=PUSH_SECONDS) as stream, \
            tempfile.TemporaryDirectory() as folder:
        env = local_exchange_env(exchange.url, Path(folder) / "live.db", 10, CHRONOPRICE_EXCHANGE_WS_URL=stream.url,
                                 CHRONOPRICE_WATCH=f"{SYMBOL}@1m", CHRONOPRICE_MODEL=str(model_path))
        with gunicorn_service(env) as (base, _, _, _), sync_playwright() as playwright:
            with clock_following(exchange):
                _wait_for_stream(base)
                wait_for_history(Path(folder) / "live.db", expected_origins=1440 - 59)
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + f"/market?symbol={SYMBOL}&timeframe=1m")
            page.wait_for_selector("#kpi-last-price")
            page.evaluate(RECORD_PAINTS)
            latencies, skipped, rng = [], 0, random.Random(seed)
            while len(latencies) < samples:
                time.sleep(rng.uniform(0.3, 1.7))  # out of step with the page's one-second poll
                previous = (_streamed_candle(base) or {}).get("close")  # the clock has not moved since its last push
                moved = sync_clock(exchange)
                close = _new_close(base, previous, int(moved * 1000) // MINUTE_MS * MINUTE_MS)
                if close is None or f"{close:,.2f}" == f"{previous:,.2f}":
                    skipped += 1  # the price did not move by a cent: nothing new to paint
                    continue
                painted = page.wait_for_function(PAINTED_AFTER, arg=[f"{close:,.2f}", moved * 1000], timeout=30_000)
                latencies.append(painted.json_value() / 1000 - moved)
            message_bytes = _message_bytes(base)
            browser.close()
    return {
        "samples": samples, "skipped_unmoved": skipped, "stream_push_seconds": PUSH_SECONDS, "page_poll_seconds": LIVE_POLL_MS / 1000,
        "event_to_screen_seconds_p50": round(float(np.percentile(latencies, 50)), 3),
        "event_to_screen_seconds_p95": round(float(np.percentile(latencies, 95)), 3),
        "event_to_screen_seconds_max": round(float(np.max(latencies)), 3),
        "live_message_bytes": message_bytes,
    }


if __name__ == "__main__":
    print(json.dumps(run_screen_latency(Path(sys.argv[1]), int(sys.argv[2]))))
