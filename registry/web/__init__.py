"""The web edge: ``create_app(registry)`` builds the app over one Registry.

Blueprints stay thin: they translate HTTP to service calls; errors of every kind become the one
JSON shape in ``errors``; uploads never touch the disk (``InMemoryRequest``); rate limits and
metrics are built per app, never at import time.
"""

from __future__ import annotations

import io
import json
import re
from functools import partial
from typing import IO, Any

from apiflask import APIFlask
from flask import Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from registry.errors import InvalidJson
from registry.service import Registry
from registry.web import api, docs, errors, limits, metrics, ops, site


class UnsupportedText(ValueError):
    """JSON text this registry cannot hold: NUL or a lone surrogate, which JSON allows as
    escapes; neither SQLite nor PostgreSQL can store or even compare such a string."""


# Only these escapes produce such text (raw control characters are invalid JSON, and raw
# surrogates invalid UTF-8), so a document without them is not walked.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSUPPORTED = re.compile("[\x00\ud800-\udfff]")


def _has_unsupported_text(doc: Any) -> bool:
    stack = [doc]  # iterative: the document may be nested as deep as the decoder allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSUPPORTED.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, except that what would break further in is invalid JSON (a ValueError, as
    Werkzeug expects: 400, or the parser's own refusal) instead of a 500: a document nested
    deeper than the decoder can recurse, and text no database can hold (UnsupportedText)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            doc = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("The JSON document is nested too deeply.") from None
        # As json.loads reads bytes (UTF-8, -16 or -32); it has just done so without error.
        text = s if isinstance(s, str) else s.decode(json.detect_encoding(s), "surrogatepass")
        if _SUSPECT_ESCAPE.search(text) and _has_unsupported_text(doc):
            raise UnsupportedText("The request body holds a NUL character or a lone surrogate "
                                  "(\\u0000, \\ud800 to \\udfff), which is not text.")
        return doc


class InMemoryRequest(Request):
    """Werkzeug spools uploads over 500 KB to temporary files; the image must stay in memory,
    so every upload stream is a BytesIO (its size is bounded by MAX_CONTENT_LENGTH)."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None
                         ) -> IO[bytes]:
        return io.BytesIO()

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if isinstance(e, UnsupportedText):
            raise InvalidJson(str(e))
        raise InvalidJson("The request body is not valid JSON.")


class BoundedChunkedBody:
    """WSGI middleware: a body sent without Content-Length (chunked) is read here, at most one
    byte past the app's MAX_CONTENT_LENGTH, and handed on with its length. Werkzeug would stop
    reading such a stream at the limit without a word and parse the truncated prefix; with the
    length it refuses an oversized body with 413, as for any other. (Behind the documented nginx
    every body arrives with its length.)"""

    def __init__(self, app: Any, flask_app: APIFlask) -> None:
        self.app, self.flask_app = app, flask_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            limit = int(self.flask_app.config["MAX_CONTENT_LENGTH"])
            stream, parts, size = environ["wsgi.input"], [], 0
            while size <= limit:
                part = stream.read(min(64 * 1024, limit + 1 - size))
                if not part:
                    break
                parts.append(part)
                size += len(part)
            environ["wsgi.input"] = io.BytesIO(b"".join(parts))
            environ["CONTENT_LENGTH"] = str(size)  # Werkzeug ignores a length beside chunked
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)


def create_app(registry: Registry, test_config: dict[str, object] | None = None) -> APIFlask:
    app = APIFlask(__name__, title="Takedown Registry API", version="1",
                   spec_path="/api/openapi.json", docs_path=None)
    app.request_class = InMemoryRequest
    app.json = JsonProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=registry.settings.max_upload_bytes + 64 * 1024,
        MAX_FORM_MEMORY_SIZE=registry.settings.max_upload_bytes + 64 * 1024,
        OPENAPI_VERSION="3.1.0",
        VALIDATION_ERROR_STATUS_CODE=422,
        JSON_SORT_KEYS=False,
        INFO={"description": docs.DESCRIPTION},
    )
    if test_config:
        app.config.update(test_config)
    hops = registry.settings.proxy_hops
    if hops:
        # Behind a TLS proxy every request comes from the proxy's address: without this, each
        # per-address limit (auth failures, /submit, /case) would be one limit for everyone.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.wsgi_app = BoundedChunkedBody(app.wsgi_app, app)  # type: ignore[method-assign]
    app.extensions["registry"] = registry
    errors.register(app)
    metrics.install(app, registry)
    limiter = limits.install(app, registry.settings)
    # One budget per key across every API endpoint (a plain blueprint limit would give each
    # endpoint its own budget, multiplying the documented rate by the number of endpoints).
    limiter.shared_limit(registry.settings.rate_limit, scope="api")(api.bp)
    # Every wrong key would otherwise start a fresh budget: failed authentications are also
    # limited per client address, so keys cannot be guessed at the API's full rate.
    limiter.shared_limit(registry.settings.auth_failure_limit, scope="auth-failures",
                         key_func=limits.client_address,
                         deduct_when=lambda response: response.status_code == 401)(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(docs.bp)
    site.install(app, registry, limiter)  # the submitter pages (/, /submit, /case)
    finish_spec = partial(docs.complete_spec, settings=registry.settings)
    app.spec_processor(finish_spec)
    return app
