"""`python -m chronoprice bench --scale`: what one worker and one web instance carry, and what a
market costs the database a day, on the store given (a temporary SQLite file by default, or an
empty PostgreSQL database's URL).

- Worker: N markets of one timeframe ticked by the scheduler through simulated candle closes
  against the local exchange in a process of its own, with ccxt's rate limiter on as against
  Binance: seconds from a close until every market's forecast is stored, so ticks a second, and
  the markets one worker keeps current per timeframe.
- Web: one gunicorn instance as render-scaled.yaml starts it (1 worker, 8 threads, scheduler
  off) serving the API from that store to a rising number of keep-alive clients: requests a
  second and p95 at each level. The clients run on the same machine and take CPU from it.
- Storage: rows and bytes (tables with their indexes) per market a day.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

from chronoprice.bench.metrics import histogram_quantile, observed_between, scrape_latency
from chronoprice.bench.watchlist import START_MS, cold_started_scheduler, exchange_process, start_streaming
from chronoprice.market.markets import market_key
from chronoprice.market.timeframes import TIMEFRAME_MS, timeframe_ms
from chronoprice.model.features import HORIZON
from chronoprice.service.scheduler import SETTLE_SECONDS
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store import open_store, table_bytes
from chronoprice.store.schema import is_database_url
from chronoprice.testing.harness import (
    RunningClock,
    dashboard_refresh_body,
    free_port,
    get_json,
    gunicorn_service,
    local_exchange_env,
)
from chronoprice.web.api.prometheus import start_metrics_server

WORKER_MARKETS = 40
CLOSES = 5
HISTORY_CANDLES = 120  # each market's cold start: enough for a forecast, small enough to start fast
BUDGET_SECONDS = 5.0  # from a close to its forecast stored, the watchlist's budget
CLIENT_LEVELS = (4, 8, 16, 32, 64)
LEVEL_SECONDS = 5.0
P95_TARGET_MS = 200.0
DAY_MS = 86_400_000
TABLES = ("candles", "forecasts")


def bench_markets(count: int, timeframe: str, prefix: str = "S") -> list[tuple[str, str]]:
    return [(f"{prefix}{number}/USDT", timeframe) for number in range(count)]


def worker_run(model_path: Path, store: Path | str, timeframe: str, count: int, closes: int,
               feed: str = "rest") -> dict:
    """Seconds one scheduler takes from each close to every market's forecast stored, and its CPU
    seconds; and each forecast's close-to-stored seconds by the bench's clock beside what a scrape
    of the worker's GET /metrics says of the same ticks (the scheduler's clock runs in real time
    from each close: RunningClock). `feed` "rest": the scheduler fetches each close 2 s after it;
    "stream": the local exchange's kline WebSocket brings each close, stored as it comes
    (service/streamed.py), the scheduler running in its own thread as in the worker."""
    length_ms = timeframe_ms(timeframe)
    markets = bench_markets(count, timeframe, "S" if feed == "rest" else "T")  # each run cold-starts markets of its own
    first_open = START_MS + (HISTORY_CANDLES + 1) * length_ms
    clock_ms = first_open + int(SETTLE_SECONDS * 1000)
    metrics_server = start_metrics_server("127.0.0.1", free_port(), None)
    scrape_url = f"http://127.0.0.1:{metrics_server.server_port}/metrics"
    end_ms = first_open + (closes + 1) * length_ms
    try:
        with exchange_process([symbol for symbol, _ in markets], end_ms, clock_ms, feed == "stream") as (
                url, advance, ws_url):
            clock = RunningClock(clock_ms / 1000)
            scheduler = cold_started_scheduler(url, store, model_path, markets, clock, history=HISTORY_CANDLES)
            if feed == "stream":
                start_streaming(scheduler, url, ws_url, markets)
            scraped_before = scrape_latency(scrape_url, timeframe)
            # The REST feed waits SETTLE_SECONDS after a close before it asks; the stream's close starts the work.
            waited = SETTLE_SECONDS if feed == "rest" else 0.0
            seconds, latencies, cpu_seconds, ticked = [], [], [], 0
            for close in range(1, closes + 1):
                close_seconds = (first_open + close * length_ms) / 1000
                if feed == "stream":
                    cpu_before, started = time.process_time(), time.perf_counter()
                    clock.seconds = close_seconds
                    advance(length_ms // 60_000)
                    finished = scheduler.alerts.wait_for(markets, first_open + (close - 1) * length_ms)
                    cpu_seconds.append(time.process_time() - cpu_before)
                    scheduler.wait_for_checks()  # REST's, a few seconds on: before the next close, as a minute apart
                else:
                    advance(length_ms // 60_000)
                    clock.seconds = close_seconds + waited  # the scheduler's first look
                    cpu_before, started = time.process_time(), time.perf_counter()
                    scheduler.run_once()
                    finished = scheduler.wait_for_ticks()
                    cpu_seconds.append(time.process_time() - cpu_before)
                latencies += [waited + done - started for done in finished.values()]
                seconds.append(max(finished.values()) - started)
                ticked += len(finished)
            observed = observed_between(scraped_before, scrape_latency(scrape_url, timeframe))
            scheduler.stop()
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()
    close_seconds = float(np.median(seconds))
    return {"timeframe": timeframe, "feed": feed, "markets": count, "closes": closes, "ticks": ticked,
            "close_to_all_stored_seconds": round(close_seconds + waited, 2),
            "ticks_per_second": round(count / close_seconds, 1),
            "cpu_ms_per_tick": round(1000 * float(np.sum(cpu_seconds)) / max(ticked, 1), 1),
            "close_to_stored": close_to_stored_figures(latencies, observed)}


def close_to_stored_figures(latencies: list[float], observed: dict) -> dict:
    """Mean and p95 seconds from a close to each forecast stored, by the bench's clock and by the
    /metrics histogram's observations of the same ticks (observed_between), and how many each saw."""
    quantile = histogram_quantile(0.95, observed["buckets"])
    return {"forecasts": len(latencies), "mean_seconds": round(float(np.mean(latencies)), 3),
            "p95_seconds": round(float(np.percentile(latencies, 95)), 3),
            "metrics_observations": int(observed["count"]),
            "metrics_mean_seconds": round(observed["sum"] / observed["count"], 3) if observed["count"] else None,
            "metrics_p95_seconds": None if quantile is None else round(quantile, 3)}


