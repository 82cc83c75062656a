"""Alerts: rules (API and validation), their conditions, the outbox (once per rule and candle,
cooldown), and webhook delivery to a real local HTTP receiver: retries after 500s, a webhook that
hangs, a process that dies mid-delivery, and the SSRF rules."""

import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest

from chronoprice.config import settings_from
from chronoprice.evaluation.metrics import band_exits
from chronoprice.market.source import Market
from chronoprice.service.alert_rules import (
    RuleError,
    big_move,
    crossed,
    firing,
    mask_webhook,
    new_rule,
    webhook_body,
    webhook_problem,
)
from chronoprice.service.alerts import Alerts, band_exit_record, observed_band_exits
from chronoprice.service.build import build_ticker
from chronoprice.service.status import TickStatus
from chronoprice.store.alerts import add_rule, read_firings, read_rule
from chronoprice.store.records import read_candles, upsert_candles
from chronoprice.testing.harness import WebhookReceiver
from chronoprice.web.server import create_app
from tests.helpers import wait_until


def resolver(address):
    return lambda host, port, type=0: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


def test_webhooks_go_only_to_public_http_hosts_unless_private_ones_are_allowed():
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "172.16.5.5", "169.254.169.254", "0.0.0.0", "100.64.0.1"):
        assert "private address" in webhook_problem("https://hooks.example.com/T0/B1/secret", False, resolver(address)), address
    assert webhook_problem("https://hooks.example.com/x", False, lambda *a, **k: [(0, 0, 0, "", ("::1", 443, 0, 0))])
    assert webhook_problem("https://hooks.example.com/x", False, lambda *a, **k: [(0, 0, 0, "", ("::ffff:10.0.0.1", 443, 0, 0))])
    assert webhook_problem("https://hooks.example.com/x", False, resolver("93.184.216.34")) is None
    assert webhook_problem("https://127.0.0.1:9/x", True) is None
    for bad in ("ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "https:///nohost"):
        assert "http:// or https://" in webhook_problem(bad, True)
    assert mask_webhook("https://hooks.slack.com/services/T000/B000/XXXXSECRET") == "https://hooks.slack.com/…"


def test_rules_are_checked_and_name_the_bad_field():
    make = lambda body: new_rule(body, "BTC/USDT", "1m", 10, 0, False, resolver("93.184.216.34"))  # noqa: E731
    rule = make({"type": "band_exit", "step": 3, "level": 0.95, "webhook": "https://hooks.example.com/a", "format": "slack"})
    assert rule.params == {"step": 3, "level": 0.95} and rule.cooldown_ms == 600_000 and rule.webhook.endswith("/a")
    for body, field in (({"type": "moon"}, "type"), ({"type": "band_exit", "step": 11}, "step"), ({"type": "band_exit", "level": 0.5}, "level"),
                        ({"type": "price_cross"}, "level"), ({"type": "price_cross", "level": "high"}, "level"),
                        ({"type": "price_cross", "level": 5, "direction": "sideways"}, "direction"),
                        ({"type": "forecast_move", "percent": -1}, "percent"), ({"type": "market_state", "format": "teams"}, "format"),
                        ({"type": "market_state", "cooldown_minutes": 1.5}, "cooldown_minutes"),
                        ({"type": "market_state", "webhook": "gopher://x/y"}, "webhook")):
        with pytest.raises(RuleError) as error:
            make(body)
        assert error.value.parameter == field, body
    with pytest.raises(RuleError, match="private address"):
        new_rule({"type": "market_state", "webhook": "https://10.0.0.1/x"}, "BTC/USDT", "1m", 10, 0, False)  # resolved for real


def test_conditions_and_webhook_bodies():
    assert crossed(99.0, 101.0, 100.0, "any") == "up" and crossed(101.0, 100.0, 100.0, "down") == "down"
    assert crossed(99.0, 101.0, 100.0, "down") is None and crossed(101.0, 102.0, 100.0, "any") is None
    assert big_move(100.0, 101.0, 100.5, 101.5, 0.5) == pytest.approx(1.0)
    assert big_move(100.0, 101.0, 99.5, 101.5, 0.5) is None, "the band holds the last close"
    assert big_move(100.0, 100.2, 100.1, 100.3, 0.5) is None, "too small a move"
    rule = new_rule({"type": "market_state", "format": "discord", "webhook": "https://x.example/y"}, "BTC/USDT", "1m", 10, 0, True)
    fired = firing(rule, 60_000, 61_000, "the market is stale")
    assert webhook_body(rule, fired) == {"content": f"ChronoPrice alert: {fired.message}"}
    assert fired.state == "pending" and fired.message.startswith("BTC/USDT 1m: the market is stale")


def test_band_exits_use_the_band_known_when_each_forecast_was_made():
    scores = np.r_[np.full(200, 1.0), 5.0, np.full(20, 1.0)]
    exits = band_exits(scores, step=3, level=0.9, fallback=0.5)
    assert exits[:122].all(), "until 120 scores have matured 3 places back, the fallback band 0.5 is used"
    assert not exits[122:200].any() and exits[200] and not exits[201:].any()


@pytest.fixture
def demo_ticker(tmp_path, tiny_model):
    settings = settings_from({"source": "demo", "db": str(tmp_path / "alerts.db"), "model": str(tiny_model)}, {})
    ticker = build_ticker(settings, history_hours=12, env={})
    status = ticker.backfill("BTC/USDT", hours=8)
    assert status.error is None
    return ticker, status


def rule_of(ticker, body, symbol="BTC/USDT"):
    rule = new_rule(body, symbol, "1m", 10, ticker.now_ms(), True)
    add_rule(ticker.db(), rule)
    return rule


def with_newest_close(ticker, status, close: float) -> TickStatus:
    """Store one more closed candle at `close` (the next minute), as a tick would."""
    market = Market(status.exchange, status.symbol, status.timeframe)
    newest = read_candles(ticker.db(), market, limit=1).iloc[-1]
    candle = pd.DataFrame([{"ts": int(newest["ts"]) + 60_000, "open": newest["close"], "high": max(close, newest["close"]),
                            "low": min(close, newest["close"]), "close": close, "volume": 1.0}])
    upsert_candles(ticker.db(), market, candle)
    return TickStatus(status.source, status.exchange, status.symbol, "1m", newest_ts=int(candle["ts"].iloc[0]), finished_at_ms=ticker.now_ms())


def test_a_rule_fires_once_per_candle_and_waits_out_its_cooldown(demo_ticker):
    ticker, status = demo_ticker
    last = read_candles(ticker.db(), Market(status.exchange, "BTC/USDT", "1m"), limit=1)["close"].iloc[-1]
    cross = rule_of(ticker, {"type": "price_cross", "level": float(last) * 1.01, "cooldown_minutes": 0})
    cooled = rule_of(ticker, {"type": "price_cross", "level": float(last) * 1.01, "cooldown_minutes": 60})
    alerts = Alerts(ticker)
    up = with_newest_close(ticker, status, float(last) * 1.02)
    assert {each.rule_id for each in alerts.after_tick(up)} == {cross.id, cooled.id}
    assert alerts.after_tick(up) == [], "never twice for the same rule and candle"
    back = with_newest_close(ticker, up, float(last))
    assert [each.rule_id for each in alerts.after_tick(back)] == [cross.id], "down again; the other is cooling down"
    again = with_newest_close(ticker, back, float(last) * 1.03)
    assert [each.rule_id for each in alerts.after_tick(again)] == [cross.id]
    fired = read_firings(ticker.db())
    assert len(fired) == 4 and all(each.state == "shown" for each in fired), "no webhook: the bell only"
    assert "crossing" in fired[0].message and "going up" in fired[0].message


def test_band_exit_and_market_state_rules_and_the_observed_rate(demo_ticker):
    ticker, status = demo_ticker
    band = rule_of(ticker, {"type": "band_exit", "step": 1, "level": 0.8, "cooldown_minutes": 0})
    stale = rule_of(ticker, {"type": "market_state", "cooldown_minutes": 0})
    alerts = Alerts(ticker)
    market = Market(status.exchange, "BTC/USDT", "1m")
    record = band_exit_record(ticker.db(), market, ticker.forecaster("1m"), 1, 0.8)
    fired = {each.rule_id for each in alerts.after_tick(status)}
    assert (band.id in fired) == bool(record["exited"].iloc[-1]), "fires exactly when the newest close left the band"
    assert stale.id not in fired
    observed = observed_band_exits(ticker, read_rule(ticker.db(), band.id))
    assert observed["nominal"] == pytest.approx(0.2) and observed["count"] >= 400
    assert observed["rate"] == pytest.approx(record[record["target_ts"] >= ticker.now_ms() - 24 * 3_600_000]["exited"].mean())
    assert observed["ci_low"] <= observed["rate"] <= observed["ci_high"]
    failing = TickStatus(status.source, status.exchange, "BTC/USDT", "1m", newest_ts=status.newest_ts - 10 * 60_000,
                         error="exchange down", finished_at_ms=ticker.now_ms())
    assert stale.id in {each.rule_id for each in alerts.after_tick(failing)}


@pytest.mark.slow
def test_webhooks_are_retried_after_500s_and_a_hanging_one_delays_no_other(demo_ticker):
    ticker, status = demo_ticker
    flaky, hanging = WebhookReceiver(codes=(500, 500)), WebhookReceiver(hang=6)
    last = float(read_candles(ticker.db(), Market(status.exchange, "BTC/USDT", "1m"), limit=1)["close"].iloc[-1])
    flaky_rule = rule_of(ticker, {"type": "price_cross", "level": last * 1.01, "webhook": flaky.url, "cooldown_minutes": 0})
    hanging_rule = rule_of(ticker, {"type": "price_cross", "level": last * 1.01, "webhook": hanging.url, "format": "slack"})
    alerts = Alerts(ticker, allow_private_webhooks=True, retry_seconds=(0.2, 0.2, 0.2)).start()
    try:
        fired_at = time.time()
        alerts.after_tick(with_newest_close(ticker, status, last * 1.02))
        assert wait_until(lambda: flaky.completed), "delivered after two 500s"
        assert len(flaky.received) == 3 and len(set(key for _, key, _ in flaky.received)) == 1
        assert flaky.received[-1][0] - fired_at < 10, "not held up behind the webhook that hangs"
        assert flaky.received[0][2]["rule_id"] == flaky_rule.id and flaky.received[0][2]["type"] == "price_cross"
        assert wait_until(lambda: len(hanging.received) >= 2), "the hanging one timed out and was tried again"
        assert hanging.received[0][2]["text"].startswith("ChronoPrice alert: BTC/USDT 1m")
        states = {each.rule_id: each for each in read_firings(ticker.db())}
        assert states[flaky_rule.id].state == "delivered" and states[hanging_rule.id].last_error.startswith("ReadTimeout")
        assert flaky.url not in (states[hanging_rule.id].last_error or "")
    finally:
        alerts.stop()


@pytest.mark.slow
def test_a_delivery_cut_off_by_a_dying_process_is_sent_after_the_restart(demo_ticker):
    ticker, status = demo_ticker
    receiver = WebhookReceiver()
    last = float(read_candles(ticker.db(), Market(status.exchange, "BTC/USDT", "1m"), limit=1)["close"].iloc[-1])
    rule_of(ticker, {"type": "price_cross", "level": last * 1.01, "webhook": receiver.url})
    cut_off = threading.Event()
    dying = Alerts(ticker, allow_private_webhooks=True, post=lambda *a, **k: cut_off.wait(60), lease_seconds=1.0).start()
    dying.after_tick(with_newest_close(ticker, status, last * 1.02))
    assert wait_until(lambda: read_firings(ticker.db())[0].attempts == 1), "the dying process took the delivery"
    restarted = Alerts(ticker, allow_private_webhooks=True, lease_seconds=1.0).start()
    try:
        assert wait_until(lambda: receiver.completed), "the restarted process sent it once its lease ran out"
        time.sleep(1.5)
        assert receiver.completed == [read_firings(ticker.db())[0].id] and read_firings(ticker.db())[0].state == "delivered"
    finally:
        cut_off.set()
        dying.stop()
        restarted.stop()


def test_the_alerts_api_masks_webhooks_and_follows_the_write_rules(demo_ticker, tmp_path):
    ticker, _ = demo_ticker
    settings = settings_from({"source": "demo", "db": str(tmp_path / "alerts.db")}, {})
    client = create_app(settings, ticker, env={}).server.test_client()
    secret = "https://hooks.example.com/services/T0/B0/very-secret"
    rule_body = {"symbol": "ETH/USDT", "timeframe": "1m", "type": "band_exit", "step": 2, "level": 0.9, "webhook": secret}
    created = client.post("/api/v1/alerts", json=rule_body)
    assert created.status_code == 400 and created.get_json()["parameter"] == "webhook", "example.com does not resolve here"
    created = client.post("/api/v1/alerts", json={**rule_body, "webhook": None})
    assert created.status_code == 201, created.get_json()
    rule_id = created.get_json()["id"]
    assert ("ETH/USDT", "1m") in [tuple(row) for row in ticker.db().execute("select symbol, timeframe from watchlist")]
    add_rule(ticker.db(), new_rule({"type": "market_state", "webhook": secret}, "ETH/USDT", "1m", 10, ticker.now_ms() + 1, True))
    listed = client.get("/api/v1/alerts?symbol=ETH/USDT")
    assert "very-secret" not in listed.get_data(as_text=True)
    rules = listed.get_json()["rules"]
    assert [rule["webhook"] for rule in rules] == [None, "https://hooks.example.com/…"]
    assert rules[0]["observed"]["nominal"] == pytest.approx(0.1) and rules[1]["observed"] is None
    for body, field in (({"symbol": "ETH/USDT", "type": "nope"}, "type"), ({"type": "market_state"}, "symbol"),
                        ({"symbol": "ETH/USDT", "type": "band_exit", "step": 99}, "step")):
        answer = client.post("/api/v1/alerts", json=body)
        assert answer.status_code == 400 and answer.get_json()["parameter"] == field
    assert client.post("/api/v1/alerts", data="not json", content_type="application/json").status_code == 400
    remote = client.post("/api/v1/alerts", json={**rule_body, "webhook": None}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 403
    assert client.delete(f"/api/v1/alerts/{rule_id}", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 403
    assert client.delete(f"/api/v1/alerts/{rule_id}").status_code == 200
    assert client.delete(f"/api/v1/alerts/{rule_id}").status_code == 404
    assert client.get("/api/v1/firings?limit=0").status_code == 400
    assert client.get("/api/v1/firings").get_json() == {"firings": []}
