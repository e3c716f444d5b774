"""The one place where errors become HTTP: ``{"error": {"code", "message"}}`` with a status.

RegistryError subclasses map by class; HTTP errors (404, 405, 413, 429, schema validation) come
through APIFlask's error processor and get the same shape. Never a traceback, never a 500 for
bad input; an unexpected error is logged (without the request body) and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, jsonify

from registry import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.RegistryError], int] = {
    e.FileTooLarge: 413,
    e.ImageTooLarge: 413,
    e.InvalidJson: 400,
    e.UnsupportedMediaType: 415,
    e.InvalidInput: 422,
    e.Unauthenticated: 401,
    e.WrongPin: 401,
    e.Forbidden: 403,
    e.CaseNotFound: 404,
    e.PlatformNotFound: 404,
    e.BankNotFound: 404,
    e.MatchNotFound: 404,
    e.PlatformExists: 409,
    e.BankExists: 409,
    e.InvalidTransition: 409,
    e.CursorAhead: 409,
    e.CaseLocked: 429,
    e.StorageUnavailable: 503,
}
CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
         422: "validation_error", 429: "rate_limited", 500: "internal_error",
         503: "unavailable"}


def status_of(err: e.RegistryError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def describe(err: e.RegistryError) -> tuple[int, str]:
    """The one mapping of a RegistryError at the HTTP edge, for the API and the pages alike:
    ``(status, code)``. A server-side failure (an unreachable database: 503 ``unavailable``)
    is logged here, because its message names the database server and is never sent."""
    status = status_of(err)
    if status >= 500:
        log.warning("request failed: %s: %s", err.code, err.message)
        return status, CODES.get(status, "internal_error")
    return status, err.code


def error_response(status: int, code: str, message: str) -> Response:
    """The JSON error shape, ``{"error": {"code", "message"}}``, with its status."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            where = f"{prefix}.{key}" if prefix and key not in ("json", "query", "files") else (
                prefix or ("" if key in ("json", "query", "files") else str(key)))
            out += _flatten(value, where)
        return out
    if isinstance(detail, list) and all(isinstance(x, str) for x in detail):
        return [f"{prefix}: {' '.join(detail)}" if prefix else " ".join(detail)]
    return [f"{prefix}: {detail}"]


def register(app: APIFlask) -> None:
    @app.errorhandler(e.RegistryError)
    def _registry_error(err: e.RegistryError) -> Response:
        status, code = describe(err)
        # A server-side failure's detail went to the operator's log; clients get the
        # documented code (docs/api.md) and retry with backoff.
        message = (err.message if status < 500 else "The registry cannot reach its database "
                   "right now; retry in a moment." if status == 503 else
                   "Something went wrong on our side.")
        response = error_response(status, code, message)
        if isinstance(err, e.CaseLocked):
            response.headers["Retry-After"] = str(err.retry_after_s)
        if isinstance(err, e.Unauthenticated):
            response.headers["WWW-Authenticate"] = 'Bearer realm="takedown"'
        return response

    @app.error_processor
    def _http_error(err: HTTPError) -> tuple[dict[str, Any], int, dict[str, str]]:
        status = err.status_code
        code = CODES.get(status, "error")
        message = err.message or "Request failed."
        if status == 422 and err.detail:
            message = "The request does not match the schema: " + "; ".join(
                _flatten(err.detail))
        elif status == 429:
            message = "Too many requests for this API key; retry after the Retry-After delay."
        elif status == 413:
            message = "The request body is larger than this server accepts."
        elif status == 404:
            message = "There is nothing at this address."
        elif status == 405:
            message = "This address does not accept that method."
        elif status == 400 and not err.message:
            message = "The request could not be understood."
        headers = {str(k): str(v) for k, v in dict(err.headers or {}).items()}
        return {"error": {"code": code, "message": message}}, status, headers

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unexpected error")  # the request body is never logged
        return error_response(500, "internal_error", "Something went wrong on our side.")