def markets_kept_current(runs: list[dict], waited_seconds: float = SETTLE_SECONDS) -> dict:
    """Per timeframe, from the measured rate of its kind of tick (the model at 1m, the last close
    with its band elsewhere) after the `waited_seconds` before the work starts (REST's settle
    time; none on the stream): markets stored within BUDGET_SECONDS of each close, and markets
    ticked at all before the next close."""
    rate = {run["timeframe"]: run["ticks_per_second"] for run in runs}
    kept = {}
    for timeframe, length_ms in TIMEFRAME_MS.items():
        ticks_per_second = rate.get(timeframe) or rate[next(name for name in rate if name != "1m")]
        kept[timeframe] = {"within_budget": int(ticks_per_second * (BUDGET_SECONDS - waited_seconds)),
                           "before_next_close": int(ticks_per_second * (length_ms / 1000 - waited_seconds))}
    return kept


def storage_per_market_day(store: Path | str) -> dict:
    """Rows and bytes a market adds a day per timeframe, from the bytes per row of the store's
    tables. On PostgreSQL after VACUUM FULL: a forecast row is written, then updated with the
    closes, and the dead versions autovacuum frees for reuse would count twice."""
    db = open_store(store)
    rows = {table: db.execute(f"select count(*) from {table}").fetchone()[0] for table in TABLES}  # noqa: S608 (fixed names)
    written = {table: table_bytes(db, table) for table in TABLES}
    if is_database_url(store):
        db.execute(f"vacuum full {', '.join(TABLES)}")
    per_row = {table: table_bytes(db, table) / max(rows[table], 1) for table in TABLES}
    db.close()
    daily = {}
    for timeframe, length_ms in TIMEFRAME_MS.items():
        candles = DAY_MS // length_ms
        daily[timeframe] = {"candle_rows": candles, "forecast_rows": candles * HORIZON,
                            "bytes": int(candles * (per_row["candles"] + HORIZON * per_row["forecasts"]))}
    return {"bytes_per_row": {table: round(value, 1) for table, value in per_row.items()},
            "bytes_per_row_as_written": {table: round(written[table] / max(rows[table], 1), 1) for table in TABLES},
            "per_market_day": daily}


