"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Set CHRONOPRICE_SCREENSHOT=docs/dashboard.png, CHRONOPRICE_OVERVIEW_SCREENSHOT=docs/overview.png and
CHRONOPRICE_PHONE_SCREENSHOT=docs/phone.png to write the README's screenshots.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from chronoprice.bench.engines import shadow_copy
from chronoprice.config import settings_from
from chronoprice.service.alert_rules import firing
from chronoprice.service.build import build_ticker
from chronoprice.service.models import register_shadow
from chronoprice.service.scheduler import Scheduler
from chronoprice.service.watchlist import seed_watchlist
from chronoprice.store.alerts import read_rules, record_firing
from chronoprice.testing.harness import CHROMIUM, CHROMIUM_ARGS, FakeClock, free_port
from chronoprice.web.server import create_app
from tests.helpers import CANDLES_DRAWN, LIVENESS_SECONDS, wait_until

pytestmark = pytest.mark.slow  # a real Chromium for every test: the whole suite runs it, `-m "not slow"` does not

PROJECT = Path(__file__).resolve().parents[2]
WATCHED = [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("BTC/USDT", "15m")]

# Closed and predicted candles; the forming one comes and goes with the clock (tests/web/test_dashboard.py).
@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, shipped_model):
    """The dashboard on the offline demo, with six hours of history forecast so every chart has
    data: its URL and its ticker."""
    folder = tmp_path_factory.mktemp("browser")
    settings = settings_from({"source": "demo", "db": str(folder / "browser.db"), "refresh_seconds": "3600"}, {})
    ticker = build_ticker(settings)
    status = ticker.backfill("BTC/USDT", hours=6)
    assert status.error is None, status.summary()
    seed_watchlist(ticker.db(), ",".join(f"{symbol}@{timeframe}" for symbol, timeframe in WATCHED), 50)
    # As `python app.py` runs it (watched markets are ticked by its scheduler), on a clock that stands
    # still after the first ticks, so no new candle lands between a test's reads.
    scheduler = Scheduler(ticker, clock=FakeClock(time.time())).start()
    assert wait_until(lambda: all(ticker.stored_status(symbol, timeframe).model_version for symbol, timeframe in WATCHED))
    server = make_server("127.0.0.1", 0, create_app(settings, ticker).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", ticker
    server.shutdown()
    scheduler.stop()


@pytest.fixture(scope="module")
def dashboard_url(dashboard):
    return dashboard[0]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium not found: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, dashboard_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(dashboard_url + "market")
    page.wait_for_function(f"() => ({CANDLES_DRAWN})() > 0", timeout=LIVENESS_SECONDS * 1000)
    page.problems = problems
    yield page
    page.close()


def test_dashboard_renders_70_candles_and_every_panel(page, tmp_path):
    assert page.evaluate(CANDLES_DRAWN) == 70
    assert page.inner_text("#source-badge") == "offline demo"
    assert "synthetic prices" in page.inner_text("#banner")
    assert page.inner_text("#model-badge").startswith("model lstm-")
    assert page.inner_text("#kpi-mae-ratio") != "–", "matured forecasts are scored"
    page.wait_for_function("() => document.querySelector('#updated-ago').innerText.startsWith('updated ')")
    assert page.locator("#step-chart .js-plotly-plot .bars").count() >= 1
    screenshot = Path(os.environ.get("CHRONOPRICE_SCREENSHOT", tmp_path / "dashboard.png"))
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 50_000
    assert page.problems == []


def test_theme_toggle_switches_page_and_charts(page):
    assert page.get_attribute("#root", "class") == "theme-dark"
    page.click("#theme-toggle")
    page.wait_for_function("() => document.querySelector('#root').className === 'theme-light'")
    page.wait_for_function("() => document.querySelector('#price-chart .js-plotly-plot')._fullLayout.paper_bgcolor === '#ffffff'")
    assert page.inner_text("#theme-toggle") == "Dark theme"
    page.click("#theme-toggle")
    page.wait_for_function("() => document.querySelector('#root').className === 'theme-dark'")
    assert page.problems == []


def test_symbol_switch_and_unknown_symbol_message(page):
    page.fill("#symbol-input", "ETH/USDT")
    page.press("#symbol-input", "Enter")
    page.wait_for_function("() => document.querySelector('#price-title').innerText.startsWith('ETH/USDT')", timeout=LIVENESS_SECONDS * 1000)
    page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70")
    page.fill("#symbol-input", "DOGE/EUR")
    page.press("#symbol-input", "Enter")
    page.wait_for_function("() => document.querySelector('#symbol-message').innerText.includes('DOGE/EUR')")
    assert "Still showing ETH/USDT" in page.inner_text("#symbol-message")
    assert page.inner_text("#price-title").startswith("ETH/USDT")
    assert page.problems == []


def title_starts(page, text: str) -> None:
    page.wait_for_function(f"() => (document.querySelector('#price-title')?.innerText ?? '').startsWith({text!r})",
                           timeout=LIVENESS_SECONDS * 1000)


def test_the_url_is_the_view_a_link_reopens_it_back_and_forward_work_and_bad_values_are_said(browser, dashboard_url):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(dashboard_url + "market?symbol=ETH/USDT&timeframe=15m&overlays=rsi")
    title_starts(page, "ETH/USDT 15m")
    assert page.is_checked("#overlays input[value='rsi']") and page.input_value("#symbol-input") == "ETH/USDT"
    page.click("#timeframe >> text=1m")
    title_starts(page, "ETH/USDT 1m")
    page.wait_for_function("() => location.search.includes('timeframe=1m') && location.search.includes('overlays=rsi')")
    page.click("#overlays >> text=SMA 20")
    page.wait_for_function("() => location.search.includes('overlays=sma20%2Crsi')")
    shared = page.url
    page.go_back()
    page.wait_for_function("() => !document.querySelector(\"#overlays input[value='sma20']\").checked")
    page.go_back()
    title_starts(page, "ETH/USDT 15m")
    page.go_forward()
    title_starts(page, "ETH/USDT 1m")
    other = browser.new_page(viewport={"width": 390, "height": 844})
    other.goto(shared)
    title_starts(other, "ETH/USDT 1m")
    assert other.is_checked("#overlays input[value='sma20']") and other.is_checked("#overlays input[value='rsi']")
    other.goto(dashboard_url + "market?timeframe=7m")
    other.wait_for_function("() => (document.querySelector('#symbol-message')?.innerText ?? '').includes('“7m” in the link is not a timeframe')",
                            timeout=LIVENESS_SECONDS * 1000)
    title_starts(other, "BTC/USDT 1m")
    other.goto(dashboard_url + "market?symbol=FOO/BAR")
    other.wait_for_function("() => (document.querySelector('#symbol-message')?.innerText ?? '').includes('FOO/BAR')",
                            timeout=LIVENESS_SECONDS * 1000)
    assert "Still showing BTC/USDT" in other.inner_text("#symbol-message")
    title_starts(other, "BTC/USDT 1m")
    assert problems == []
    page.close()
    other.close()


X_RANGE = "() => { const axis = document.querySelector('#price-chart .js-plotly-plot')._fullLayout.xaxis; return [axis.range, axis.autorange]; }"


@pytest.mark.parametrize("width,height", [(1440, 900), (390, 844)])
def test_zoom_and_pan_survive_refreshes_and_a_double_click_resets_them(browser, dashboard, width, height):
    _, ticker = dashboard
    settings = settings_from({"source": "demo", "refresh_seconds": "1"}, {})
    server = make_server("127.0.0.1", 0, create_app(settings, ticker).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/market")
        page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70", timeout=LIVENESS_SECONDS * 1000)
        page.evaluate("() => { const gd = document.querySelector('#price-chart .js-plotly-plot'); window.redraws = 0; "
                      "gd.on('plotly_afterplot', () => { window.redraws += 1; }); }")
        plot = page.locator("#price-chart .nsewdrag").first.bounding_box()
        page.mouse.move(plot["x"] + plot["width"] * 0.3, plot["y"] + plot["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(plot["x"] + plot["width"] * 0.6, plot["y"] + plot["height"] * 0.6, steps=8)
        page.mouse.up()
        zoomed = page.evaluate(X_RANGE)
        assert zoomed[1] is False
        page.evaluate("() => { window.redraws = 0; }")
        page.wait_for_function("() => window.redraws >= 3", timeout=LIVENESS_SECONDS * 1000)  # two refreshes and more
        assert page.evaluate(X_RANGE) == zoomed, "the zoom survives the refreshes"
        page.mouse.dblclick(plot["x"] + plot["width"] * 0.5, plot["y"] + plot["height"] * 0.5)
        page.wait_for_function(f"() => ({X_RANGE})()[1] === true")
        page.evaluate("() => { window.redraws = 0; }")
        page.wait_for_function("() => window.redraws >= 3", timeout=LIVENESS_SECONDS * 1000)
        assert page.evaluate(X_RANGE)[1] is True, "a double click gives the whole chart back, and it stays"
    finally:
        page.close()
        server.shutdown()


def test_the_overview_lists_every_watched_market_and_opens_its_chart(browser, dashboard_url):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(dashboard_url)
    page.wait_for_function(f"() => document.querySelectorAll('#overview-body tr').length === {len(WATCHED)}",
                           timeout=LIVENESS_SECONDS * 1000)
    text = page.inner_text("#overview-table")
    for symbol, timeframe in WATCHED:
        assert f"{symbol} {timeframe}" in text
    assert "┆" in text and "last close" in text, "sparklines with forecasts; 15m is served by the last close"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "the table scrolls inside its panel"
    page.set_viewport_size({"width": 1440, "height": 900})
    page.wait_for_function("() => { const box = document.querySelector('.table-scroll'); return box.scrollWidth <= box.clientWidth; }",
                           timeout=LIVENESS_SECONDS * 1000)  # every column, the remove buttons too, without scrolling
    page.set_viewport_size({"width": 390, "height": 844})
    if os.environ.get("CHRONOPRICE_OVERVIEW_SCREENSHOT"):
        page.screenshot(path=os.environ["CHRONOPRICE_OVERVIEW_SCREENSHOT"], full_page=True)
    page.fill("#watch-symbol", "SOL/USDT")
    page.click("#watch-add")
    page.wait_for_function("() => document.querySelector('#watch-message').innerText.startsWith('Watching SOL/USDT 1m')")
    page.wait_for_function(f"() => document.querySelectorAll('#overview-body tr').length === {len(WATCHED) + 1}")
    page.click("button[title='stop watching SOL/USDT 1m']")
    page.wait_for_function(f"() => document.querySelectorAll('#overview-body tr').length === {len(WATCHED)}")
    assert page.inner_text("#watch-message") == "Stopped watching SOL/USDT 1m."
    first_markets = "() => document.querySelector('#overview-body tr td').innerText"
    page.click("#overview-table th >> text=Market")  # the second click on the sorted column reverses it
    page.wait_for_function(f"() => ({first_markets})() === 'ETH/USDT 1m'")
    page.click("text=ETH/USDT 1m")
    page.wait_for_function("() => document.querySelector('#price-title').innerText.startsWith('ETH/USDT 1m')",
                           timeout=LIVENESS_SECONDS * 1000)
    page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70", timeout=LIVENESS_SECONDS * 1000)
    assert "symbol=ETH%2FUSDT" in page.url and page.is_hidden("#overview-page")
    page.click("#timeframe >> text=15m")
    page.wait_for_function("() => document.querySelector('#price-title').innerText.startsWith('ETH/USDT 15m')",
                           timeout=LIVENESS_SECONDS * 1000)
    assert page.inner_text("#model-badge") == "last close: no model has shown skill on 15m candles"
    page.close()


def test_the_models_page_shows_the_champion_and_its_live_record_at_phone_width(browser, dashboard, shipped_model, tmp_path):
    dashboard_url, ticker = dashboard
    metadata, artifact = shadow_copy(shipped_model, tmp_path)
    register_shadow(ticker.db(), metadata, artifact, "trained from the store with train --db", int(time.time() * 1000))
    page = browser.new_page(viewport={"width": 390, "height": 844})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(dashboard_url)
    page.click("a.nav-link >> text=Models")
    one_minute_markets = sum(timeframe == "1m" for _, timeframe in WATCHED)
    page.wait_for_function(f"() => document.querySelectorAll('#models-body tr.model-champion').length === {one_minute_markets}",
                           timeout=LIVENESS_SECONDS * 1000)
    rows = page.inner_text("#models-body")
    assert "lstm-" in rows and "champion" in rows and "BTC/USDT" in rows and "ETH/USDT" in rows
    assert "btcusdt_1m_binanceus_2023-03-01_14.csv" in rows, "what it was trained on"
    assert page.locator("#models-body tr.model-shadow").count() == one_minute_markets and metadata["version"] in rows
    assert "registered → champion: deployed with --model" in page.inner_text("#models-changes")
    assert page.is_hidden("#overview-page") and page.is_hidden("#market-page") and page.url.endswith("/models")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "the table scrolls inside its panel"
    page.click("#models-body >> text=ETH/USDT")
    page.wait_for_function("() => document.querySelector('#price-title').innerText.startsWith('ETH/USDT 1m')",
                           timeout=LIVENESS_SECONDS * 1000)
    assert problems == []
    page.close()


def test_dashboard_fits_a_phone(browser, dashboard_url):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(dashboard_url + "market")
    page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70", timeout=LIVENESS_SECONDS * 1000)
    widths = page.evaluate("() => [document.documentElement.scrollWidth, Number(document.querySelector('#price-chart .main-svg').getAttribute('width'))]")
    assert widths[0] <= 390 and widths[1] <= 390
    chart, kpis = (page.locator(selector).bounding_box() for selector in ("#price-chart", ".kpis"))
    assert chart["y"] < 844 / 2 and chart["y"] < kpis["y"], "the chart with its forecast comes first on a phone"
    labels = page.evaluate("() => [...document.querySelectorAll('#price-chart .annotation-text')].map(text => text.textContent)")
    forecast = page.inner_text("#kpi-forecast")
    assert any(label.startswith(forecast) and "–" in label for label in labels), "the last forecast price and band are labelled"
    assert page.evaluate("() => document.querySelector('#price-chart .js-plotly-plot')._fullLayout.yaxis.hoverformat") == ",.2f"
    page.hover("#price-chart .nsewdrag")  # the toolbar shows while the pointer is on the chart
    page.wait_for_selector("#price-chart .modebar-container .modebar-btn", state="visible")
    toolbar, legend = (page.locator(f"#price-chart {selector}").first.bounding_box() for selector in (".modebar", ".legend"))
    assert (toolbar["x"] >= legend["x"] + legend["width"] or toolbar["y"] >= legend["y"] + legend["height"]
            or legend["y"] >= toolbar["y"] + toolbar["height"]), "no control covers the legend"
    share = """() => { const gd = document.querySelector('#price-chart .js-plotly-plot');
        const [start, end] = gd._fullLayout.xaxis.range.map(Date.parse);
        const candles = gd.data.find(trace => trace.name === 'candles').x;
        return (end - Date.parse(candles[candles.length - 1])) / (end - start); }"""
    page.wait_for_function(f"() => ({share})() >= 1 / 3", timeout=LIVENESS_SECONDS * 1000)  # the forecast region: a third or more
    if os.environ.get("CHRONOPRICE_PHONE_SCREENSHOT"):
        page.mouse.move(1, 1)  # no hover label in the picture
        page.wait_for_selector("#price-chart .hovertext", state="detached")
        page.screenshot(path=os.environ["CHRONOPRICE_PHONE_SCREENSHOT"])
    page.close()


def test_python_app_py_offline_shows_the_demo_and_a_forecast(browser, tmp_path):
    """How fast is measured by bench and written in docs/PERFORMANCE.md; here, that it happens."""
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--db", str(tmp_path / "offline.db"),
               "--exchange-url", dead, "--fallback-exchanges", f"kraken={dead},coinbase={dead}"]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pages, console_errors = [], []
        for width, height in ((1440, 900), (390, 844)):  # both open from the first paint on
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            # Every text the source badge and the model badge ever show, from the first paint on.
            page.add_init_script("""window.badges = new Set(); new MutationObserver(() => {
                for (const id of ['source-badge', 'model-badge']) {
                    const element = document.getElementById(id);
                    if (element && element.innerText) { window.badges.add(id + ': ' + element.innerText); }
                } }).observe(document, {subtree: true, childList: true, characterData: true});""")
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/market")
                    break
                except PlaywrightError:
                    assert process.poll() is None, process.stdout.read()
                    time.sleep(0.2)
            pages.append(page)
        for page in pages:
            page.wait_for_function(f"() => ({CANDLES_DRAWN})() === 70", timeout=LIVENESS_SECONDS * 1000)
            assert page.inner_text("#source-badge") == "offline demo"
            assert "live unreachable" in page.inner_text("#banner")
            badges = page.evaluate("() => [...window.badges]")
            assert [badge for badge in badges if badge.startswith("source-badge")] == ["source-badge: offline demo"], badges
            assert "model-badge: model unavailable" not in badges, "no model verdict before there are candles"
            page.close()
        assert console_errors == [], "no live poll (or anything else) fails before the first tick"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("width,height", [(1440, 1300), (390, 844)])
def test_alerts_are_added_on_the_market_page_and_ring_the_bell(browser, dashboard, width, height):
    url, ticker = dashboard
    page = browser.new_page(viewport={"width": width, "height": height})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url + "market?symbol=BTC/USDT&timeframe=1m")
    page.wait_for_function(f"() => ({CANDLES_DRAWN})() > 0", timeout=LIVENESS_SECONDS * 1000)
    page.click("#alert-add")  # the default: the close leaves the 90 % band at step 1
    page.wait_for_function("() => document.querySelector('#alert-message').innerText.startsWith('Alert added')",
                           timeout=LIVENESS_SECONDS * 1000)
    rules = page.inner_text("#alert-rules")
    assert "close leaves the 90 % band at step 1" in rules and "nominal 10 %" in rules and "of the time in the last 24 h" in rules
    assert "success" in page.get_attribute("#alert-message", "class"), "success in the success colour"
    assert page.locator(".alert-form label").count() == 7, "every field labelled"
    background = page.evaluate("() => getComputedStyle(document.querySelector('#alert-value')).backgroundColor")
    assert background != "rgb(255, 255, 255)", "dark theme: the fields are dark, their values readable"
    page.click("#timeframe >> text=5m")  # the rules list redraws for another market: the message stays
    title_starts(page, "BTC/USDT 5m")
    page.click("#timeframe >> text=1m")
    title_starts(page, "BTC/USDT 1m")
    assert page.inner_text("#alert-message").startswith("Alert added"), "a message stays until dismissed"
    page.click("#alert-dismiss")
    page.wait_for_function("() => document.querySelector('#alert-message').innerText === ''")
    rule = read_rules(ticker.db(), "BTC/USDT", "1m")[0]
    record_firing(ticker.db(), firing(rule, ticker.now_ms() // 60_000 * 60_000, ticker.now_ms(), "the close left the band"))
    page.wait_for_function("() => document.querySelector('#alerts-unread').innerText === '1'", timeout=LIVENESS_SECONDS * 1000)
    page.click("#alerts-bell")
    page.wait_for_function("() => document.querySelector('#alerts-unread').innerText === ''", timeout=LIVENESS_SECONDS * 1000)
    assert "BTC/USDT 1m: the close left the band" in page.inner_text("#alerts-list")
    panel = page.locator("#alerts-panel").bounding_box()
    assert panel["x"] >= 0 and panel["x"] + panel["width"] <= width, "the bell's panel stays on the screen"
    page.click("#alert-rules button")
    page.wait_for_function("() => document.querySelector('#alert-message').innerText === 'Alert deleted.'", timeout=LIVENESS_SECONDS * 1000)
    assert read_rules(ticker.db(), "BTC/USDT", "1m") == []
    assert problems == []
    page.close()


@pytest.mark.parametrize("width", [1440, 390])
def test_the_html_report_is_a_document_that_reads_at_any_width(browser, tmp_path, width):
    from chronoprice.cli.main import main
    from tests.helpers import make_candles

    candles = make_candles(1500)
    csv = tmp_path / "candles.csv"
    candles.assign(timestamp=candles["ts"])[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(csv, index=False)
    report = tmp_path / "report" / "report.html"
    assert main(["evaluate", "--csv", str(csv), "--model", "naive", "--backtest", "--report", str(report)]) == 0
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(report.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5",
                           timeout=LIVENESS_SECONDS * 1000)  # plotly.js from beside the file: it opens offline
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width, "tables scroll inside their panels"
    assert "compared with repeating the last close" in page.inner_text(".verdict")
    ticks = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')][0]._fullLayout.xaxis.type")
    assert ticks == "date", "the time axis is in dates, not origin indexes"
    assert problems == [] and report.stat().st_size < 2_000_000
    page.close()
