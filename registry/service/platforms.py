"""Platforms: API keys (high-entropy, shown once, stored as SHA-256), scopes, revocation."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from registry.domain import Platform, Scope
from registry.errors import (
    Forbidden,
    InvalidInput,
    PlatformExists,
    PlatformNotFound,
    Unauthenticated,
)
from registry.store import Store

KEY_PREFIX = "trk_"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _key_hash(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe; a slow KDF would only cost latency.
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add(store: Store, name: str, scopes: Iterable[Scope], actor: str = "operator"
        ) -> tuple[Platform, str]:
    if not _NAME.fullmatch(name):
        raise InvalidInput("A platform name is 1-64 lowercase letters, digits, '.', '_' or '-'.")
    scope_set = frozenset(scopes) or frozenset({Scope.MATCH})
    key = _new_key()
    with store.transaction() as tx:
        if tx.platforms.get(name) is not None:
            raise PlatformExists(f"A platform named {name!r} already exists.")
        platform = tx.platforms.add(name, _key_hash(key), key[:10], scope_set)
        tx.audit.record(actor, "platform_added", name,
                        {"scopes": sorted(s.value for s in scope_set)})
    return platform, key


def list_all(store: Store) -> list[Platform]:
    with store.transaction(write=False) as tx:
        return tx.platforms.list()


def revoke(store: Store, name: str, actor: str = "operator") -> Platform:
    with store.transaction() as tx:
        platform = tx.platforms.get(name)
        if platform is None:
            raise PlatformNotFound(f"There is no platform named {name!r}.")
        tx.platforms.revoke(platform.id)
        tx.audit.record(actor, "platform_revoked", name)
        revoked = tx.platforms.get(name)
    assert revoked is not None
    return revoked


def rotate(store: Store, name: str, actor: str = "operator") -> tuple[Platform, str]:
    key = _new_key()
    with store.transaction() as tx:
        platform = tx.platforms.get(name)
        if platform is None:
            raise PlatformNotFound(f"There is no platform named {name!r}.")
        if not platform.active:
            raise InvalidInput(f"Platform {name!r} is revoked; add a new platform instead.")
        tx.platforms.set_key(platform.id, _key_hash(key), key[:10])
        tx.audit.record(actor, "platform_key_rotated", name)
        rotated = tx.platforms.get(name)
    assert rotated is not None
    return rotated, key


def authenticate(store: Store, key: str | None, scope: Scope) -> Platform:
    """The active platform holding ``key``; 401 for a missing, unknown or revoked key and 403
    when the key lacks ``scope``."""
    if not key:
        raise Unauthenticated("An API key is required: send 'Authorization: Bearer <key>'.")
    with store.transaction(write=False) as tx:
        platform = tx.platforms.by_key_hash(_key_hash(key))
    if platform is None or not platform.active:
        raise Unauthenticated("The API key is not valid or has been revoked.")
    if scope not in platform.scopes:
        raise Forbidden(f"This API key does not have the '{scope.value}' scope.")
    return platform