Request = tuple[str, str, bytes | None]  # method, path, JSON body


def _send(connection: http.client.HTTPConnection, request: Request) -> int:
    """Send one request and read its whole answer; its status."""
    method, path, body = request
    connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
    response = connection.getresponse()
    response.read()
    return response.status


def _client(host: str, port: int, requests: list[Request], first: int, step: int, deadline: float) -> tuple[list[float], int]:
    """Requests over one keep-alive connection until `deadline`: timings (ms) and non-200 answers."""
    connection, timings, failures, index = http.client.HTTPConnection(host, port, timeout=30), [], 0, first
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            failures += _send(connection, requests[index % len(requests)]) != 200
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
            failures += 1
        timings.append((time.perf_counter() - started) * 1000)
        index += step
    connection.close()
    return timings, failures


def api_requests(markets: list[tuple[str, str]]) -> list[Request]:
    """What API users read, spread over the markets."""
    paths = []
    for symbol, timeframe in markets:
        query = f"symbol={quote(symbol)}&timeframe={timeframe}"
        paths += [f"/api/v1/forecast?{query}", f"/api/v1/candles?{query}&limit=100", f"/api/v1/metrics?{query}"]
    return [("GET", path, None) for path in [*paths, "/api/v1/markets", "/api/health"]]


def dashboard_requests(base: str, markets: list[tuple[str, str]]) -> list[Request]:
    """The market page's refresh, as each open page posts it every refresh interval, spread over the markets."""
    _, dependencies = get_json(base + "/_dash-dependencies")
    return [("POST", "/_dash-update-component", json.dumps(dashboard_refresh_body(dependencies, symbol, timeframe)).encode())
            for symbol, timeframe in markets]


def load_levels(base: str, requests: list[Request], levels: tuple[int, ...], level_seconds: float) -> list[dict]:
    """Each of `levels` concurrent clients sending `requests` for `level_seconds`: req/s, p50, p95, failures."""
    address = urlsplit(base)
    measured = []
    for clients in levels:
        deadline = time.monotonic() + level_seconds
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda first: _client(address.hostname, address.port, requests, first, clients, deadline),
                                    range(clients)))
        timings = np.concatenate([np.array(result[0]) for result in results])
        measured.append({"clients": clients, "requests_per_second": round(len(timings) / level_seconds),
                         "p50_ms": round(float(np.percentile(timings, 50)), 1),
                         "p95_ms": round(float(np.percentile(timings, 95)), 1),
                         "failures": int(sum(result[1] for result in results))})
    return measured


def web_levels(model_path: Path, store: Path | str, markets: list[tuple[str, str]],
               levels: tuple[int, ...] = CLIENT_LEVELS, level_seconds: float = LEVEL_SECONDS) -> dict:
    """One web instance under each of `levels` concurrent clients for `level_seconds`, first of
    API reads, then of dashboard refreshes, of `markets`, watched (so it serves them from the
    store, as beside a worker)."""
    db = open_store(store)
    seed_watchlist(db, ",".join(market_key(*market) for market in markets), len(markets))
    db.close()
    symbols = sorted({symbol for symbol, _ in markets})
    with exchange_process(symbols, START_MS + 3 * DAY_MS, START_MS + DAY_MS) as (url, *_), \
            tempfile.TemporaryDirectory() as folder:
        env = local_exchange_env(url, store, 10, CHRONOPRICE_SCHEDULER="false", CHRONOPRICE_MODEL=str(model_path),
                                 CHRONOPRICE_CACHE_DIR=folder)
        with gunicorn_service(env, workers=1, threads=8) as (base, *_):
            api, dashboard = api_requests(markets), dashboard_requests(base, markets)
            load_levels(base, api, (1,), level_seconds)  # untimed warm-up: the model loaded, the first reads cached
            # A page is built once per market and tick, then served from the cache: time the
            # builds one by one, as each new candle brings them, apart from the load.
            address = urlsplit(base)
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
            first_builds = []
            for request in dashboard:
                started = time.perf_counter()
                _send(connection, request)
                first_builds.append((time.perf_counter() - started) * 1000)
            connection.close()
            return {"api": load_levels(base, api, levels, level_seconds),
                    "dashboard": load_levels(base, dashboard, levels, level_seconds),
                    "dashboard_build_ms_median": round(float(np.median(first_builds)), 1)}


