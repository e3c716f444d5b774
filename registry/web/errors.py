"""The one place where errors become HTTP: ``{"error": {"code", "message"}}`` with a status."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from registry import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.RegistryError], int] = {
    e.FileTooLarge: 413,
    e.ImageTooLarge: 413,
    e.InvalidInput: 400,
    e.Unauthenticated: 401,
    e.WrongPin: 401,
    e.Forbidden: 403,
    e.CaseNotFound: 404,
    e.PlatformNotFound: 404,
    e.PlatformExists: 409,
    e.InvalidTransition: 409,
    e.CaseLocked: 429,
    e.StorageUnavailable: 503,
}


def status_of(err: e.RegistryError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    @app.errorhandler(e.RegistryError)
    def _registry_error(err: e.RegistryError) -> Response:
        response = error_response(status_of(err), err.code, err.message)
        if isinstance(err, e.CaseLocked):
            response.headers["Retry-After"] = str(err.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        code = (err.name or "error").lower().replace(" ", "_")
        return error_response(err.code or 500, code, err.description or err.name)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unexpected error")  # the request body is never logged
        return error_response(500, "internal_error", "Something went wrong on our side.")
