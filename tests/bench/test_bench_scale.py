"""`bench --scale`, run small: its worker and web measurements on a real store, and the arithmetic
that turns them into capacity."""

import pytest

from chronoprice.bench.metrics import histogram_quantile, observed_between
from chronoprice.bench.scale import (
    bench_markets,
    best_level,
    format_scale,
    markets_kept_current,
    run_scale_benchmark,
    storage_per_market_day,
    web_levels,
    worker_run,
)
from chronoprice.service.scheduler import SETTLE_SECONDS
from chronoprice.store import open_store, table_bytes

pytestmark = pytest.mark.slow  # the scale benchmark's runs: the whole suite runs it, `-m "not slow"` does not


def test_capacity_per_timeframe_follows_the_measured_tick_rate_and_the_candle_length():
    kept = markets_kept_current([{"timeframe": "1m", "ticks_per_second": 20.0}, {"timeframe": "1h", "ticks_per_second": 40.0}])
    assert kept["1m"] == {"within_budget": 60, "before_next_close": 1160}
    assert kept["5m"] == {"within_budget": 120, "before_next_close": 11920}, "5m ticks cost what 1h ticks do"
    assert kept["1h"]["before_next_close"] == 40 * 3598
    rates = [{"timeframe": "1m", "ticks_per_second": 20.0}, {"timeframe": "1h", "ticks_per_second": 40.0}]
    streamed = markets_kept_current(rates, waited_seconds=0.0)
    assert streamed["1m"] == {"within_budget": 100, "before_next_close": 1200}, "no settle wait on the stream"


def test_the_histograms_quantile_is_read_as_prometheus_reads_it():
    buckets = {1.0: 0.0, 2.0: 50.0, 5.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == 2.0
    assert histogram_quantile(0.95, buckets) == pytest.approx(2.0 + 3.0 * 45 / 50)
    assert histogram_quantile(0.99, {1.0: 10.0, 5.0: 10.0, float("inf"): 20.0}) == 5.0, "past the last edge: that edge"
    assert histogram_quantile(0.95, {1.0: 0.0, float("inf"): 0.0}) is None
    before = {"count": 2.0, "sum": 4.0, "buckets": {2.0: 1.0, 5.0: 2.0, float("inf"): 2.0}}
    after = {"count": 5.0, "sum": 13.0, "buckets": {2.0: 1.0, 5.0: 4.0, float("inf"): 5.0}}
    assert observed_between(before, after) == {"count": 3.0, "sum": 9.0,
                                               "buckets": {2.0: 0.0, 5.0: 2.0, float("inf"): 3.0}}


def test_the_best_web_level_is_the_busiest_under_the_p95_target_without_failures():
    levels = [{"clients": 4, "requests_per_second": 300, "p95_ms": 20.0, "failures": 0},
              {"clients": 8, "requests_per_second": 500, "p95_ms": 150.0, "failures": 0},
              {"clients": 16, "requests_per_second": 600, "p95_ms": 150.0, "failures": 3},
              {"clients": 32, "requests_per_second": 650, "p95_ms": 250.0, "failures": 0}]
    assert best_level(levels)["clients"] == 8
    assert best_level(levels[3:]) is None


def test_one_worker_and_one_web_instance_measured_on_a_real_store(tmp_path, tiny_model):
    store = tmp_path / "scale.db"
    run = worker_run(tiny_model, store, "1m", 2, closes=2)
    assert run["ticks"] == 4 and run["ticks_per_second"] > 0 and run["cpu_ms_per_tick"] > 0
    latency = run["close_to_stored"]
    assert latency["metrics_observations"] == latency["forecasts"] == 4, "the scrape saw every forecast of the run"
    assert latency["metrics_mean_seconds"] > SETTLE_SECONDS, "the histogram's clock ran through the ticks"
    assert latency["metrics_mean_seconds"] == pytest.approx(latency["mean_seconds"], rel=0.10), (
        "the /metrics histogram agrees with the bench's own clock")
    db = open_store(store)
    candles = db.execute("select count(*) from candles").fetchone()[0]
    assert candles == 2 * (120 + 2), "each market's cold start and one candle a close"
    assert table_bytes(db, "candles") > 0 and table_bytes(db, "forecasts") > table_bytes(db, "candles")
    storage = storage_per_market_day(store)
    assert storage["per_market_day"]["1m"]["candle_rows"] == 1440 and storage["per_market_day"]["1m"]["forecast_rows"] == 14_400

    web = web_levels(tiny_model, store, bench_markets(2, "1m"), levels=(2,), level_seconds=0.5)
    for kind in ("api", "dashboard"):
        (level,) = web[kind]
        assert level["failures"] == 0 and level["requests_per_second"] > 0, kind
    assert web["dashboard_build_ms_median"] > 0
    streamed = worker_run(tiny_model, store, "1m", 2, closes=2, feed="stream")
    assert streamed["ticks"] == 4 and streamed["feed"] == "stream"
    latency = streamed["close_to_stored"]
    assert latency["metrics_observations"] == latency["forecasts"] == 4, "each streamed close forecast once"
    assert latency["metrics_mean_seconds"] == pytest.approx(latency["mean_seconds"], rel=0.10)
    assert latency["mean_seconds"] < SETTLE_SECONDS, "stored as the close streamed in, with no settle wait"
    kept = {"rest": markets_kept_current([run, {**run, "timeframe": "1h"}]),
            "stream": markets_kept_current([streamed, {**streamed, "timeframe": "1h"}], 0.0)}
    report = {"store": "sqlite", "worker": [run, streamed], "markets_kept_current": kept,
              "storage": storage, "web": web, "p95_target_ms": 200.0}
    assert "one web instance, dashboard, at p95 < 200 ms" in format_scale(report)

    with pytest.raises(ValueError, match="empty database"):
        run_scale_benchmark(tiny_model, str(store))
