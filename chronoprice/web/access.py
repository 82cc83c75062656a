"""Who may change the watchlist, for the API and the dashboard alike: anyone holding the admin
token when one is set, and only this machine when none is, so a public deployment is read-only
by default. And who may scrape /metrics: this machine, and anyone else holding the metrics token
when one is set."""

from __future__ import annotations

import hmac

LOOPBACK = ("127.0.0.1", "::1")


def write_refusal(remote_addr: str | None, token_given: str | None, admin_token: str | None) -> tuple[int, str] | None:
    """None if the write may go ahead; else the HTTP status and why. The token is compared in
    constant time and never repeated."""
    if admin_token is None:
        if remote_addr not in LOOPBACK:
            return 403, "writes (watchlist, alerts) come only from this machine unless CHRONOPRICE_ADMIN_TOKEN is set"
        return None
    if not hmac.compare_digest((token_given or "").encode(), admin_token.encode()):
        return 401, "writes (watchlist, alerts) need the admin token (the header Authorization: Bearer <CHRONOPRICE_ADMIN_TOKEN>)"
    return None


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, None for any other."""
    header = header or ""
    return header[len("Bearer "):] if header.startswith("Bearer ") else None


def metrics_refusal(remote_addr: str | None, token_given: str | None, metrics_token: str | None) -> tuple[int, str] | None:
    """None if the scrape may go ahead; else 401 and why. Loopback needs no token."""
    if metrics_token is None or remote_addr in LOOPBACK:
        return None
    if not hmac.compare_digest((token_given or "").encode(), metrics_token.encode()):
        return 401, "/metrics needs the metrics token (the header Authorization: Bearer <CHRONOPRICE_METRICS_TOKEN>)"
    return None
