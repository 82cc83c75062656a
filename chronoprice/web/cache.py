"""The response cache's flask-caching configuration, on the deployment's shared cache backend."""

from __future__ import annotations

from typing import Mapping

from chronoprice.store.shared_cache import KEY_PREFIX, THRESHOLD, cache_backend


def cache_config(env: Mapping[str, str]) -> dict:
    """RedisCache, FileSystemCache or SimpleCache, as store.shared_cache.cache_backend chooses."""
    kind, where = cache_backend(env)
    if kind == "redis":
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": where, "CACHE_KEY_PREFIX": KEY_PREFIX}
    if kind == "folder":
        return {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": where, "CACHE_THRESHOLD": THRESHOLD}
    return {"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": THRESHOLD}


def cached_seconds(refresh_seconds: float) -> int:
    """How long a response or page built for one tick stays cached. Its key names the tick, so
    a new candle replaces it at once; the timeout only bounds how late scores that a background
    history forecast adds (with no new tick) show up."""
    return max(60, int(10 * refresh_seconds))
