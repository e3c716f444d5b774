"""How the submitter pages plug into the app: translations, the CSRF secret, rate limits per
client address, security headers, template helpers and friendly error pages.

Pages get a strict Content-Security-Policy (our own origin only: no inline script or style, no
third-party anything, no framing) and are never cached; every response gets
``Referrer-Policy: no-referrer`` and ``X-Content-Type-Options: nosniff``. Errors on a page are
pages in the reader's language (never a traceback); ``/submit/signals`` answers the JSON error
shape; a browser asking for a missing address gets a page, any other client the JSON 404.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from babel.dates import format_date
from flask import Response, current_app, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from werkzeug.exceptions import HTTPException

from registry.errors import RegistryError
from registry.service import Registry
from registry.web import csrf, errors, i18n, messages, pages
from registry.web.limits import client_address

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "media-src blob:; worker-src 'self'; connect-src 'self'; font-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# A module worker runs under the policy of its own script. The hashing worker runs opencv.js
# (static/js/hash/local.js), which compiles WebAssembly and whose bindings build functions from
# strings: its script, and only its script, may do both. Scripts still come from our own
# origin only and the worker still reaches nothing but our own origin; pages keep CSP as it is.
WORKER_SCRIPT = "js/hash/worker.js"
WORKER_CSP = CSP.replace("script-src 'self'",
                         "script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
JSON_ENDPOINT = "pages.submit_signals"


def install(app: APIFlask, registry: Registry, limiter: Limiter) -> None:
    settings = registry.settings
    if not app.config.get("SECRET_KEY"):  # a test config may bring its own
        app.config["SECRET_KEY"] = settings.secret_key or secrets.token_hex(32)
    i18n.install(app)
    app.register_blueprint(pages.bp)
    # Per client address: the pages have no key. One budget for both ways of submitting, one
    # for status checks and withdrawals (the PIN lockout guards each case on its own).
    # (Flask-Limiter checks a decorated limit when its wrapper runs, so this app's views are
    # replaced by wrapped ones; the module's functions stay as they are for other apps.)
    budgets = {"submit": settings.submit_limit, "case": settings.case_limit}
    for endpoint, budget in (("submit", "submit"), ("submit_signals", "submit"),
                             ("case", "case"), ("withdraw", "case")):
        name = f"{pages.bp.name}.{endpoint}"
        limited = limiter.shared_limit(budgets[budget], scope=f"pages-{budget}",
                                       key_func=client_address, methods=["POST"])
        app.view_functions[name] = limited(app.view_functions[name])  # type: ignore[assignment]


# Hooks are set on the blueprint once, at import; register_blueprint installs them per app.
@pages.bp.after_app_request
def _headers(response: Response) -> Response:
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith("/api/"):
        return response  # the API docs page has its own inline style
    if response.mimetype == "text/html":
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
    elif request.endpoint == "static":
        # A module worker runs under its script's policy: no network but our own origin.
        worker = (request.view_args or {}).get("filename") == WORKER_SCRIPT
        response.headers["Content-Security-Policy"] = WORKER_CSP if worker else CSP
    return csrf.set_cookie(response)


# --- template helpers -------------------------------------------------------------------------
_SECTIONS = {"pages.home": "pages.home", "pages.submit": "pages.submit",
             "pages.case": "pages.case", "pages.withdraw": "pages.case"}


def page_url(endpoint: str, **values: Any) -> str:
    """A link to a page that keeps the language the reader chose with ``?lang=``."""
    lang = i18n.explicit_language()
    if lang:
        values["lang"] = lang
    return url_for(endpoint, **values)


@pages.bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    section = _SECTIONS.get(request.endpoint or "", "pages.home")
    settings = pages.registry().settings
    return {
        "lang": i18n.language(),
        "languages": i18n.LANGUAGES,
        "section": section,
        "page_url": page_url,
        "switch_url": lambda lang: url_for(section, lang=lang),
        "csrf_token": csrf.token,
        "quick_exit_url": settings.quick_exit_url,
        "min_quality": settings.pdq_min_quality,
        "max_images": pages.MAX_IMAGES,
        "max_mb": pages.max_mb(),
        "max_bytes": settings.max_upload_bytes,
        "max_pixels": settings.max_image_pixels,
        "max_video_bytes": settings.max_video_bytes,
        "max_video_pixels": settings.max_video_pixels,
        "max_video_seconds": settings.max_video_seconds,
        "pin_max_failures": settings.pin_max_failures,
        "example_case": pages.EXAMPLE_CASE,
        "format_date": lambda moment: format_date(moment, format="long", locale=i18n.language()),
    }


# --- errors -----------------------------------------------------------------------------------
_TITLES = {
    400: i18n.N_("This request could not be understood"),
    404: i18n.N_("This page does not exist"),
    405: i18n.N_("This page cannot be used that way"),
    413: i18n.N_("The files are too large"),
    429: i18n.N_("Too many tries"),
    500: i18n.N_("Something went wrong on our side"),
    503: i18n.N_("The registry is not available right now"),
}
_TEXTS = {
    400: i18n.N_("Please go back and try again."),
    404: i18n.N_("Check the address, or start again from the home page."),
    405: i18n.N_("Please start again from the home page."),
    413: i18n.N_("Without JavaScript, the images of one submission can be at most %(mb)s MB "
                 "together. Choose fewer or smaller images, or turn JavaScript on: then the "
                 "images are not sent at all."),
    429: messages.TOO_MANY,
    500: i18n.N_("Nothing you did caused this. Please try again in a few minutes."),
    503: messages.UNAVAILABLE,
}


def error_page(status: int, text: str | None = None) -> ResponseReturnValue:
    known = status if status in _TITLES else (500 if status >= 500 else 400)
    body = render_template("error.html", status=status, title=i18n._(_TITLES[known]),
                           text=text or i18n._(_TEXTS[known], mb=pages.max_mb()))
    return body, status


@pages.bp.errorhandler(csrf.CsrfFailure)
def _csrf_failure(err: csrf.CsrfFailure) -> ResponseReturnValue:
    text = i18n._(messages.EXPIRED)
    if request.endpoint == JSON_ENDPOINT:
        return errors.error_response(400, "csrf_failed", text)
    return error_page(400, text)


@pages.bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> ResponseReturnValue:
    """404, 405, 413 (too large), 429 (rate limit; Flask-Limiter adds Retry-After)..."""
    status = err.code or 500
    if request.endpoint == JSON_ENDPOINT:
        text = i18n._(_TEXTS.get(status, _TEXTS[400]), mb=pages.max_mb())
        return errors.error_response(status, errors.CODES.get(status, "error"), text)
    return error_page(status)


@pages.bp.errorhandler(RegistryError)
def _registry_error(err: RegistryError) -> ResponseReturnValue:
    if request.endpoint == JSON_ENDPOINT:
        return pages.json_error(err, messages.submission_error(err, None))
    return error_page(pages.status_of(err))


@pages.bp.errorhandler(Exception)
def _unexpected(err: Exception) -> ResponseReturnValue:
    log.exception("unexpected error on a page")  # the request body is never logged
    if request.endpoint == JSON_ENDPOINT:
        return errors.error_response(500, "internal_error", i18n._(_TEXTS[500]))
    return error_page(500)


def _wants_html() -> bool:
    """A browser (it asks for HTML first); API clients and tools get JSON."""
    if request.path.startswith("/api/"):
        return False
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


@pages.bp.app_errorhandler(404)
@pages.bp.app_errorhandler(405)
def _routing_error(err: HTTPException) -> ResponseReturnValue:
    """A missing address, or a page used with the wrong method (a reloaded withdrawal)."""
    status = err.code or 404
    if request.blueprint == pages.bp.name or _wants_html():
        return error_page(status)
    app: Any = current_app  # APIFlask's own JSON error shape, as for every other API error
    response: ResponseReturnValue = app.error_callback(
        HTTPError(status, message=err.name, headers={
            k: v for k, v in err.get_headers() if k.lower() != "content-type"}))
    return response
