"""The rig the tests and the benchmarks share; the product's stages never import it.
harness.py: ports, processes, gunicorn as render.yaml starts it, Chromium, a webhook receiver;
exchange.py: a local Binance REST API that ccxt's own code talks to; stream.py: its WebSocket
stream of candles."""
