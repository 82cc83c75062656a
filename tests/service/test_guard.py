"""The skill guard on a real tick path: the local exchange, a SQLite file, the tiny model with its
forecast deliberately broken and then healed; what the API, the page and the overview serve meanwhile."""

import dataclasses

import numpy as np
import pytest

from chronoprice.config import settings_from
from chronoprice.market.ccxt_rest import LiveSource
from chronoprice.model.features import window_closes
from chronoprice.model.forecasters import load_forecaster
from chronoprice.service.guard import MaturedOrigins, served_forecast
from chronoprice.service.overview import summarise_market
from chronoprice.service.tick import Ticker
from chronoprice.store.records import read_latest_forecast
from chronoprice.testing.harness import FakeClock
from chronoprice.web.dashboard.callbacks import read_view
from chronoprice.web.dashboard.market_text import render_text
from chronoprice.web.dashboard.overview import overview_row
from chronoprice.web.server import create_app

SYMBOL = "BTC/USDT"
HISTORY = 300  # candles on a cold start: 241 origins forecast, 231 with every step matured
REQUIRED = 200  # matured origins the guard judges here (2,000 at 1m in the app)


class Switchable:
    """The tiny model, its forecast replaced: 1 % above the last close while broken, the last
    close itself once healed (as good as naive, which is what lifts the guard)."""

    def __init__(self, model):
        self.model, self.broken = model, True

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forecast(self, windows, quantiles=None):
        forecast = self.model.forecast(windows, quantiles)
        last = window_closes(np.asarray(windows))[:, -1:]
        mean = np.repeat(last * (1.01 if self.broken else 1.0), self.model.horizon, axis=1)
        return {**forecast, "mean": mean}


@pytest.fixture
def guarded_ticker(exchange, db_path, tiny_model):
    champion = Switchable(load_forecaster(tiny_model, "litert"))
    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=2)
    clock = FakeClock()
    ticker = Ticker(source, db_path, lambda: champion, refresh_seconds=10, clock=clock)
    ticker.required_origins = {"1m": REQUIRED}
    return ticker, champion, clock


def next_minutes(ticker, exchange, clock, minutes):
    exchange.advance(minutes)
    clock.seconds += 60 * minutes
    return ticker.tick(SYMBOL)


@pytest.mark.slow
def test_a_broken_champion_is_guarded_within_the_window_and_served_again_once_healed(guarded_ticker, exchange):
    ticker, champion, clock = guarded_ticker
    first = ticker.tick(SYMBOL)
    assert first.skill == {**first.skill, "guarded": False}  # its history is still being forecast
    ticker.wait_for_histories()
    broken = next_minutes(ticker, exchange, clock, 1)
    assert broken.skill["guarded"] and broken.skill["origins"] == REQUIRED
    assert broken.skill["mae_ratio"] > 1 and broken.skill["p_value"] < 0.05
    assert "skill guard on" in broken.summary()
    market = ticker.market(SYMBOL, "binance")
    stored, served = read_latest_forecast(ticker.db(), market), served_forecast(ticker.db(), market, broken)
    last_close = float(ticker.db().execute("select close from candles order by ts desc limit 1").fetchone()[0])
    assert stored["predicted"].iloc[0] == pytest.approx(last_close * 1.01)  # the model still forecasts, and is scored
    assert np.allclose(served["predicted"], last_close)
    assert (served["lower"] < last_close).all() and (served["upper"] > last_close).all()
    assert served["upper"].is_monotonic_increasing, "the band widens with the step"
    older_band = dataclasses.replace(broken, last_close_band={**broken.last_close_band, "origin_ts": 0})
    assert served_forecast(ticker.db(), market, older_band).empty, "never the model's forecast while it is guarded"

    champion.broken = False
    kept = MaturedOrigins()
    window = kept.newest(ticker.db(), market, champion.version, champion.horizon, broken.newest_ts, REQUIRED)
    assert window.shape == (REQUIRED, 2) and (window[:, 0] > window[:, 1]).mean() > 0.9
    still = next_minutes(ticker, exchange, clock, 100)
    assert still.skill["guarded"], "half a window of healthy forecasts does not lift the guard"
    healed = next_minutes(ticker, exchange, clock, REQUIRED)
    assert not healed.skill["guarded"] and healed.skill["mae_ratio"] <= 1
    assert served_forecast(ticker.db(), market, healed).equals(read_latest_forecast(ticker.db(), market))
    # Kept between reads, the window moves on by the origins that matured since: as read whole.
    moved_on = kept.newest(ticker.db(), market, champion.version, champion.horizon, healed.newest_ts, REQUIRED)
    read_whole = MaturedOrigins().newest(ticker.db(), market, champion.version, champion.horizon, healed.newest_ts, REQUIRED)
    assert np.array_equal(moved_on, read_whole) and np.allclose(moved_on[:, 0], moved_on[:, 1])


@pytest.mark.slow
def test_the_api_and_the_page_say_when_the_last_close_is_served(guarded_ticker, exchange, db_path):
    ticker, champion, clock = guarded_ticker
    ticker.tick(SYMBOL)
    ticker.wait_for_histories()
    status = next_minutes(ticker, exchange, clock, 1)
    assert status.skill["guarded"]
    text = render_text(read_view(ticker, status))
    row = overview_row(summarise_market(ticker, SYMBOL, "1m"), ticker.now_ms())
    assert row["forecast"].endswith("last close: skill guard")
    assert text["model-badge"].startswith("skill guard: the model's last 200 matured forecasts were worse than the last close")
    settings = settings_from({"source": "live", "exchange_url": exchange.url, "db": str(db_path), "scheduler": "false"}, {})
    client = create_app(settings, ticker, env={}).server.test_client()
    body = client.get(f"/api/v1/forecast?symbol={SYMBOL}").get_json()
    assert body["served"] == "last_close" and body["skill_guard"]["guarded"] is True
    assert {step["close"] for step in body["steps"]} == {body["steps"][0]["close"]}
