"""Binance's spot kline WebSocket stream for the markets of a local BinanceSimulator, on its
clock, so ccxt's own WebSocket client (ccxt.pro) runs against it unchanged: SUBSCRIBE and its
acknowledgement, a kline event for each subscribed forming candle every `push_seconds`, and the
closing event (`"x": true`) of a candle once the clock passes its end. Tests can make it
misbehave: drop every connection, fall silent, send garbage frames, or send closing events of
their own making (`final_events`: a closing event in, the events sent in its place out).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Callable

from aiohttp import WSMsgType, web

from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.testing.exchange import BinanceSimulator, kline_row


def kline_event(exchange_id: str, interval: str, row: list, closed: bool) -> dict:
    """A Binance kline event from a kline array (simulator.kline_row)."""
    return {"e": "kline", "E": int(row[6]), "s": exchange_id, "k": {
        "t": row[0], "T": row[6], "s": exchange_id, "i": interval, "f": 1, "L": 2, "o": row[1], "c": row[4], "h": row[2],
        "l": row[3], "v": row[5], "n": row[8], "x": closed, "q": row[7], "V": row[9], "Q": row[10], "B": "0"}}


class BinanceStreamSimulator:
    def __init__(self, exchange: BinanceSimulator, push_seconds: float = 0.2):
        self.exchange, self.push_seconds = exchange, push_seconds
        self.silent = False  # a stall: connections stay open, nothing is sent
        self.final_events: Callable[[dict], list[dict]] = lambda event: [event]
        self.connections = 0
        self.events_sent = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ----------------------------------------------------------------------- control
    def start(self) -> str:
        threading.Thread(target=self._loop.run_forever, daemon=True, name="binance-stream-simulator").start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self.url

    @property
    def url(self) -> str:
        """What `--exchange-ws-url` takes (ccxt appends a stream number; "/stream" marks it spot)."""
        return f"ws://127.0.0.1:{self._port}/stream/ws"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def disconnect(self) -> None:
        """Close every connection, as a network drop or a server restart does."""
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=10)

    def send_garbage(self, text: str = "<html>502 Bad Gateway</html>") -> None:
        """Send `text` as a frame on every connection."""
        asyncio.run_coroutine_threadsafe(self._broadcast(text), self._loop).result(timeout=10)

    # ---------------------------------------------------------------------- serving
    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        for socket in list(self._sockets):
            await socket.close()

    async def _broadcast(self, text: str) -> None:
        for socket in list(self._sockets):
            await socket.send_str(text)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.connections += 1
        self._sockets.add(socket)
        streams: dict[str, int | None] = {}  # "btcusdt@kline_1m" -> open time of the last candle sent
        pusher = asyncio.ensure_future(self._push(socket, streams))
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                request_body = json.loads(message.data)
                if request_body.get("method") == "SUBSCRIBE":
                    streams.update({name: None for name in request_body.get("params", [])})
                    await socket.send_str(json.dumps({"result": None, "id": request_body.get("id")}))
        finally:
            pusher.cancel()
            self._sockets.discard(socket)
        return socket

    async def _push(self, socket: web.WebSocketResponse, streams: dict[str, int | None]) -> None:
        while not socket.closed:
            if not self.silent:
                for name in list(streams):
                    for event in self._events(name, streams):
                        await socket.send_str(json.dumps(event))
                        self.events_sent += 1
            await asyncio.sleep(self.push_seconds)

    def _events(self, name: str, streams: dict[str, int | None]) -> list[dict]:
        """The closing event of the candle last sent if it has ended, then the forming one's."""
        market_id, _, interval = name.partition("@kline_")
        symbol = next((symbol for symbol in self.exchange.series if symbol.replace("/", "").lower() == market_id), None)
        if symbol is None or interval not in TIMEFRAME_MS:
            return []
        length = TIMEFRAME_MS[interval]
        with self.exchange.lock:
            now = self.exchange.now_ms
        candles = self.exchange._candles(symbol, length).set_index("ts", drop=False)
        exchange_id, forming_ts = symbol.replace("/", ""), now // length * length
        events = []
        previous = streams[name]
        if previous is not None and previous < forming_ts and previous in candles.index:
            final = kline_row(candles.loc[previous], 1.0, length)
            events += self.final_events(kline_event(exchange_id, interval, final, closed=True))
        if forming_ts in candles.index:
            fraction = (now - forming_ts) / length
            events.append(kline_event(exchange_id, interval, kline_row(candles.loc[forming_ts], fraction, length), closed=False))
            streams[name] = forming_ts
        return events
