"""Which flask-caching backend suits the deployment."""

from __future__ import annotations

import os
from typing import Mapping


def cache_config(env: Mapping[str, str]) -> dict:
    """RedisCache when CACHE_REDIS_URL is set; FileSystemCache when gunicorn runs several workers
    (WEB_CONCURRENCY > 1, which gunicorn reads as its worker count); SimpleCache otherwise."""
    if env.get("CACHE_REDIS_URL"):
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": env["CACHE_REDIS_URL"], "CACHE_KEY_PREFIX": "chronoprice:"}
    if int(env.get("WEB_CONCURRENCY", "1") or 1) > 1:
        folder = env.get("CHRONOPRICE_CACHE_DIR") or os.path.join(env.get("TMPDIR", "/tmp"), "chronoprice-cache")
        return {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": folder, "CACHE_THRESHOLD": 2000}
    return {"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 2000}


def cached_seconds(refresh_seconds: float) -> int:
    """How long a response or page built for one tick stays cached. Its key names the tick, so
    a new candle replaces it at once; the timeout only bounds how late scores that a background
    history forecast adds (with no new tick) show up."""
    return max(60, int(10 * refresh_seconds))
