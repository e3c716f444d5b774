"""CSRF protection for the submitter pages: a signed double-submit token.

The one cookie the pages set is a random nonce (session-only, HttpOnly, SameSite=Strict), and
only on pages that show a form. Each form carries a token that signs that nonce with the app's
secret (``TAKEDOWN_SECRET_KEY``) and a timestamp; a POST is accepted when its token (form field
``csrf_token`` or header ``X-CSRF-Token``) is a valid, unexpired signature of the nonce in its
cookie, and when neither ``Sec-Fetch-Site`` nor ``Origin`` says it comes from another site.
A page on another origin can neither read the cookie nor forge the signature.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Response, current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "takedown_csrf"
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
MAX_AGE_S = 12 * 3600  # a form left open for half a day still works


class CsrfFailure(Exception):
    """The POST carried no valid token for this browser (expired page, cookie gone, forgery)."""


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="takedown-csrf")


def _nonce() -> str:
    if "csrf_nonce" not in g:
        existing = request.cookies.get(COOKIE, "")
        g.csrf_nonce = existing if 20 <= len(existing) <= 64 else secrets.token_urlsafe(32)
        g.csrf_set_cookie = g.csrf_nonce != existing
    nonce: str = g.csrf_nonce
    return nonce


def token() -> str:
    """A token for a form on this page (the cookie is set with the response)."""
    if "csrf_token" not in g:
        g.csrf_token = _serializer().dumps(_nonce())
        g.csrf_used = True
    signed: str = g.csrf_token
    return signed


def check() -> None:
    """Raise CsrfFailure unless this POST carries a valid token for its cookie."""
    # Fetch metadata and Origin refuse another site's request outright. With Referrer-Policy
    # no-referrer, browsers send "Origin: null" on our own form posts, so null is let through
    # to the token check.
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CsrfFailure("cross-site request")
    origin = request.headers.get("Origin", "null")
    if origin != "null" and urlsplit(origin).netloc != request.host:
        raise CsrfFailure("cross-origin request")
    cookie = request.cookies.get(COOKIE, "")
    sent = request.headers.get(HEADER) or request.form.get(FIELD, "")
    if not cookie or not sent:
        raise CsrfFailure("missing token or cookie")
    try:
        nonce = _serializer().loads(sent, max_age=MAX_AGE_S)
    except BadSignature:
        raise CsrfFailure("bad or expired token") from None
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce, cookie):
        raise CsrfFailure("token of another browser")


def set_cookie(response: Response) -> Response:
    """After a page that issued a token: set the nonce cookie if the browser lacks it."""
    if g.get("csrf_used") and g.get("csrf_set_cookie"):
        response.set_cookie(COOKIE, g.csrf_nonce, httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/")
    return response
