import json
import logging

import pytest

from chronoprice.cli.main import main
from chronoprice.logs import configure_logging, redact


def test_json_logs_are_one_object_a_line_with_level_logger_message_and_market(capsys):
    configure_logging("json")
    logging.getLogger("chronoprice.service.tick").warning("fetch failed: %s", "timeout",
                                                          extra={"exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m"})
    entry = json.loads(capsys.readouterr().err.strip())
    assert {key: entry[key] for key in ("level", "logger", "message", "exchange", "symbol", "timeframe")} == {
        "level": "warning", "logger": "chronoprice.service.tick", "message": "fetch failed: timeout",
        "exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m"}


@pytest.mark.parametrize("text, secret", [
    ("cannot reach postgresql://chrono:s3cr3t-pw@db.internal:5432/prices", "s3cr3t-pw"),
    ("redis at rediss://:hunter2@cache:6379/0 refused", "hunter2"),
    ("sent Authorization: Bearer abc.def-123 to the webhook", "abc.def-123"),
])
def test_secrets_never_reach_a_log_line(text, secret, capsys):
    assert secret not in redact(text) and "***" in redact(text)
    for log_format in ("text", "json"):
        configure_logging(log_format)
        logging.getLogger("chronoprice").error(text)
        assert secret not in capsys.readouterr().err


def test_redact_leaves_ordinary_urls_alone():
    assert redact("GET http://127.0.0.1:8050/api/v1/candles?symbol=BTC/USDT") == "GET http://127.0.0.1:8050/api/v1/candles?symbol=BTC/USDT"


def test_cli_log_format_json_from_the_flag_and_the_environment(tiny_model, tmp_path, capsys, monkeypatch):
    arguments = ["backfill", "--source", "demo", "--db", str(tmp_path / "logs.db"), "--model", str(tiny_model), "--hours", "1.5"]
    assert main([*arguments, "--log-format", "json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    cold_start = [entry for entry in entries if entry["message"].startswith("cold start")]
    assert cold_start and cold_start[0]["symbol"] == "BTC/USDT" and cold_start[0]["exchange"] == "demo"
    monkeypatch.setenv("CHRONOPRICE_LOG_FORMAT", "xml")
    assert main(arguments) == 2
    assert "CHRONOPRICE_LOG_FORMAT='xml'" in capsys.readouterr().err
