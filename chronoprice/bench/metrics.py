"""What the operator's metrics cost a tick, for `bench`: everything a tick and a scheduler pass
record (service/metrics.py), timed over many ticks in a fresh interpreter, once as one process
keeps them and once as under gunicorn (prometheus_client's multiprocess mode, values in files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

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
