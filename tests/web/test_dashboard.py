import dataclasses

import numpy as np
import pandas as pd
import pytest

from chronoprice.config import settings_from
from chronoprice.evaluation.metrics import diebold_mariano, overall_metrics
from chronoprice.service.build import build_ticker
from chronoprice.service.overview import SPARK_CANDLES, change_pct, summarise_watchlist
from chronoprice.service.scoring import read_scored
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store.records import read_candles
from chronoprice.store.watchlist import read_watchlist
from chronoprice.web.access import write_refusal
from chronoprice.web.dashboard.callbacks import (
    check_symbol,
    read_view,
    render_view,
    watch_message,
)
from chronoprice.web.dashboard.chart_view import ranges_after, recent_ranges, shown_ranges, view_after, with_user_ranges
from chronoprice.web.dashboard.figures import (
    Horizon,
    error_figure,
    kpis,
    predicted_candles,
    price_figure,
    step_error_figure,
    with_indicators,
)
from chronoprice.web.dashboard.market_text import coverage_detail, render_text, source_badge, verdict
from chronoprice.web.dashboard.overview import (
    number_text,
    overview_row,
    sort_after_click,
    sorted_rows,
    sparkline,
)
from chronoprice.web.dashboard.urls import PageView, market_search, page_view
from tests.helpers import MINUTE_MS, make_candles, wait_until


def forecast_after(candles, drift=0.0005):
    origin = int(candles["ts"].iloc[-1])
    last = float(candles["close"].iloc[-1])
    predicted = last * np.exp(drift * np.arange(1, 11))
    return pd.DataFrame({"origin_ts": origin, "step": np.arange(1, 11), "target_ts": origin + MINUTE_MS * np.arange(1, 11),
                         "predicted": predicted, "lower": predicted * 0.99, "upper": predicted * 1.01, "model_version": "v"})


