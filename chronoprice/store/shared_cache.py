"""Which shared cache suits the deployment, for the response cache (flask-caching) and the live
board (service/live_board.py): Redis when CACHE_REDIS_URL is set; a folder when gunicorn runs several
workers on one machine (WEB_CONCURRENCY > 1, which gunicorn reads as its worker count); this
process's memory otherwise."""

from __future__ import annotations

import os
from typing import Mapping

import cachelib
import redis

KEY_PREFIX = "chronoprice:"
THRESHOLD = 2000  # entries a memory or folder cache keeps before it prunes
REDIS_TIMEOUT_SECONDS = 2.0  # a Redis that does not answer must not hold a request or the stream for longer


def cache_backend(env: Mapping[str, str]) -> tuple[str, str | None]:
    """("redis", url), ("folder", path) or ("memory", None)."""
    if env.get("CACHE_REDIS_URL"):
        return "redis", env["CACHE_REDIS_URL"]
    if int(env.get("WEB_CONCURRENCY", "1") or 1) > 1:
        return "folder", env.get("CHRONOPRICE_CACHE_DIR") or os.path.join(env.get("TMPDIR", "/tmp"), "chronoprice-cache")
    return "memory", None


def open_shared_cache(env: Mapping[str, str], prefix: str) -> cachelib.BaseCache:
    """A cachelib cache on the deployment's backend, apart from the response cache's: its keys
    under `prefix` on Redis, its files in a folder beside the response cache's."""
    kind, where = cache_backend(env)
    if kind == "redis":
        client = redis.Redis.from_url(where, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        return cachelib.RedisCache(host=client, key_prefix=f"{KEY_PREFIX}{prefix}:")
    if kind == "folder":
        return cachelib.FileSystemCache(f"{where}-{prefix}", threshold=THRESHOLD)
    return cachelib.SimpleCache(threshold=THRESHOLD)
