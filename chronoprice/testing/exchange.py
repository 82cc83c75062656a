"""A local HTTP server that speaks Binance's public spot REST API, for tests and the benchmark.

It serves a known candle series on a clock the caller moves, including the in-progress candle
the way Binance does, so ccxt's own request and parsing code runs against it unchanged. Faults
(status codes, bodies, headers, delays) can be queued to make it misbehave.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from chronoprice.market.candles import aggregate_candles, partial_candle
from chronoprice.market.timeframes import TIMEFRAME_MS

MINUTE_MS = 60_000


@dataclasses.dataclass
class Fault:
    """One misbehaviour for the next request whose path contains `path` (and that asks for
    `symbol`, in the exchange's spelling such as BTCUSDT, if given)."""

    path: str = "/klines"
    status: int = 500
    body: str = '{"code":-1000,"msg":"simulated fault"}'
    headers: dict = dataclasses.field(default_factory=dict)
    delay_seconds: float = 0.0
    times: int = 1
    symbol: str | None = None


def _market_entry(symbol: str) -> dict:
    base, quote = symbol.split("/")
    return {
        "symbol": base + quote,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def kline_row(candle, close_fraction: float = 1.0, length_ms: int = MINUTE_MS) -> list:
    """A Binance kline array; `close_fraction` < 1 gives the in-progress version of the candle."""
    shown = partial_candle(candle, close_fraction) if close_fraction < 1.0 else candle
    ts, open_, high, low, close, volume = (shown[column] for column in ["ts", "open", "high", "low", "close", "volume"])
    return [
        int(ts), f"{open_:.8f}", f"{high:.8f}", f"{low:.8f}", f"{close:.8f}", f"{volume:.8f}",
        int(ts) + length_ms - 1, f"{volume * close:.8f}", 100, f"{volume / 2:.8f}", f"{volume * close / 2:.8f}", "0",
    ]


class BinanceSimulator:
    """Serve `series` (symbol -> 1-minute candles DataFrame) on 127.0.0.1 at a settable exchange
    clock, in every interval of TIMEFRAME_MS (longer ones aggregated from the minutes)."""

    def __init__(self, series: dict[str, pd.DataFrame], now_ms: int | None = None):
        self.series = {symbol: frame.reset_index(drop=True) for symbol, frame in series.items()}
        first = min(int(frame["ts"].iloc[0]) for frame in self.series.values())
        self.now_ms = now_ms if now_ms is not None else first + 600 * MINUTE_MS + 30_000
        self.faults: collections.deque[Fault] = collections.deque()
        self.requests: collections.Counter[str] = collections.Counter()
        self.kline_requests: collections.Counter[tuple[str, str]] = collections.Counter()  # by (BTCUSDT, 1m)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._aggregated: dict[tuple[str, int, int], pd.DataFrame] = {}

    # ----------------------------------------------------------------------- control
    def start(self) -> str:
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                try:
                    simulator._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away mid-reply, as a process killed by a test does

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="binance-simulator").start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def advance(self, minutes: float = 1.0) -> None:
        with self.lock:
            self.now_ms += int(minutes * MINUTE_MS)

    def queue(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def closed_candles(self, symbol: str, timeframe: str = "1m") -> pd.DataFrame:
        """What the exchange has closed by now: the candles a correct client ends up storing."""
        length = TIMEFRAME_MS[timeframe]
        frame = self._candles(symbol, length)
        return frame[frame["ts"] + length <= self.now_ms].reset_index(drop=True)

    # ---------------------------------------------------------------------- serving
    def _take_fault(self, path: str, symbol: str | None) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.path in path and fault.symbol in (None, symbol):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self.lock:
            self.requests[parts.path] += 1
            if parts.path.endswith("/klines"):
                self.kline_requests[(query.get("symbol", ""), query.get("interval", "1m"))] += 1
        fault = self._take_fault(parts.path, query.get("symbol"))
        if fault:
            time.sleep(fault.delay_seconds)
            if fault.status:
                return self._send(request, fault.status, fault.body, fault.headers)
        if parts.path.endswith("/exchangeInfo"):
            spot = parts.path.startswith("/api/")
            symbols = [_market_entry(symbol) for symbol in self.series] if spot else []
            return self._send(request, 200, json.dumps({"timezone": "UTC", "serverTime": self.now_ms, "rateLimits": [], "exchangeFilters": [], "symbols": symbols}))
        if parts.path == "/api/v3/time":
            return self._send(request, 200, json.dumps({"serverTime": self.now_ms}))
        if parts.path == "/api/v3/ping":
            return self._send(request, 200, "{}")
        if parts.path == "/api/v3/klines":
            return self._klines(request, query)
        self._send(request, 404, json.dumps({"code": -1, "msg": f"no route {parts.path}"}))

    def _klines(self, request, query: dict) -> None:
        by_id = {symbol.replace("/", ""): symbol for symbol in self.series}
        if query.get("symbol") not in by_id:
            return self._send(request, 400, json.dumps({"code": -1121, "msg": "Invalid symbol."}))
        if query.get("interval", "1m") not in TIMEFRAME_MS:
            return self._send(request, 400, json.dumps({"code": -1120, "msg": "Invalid interval."}))
        length = TIMEFRAME_MS[query.get("interval", "1m")]
        frame = self._candles(by_id[query["symbol"]], length)
        limit = min(int(query.get("limit", 500)), 1000)
        with self.lock:
            now = self.now_ms
        visible = frame[frame["ts"] <= now]
        if "startTime" in query:
            visible = visible[visible["ts"] >= int(query["startTime"])].head(limit)
        else:
            visible = visible.tail(limit)
        rows = []
        for candle in visible.to_dict("records"):
            fraction = min(1.0, (now - candle["ts"]) / length)
            rows.append(kline_row(candle, fraction, length))
        self._send(request, 200, json.dumps(rows))

    def _candles(self, symbol: str, length_ms: int) -> pd.DataFrame:
        """The series in candles of `length_ms`; the forming one is served as a fraction of its
        whole candle by the clock, as for minutes."""
        minutes = self.series[symbol]
        if length_ms == MINUTE_MS:
            return minutes
        key = (symbol, length_ms, id(minutes))  # a test may swap the series for one with holes
        if key not in self._aggregated:
            self._aggregated[key] = aggregate_candles(minutes, length_ms)
        return self._aggregated[key]

    @staticmethod
    def _send(request, status: int, body: str, headers: dict | None = None) -> None:
        payload = body.encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json;charset=UTF-8")
        request.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            request.send_header(key, str(value))
        request.end_headers()
        request.wfile.write(payload)
