"""The model lifecycle on the command line: `models list|rollback`, the registration that
`train --db` ends with, and `retrain --every`, training from the store on a schedule in its own
process (TensorFlow is loaded here, never in a web process)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import threading
import time

from chronoprice.config import settings_from
from chronoprice.market.timeframes import utc_minute
from chronoprice.model.artifact import ModelArtifact
from chronoprice.service.models import register_shadow
from chronoprice.store import open_store
from chronoprice.store.registry import read_changes, read_models, rollback_champion
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
RETRAIN_REASON = "retrained from the store"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")


def parse_every(text: str) -> float:
    """Seconds of an interval such as 30m, 24h or 7d; ValueError saying what is accepted."""
    match = _DURATION.match(text.strip().lower())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"--every {text!r}: give a number and m, h or d, e.g. 24h")
    return float(match[1]) * {"m": 60, "h": 3600, "d": 86_400}[match[2]]


def store_setting(args: argparse.Namespace):
    """The store --db names, else CHRONOPRICE_DB or DATABASE_URL, else chronoprice.db."""
    return settings_from({"db": args.db}, os.environ).db


def format_models(db: Database, timeframe: str | None) -> str:
    entries = read_models(db, timeframe)
    if not entries:
        return "no model is registered yet: one registers itself when the app first forecasts with it"
    lines = ["timeframe  status    version            since                 holdout MAE/naive  trained on"]
    for entry in entries:
        ratio = entry.details.get("holdout_mae_ratio")
        lines.append(f"{entry.timeframe:<9}  {entry.status:<8}  {entry.version:<17}  {utc_minute(entry.status_since_ms):<20}  "
                     f"{'-' if ratio is None else f'{ratio:.4f}':<17}  {entry.details.get('data') or '-'}")
    lines += ["", "last changes:"] + [f"  {utc_minute(change.changed_ms)}  {change.version} -> {change.status}: {change.reason}"
                                      for change in read_changes(db, timeframe=timeframe, limit=10)]
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    db = open_store(store_setting(args))
    try:
        if args.action == "rollback":
            change = rollback_champion(db, args.timeframe or "1m", int(time.time() * 1000))
            log.warning("rollback: %s is the %s champion again, %s is retired", change.version, change.timeframe, change.replaced)
            print(f"{change.version} is the {change.timeframe} champion again; {change.replaced} is retired. "
                  "Running processes switch within a few seconds.")
        else:
            print(format_models(db, args.timeframe))
    finally:
        db.close()
    return 0


def register_trained(args: argparse.Namespace, artifact: ModelArtifact, metadata: dict, reason: str,
                     supersede: str | None = None) -> None:
    """Register what `train --db` wrote as a shadow of its timeframe in the same store."""
    db = open_store(args.db)
    try:
        registered = register_shadow(db, metadata, artifact, reason, int(time.time() * 1000), supersede)
    finally:
        db.close()
    if registered:
        print(f"registered {metadata['version']} as a {metadata['timeframe']} shadow: it forecasts beside the champion from "
              "the next candle on and is promoted only by the rule in docs/MODEL.md")
    else:
        print(f"{metadata['version']} is registered already; its status is unchanged")


def run_retrain(args: argparse.Namespace, train_once) -> int:
    """`train_once(args)` now and then every --every until SIGTERM or Ctrl-C; a run that fails
    (too few candles yet, a store restarting) is logged and the next one tries again."""
    every = parse_every(args.every)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            try:
                train_once(args)
            except (ValueError, RuntimeError, OSError) as error:
                log.error("retraining failed: %s; trying again in %s", error, args.every)
            stop.wait(every)
    except KeyboardInterrupt:
        pass
    return 0
