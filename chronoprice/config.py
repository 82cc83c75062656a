"""Settings: one frozen dataclass built once from CLI flags and CHRONOPRICE_* env vars.

Precedence is flag, then environment variable, then default. Every value is checked here, so
the rest of the program can trust it; a bad value raises SettingsError naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from chronoprice.market.markets import parse_symbol
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.store.schema import is_database_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PROJECT_ROOT / "models" / "chronoprice-lstm"
SOURCES = ("auto", "live", "replay", "demo")
ENGINES = ("auto", "native", "onnx", "litert", "keras")
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A setting has a value the program cannot use; the message names it and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Settings:
    source: str = "auto"
    exchange: str = "binance"
    exchange_url: str | None = None
    exchange_ws_url: str | None = None
    stream: bool = True
    fallback_exchanges: tuple[str, ...] = ("kraken", "coinbase")
    symbol: str = "BTC/USDT"
    timeframe: str = "1m"
    db: Path | str = dataclasses.field(default=Path("chronoprice.db"), repr=False)  # a postgresql:// URL may hold a password
    db_pool: int = 8
    retain_days: int = 30
    model: Path = DEFAULT_MODEL
    engine: str = "auto"
    refresh_seconds: float = 10.0
    replay: Path | None = None
    replay_speed: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8050
    debug: bool = False
    log_format: str = "text"
    watch: str | None = None  # None: the store's watchlist (the default one on a new store)
    watch_limit: int = 50
    scheduler: bool = True
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    metrics_port: int | None = None
    allow_private_webhooks: bool = False


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def store_target(text: str) -> Path | str:
    """A SQLite file path, or a postgresql:// URL (kept as text: a Path would fold its //)."""
    text = text.strip()
    if is_database_url(text):
        if not urlsplit(text).hostname:
            raise ValueError("a database URL needs a host: postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        return text
    if "://" in text:
        raise ValueError("must be a SQLite file path or a postgresql:// URL")
    return Path(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a whole number from 1 to 65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _token(text: str) -> str:
    value = text.strip()
    if len(value) < 16:
        raise ValueError("must be at least 16 characters (a long random string)")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _symbol(text: str) -> str:
    return parse_symbol(text.strip())


def _exchange_id(text: str) -> str:
    value = text.strip().lower()
    if not value or not value.replace("_", "").isalnum():
        raise ValueError("must be a ccxt exchange id such as binance, kraken or coinbase")
    return value


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


def _ws_url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("must start with ws:// or wss://")
    return value


def _exchange_list(text: str) -> tuple[str, ...]:
    """Parse 'kraken,coinbase' or 'binanceus=http://host:port' entries (an entry may carry its
    URL); 'none' means no fail-over."""
    if text.strip().lower() == "none":
        return ()
    entries = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        exchange_id, equals, url = entry.partition("=")
        entries.append(_exchange_id(exchange_id) + (f"={_url(url)}" if equals else ""))
    return tuple(entries)


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    parse: Callable[[str], object]
    help: str
    secret: bool = False  # its value never appears in a message


_OPTIONS = (
    _Option("source", _choice(SOURCES), "where candles come from: auto (live, demo if offline), live, replay, demo"),
    _Option("exchange", _exchange_id, "ccxt exchange id for the live source (default binance)"),
    _Option("exchange_url", _url, "rewrite scheme and host of every REST endpoint of the exchange to this base URL"),
    _Option("exchange_ws_url", _ws_url, "the exchange's WebSocket stream endpoint, as --exchange-url moves REST"),
    _Option("stream", _boolean, "stream the forming candle of watched markets over the exchange's WebSocket where ccxt "
            "supports it, ticking a market the moment its candle closes (default on; off: poll on the candle clock only)"),
    _Option("fallback_exchanges", _exchange_list, "comma-separated exchanges to fail over to (default kraken,coinbase; none for none); an entry may be id=URL"),
    _Option("symbol", _symbol, "market symbol (default BTC/USDT)"),
    _Option("timeframe", _choice(tuple(TIMEFRAME_MS)), "candle timeframe (default 1m)"),
    _Option("db", store_target, "the store: a SQLite file (default chronoprice.db in the working directory) or a "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL (env DATABASE_URL too, as Render sets it)", secret=True),
    _Option("db_pool", _positive_int, "most connections this process opens to PostgreSQL (default 8; the "
            "processes' pools added up must fit the server's max_connections, or a PgBouncer in front)"),
    _Option("retain_days", _positive_int, "days of scored forecast steps kept row by row (default 30); older ones are "
            "folded into daily sums per market, so every score stays exact, and deleted; candles are kept"),
    _Option("model", Path, "model artifact path without extension (default: the shipped model in models/)"),
    _Option("engine", _choice(ENGINES), "forecast engine: auto (the fastest that needs no TensorFlow: native, else onnx, else litert), native, onnx, litert, keras"),
    _Option("refresh_seconds", _positive_float, "seconds between ticks (default 10)"),
    _Option("replay", Path, "candle file (CSV or freqtrade JSON, 1m to 1h) for the replay source"),
    _Option("replay_speed", _positive_float, "replayed candles per second (default 1)"),
    _Option("host", str, "address to bind (default 127.0.0.1; 0.0.0.0 when PORT is set)"),
    _Option("port", _port, "port to listen on (default 8050, or $PORT)"),
    _Option("debug", _boolean, "Dash debug mode (default off)"),
    _Option("log_format", _choice(LOG_FORMATS), "log lines as text (default) or json, one object a line"),
    _Option("watch", str.strip, "markets ticked on every candle close, comma-separated SYMBOL[@TIMEFRAME] "
            "(default on a new store: BTC/USDT@1m,ETH/USDT@1m,BTC/USDT@15m,BTC/USDT@1h; when given, it replaces the stored watchlist)"),
    _Option("watch_limit", _positive_int, "most markets the watchlist holds (default 50)"),
    _Option("scheduler", _boolean, "tick the watchlist in this process (default on; one process per store does it)"),
    _Option("allow_private_webhooks", _boolean, "let alert webhooks call loopback, link-local and private addresses "
            "(default off: only public http(s) hosts, so a rule cannot reach into the server's own network)"),
    _Option("admin_token", _token, "token that allows watchlist and alert writes from anywhere (Authorization: Bearer TOKEN); unset: writes only from loopback", secret=True),
    _Option("metrics_token", _token, "token GET /metrics needs from anywhere but loopback (Authorization: Bearer TOKEN); "
            "unset: /metrics is open", secret=True),
    _Option("metrics_port", _port, "port on --host where `worker`, which serves no pages, answers GET /metrics "
            "(default: none; the web server has /metrics on its own port)"),
)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --flag per setting; each defaults to None so the environment can fill it in."""
    for option in _OPTIONS:
        parser.add_argument(
            "--" + option.name.replace("_", "-"),
            dest=option.name,
            default=None,
            metavar=option.name.upper(),
            help=f"{option.help} [env CHRONOPRICE_{option.name.upper()}]",
        )


def settings_from(flags: Mapping[str, str | None], env: Mapping[str, str]) -> Settings:
    """Build Settings from raw flag strings (None where not given) and an environment mapping."""
    values: dict[str, object] = {}
    for option in _OPTIONS:
        env_name = f"CHRONOPRICE_{option.name.upper()}"
        raw, origin = flags.get(option.name), "--" + option.name.replace("_", "-")
        if raw is None and env.get(env_name, "") != "":
            raw, origin = env[env_name], env_name
        if raw is None and option.name == "port" and env.get("PORT"):
            raw, origin = env["PORT"], "PORT"
        if raw is None and option.name == "db" and env.get("DATABASE_URL"):
            raw, origin = env["DATABASE_URL"], "DATABASE_URL"
        if raw is None:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            shown = "(hidden)" if option.secret else repr(raw) if len(raw) <= 80 else f"{raw[:80]!r}… ({len(raw):,} characters)"
            raise SettingsError(f"{origin}={shown}: {error}") from None
    if "host" not in values and env.get("PORT"):
        values["host"] = "0.0.0.0"
    if "source" not in values and "replay" in values:
        values["source"] = "replay"
    settings = Settings(**values)
    if settings.source == "replay" and settings.replay is None:
        raise SettingsError("--source replay needs --replay PATH (or CHRONOPRICE_REPLAY)")
    return settings


def log_format_from(flag: str | None, env: Mapping[str, str]) -> str:
    """The log_format setting alone (flag, env, default), for commands that take no other setting."""
    return settings_from({"log_format": flag}, {"CHRONOPRICE_LOG_FORMAT": env.get("CHRONOPRICE_LOG_FORMAT", "")}).log_format


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    flags = {option.name: getattr(args, option.name, None) for option in _OPTIONS}
    return settings_from(flags, env)
