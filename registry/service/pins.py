"""PIN storage: scrypt (memory-hard) with a per-case salt; constant-time comparison."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def hash_pin(pin: str, n: int) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(pin, salt, n, 8, 1)
    return "$".join(["scrypt", str(n), "8", "1", _b64(salt), _b64(key)])


def check_pin(pin: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _derive(pin, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(key))


def dummy_hash(n: int) -> str:
    """A hash no PIN matches; checked against when a case does not exist, so that answering
    'wrong' takes the same time whether or not the case number exists."""
    return hash_pin(secrets.token_hex(16), n)


def _derive(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024,
                          dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
