"""Per-key rate limits: in memory in the embedded default, in Redis when TAKEDOWN_REDIS_URL is
set (shared by every worker and machine). Built per app: a module-level limiter would be shared
by every app the factory builds (NOTES.md)."""

from __future__ import annotations

import hashlib

from flask import Flask, request
from flask_limiter import Limiter

from registry.config import Settings


def _key() -> str:
    header = request.headers.get("Authorization", "")
    if header:
        # Limits follow the key (hashed: the key itself never sits in the limiter's storage).
        return "key:" + hashlib.sha256(header.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def client_address() -> str:
    return "addr:" + (request.remote_addr or "unknown")


def install(app: Flask, settings: Settings) -> Limiter:
    return Limiter(
        _key,
        app=app,
        storage_uri=settings.redis_url or "memory://",
        headers_enabled=True,
        default_limits=[],
        key_prefix="takedown",
        enabled=bool(app.config.get("RATELIMIT_ENABLED", True)),
    )