def run_scale_benchmark(model_path: Path, store: str | None = None, markets: int = WORKER_MARKETS, closes: int = CLOSES) -> dict:
    """The worker at 1m (the model) and at 1h (the last close with its band), each close fetched
    over REST and then streamed, storage, then one web instance over the 1m markets, all on
    `store` (a temporary SQLite file when None)."""
    with contextlib.ExitStack() as stack:
        if store is None:
            store = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "scale.db"
        elif open_store(store).execute("select 1 from candles limit 1").fetchone():
            raise ValueError("bench --scale writes test markets: give it an empty database")
        runs = [worker_run(model_path, store, timeframe, markets, closes, feed)
                for feed in ("rest", "stream") for timeframe in ("1m", "1h")]
        return {
            "store": "postgresql" if is_database_url(store) else "sqlite",
            "worker": runs,
            "markets_kept_current": {
                "rest": markets_kept_current([run for run in runs if run["feed"] == "rest"]),
                "stream": markets_kept_current([run for run in runs if run["feed"] == "stream"], 0.0)},
            "storage": storage_per_market_day(store),
            "web": web_levels(model_path, store, bench_markets(markets, "1m")),
            "p95_target_ms": P95_TARGET_MS,
        }


def best_level(levels: list[dict]) -> dict | None:
    """The busiest level that kept p95 under the target with no failures."""
    passing = [level for level in levels if level["p95_ms"] < P95_TARGET_MS and level["failures"] == 0]
    return max(passing, key=lambda level: level["requests_per_second"], default=None)


def format_scale(report: dict) -> str:
    lines = [f"store: {report['store']}"]
    for run in report["worker"]:
        lines.append(f"worker, {run['markets']} markets at {run['timeframe']} by {run['feed']}: every forecast stored "
                     f"{run['close_to_all_stored_seconds']} s "
                     f"after the close (median of {run['closes']}); {run['ticks_per_second']} ticks/s; {run['cpu_ms_per_tick']} ms CPU a tick")
        latency = run["close_to_stored"]
        lines.append(f"  close to stored, mean / p95: bench {latency['mean_seconds']} / {latency['p95_seconds']} s "
                     f"({latency['forecasts']} forecasts), /metrics histogram {latency['metrics_mean_seconds']} / "
                     f"{latency['metrics_p95_seconds']} s ({latency['metrics_observations']} observations)")
    for feed, kept_current in report["markets_kept_current"].items():
        lines.append(f"markets one worker keeps current by {feed} (stored within 5 s / before the next close): "
                     + ", ".join(f"{timeframe} {kept['within_budget']} / {kept['before_next_close']}"
                                 for timeframe, kept in kept_current.items()))
    storage = report["storage"]
    lines.append(f"storage: {storage['bytes_per_row']['candles']} B a candle row, {storage['bytes_per_row']['forecasts']} B a forecast row "
                 "(with indexes); a market a day: " + ", ".join(
                     f"{timeframe} {day['candle_rows'] + day['forecast_rows']} rows {day['bytes'] / 1e6:.2f} MB"
                     for timeframe, day in storage["per_market_day"].items()))
    lines.append(f"a market page built from the store (once per tick, then cached): {report['web']['dashboard_build_ms_median']} ms")
    for kind in ("api", "dashboard"):
        levels = report["web"][kind]
        for level in levels:
            lines.append(f"web instance, {kind}, {level['clients']:>2} clients: {level['requests_per_second']} req/s, "
                         f"p50 {level['p50_ms']} ms, p95 {level['p95_ms']} ms, {level['failures']} failures")
        best = best_level(levels)
        lines.append(f"one web instance, {kind}, at p95 < {report['p95_target_ms']:.0f} ms: "
                     + (f"{best['requests_per_second']} req/s ({best['clients']} clients)" if best else "no level met it"))
    return "\n".join(lines)