def matured_rows(count=50):
    rng = np.random.default_rng(1)
    actual = 100 + rng.normal(0, 1, count)
    return pd.DataFrame({"origin_ts": np.arange(count) * MINUTE_MS, "step": np.tile([1, 10], count // 2),
                         "target_ts": np.arange(count) * MINUTE_MS + MINUTE_MS, "predicted": actual + 0.5,
                         "lower": actual - 1, "upper": actual + 1, "actual": actual, "origin_close": actual + 1.0,
                         "naive": actual + 1.0})


TEN_MINUTES = Horizon(10, "1m")


def traces(figure, name):
    return [trace for trace in figure.data if trace.name == name]


def test_price_figure_draws_60_real_and_10_hollow_predicted_candles_with_band():
    candles = make_candles(120)
    figure = price_figure(candles, forecast_after(candles), "dark")
    real, predicted = traces(figure, "candles")[0], traces(figure, "forecast")[0]
    assert len(real.x) == 60 and len(predicted.x) == 10
    assert predicted.increasing.fillcolor == predicted.decreasing.fillcolor == "rgba(0,0,0,0)"
    assert predicted.open[0] == pytest.approx(candles["close"].iloc[-1]), "the first forecast candle opens at the last close"
    np.testing.assert_allclose(predicted.open[1:], predicted.close[:-1])
    band = traces(figure, "90 % interval")[0]
    assert band.fill == "tonexty"
    assert any(shape.type == "line" and shape.line.dash == "dash" for shape in figure.layout.shapes), "origin divider"
    assert traces(figure, "volume")[0].type == "bar"
    assert figure.layout.uirevision == "price"
    assert "predicted close" in predicted.text[0] and "90 % interval" in predicted.text[0]


def test_price_figure_overlays_and_rsi_pane():
    candles = make_candles(200)
    figure = price_figure(candles, forecast_after(candles), "light", overlays=["sma20", "ema50", "bollinger", "rsi"])
    names = {trace.name for trace in figure.data}
    assert {"SMA 20", "EMA 50", "Bollinger upper", "Bollinger lower", "RSI 14"} <= names
    assert traces(figure, "RSI 14")[0].yaxis == "y3"
    assert figure.layout.paper_bgcolor == "#ffffff"
    assert not np.isnan(np.array(traces(figure, "EMA 50")[0].y, dtype=float)).any(), "indicators warmed up on hidden history"


def test_indicators_match_their_definitions():
    candles = make_candles(100)
    frame = with_indicators(candles)
    assert frame["sma20"].iloc[-1] == pytest.approx(candles["close"].tail(20).mean())
    assert frame["bollinger_upper"].iloc[-1] == pytest.approx(frame["sma20"].iloc[-1] + 2 * candles["close"].tail(20).std(ddof=0))
    assert frame["rsi14"].dropna().between(0, 100).all()


def test_predicted_candles_chain_opens_to_previous_close():
    candles = make_candles(5)
    predicted = predicted_candles(100.0, forecast_after(candles))
    assert predicted["open"].iloc[0] == 100.0
    assert (predicted["high"] >= predicted[["open", "close"]].max(axis=1)).all()


def test_empty_states_say_what_is_coming():
    assert "Waiting for the first candles" in price_figure(make_candles(0), pd.DataFrame(), "dark").layout.annotations[0].text
    assert error_figure(pd.DataFrame(), "dark", TEN_MINUTES).layout.annotations[0].text == "First forecasts mature in 10 minutes"
    assert error_figure(pd.DataFrame(), "dark", Horizon(4, "1m")).layout.annotations[0].text == "First forecasts mature in 4 minutes"
    assert "once forecasts mature" in step_error_figure(pd.DataFrame(), "dark", TEN_MINUTES).layout.annotations[0].text


def test_error_figures_show_steps_1_and_10_and_model_beside_naive():
    matured = matured_rows()
    over_time = error_figure(matured, "dark", TEN_MINUTES)
    assert [trace.name for trace in over_time.data] == ["step 1 error (%)", "step 10 error (%)"]
    by_step = step_error_figure(matured, "dark", TEN_MINUTES)
    assert by_step.layout.xaxis.title.text == "steps ahead (one step: 1 minute)"
    assert [trace.name for trace in by_step.data] == ["LSTM", "naive (last close)"]
    assert list(by_step.data[0].y) == pytest.approx([0.5, 0.5])
    assert list(by_step.data[1].y) == pytest.approx([1.0, 1.0])


def test_kpis_and_verdict():
    candles = make_candles(70)
    numbers = kpis(candles, forecast_after(candles), matured_rows())
    assert numbers["last_price"] == candles["close"].iloc[-1]
    assert numbers["change_pct"] == pytest.approx(100 * (np.exp(0.005) - 1))
    assert numbers["mae_ratio"] == pytest.approx(0.5) and numbers["coverage"] == pytest.approx(1.0)
    assert kpis(candles.iloc[:0], pd.DataFrame(), pd.DataFrame())["mae_ratio"] is None
    matured = matured_rows()
    assert verdict(matured, TEN_MINUTES) == ("Forecasts 10 minutes ahead are 50.0 % better than repeating the last close; "
                                             "1 minute ahead: 50.0 % better than it (50 matured forecast steps, last 24 hours).")
    worse = matured.assign(predicted=matured["actual"] + 1.002)
    assert verdict(worse, TEN_MINUTES).startswith("Forecasts 10 minutes ahead are 0.2 % worse than repeating the last close")
    assert verdict(matured.iloc[:0], Horizon(3, "1m")) == "No forecast has matured yet: the first are scored 3 minutes after they are made."



def view_of(ticker, symbol: str, timeframe: str):
    """What the market page shows after the market's tick, as the refresh callback reads it."""
    return read_view(ticker, ticker.tick(symbol, timeframe))

@pytest.fixture
def demo_ticker(tmp_path, tiny_model):
    settings = settings_from({"source": "demo", "db": str(tmp_path / "view.db"), "model": str(tiny_model)}, {})
    return build_ticker(settings)


def test_render_view_fills_every_output_from_a_real_tick(demo_ticker):
    outputs = render_view(view_of(demo_ticker, "BTC/USDT", "1m"), "dark", [])
    assert outputs["source-badge"] == "offline demo"
    assert outputs["banner-hidden"] is False and outputs["banner"].startswith("Offline demo")
    assert outputs["model-badge"].startswith("model lstm-")
    assert len(traces(outputs["price-chart"], "forecast")[0].x) == 10
    assert outputs["error-chart"].layout.annotations[0].text == "First forecasts mature in 10 minutes"
    assert outputs["kpi-forecast-title"] == "Forecast in 10 minutes", "the horizon is the model's"
    assert outputs["kpi-coverage-detail"] == "of closes inside the 90 % band"
    assert outputs["kpi-mae-ratio"] == "–" and outputs["status-message"] == ""
    assert outputs["newest-candle"].startswith("newest candle ") and outputs["updated-at"] > 0


def test_the_forming_candle_is_drawn_and_priced_but_never_stored(demo_ticker):
    view = view_of(demo_ticker, "BTC/USDT", "1m")
    outputs = render_view(view, "dark", [])
    (forming,) = traces(outputs["price-chart"], "forming (not closed)")
    newest_closed = read_candles(demo_ticker.db(), demo_ticker.market("BTC/USDT", "demo"))["ts"].iloc[-1]
    assert pd.Timestamp(forming.x[0]) == pd.Timestamp(newest_closed + MINUTE_MS, unit="ms")
    assert outputs["kpi-last-price"] == f"{forming.close[0]:,.2f}" and outputs["kpi-last-price-detail"].endswith("still forming")


def test_a_timeframe_without_a_skilled_model_shows_the_last_close_and_says_so(demo_ticker):
    outputs = render_view(view_of(demo_ticker, "BTC/USDT", "15m"), "dark", [])
    assert outputs["model-badge"] == "last close: no model has shown skill on 15m candles"
    assert outputs["kpi-forecast-title"] == "Forecast in 150 minutes"
    assert outputs["price-title"].startswith("BTC/USDT 15m: last 60 candles")
    forecast = traces(outputs["price-chart"], "forecast")[0]
    assert len(set(forecast.close)) == 1, "every step is the last close"
    candles = traces(outputs["price-chart"], "candles")[0]
    assert all(pd.Timestamp(x).minute % 15 == 0 for x in candles.x)


def test_render_view_shows_a_failing_source_as_a_status_message(demo_ticker):
    view = view_of(demo_ticker, "BTC/USDT", "1m")
    failing = dataclasses.replace(view, status=dataclasses.replace(view.status, error="binance unreachable after 3 attempts"))
    outputs = render_view(failing, "dark", [])
    assert outputs["status-message"] == "⚠ binance unreachable after 3 attempts. Showing the last good data."
    assert len(traces(outputs["price-chart"], "candles")[0].x) == 60, "the last good candles stay on screen"


def test_the_page_claims_nothing_before_the_first_candles_and_warns_of_a_narrow_band(demo_ticker):
    view = view_of(demo_ticker, "BTC/USDT", "1m")
    assert render_text(view)["source-badge"] == "offline demo" and render_text(view)["model-badge"].startswith("model ")
    empty = dataclasses.replace(view, candles=view.candles.iloc[:0], matured=view.matured.iloc[:0],
                                status=dataclasses.replace(view.status, newest_ts=None))
    outputs = render_text(empty)
    assert outputs["source-badge"] == "" and outputs["model-badge"] == "", "no source or model claimed before candles"
    assert outputs["status-message"] == "Waiting for the first candles from offline demo…"
    failing = dataclasses.replace(empty, status=dataclasses.replace(empty.status, error="binance unreachable"))
    assert render_text(failing)["status-message"] == "Waiting for the first candles from offline demo: binance unreachable."
    assert source_badge(failing.status, has_candles=True) == "offline demo: not answering"
    horizon = Horizon(10, "1m")
    origins = pd.DataFrame({"origin_ts": np.arange(250)})
    assert coverage_detail(0.84, origins, horizon).startswith("⚠ too narrow: 84 % of closes inside the 90 % band, over 250")
    assert coverage_detail(0.86, origins, horizon) == "of closes inside the 90 % band", "within 5 points"
    assert coverage_detail(0.5, origins.head(199), horizon) == "of closes inside the 90 % band", "too few origins to say"


def test_check_symbol_switches_or_explains(demo_ticker):
    assert check_symbol(demo_ticker, "eth/usdt", "BTC/USDT") == ("ETH/USDT", "")
    symbol, message = check_symbol(demo_ticker, "DOGE/EUR", "ETH/USDT")
    assert symbol == "ETH/USDT" and "has no DOGE/EUR" in message and "Still showing ETH/USDT" in message
    symbol, message = check_symbol(demo_ticker, "bitcoin", "ETH/USDT")
    assert symbol == "ETH/USDT" and "is not a symbol" in message


@pytest.mark.slow
def test_page_outputs_are_built_once_per_tick_for_every_viewer(demo_ticker):
    from flask import Flask
    from flask_caching import Cache

    from chronoprice.web.dashboard.callbacks import REFRESH_OUTPUTS, cached_outputs

    def last_time(outputs):
        return list(outputs["price-chart"]["data"][0]["x"])[-1]

    cache = Cache(Flask(__name__), config={"CACHE_TYPE": "SimpleCache"})
    status = demo_ticker.tick("BTC/USDT", "1m")
    first = cached_outputs(cache, demo_ticker, status, "dark", [], 600)
    assert {component for component, _ in REFRESH_OUTPUTS} <= set(first) | {"banner"}
    db = demo_ticker.db()
    with db.conn:
        db.execute("delete from candles where symbol = 'BTC/USDT' and timeframe = '1m' and ts = ?", [status.newest_ts])
    assert last_time(cached_outputs(cache, demo_ticker, status, "dark", [], 600)) == last_time(first), "same tick: from the cache"
    assert cached_outputs(cache, demo_ticker, status, "light", [], 600)["price-title"] == first["price-title"]
    ticked = dataclasses.replace(status, finished_at_ms=status.finished_at_ms + 1)
    assert last_time(cached_outputs(cache, demo_ticker, ticked, "dark", [], 600)) != last_time(first), "a new tick: read again"


def test_overview_sparkline_sorting_and_24h_change_are_plain_arithmetic():
    assert sparkline([1.0, 2.0, 3.0], [3.0, 4.0]) == "▁▃▆┆▆█"
    assert sparkline([], []) == "" and sparkline([5.0, 5.0], []) == "▁▁"
    rows = [{"market": "B", "change": 1.5}, {"market": "A", "change": None}, {"market": "C", "change": -2.0}]
    assert [row["market"] for row in sorted_rows(rows, {"key": "change", "descending": False})] == ["C", "B", "A"]
    assert [row["market"] for row in sorted_rows(rows, {"key": "change", "descending": True})] == ["B", "C", "A"], "empty last"
    assert sort_after_click({"key": "market", "descending": False}, "market") == {"key": "market", "descending": True}
    assert sort_after_click({"key": "market", "descending": True}, "price") == {"key": "price", "descending": False}
    day_first = make_candles(1)
    assert change_pct(day_first, 110.0) == pytest.approx(100 * (110.0 / day_first["open"].iloc[0] - 1))
    assert change_pct(day_first.iloc[:0], 110.0) is None, "less than a day stored: no 24 h change"


def test_overview_summarises_every_watched_market_from_the_store(demo_ticker):
    demo_ticker.tick("BTC/USDT", "1m")
    demo_ticker.tick("BTC/USDT", "15m")
    demo_ticker.wait_for_histories()  # so forecasts have matured
    lstm, naive = summarise_watchlist(demo_ticker, [("BTC/USDT", "1m"), ("BTC/USDT", "15m")])
    assert lstm.status == "ok" and lstm.model_version.startswith("lstm-") and len(lstm.closes) == SPARK_CANDLES
    assert len(lstm.forecast) == 10 and lstm.lower < lstm.forecast[-1] < lstm.upper and lstm.change_24h_pct is not None
    market = demo_ticker.market("BTC/USDT", "demo", "1m")
    day_began = lstm.newest_ts + MINUTE_MS - 24 * 3_600_000
    day_first = read_candles(demo_ticker.db(), market, start=day_began, end=day_began)
    assert lstm.change_24h_pct == pytest.approx(100 * (lstm.last_price / day_first["open"].iloc[0] - 1))
    rows = read_scored(demo_ticker.db(), market, since_target_ts=lstm.newest_ts - 24 * 3_600_000)
    assert lstm.mae_ratio == pytest.approx(overall_metrics(rows)["mae_ratio"]) and lstm.mae_ratio is not None
    assert lstm.coverage == pytest.approx(overall_metrics(rows)["coverage"]), "summed in the database as in pandas"
    last = rows[rows["step"] == 10]
    assert lstm.dm_p_value == pytest.approx(diebold_mariano((last["predicted"] - last["actual"]).to_numpy(), (last["naive"] - last["actual"]).to_numpy(), 10)[1])
    assert naive.model_version == "naive" and set(naive.forecast) == {naive.last_price}
    row = overview_row(naive, demo_ticker.now_ms())
    assert row["path"] == "/market?symbol=BTC%2FUSDT&timeframe=15m" and row["mae_ratio"] is None and "last close" in row["forecast"]
    assert lstm.matured_origins == rows["origin_ts"].nunique() > 0
    hour_old = dataclasses.replace(naive, timeframe="1h", newest_ts=demo_ticker.now_ms() - 65 * 60_000)
    assert overview_row(hour_old, demo_ticker.now_ms())["age_minutes"] == 5, "the newest 1h candle closed 5 minutes ago"
    narrow = dataclasses.replace(lstm, coverage=0.8, matured_origins=200)
    assert overview_row(narrow, demo_ticker.now_ms())["undercovered"] and not overview_row(lstm, demo_ticker.now_ms())["undercovered"]
    assert [number_text(-0.001, 2), number_text(-0.5, 2), number_text(-1234.5, 1)] == ["0.00", "-0.50", "-1,234.5"]


def test_the_url_is_the_view_and_what_it_gets_wrong_is_said():
    view = page_view("/market", "?symbol=eth/usdt&timeframe=1h&overlays=rsi,sma20", "BTC/USDT", "1m")
    assert view == PageView("market", "ETH/USDT", "1h", ("rsi", "sma20"))
    assert page_view("/market", market_search("ETH/USDT", "1h", ["sma20", "rsi"]), "BTC/USDT", "1m").overlays == ("sma20", "rsi")
    assert market_search("ETH/USDT", "15m") == "?symbol=ETH%2FUSDT&timeframe=15m"
    wrong = page_view("/market", "?symbol=nonsense&timeframe=7m&overlays=macd", "BTC/USDT", "1m")
    assert (wrong.symbol, wrong.timeframe, wrong.overlays) == ("BTC/USDT", "1m", ())
    assert ["not a symbol" in wrong.problems[0], "“7m”" in wrong.problems[1], "macd" in wrong.problems[2]] == [True] * 3
    assert "showing 1m" in wrong.problems[1], "a bad value says what is shown instead"
    assert page_view("/models/", None, "BTC/USDT", "1m") == PageView("models", "BTC/USDT", "1m", ())
    assert page_view("/elsewhere", "?timeframe=", "BTC/USDT", "1m").page == "overview"
    assert len(page_view("/market", "?symbol=" + "A" * 60_000, "BTC/USDT", "1m").problems[0]) < 200, "echoes a bounded part"


def test_the_overview_form_watches_and_explains(demo_ticker):
    limit = 3
    seed_watchlist(demo_ticker.db(), "BTC/USDT@1m,ETH/USDT@1m", limit)
    assert watch_message(demo_ticker, "sol/usdt", "5m", limit).startswith("Watching SOL/USDT 5m: its history is being fetched")
    assert wait_until(lambda: demo_ticker.stored_status("SOL/USDT", "5m").newest_ts is not None), \
        "a newly watched market is ticked at once, not at its next close"
    demo_ticker.wait_for_histories()
    assert watch_message(demo_ticker, "SOL/USDT", "5m", limit) == "SOL/USDT 5m is watched already."
    assert "BASE/QUOTE" in watch_message(demo_ticker, "bitcoin", "1m", limit)
    assert watch_message(demo_ticker, "DOGE/EUR", "1m", limit) == "offline demo does not list DOGE/EUR."
    assert "watchlist is full (3 of 3" in watch_message(demo_ticker, "BNB/USDT", "1h", limit)
    assert read_watchlist(demo_ticker.db()) == [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("SOL/USDT", "5m")]


def test_watchlist_writes_are_refused_to_strangers_and_to_a_wrong_token():
    assert write_refusal("127.0.0.1", None, None) is None
    assert write_refusal("203.0.113.9", None, None)[0] == 403
    assert write_refusal("127.0.0.1", None, "a-long-admin-token-for-tests")[0] == 401, "with a token set, loopback needs it too"
    assert write_refusal("203.0.113.9", "a-long-admin-token-for-tests", "a-long-admin-token-for-tests") is None
    assert "a-long" not in write_refusal("203.0.113.9", "wrong", "a-long-admin-token-for-tests")[1]


def test_the_users_zoom_is_kept_from_relayout_events_and_applied_to_every_x_axis():
    zoomed = ranges_after(None, {"xaxis2.range[0]": "2026-12-07 10:00", "xaxis2.range[1]": "2026-12-07 11:00",
                                 "yaxis.range[0]": 100.0, "yaxis.range[1]": 110.0})
    assert zoomed == {"x": ["2026-12-07 10:00", "2026-12-07 11:00"], "yaxis": [100.0, 110.0]}
    assert ranges_after(zoomed, {"autosize": True}) == zoomed, "a resize is not a zoom"
    assert ranges_after(zoomed, {"xaxis.autorange": True, "yaxis.autorange": True}) == {}
    assert ranges_after(None, {"xaxis.range": ["a", "b"]}) == {"x": ["a", "b"]}
    assert ranges_after(None, {"xaxis.range[0]": "x" * 1000, "xaxis.range[1]": "b", "yaxis.range": "bad"}) == {}, \
        "what the chart cannot have sent is dropped"
    figure = {"data": [], "layout": {"xaxis": {"matches": "x2"}, "xaxis2": {}, "yaxis": {"side": "right"}}}
    applied = with_user_ranges(figure, zoomed)
    assert applied["layout"]["xaxis"] == {"matches": "x2", "range": ["2026-12-07 10:00", "2026-12-07 11:00"], "autorange": False}
    assert applied["layout"]["xaxis2"]["range"] == zoomed["x"] and applied["layout"]["yaxis"]["range"] == [100.0, 110.0]
    assert "range" not in figure["layout"]["xaxis"], "the cached figure is not changed"
    assert with_user_ranges(figure, {}) is figure


def test_a_phone_opens_the_chart_on_the_last_20_candles_and_the_forecast(demo_ticker):
    view = view_of(demo_ticker, "BTC/USDT", "1m")
    figure = render_view(view, "dark", [])["price-chart"].to_dict()
    start, end = (pd.Timestamp(each, tz="UTC") for each in recent_ranges(figure)["x"])
    shown = view.candles["ts"].iloc[-20]
    assert start == pd.Timestamp(shown - 30_000, unit="ms", tz="UTC")
    assert end == pd.Timestamp(view.forecast["target_ts"].iloc[-1] + 30_000, unit="ms", tz="UTC")
    assert recent_ranges({"data": []}) == {}
    recent = recent_ranges(figure)
    assert shown_ranges(None, "BTC/USDT@1m", figure, 390) == recent and shown_ranges(None, "BTC/USDT@1m", figure, 1440) == {}
    resized = view_after(None, "BTC/USDT@1m", {"autosize": True})
    assert shown_ranges(resized, "BTC/USDT@1m", figure, 390) == recent, "Plotly's first autosize is not the user's choice"
    whole = view_after(resized, "BTC/USDT@1m", {"xaxis.autorange": True})
    assert shown_ranges(whole, "BTC/USDT@1m", figure, 390) == {}, "a double click gives the phone the whole chart, and it stays"
    assert shown_ranges(view_after(whole, "BTC/USDT@1m", {"autosize": True}), "BTC/USDT@1m", figure, 390) == {}
    zoomed = view_after(whole, "BTC/USDT@1m", {"xaxis.range": ["a", "b"]})
    assert zoomed["whole"] is False and shown_ranges(zoomed, "BTC/USDT@1m", figure, 390) == {"x": ["a", "b"]}
    assert shown_ranges(whole, "ETH/USDT@1m", figure, 390) == recent, "another market opens on its recent candles"
