"""Logging for every command: one line a record on stderr, as text or as one JSON object (level,
logger, message and the market fields a record carries), with secrets masked.

Library code only calls `logging.getLogger(__name__)`; the entry points call `configure_logging`.
Progress bars are not logs: they stay tqdm bars on stderr.
"""

from __future__ import annotations

import json
import logging
import re
import sys

MARKET_FIELDS = ("exchange", "symbol", "timeframe")
# user:password@ in URLs (database and Redis URLs), and bearer tokens. Each match can only start
# right after "://" or at "bearer" and its scan stops at the next "/" or whitespace, so the work
# is linear in the text's length whatever a client sends (a pattern that may start at every
# letter of a scheme is quadratic: 20,000 characters took 1.7 s).
_SECRETS = (
    (re.compile(r"(?<=://)(?P<keep>[^/\s:@]*:)[^@\s/]+(?=@)"), r"\g<keep>***"),
    (re.compile(r"(?P<keep>bearer\s+)[^\s,;\"']+", re.IGNORECASE), r"\g<keep>***"),
)
_TERMINAL_STYLES = re.compile(r"\x1b\[[0-9;]*m")  # colours some libraries (werkzeug) put in their messages
MESSAGE_CHARACTERS = 4_000  # a log line quotes at most this much of a message (5x of a traceback)


def redact(text: str) -> str:
    """`text` with URL passwords and bearer tokens replaced by ***."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def bounded(text: str, limit: int = MESSAGE_CHARACTERS) -> str:
    """`text` redacted, then cut to `limit` characters saying how much was left out (redacting
    first, so that a secret straddling the cut is not half shown)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit:,} more characters)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                 "logger": record.name, "message": bounded(_TERMINAL_STYLES.sub("", record.getMessage()).strip())}
        entry.update({field: getattr(record, field) for field in MARKET_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exception"] = bounded(self.formatException(record.exc_info), 5 * MESSAGE_CHARACTERS)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        market = " ".join(str(getattr(record, field)) for field in MARKET_FIELDS if hasattr(record, field))
        line = super().format(record)
        return bounded(f"{line} [{market}]" if market else line, 5 * MESSAGE_CHARACTERS)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (tests and tqdm swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `log_format` (text or json), replacing what an
    earlier call set up."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [each for each in root.handlers if isinstance(each, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "ccxt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
