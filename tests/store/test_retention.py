import math
import types

import numpy as np
import pandas as pd
import pytest

from chronoprice.cli.main import main
from chronoprice.evaluation.metrics import ADAPTIVE_WINDOW, ERROR_WINDOW_HOURS, overall_metrics
from chronoprice.evaluation.verdicts import REQUIRED_ORIGINS
from chronoprice.market.candles import aggregate_candles
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.market.demo import DEMO_ANCHOR_MS, demo_candles
from chronoprice.market.source import Market
from chronoprice.market.timeframes import timeframe_ms
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.model_record import live_record
from chronoprice.service.retention import RETENTION_SECONDS, Retention, prune_store, retention_cutoff
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.scoring import read_scored
from chronoprice.service.tick import Ticker
from chronoprice.store import store_connections
from chronoprice.store.records import matured_error_sums, origin_mean_errors, upsert_candles, write_forecasts
from chronoprice.store.registry import ModelEntry, register_model
from chronoprice.store.retention import DAY_MS, day_start, fold_scored_steps, step_score_sums, stored_markets
from chronoprice.store.watchlist import replace_watchlist
from chronoprice.testing.exchange import BinanceSimulator
from chronoprice.testing.harness import FakeClock
from chronoprice.web.api.scores import metrics_payload, window_start
from tests.helpers import MINUTE_MS, SERIES_START_MS, make_candles

FIVE_MINUTES = 5 * 60_000
MARKET = Market("binance", "BTC/USDT", "5m")
REQUIRED = {"5m": 50}  # the guard's window, small enough that the live band's decides the span here
KEPT_MS = (ADAPTIVE_WINDOW + 1 + 20) * FIVE_MINUTES  # the band's 361 origins and their steps: 31.75 h, over a day
START_MS = DEMO_ANCHOR_MS - DEMO_ANCHOR_MS % DAY_MS + DAY_MS + 7 * 3_600_000  # three days from 07:00 UTC


def forecasts_of(candles: pd.DataFrame, seed: int, horizon: int = 10) -> pd.DataFrame:
    """A forecast from every candle: its close moved by noise, with a band that sometimes misses."""
    rng = np.random.default_rng(seed)
    origins = np.repeat(candles["ts"].to_numpy(), horizon)
    steps = np.tile(np.arange(1, horizon + 1), len(candles))
    predicted = np.repeat(candles["close"].to_numpy(), horizon) * (1 + rng.normal(0, 0.002, len(origins)))
    width = np.abs(rng.normal(0, 0.003, len(origins))) * predicted
    return pd.DataFrame(
        {
            "origin_ts": origins,
            "step": steps,
            "target_ts": origins + steps * FIVE_MINUTES,
            "predicted": predicted,
            "lower": predicted - width,
            "upper": predicted + width,
        }
    )


def three_days_of_forecasts(db, days: int = 3) -> int:
    """Three days of 5m candles with a champion's and a shadow's forecasts from each; the newest candle."""
    candles = aggregate_candles(demo_candles("BTC/USDT", START_MS, START_MS + days * DAY_MS), FIVE_MINUTES)
    upsert_candles(db, MARKET, candles)
    for version, status, seed in (("champion-a", "champion", 1), ("shadow-b", "shadow", 2)):
        register_model(db, ModelEntry(version, "5m", status, "models/x", {"horizon": 10}, START_MS, START_MS), "test")
        write_forecasts(db, MARKET, forecasts_of(candles, seed), version)
    return int(candles["ts"].iloc[-1])


def every_score(db, newest: int, market: Market = MARKET, versions=("champion-a", "shadow-b"),
                required=REQUIRED) -> dict:
    """What the page, the API, the models page and the skill guard show of the market."""
    day = newest - ERROR_WINDOW_HOURS * 3_600_000
    length = timeframe_ms(market.timeframe)
    scores = {
        f"api window {minutes}": metrics_payload(
            market, step_score_sums(db, market, window_start(newest, minutes)), minutes, window_start(newest, minutes)
        )
        for minutes in (10, 60, 24 * 60, 2 * 24 * 60, 3 * 24 * 60, 30 * 24 * 60)
    }
    scores["page"] = overall_metrics(read_scored(db, market, since_target_ts=day))
    scores["overview"] = matured_error_sums(db, market, day)
    for version in versions:
        scores[f"models page {version}"] = live_record(db, market, version, 10, newest)
        guard_after = newest - (required[market.timeframe] + 20) * length
        scores[f"guard {version}"] = origin_mean_errors(
            db, market, version, 10, guard_after, required[market.timeframe]
        ).tolist()
    return scores


