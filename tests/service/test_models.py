"""Models judged live: the registry on both stores, promotion and rollback driven by synthetic
forecast records whose right answer is known, and what every reader of a market sees while a
shadow forecasts beside the champion."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chronoprice.cli.main import main
from chronoprice.cli.models import RETRAIN_REASON, parse_every
from chronoprice.config import settings_from
from chronoprice.market.demo import DemoSource
from chronoprice.market.source import Market
from chronoprice.model.artifact import artifact_at
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.models import register_shadow
from chronoprice.service.promotion import check_promotions
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store import open_store
from chronoprice.store.records import (
    matured_error_sums,
    read_latest_forecast,
    read_matured_forecasts,
    upsert_candles,
    write_forecasts,
)
from chronoprice.store.registry import (
    ModelEntry,
    change_status,
    checked_through,
    read_changes,
    read_model,
    read_models,
    register_model,
    rollback_champion,
)
from chronoprice.testing.harness import FakeClock
from chronoprice.web.server import create_app
from tests.helpers import make_candles, wait_until

PROJECT = Path(__file__).resolve().parents[2]

MINUTE = 60_000
HORIZON = 10
REQUIRED = {"1m": 300}
MARKETS = [Market("binance", "BTC/USDT", "1m"), Market("binance", "ETH/USDT", "1m")]


def entry(version: str, status: str, at_ms: int = 1, timeframe: str = "1m") -> ModelEntry:
    return ModelEntry(version, timeframe, status, f"models/{version}", {"horizon": HORIZON, "last_ts": 0}, at_ms, at_ms)


def test_the_registry_keeps_one_champion_a_timeframe_and_the_history_of_changes(store):
    assert register_model(store, entry("old", "champion", 10), "deployed with --model")
    assert not register_model(store, entry("old", "shadow", 11), "again"), "a known version keeps its status"
    assert register_model(store, entry("new", "shadow", 20), "trained from the store")
    assert register_model(store, entry("hourly", "champion", 30, "1h"), "deployed")
    assert [(each.version, each.status) for each in read_models(store, "1m")] == [("old", "champion"), ("new", "shadow")]

    change = change_status(store, "new", "champion", "promoted: MAE 0.9 of old's", 40)
    assert change.replaced == "old" and change.previous == "shadow"
    assert read_model(store, "old").status == "retired" and read_model(store, "hourly").status == "champion"
    assert [(each.version, each.status, each.reason) for each in read_changes(store, timeframe="1m")][:2] == [
        ("new", "champion", "promoted: MAE 0.9 of old's"), ("old", "retired", "replaced by new")]

    with pytest.raises(Exception, match="(?i)unique"), store.conn:
        store.execute("update models set status = 'champion' where version = 'old'")
    assert read_model(store, "old").status == "retired", "the store itself refuses a second champion"

    undone = rollback_champion(store, "1m", 50)
    assert (undone.version, undone.replaced) == ("old", "new")
    assert read_model(store, "old").status == "champion" and read_model(store, "old").status_since_ms == 50
    assert read_model(store, "new").status == "retired", "a rolled-back model is not promoted straight back"
    with pytest.raises(ValueError, match="without replacing one"):
        rollback_champion(store, "1h", 60)
    with pytest.raises(ValueError, match="no 5m model is champion"):
        rollback_champion(store, "5m", 60)


def write_record(db, market: Market, versions: dict[str, float], origins: int, seed: int, start_ms: int = 0) -> None:
    """Candles of a random walk and, for each version, a forecast from every origin whose error at
    each step is normal with the version's scale (in units of the walk's step)."""
    random = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(random.normal(0, 0.001, origins + HORIZON)))
    ts = start_ms + np.arange(len(closes)) * MINUTE
    upsert_candles(db, market, pd.DataFrame({"ts": ts, "open": closes, "high": closes, "low": closes, "close": closes,
                                             "volume": 1.0}))
    origin_index = np.repeat(np.arange(origins), HORIZON)
    steps = np.tile(np.arange(1, HORIZON + 1), origins)
    for version, scale in versions.items():
        predicted = closes[origin_index + steps] * (1 + random.normal(0, 0.001 * scale, len(steps)))
        write_forecasts(db, market, pd.DataFrame({
            "origin_ts": ts[origin_index], "step": steps, "target_ts": ts[origin_index + steps],
            "predicted": predicted, "lower": predicted * 0.99, "upper": predicted * 1.01}), version)


def test_a_clearly_better_shadow_is_promoted_and_a_rollback_undoes_it(tmp_path, capsys):
    path = tmp_path / "promote.db"
    db = open_store(path)
    register_model(db, entry("champion", "champion"), "deployed")
    register_model(db, entry("better", "shadow", 2), "trained from the store")
    for number, market in enumerate(MARKETS):
        write_record(db, market, {"champion": 1.0, "better": 0.7}, 400, seed=number)
    changes = check_promotions(db, MARKETS, REQUIRED, now_ms=5)
    assert [(change.version, change.replaced) for change in changes] == [("better", "champion")]
    assert "over 300 matured origins" in changes[0].reason
    assert [each.version for each in read_models(db, "1m", ("champion",))] == ["better"]
    served = read_matured_forecasts(db, MARKETS[0])
    assert set(served["model_version"]) == {"better"}, "every reader of the market now sees the new champion's record"

    assert main(["models", "rollback", "--db", str(path)]) == 0
    assert "champion is the 1m champion again; better is retired" in capsys.readouterr().out
    assert read_model(db, "champion").status == "champion" and set(read_matured_forecasts(db, MARKETS[0])["model_version"]) == {"champion"}
    assert main(["models", "list", "--db", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "rollback of better" in listed and "rolled back to champion" in listed


def test_a_noise_equal_shadow_is_not_promoted_and_each_check_takes_a_fresh_window(tmp_path):
    db = open_store(tmp_path / "equal.db")
    register_model(db, entry("champion", "champion"), "deployed")
    register_model(db, entry("equal", "shadow", 2), "trained from the store")
    write_record(db, MARKETS[0], {"champion": 1.0, "equal": 1.0}, 700, seed=7)
    assert check_promotions(db, MARKETS[:1], REQUIRED, now_ms=5) == []
    checked = db.execute("select value from meta where key = 'promotion_checked:equal'").fetchone()[0]
    assert int(checked) == 699 * MINUTE, "judged on its newest 300 matured origins"
    assert check_promotions(db, MARKETS[:1], REQUIRED, now_ms=6) == []
    assert db.execute("select value from meta where key = 'promotion_checked:equal'").fetchone()[0] == checked, (
        "no origin after the last window: nothing is judged again")
    register_model(db, entry("late", "shadow", 3), "trained from the store")
    write_record(db, MARKETS[1], {"champion": 1.0, "late": 0.5}, 250, seed=8)
    assert check_promotions(db, MARKETS[1:], REQUIRED, now_ms=6) == [], "fewer matured origins than the rule needs"
    assert read_model(db, "equal").status == "shadow" and read_model(db, "late").status == "shadow"


def test_a_shadow_facing_the_last_close_is_promoted_where_no_model_is_champion(tmp_path):
    db = open_store(tmp_path / "naive.db")
    register_model(db, entry("five", "shadow", timeframe="5m"), "trained from the store")
    market = Market("binance", "BTC/USDT", "5m")
    write_record(db, market, {"five": 0.2}, 400, seed=3)
    assert [change.version for change in check_promotions(db, [market], {"5m": 300}, now_ms=5)] == ["five"]


def test_readers_of_a_market_see_the_champion_and_never_a_shadow(tmp_path):
    db = open_store(tmp_path / "served.db")
    market = MARKETS[0]
    write_record(db, market, {"champion": 1.0, "shadow": 3.0}, 50, seed=1)
    assert set(read_latest_forecast(db, market)["model_version"]) <= {"champion", "shadow"}  # no registry: as before
    register_model(db, entry("champion", "champion"), "deployed")
    register_model(db, entry("shadow", "shadow", 2), "trained from the store")
    assert set(read_latest_forecast(db, market)["model_version"]) == {"champion"}
    assert matured_error_sums(db, market, 0)["count"] == 50 * HORIZON
    assert matured_error_sums(db, market, 0, "shadow")["mae"] > matured_error_sums(db, market, 0)["mae"]


@pytest.mark.slow
def test_a_shadow_trained_from_the_store_forecasts_live_beside_the_champion(tmp_path, tiny_model, capsys):
    db_path = tmp_path / "demo.db"
    clock = FakeClock(1_780_000_000.0)
    ticker = Ticker(DemoSource(history=1200, now_ms=lambda: int(clock() * 1000)), db_path, lambda: load_forecaster(tiny_model),
                    clock=clock, progress=False)
    seed_watchlist(ticker.db(), "BTC/USDT@1m", 50)
    ticker.tick("BTC/USDT", force=True)
    ticker.wait_for_histories()
    champion = ticker.forecaster("1m").version
    assert [(each.version, each.status) for each in read_models(ticker.db())] == [(champion, "champion")]

    out = tmp_path / "from-the-demo"
    assert main(["train", "--db", str(db_path), "--symbol", "BTC/USDT", "--epochs", "1", "--folds", "1", "--out", str(out)]) == 0
    assert "as a 1m shadow" in capsys.readouterr().out
    shadow = read_models(ticker.db(), "1m", ("shadow",))[0]
    assert shadow.artifact == str(out) and shadow.details["data"].startswith("store demo BTC/USDT 1m: 1200 candles")
    trained_until = shadow.details["last_ts"]

    for _ in range(14):
        clock.seconds += 60
        ticker.models.refresh()
        status = ticker.tick("BTC/USDT", force=True)
        assert status.error is None and status.model_version == champion
    db = ticker.db()
    first_shadow_origin = db.execute("select min(origin_ts) from forecasts where model_version = ?", [shadow.version]).fetchone()[0]
    assert first_shadow_origin == trained_until + MINUTE, "a shadow's record starts after every candle it was trained on"
    assert read_latest_forecast(db, ticker.market("BTC/USDT")).equals(
        read_latest_forecast(db, ticker.market("BTC/USDT"), champion)), "the page and the API serve the champion"

    client = create_app(settings_from({"source": "demo", "db": str(db_path)}, {}), ticker).server.test_client()
    listed = client.get("/api/v1/models").get_json()["models"]
    assert [(each["version"], each["status"], each["serving"]) for each in listed] == [(champion, "champion", True),
                                                                                   (shadow.version, "shadow", False)]
    shadow_live = listed[1]["live"][0]
    assert shadow_live["symbol"] == "BTC/USDT" and shadow_live["matured_origins"] == 4  # 14 origins, 10 steps to mature
    assert len(shadow_live["steps"]) == HORIZON and shadow_live["steps"][0]["count"] == 13
    assert 0 < shadow_live["mae"] and 0 <= shadow_live["dm_p_value"] <= 1 and listed[0]["live"][0]["matured_origins"] > 1000
    trades = shadow_live["backtest"]
    assert trades["candles"] == 13 and trades["step"] == HORIZON and trades["fee"] == 0.001, "origins whose next candle came"
    closes = pd.DataFrame(ticker.db().execute("select ts, close from candles order by ts").fetchall(), columns=["ts", "close"])
    held = closes[closes["ts"] >= first_shadow_origin]["close"].to_numpy()
    assert trades["strategies"]["buy_and_hold"]["gross_return"] == pytest.approx(held[-1] / held[0] - 1), (
        "buy-and-hold from the shadow's first origin to the newest close")
    one = client.get(f"/api/v1/models/{shadow.version}").get_json()
    assert one["holdout_mae_ratio"] > 0 and [change["reason"] for change in one["changes"]] == [
        "trained from the store with train --db"]
    scheduler = Scheduler(ticker, clock=clock)
    ticker.required_origins = {"1m": 4}
    scheduler.check_promotions([("BTC/USDT", "1m")])
    newest_shared = db.execute("select max(origin_ts) from forecasts where model_version = ? and step = 10 and actual is not null",
                               [shadow.version]).fetchone()[0]
    assert checked_through(db, shadow.version) == newest_shared, "the scheduler judged the shadow's window"
    assert ticker.forecaster("1m").version == read_models(db, "1m", ("champion",))[0].version, "and serves the champion it chose"
    missing = client.get("/api/v1/models/lstm-nothing")
    assert missing.status_code == 404 and "GET /api/v1/models lists them" in missing.get_json()["error"]
    assert client.get("/api/v1/models?timeframe=2m").status_code == 400


@pytest.mark.slow
def test_retraining_runs_in_its_own_process_and_keeps_one_retrained_shadow(tmp_path):
    path = tmp_path / "collected.db"
    db = open_store(path)
    upsert_candles(db, Market("binance", "BTC/USDT", "1m"), make_candles(1500))
    earlier = {"version": "lstm-earlier", "timeframe": "1m", "window": 60, "horizon": HORIZON, "feature": {"name": "log_returns"}}
    assert register_shadow(db, earlier, artifact_at(tmp_path / "earlier"), RETRAIN_REASON, 1, supersede=RETRAIN_REASON)
    by_hand = {**earlier, "version": "lstm-by-hand"}
    assert register_shadow(db, by_hand, artifact_at(tmp_path / "by-hand"), "trained from the store with train --db", 2)

    retrain = subprocess.Popen([sys.executable, "-m", "chronoprice", "retrain", "--every", "12h", "--db", str(path), "--epochs", "1",
                                "--folds", "1", "--out-dir", str(tmp_path / "trained")], cwd=PROJECT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(read_models(db, "1m", ("shadow",))) == 2 and read_model(db, "lstm-earlier").status == "retired",
                          liveness_seconds=300), "the first run starts at once"
        assert retrain.poll() is None, "and the next waits for its time"
        retrain.send_signal(signal.SIGTERM)
        assert retrain.wait(timeout=60) == 0
    finally:
        retrain.kill()
    shadows = {each.version: each for each in read_models(db, "1m", ("shadow",))}
    assert "lstm-by-hand" in shadows, "a shadow someone trained by hand stays"
    assert [change.reason for change in read_changes(db, version="lstm-earlier")][0].startswith("superseded by lstm-")
    assert (tmp_path / "trained").is_dir() and len(list((tmp_path / "trained").glob("binance-btc-usdt-1m-*.onnx"))) == 1


def test_the_retraining_interval_is_checked_before_anything_runs(capsys):
    assert parse_every("24h") == 86_400 and parse_every("30m") == 1_800 and parse_every("1.5d") == 129_600
    assert main(["retrain", "--every", "daily"]) == 2
    assert "give a number and m, h or d" in capsys.readouterr().err


def test_a_shadow_that_cannot_load_is_reported_and_stops_nothing(tmp_path, tiny_model):
    clock = FakeClock(1_780_000_000.0)
    ticker = Ticker(DemoSource(history=200, now_ms=lambda: int(clock() * 1000)), tmp_path / "broken.db",
                    lambda: load_forecaster(tiny_model), clock=clock, progress=False)
    seed_watchlist(ticker.db(), "BTC/USDT@1m", 50)
    (tmp_path / "damaged.json").write_text("{not json")
    register_model(ticker.db(), ModelEntry("lstm-damaged", "1m", "shadow", str(tmp_path / "damaged"),
                                           {"horizon": HORIZON, "last_ts": 0}, 1, 1), "trained from the store")
    status = ticker.tick("BTC/USDT", force=True)
    assert status.error is None and status.forecast_origin_ts == status.newest_ts, "the champion forecasts as ever"
    client = create_app(settings_from({"source": "demo", "db": str(tmp_path / "broken.db")}, {}), ticker).server.test_client()
    shadow = client.get("/api/v1/models/lstm-damaged").get_json()
    assert "damaged.json is unreadable" in shadow["load_error"] and shadow["serving"] is False
    assert ticker.db().execute("select count(*) from forecasts where model_version = 'lstm-damaged'").fetchone()[0] == 0
