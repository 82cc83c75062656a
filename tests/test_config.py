from pathlib import Path

import pytest

from chronoprice.config import DEFAULT_MODEL, Settings, SettingsError, settings_from


def test_settings_defaults_match_design():
    settings = settings_from({}, {})
    assert settings == Settings()
    assert (settings.source, settings.exchange, settings.symbol, settings.timeframe) == ("auto", "binance", "BTC/USDT", "1m")
    assert settings.fallback_exchanges == ("kraken", "coinbase")
    assert (settings.host, settings.port, settings.debug) == ("127.0.0.1", 8050, False)
    assert settings.db == Path("chronoprice.db")
    assert settings.model == DEFAULT_MODEL and DEFAULT_MODEL.is_absolute()


def test_settings_flag_beats_env_beats_default():
    env = {"CHRONOPRICE_SYMBOL": "eth/usdt", "CHRONOPRICE_REFRESH_SECONDS": "5"}
    settings = settings_from({"symbol": "SOL/USDT"}, env)
    assert settings.symbol == "SOL/USDT"
    assert settings.refresh_seconds == 5.0


def test_settings_port_env_binds_all_interfaces_like_render():
    settings = settings_from({}, {"PORT": "10000"})
    assert (settings.host, settings.port) == ("0.0.0.0", 10000)
    assert settings_from({"host": "127.0.0.1"}, {"PORT": "10000"}).host == "127.0.0.1"


def test_settings_fallback_entries_may_carry_a_url():
    settings = settings_from({"fallback_exchanges": "kraken, binanceus=http://127.0.0.1:9000/"}, {})
    assert settings.fallback_exchanges == ("kraken", "binanceus=http://127.0.0.1:9000")
    assert settings_from({}, {"CHRONOPRICE_FALLBACK_EXCHANGES": "none"}).fallback_exchanges == ()


def test_settings_replay_path_implies_replay_source():
    assert settings_from({"replay": "candles.csv"}, {}).source == "replay"


@pytest.mark.parametrize(
    "flags, env, named",
    [
        ({"source": "cloud"}, {}, "--source='cloud': must be one of auto, live, replay, demo"),
        ({}, {"CHRONOPRICE_ENGINE": "torch"}, "CHRONOPRICE_ENGINE='torch': must be one of auto, native, onnx, litert, keras"),
        ({"port": "70000"}, {}, "--port='70000'"),
        ({"refresh_seconds": "0"}, {}, "--refresh-seconds='0': must be a positive number"),
        ({"symbol": "BTCUSDT"}, {}, "must look like BASE/QUOTE"),
        ({"debug": "maybe"}, {}, "--debug='maybe'"),
        ({"exchange_url": "ftp://x"}, {}, "must start with http://"),
        ({"timeframe": "2m"}, {}, "--timeframe='2m': must be one of 1m, 5m, 15m, 1h"),
        ({"watch_limit": "0"}, {}, "--watch-limit='0': must be a whole number of at least 1"),
        ({}, {"CHRONOPRICE_ADMIN_TOKEN": "short-secret"}, "CHRONOPRICE_ADMIN_TOKEN=(hidden): must be at least 16"),
        ({"source": "replay"}, {}, "--source replay needs --replay PATH"),
    ],
)
def test_settings_reject_bad_values_naming_the_setting(flags, env, named):
    with pytest.raises(SettingsError) as error:
        settings_from(flags, env)
    assert named in str(error.value)


def test_the_admin_token_never_appears_in_messages_or_the_settings_repr():
    with pytest.raises(SettingsError) as error:
        settings_from({}, {"CHRONOPRICE_ADMIN_TOKEN": "short-secret"})
    assert "short-secret" not in str(error.value)
    settings = settings_from({"admin_token": "a-long-enough-secret-token"}, {})
    assert settings.admin_token == "a-long-enough-secret-token" and "a-long-enough-secret-token" not in repr(settings)
