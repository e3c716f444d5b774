"""Per-key rate limits: in memory in the embedded default, in Redis when TAKEDOWN_REDIS_URL is
set (shared by every worker and machine). Built per app: a module-level limiter would be shared
by every app the factory builds, and its counters with them (Flask-Limiter keeps its storage on
the limiter object)."""

from __future__ import annotations

import hashlib

from flask import Flask, Response, request
from flask_limiter import Limiter

from registry.config import Settings


def bearer_key() -> str | None:
    """The API key of ``Authorization: Bearer KEY``, the scheme in any case and spacing (the
    one parser of the header: the API's gate and the rate limits use it alike)."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _key() -> str:
    key = bearer_key()
    if key:
        # Limits follow the key as parsed, so 'bearer K' and 'Bearer  K' share K's budget
        # (hashed: the key itself never sits in the limiter's storage).
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def client_address() -> str:
    return "addr:" + (request.remote_addr or "unknown")


def _retry_after_only_on_429(response: Response) -> Response:
    """Flask-Limiter sends Retry-After on every response and rounds it down, so it reads 0 in a
    window's last second; a client obeying it would retry at once into another 429."""
    if response.status_code != 429:
        response.headers.pop("Retry-After", None)
    else:
        try:
            seconds = int(response.headers.get("Retry-After", "1"))
        except ValueError:
            seconds = 1
        response.headers["Retry-After"] = str(max(1, seconds + 1))
    return response


def install(app: Flask, settings: Settings) -> Limiter:
    app.after_request(_retry_after_only_on_429)
    return Limiter(
        _key,
        app=app,
        storage_uri=settings.redis_url or "memory://",
        headers_enabled=True,
        default_limits=[],
        key_prefix="takedown",
        in_memory_fallback_enabled=bool(settings.redis_url),
        enabled=bool(app.config.get("RATELIMIT_ENABLED", True)),
    )
