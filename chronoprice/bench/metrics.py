"""The operator's metrics in the bench: what they cost a tick (everything a tick and a scheduler
pass record, service/metrics.py, timed over many ticks in a fresh interpreter, once as one process
keeps them and once as under gunicorn: prometheus_client's multiprocess mode, values in files),
and the close-to-stored histogram as a scrape of GET /metrics reads it, to set beside the bench's
own clock (bench/scale.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from chronoprice.service.metrics import record_schedule, record_tick
from chronoprice.service.status import TickStatus

TICKS = 20_000


def metrics_ms_per_tick(ticks: int = TICKS) -> dict:
    """Milliseconds the metrics add to one tick, in one process and in multiprocess mode."""
    with tempfile.TemporaryDirectory() as folder:
        return {
            mode: _timed_in_child(ticks, {"PROMETHEUS_MULTIPROC_DIR": folder} if mode == "multiprocess" else {})
            for mode in ("single_process", "multiprocess")
        }


def scrape_latency(url: str, timeframe: str) -> dict:
    """The close-to-stored histogram of `timeframe` in the /metrics text at `url`: its count, sum
    and cumulative bucket counts by upper edge (zeros before anything is observed)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    scraped = {"count": 0.0, "sum": 0.0, "buckets": {}}
    for family in text_string_to_metric_families(text):
        if family.name != "chronoprice_close_to_stored_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("timeframe") != timeframe:
                continue
            if sample.name.endswith("_bucket"):
                scraped["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith(("_count", "_sum")):
                scraped[sample.name.rsplit("_", 1)[1]] = sample.value
    return scraped


def observed_between(before: dict, after: dict) -> dict:
    """What the histogram observed between two scrapes (scrape_latency), bucket by bucket."""
    return {"count": after["count"] - before["count"], "sum": after["sum"] - before["sum"],
            "buckets": {edge: count - before["buckets"].get(edge, 0.0) for edge, count in after["buckets"].items()}}


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """The quantile of cumulative bucket counts as Prometheus' histogram_quantile estimates it:
    linear within the bucket it falls in (the first from 0), the highest finite edge past the last."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0.0
    if not total:
        return None
    rank, lower, below = quantile * total, 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if edge == float("inf"):
                return lower
            return lower + (edge - lower) * (rank - below) / max(buckets[edge] - below, 1e-12)
        lower, below = edge, buckets[edge]
    return lower


def _timed_in_child(ticks: int, env: dict) -> float:
    # A fresh interpreter: prometheus_client picks its value store (memory or files) when it is
    # first imported, which in this process has happened already.
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"} | env
    result = subprocess.run(
        [sys.executable, "-m", "chronoprice.bench.metrics", str(ticks)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["ms_per_tick"]


def time_recording(ticks: int) -> float:
    """Milliseconds per tick of what a watched market's tick and its scheduler pass record."""
    statuses = [
        TickStatus(
            "live",
            "binance",
            f"M{number}/USDT",
            "1m",
            newest_ts=0,
            new_candles=1,
            forecast_origin_ts=0,
            finished_at_ms=62_000,
            feed="polling",
            skill={"guarded": number % 7 == 0},
        )
        for number in range(50)
    ]
    started = time.perf_counter()
    for number in range(ticks):
        record_tick(statuses[number % 50])
        record_schedule(True, 50, 0, 0)
    return (time.perf_counter() - started) * 1000 / ticks


if __name__ == "__main__":
    print(json.dumps({"ms_per_tick": round(time_recording(int(sys.argv[1])), 5)}))
