"""PIN storage (scrypt, memory-hard, with a per-case salt; constant-time comparison) and the
lockout policy for wrong PINs.

The lockout holds per *client* (the address a guess came from), never for the case as a whole:
anyone who learns a case number can make guesses, and if those guesses locked the case its owner
would be shut out of status and withdrawal by a stranger. Three limits bound a guesser instead:

- per (case, client): ``pin_max_failures`` wrong PINs, then that client waits ``pin_lockout_s``,
  doubled for each further wrong PIN, up to a day;
- per client over every case (spraying guesses at many case numbers): ``pin_client_max_failures``
  wrong PINs, then the same doubling lock on all cases;
- per case over every client (guesses from many addresses): past ``pin_case_max_failures`` wrong
  PINs in a day, each client gets a single try at that case per lockout. A victim on their own
  device, which made no wrong guess, still gets its try and gets in.

An operator can clear a case's counters (``takedown case unlock``) or give it a new PIN
(``takedown case reset-pin``), both audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from datetime import timedelta

MAX_LOCK = timedelta(hours=24)
WINDOW = timedelta(hours=24)  # wrong PINs older than this (and locking nothing) are forgotten


def client_key(address: str) -> str:
    """What identifies a client in the counters: a digest of its address (the address itself is
    not stored), IPv6 taken as its /64, which one household or phone is handed whole."""
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text)
        if ip.version == 6:
            text = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    except ValueError:
        text = text or "unknown"
    return hashlib.sha256(b"takedown-pin-client\0" + text.encode()).hexdigest()[:32]


def lock_after(failures: int, limit: int, base_s: int) -> timedelta | None:
    """How long a client is locked after its ``failures``-th wrong PIN against ``limit``: none
    below the limit, ``base_s`` at it, doubled for each failure past it, at most a day."""
    if failures < limit:
        return None
    return min(timedelta(seconds=base_s * 2 ** min(failures - limit, 10)), MAX_LOCK)


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