def assert_same(before, after, where="scores"):
    if isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            assert_same(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for index, (one, other) in enumerate(zip(before, after)):
            assert_same(one, other, f"{where}[{index}]")
    elif isinstance(before, float) and not math.isnan(before):
        assert after == pytest.approx(before, rel=1e-9, abs=1e-12), where
    else:
        assert before == after or (before != before and after != after), where


def scored_rows_before(db, target_ts: int) -> int:
    return db.execute(
        "select count(*) from forecasts where target_ts < ? and actual is not null", [target_ts]
    ).fetchone()[0]


def test_pruning_keeps_a_day_of_steps_and_every_score_the_product_shows(store):
    newest = three_days_of_forecasts(store)
    candles = store.execute("select count(*) from candles").fetchone()[0]
    before = every_score(store, newest)

    pruned = prune_store(store, retain_days=1, required_origins=REQUIRED)

    cutoff = newest - KEPT_MS
    assert pruned.markets == 1 and pruned.steps > 0
    assert scored_rows_before(store, cutoff) == 0, "nothing scored older than the retained span is left row by row"
    kept_targets = store.execute("select count(distinct target_ts) from forecasts").fetchone()[0]
    assert kept_targets == KEPT_MS // FIVE_MINUTES + 1 + 10, "the retained span's targets, and the ten not yet come"
    assert store.execute("select count(*) from candles").fetchone()[0] == candles, "candles are kept"
    folded = store.execute("select sum(scored) from forecast_days").fetchone()[0]
    assert int(folded) == pruned.steps
    assert_same(before, every_score(store, newest))
    assert before["api window 4320"]["matured"] > before["api window 1440"]["matured"] * 2, (
        "the long window reaches the folded days"
    )
    assert prune_store(store, retain_days=1, required_origins=REQUIRED).steps == 0, "a second pass finds nothing"


def test_a_fold_takes_whole_target_candles_a_batch_and_leaves_unscored_steps(store):
    newest = three_days_of_forecasts(store)
    store.execute("delete from candles where ts = ?", [START_MS + DAY_MS])  # a gap: the steps ending there are unscored
    store.execute("update forecasts set actual = null where target_ts = ?", [START_MS + DAY_MS])
    cutoff = newest - DAY_MS

    def steps_per_target():
        return dict(store.execute("select target_ts, count(*) from forecasts group by target_ts").fetchall())

    whole, batches = steps_per_target(), []
    while batch := fold_scored_steps(store, MARKET, cutoff, batch=500):
        batches.append(batch)
        assert batch <= 500 + 20, "a batch, and the rest of its last target candle (10 steps of two models)"
        assert all(whole[target] == count for target, count in steps_per_target().items()), "whole target candles"
    assert len(batches) > 2 and sum(batches) == sum(
        int(row[0]) for row in store.execute("select sum(scored) from forecast_days").fetchall()
    )
    assert store.execute("select count(*) from forecasts where target_ts = ?", [START_MS + DAY_MS]).fetchone()[0] == 20


def test_the_guard_promotion_and_band_windows_are_kept_when_longer_than_the_retained_days():
    newest = 1_800_000_000_000
    assert retention_cutoff(newest, "1m", 1, {"1m": 100}) == newest - DAY_MS
    assert retention_cutoff(newest, "5m", 1, {"5m": 1000}) == newest - (1000 + 20) * FIVE_MINUTES, (
        "a 5m market keeps the guard's 1,000 origins (3.5 days)")
    hourly = retention_cutoff(newest, "1h", 1, {"1h": 300})
    assert hourly == newest - (ADAPTIVE_WINDOW + 1 + 20) * 3_600_000, (
        "an hourly market keeps the 361 origins its live band adapts to (16 days), more than the guard's 300")
    assert retention_cutoff(newest, "1h", 30, {"1h": 300}) == newest - 30 * DAY_MS


def test_a_window_over_a_day_starts_at_midnight_and_a_shorter_one_where_asked():
    newest = START_MS + 3 * DAY_MS + 17 * 60_000
    assert window_start(newest, 60) == newest - 3_600_000
    assert window_start(newest, 24 * 60) == newest - DAY_MS
    assert window_start(newest, 25 * 60) == day_start(newest - 25 * 3_600_000) == START_MS + 2 * DAY_MS - 7 * 3_600_000


def test_stored_markets_are_found_without_scanning(store):
    three_days_of_forecasts(store)
    other = Market("kraken", "ETH/USD", "1h")
    write_forecasts(
        store, other, forecasts_of(demo_candles("ETH/USDT", START_MS, START_MS + 3_600_000), 3), "champion-a"
    )
    assert stored_markets(store) == [MARKET, other]


def test_prune_runs_one_pass_from_the_command_line_keeping_the_guards_window(db, db_path, capsys):
    newest = three_days_of_forecasts(db, days=5)
    assert main(["prune", "--db", str(db_path), "--retain-days", "1"]) == 0
    folded = int(db.execute("select sum(scored) from forecast_days").fetchone()[0])
    assert capsys.readouterr().out == (
        f"folded {folded:,} scored forecast steps older than 1 day into daily sums (1 markets); candles are kept\n"
    )
    guards_window = newest - (REQUIRED_ORIGINS["5m"] + 20) * FIVE_MINUTES  # 3.5 days at 5m, more than the one retained
    assert folded > 0 and scored_rows_before(db, guards_window) == 0
    assert scored_rows_before(db, guards_window + FIVE_MINUTES) > 0


def test_the_scheduler_prunes_off_the_tick_path_once_a_pass_is_due(db, db_path):
    newest = three_days_of_forecasts(db)
    now = [1_000.0]
    ticker = types.SimpleNamespace(db=store_connections(db_path), required_origins=REQUIRED)  # a connection a thread
    retention = Retention(ticker, 1, clock=lambda: now[0])
    assert retention.run_if_due() is None and scored_rows_before(db, newest - KEPT_MS) > 0, (
        "not due before its first pass"
    )
    now[0] += 600
    assert retention.run_if_due().result(timeout=60).steps > 0
    assert scored_rows_before(db, newest - KEPT_MS) == 0
    now[0] += 600
    assert retention.run_if_due().result(timeout=60).steps == 0, (
        "every pass RETENTION_SECONDS apart, finding nothing new"
    )
    retention.stop()


@pytest.mark.slow
@pytest.mark.parametrize("timeframe, closes", [("1m", 60), ("5m", 24)])
def test_a_scheduler_pruning_as_it_ticks_three_days_shows_every_score_as_one_that_never_pruned(
        tmp_path, tiny_model, timeframe, closes):
    """Two schedulers side by side on one exchange and one fast clock: a cold start with three days
    of history (forecast as a cold start does), then closes ticked one by one. One prunes with
    --retain-days 1, a pass every RETENTION_SECONDS of its clock beside the ticks; the other keeps
    every row. The page, the API, the models page, the guard and the served band must not tell them
    apart. At 1m the (1m) model is served and the day decides the span; at 5m the last close with
    its band, and the band's 361 origins do."""
    market = Market("binance", "BTC/USDT", timeframe)
    length = timeframe_ms(timeframe)
    history = 3 * DAY_MS // length
    now = SERIES_START_MS + (history + 1) * length + 30_000
    clock = FakeClock(now / 1000)
    minutes = length // MINUTE_MS
    with BinanceSimulator({"BTC/USDT": make_candles((history + closes + 20) * minutes)}, now_ms=now) as exchange:
        schedulers = []
        for name in ("pruned", "kept"):
            source = LiveSource("binance", exchange.url, (), history=history, backoff_seconds=0.0, sleep=lambda s: None)
            ticker = Ticker(source, tmp_path / f"{name}.db", lambda: load_forecaster(tiny_model, "native"),
                            timeframe=timeframe, clock=clock, progress=False)
            ticker.required_origins = {timeframe: 50}  # a guard's window under a day: it never decides the span here
            replace_watchlist(ticker.db(), [("BTC/USDT", timeframe)], "test")
            scheduler = Scheduler(ticker, clock=clock)
            scheduler.run_once()
            scheduler.wait_for_ticks()
            ticker.wait_for_histories()
            schedulers.append(scheduler)
        pruned, kept = schedulers
        pruned.retention = Retention(pruned.ticker, 1, clock=clock)
        most_targets, passes = 0, 0
        for _ in range(closes):
            exchange.advance(minutes)
            clock.seconds += length / 1000
            for scheduler in schedulers:
                scheduler.run_once()
                scheduler.wait_for_ticks()
            passes += pruned.retention.wait_for_pass() is not None
            if passes:
                most_targets = max(most_targets, pruned.ticker.db().execute(
                    "select count(distinct target_ts) from forecasts").fetchone()[0])
        pruned.retention.stop()
        newest = int(exchange.closed_candles("BTC/USDT", timeframe)["ts"].iloc[-1])
        for scheduler in schedulers:
            scheduler.stop()
    dbs = [scheduler.ticker.db() for scheduler in schedulers]
    closes_a_pass = math.ceil(RETENTION_SECONDS * 1000 / length)
    assert passes == closes // closes_a_pass, "a pass every RETENTION_SECONDS of the clock"
    kept_ms = retention_cutoff(newest, timeframe, 1, pruned.ticker.required_origins)
    kept_targets = (newest - kept_ms) // length + 1 + 10  # the retained span's targets, and the ten still to come
    kept_store = kept.ticker.db()
    assert kept_store.execute("select count(distinct target_ts) from forecasts").fetchone()[0] > 2 * DAY_MS // length
    assert most_targets <= kept_targets + closes_a_pass, (
        "from the first pass on, the span and the closes between passes")
    folded = int(dbs[0].execute("select sum(scored) from forecast_days").fetchone()[0])
    steps = [db.execute("select count(*) from forecasts").fetchone()[0] for db in dbs]
    assert folded > DAY_MS // length * 10 and folded + steps[0] == steps[1], "every step deleted is in a daily sum"
    served = [db.execute("select model_version, origin_ts, step, predicted, lower, upper from forecasts "
                         "where origin_ts >= ? order by 1, 2, 3", [newest - 6 * 3_600_000]).fetchall() for db in dbs]
    assert served[0] == served[1], "the last hours' forecasts, their adapted bands included, are the same"
    versions = [row[0] for row in dbs[1].execute("select distinct model_version from forecasts").fetchall()]
    scores = [every_score(db, newest, market, versions, pruned.ticker.required_origins) for db in dbs]
    assert_same(scores[1], scores[0])
