"""The submitter pages: ``/`` (what this is), ``/submit`` (register images), ``/case`` (status
and withdrawal), in Korean and English.

The submit page hashes images in the browser (a Web Worker) and posts only the signals, as JSON,
to ``/submit/signals``. Without JavaScript the same form uploads the files to ``/submit``: they
are hashed in memory and dropped, never written anywhere. Every POST carries a CSRF token; each
error a submitter can meet is a friendly page (or, for ``/submit/signals``, the JSON error shape)
in their language. Security headers and rate limits are installed in ``install``.
"""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response, current_app, jsonify, render_template, request

from registry.errors import RegistryError
from registry.hashing.video import container_of
from registry.service import Registry, SubmittedImage
from registry.service.cases import MAX_IMAGES_PER_CASE
from registry.web import csrf, errors, messages
from registry.web.i18n import _
from registry.web.submission import parse_submission

# An APIBlueprint only so APIFlask can walk its hooks; the pages are not part of the API spec.
bp = APIBlueprint("pages", __name__, enable_openapi=False)
MAX_IMAGES = MAX_IMAGES_PER_CASE
EXAMPLE_CASE = "7K3M-Q9ZT-W2AB-C"


def registry() -> Registry:
    found: Registry = current_app.extensions["registry"]
    return found


def max_mb() -> str:
    """The upload limit in MB as people write it: 20, or 0.2."""
    return f"{round(registry().settings.max_upload_bytes / (1024 * 1024), 1):g}"


@bp.before_request
def _csrf_gate() -> None:
    if request.method == "POST":
        csrf.check()  # CsrfFailure is answered by the blueprint's error handlers


@bp.get("/")
def home() -> str:
    return render_template("home.html")


# --- submit ---------------------------------------------------------------------------------
@bp.route("/submit", methods=["GET", "POST"])
def submit() -> str | tuple[str, int]:
    """GET: the form. POST (no JavaScript): the files themselves, hashed in memory."""
    if request.method == "GET":
        return render_template("submit.html")
    if request.form.get("consent") != "yes":
        return render_template("submit.html", error=_(
            "Please confirm that you are in these images, or are helping the person who is."
        )), 422
    uploads = [f for f in request.files.getlist("images") if f.filename or f.content_length]
    if not uploads:
        return render_template("submit.html", error=_("Please choose at least one image.")), 422
    if len(uploads) > MAX_IMAGES:
        return render_template("submit.html", error=_(
            "Choose at most %(max)s images at a time.", max=MAX_IMAGES)), 422
    images: list[SubmittedImage] = []
    for upload in uploads:
        name = upload.filename or _("An image")
        try:
            image = _hash_upload(upload.read())
            registry().validate_submission([image], strict=True)  # so a refusal can name its file
            images.append(image)
        except RegistryError as err:
            return render_template(
                "submit.html", error=messages.file_error(err, name, max_mb())), 422
    try:
        receipt = registry().submit_case(images, strict=True)
    except RegistryError as err:
        return render_template(
            "submit.html", error=messages.submission_error(err, None)), status_of(err)
    return render_template("submitted.html", receipt=receipt)


def _hash_upload(data: bytes) -> SubmittedImage:
    """The image or video is held in memory only while it is hashed (the app's request class
    keeps uploads in memory, never in temporary files); only its signals leave this function."""
    try:
        if container_of(data) is not None:  # a video: its digests and kept frame hashes
            return SubmittedImage.from_video(registry().hash_video(data, registration=True))
        image = registry().hash_image(data, registration=True)
    finally:
        del data
    return SubmittedImage.from_image(image)


@bp.post("/submit/signals")
def submit_signals() -> tuple[Response, int]:
    """The JavaScript path: signals computed on the submitter's device, as JSON; answers
    ``{"case", "pin", "signals"}`` (201) or the JSON error shape, in the page's language."""
    if request.mimetype != "application/json":
        return errors.error_response(415, "unsupported_media_type", _(messages.REJECTED)), 415
    try:
        images = parse_submission(request.get_json(silent=True))
    except RegistryError as err:
        return json_error(err, messages.submission_error(err, None)), status_of(err)
    try:
        receipt = registry().submit_case(images, strict=True)
    except RegistryError as err:
        return (json_error(err, messages.submission_error(err, _culprit(images))),
                status_of(err))
    return jsonify(receipt.to_json()), 201


def _culprit(images: list[SubmittedImage]) -> int | None:
    """Which image (1-based) a refused submission is about, when it is about one."""
    for n, image in enumerate(images, 1):
        try:
            registry().validate_submission([image], strict=True)
        except RegistryError:
            return n
    return None


# --- case: status and withdrawal ------------------------------------------------------------
@bp.route("/case", methods=["GET", "POST"])
def case() -> str | tuple[str, int]:
    """GET: the form. POST: the case's status, after checking its PIN."""
    if request.method == "GET":
        return render_template("case.html")
    number, pin = _credentials()
    try:
        view = registry().case_status(number, pin, _client())
    except RegistryError as err:
        return _case_form_error(err, number)
    return render_template("case_status.html", view=view, number=number, pin=pin)


@bp.post("/case/withdraw")
def withdraw() -> str | tuple[str, int]:
    """Withdrawal in two steps: without ``confirm=yes`` the PIN is checked and a confirmation
    page asks; with it the case is withdrawn (its hashes stop matching at once)."""
    number, pin = _credentials()
    try:
        if request.form.get("confirm") != "yes":
            view = registry().case_status(number, pin, _client())
            return render_template("case_confirm.html", view=view, number=number, pin=pin)
        view = registry().withdraw_case(number, pin, _client())
    except RegistryError as err:
        if err.code == "invalid_transition":
            view = registry().case_status(number, pin, _client())
            return render_template("case_status.html", view=view, number=number, pin=pin,
                                   notice=messages.case_error(err, EXAMPLE_CASE))
        return _case_form_error(err, number)
    return render_template("case_status.html", view=view, number=number, pin=pin,
                           notice=_("The case is withdrawn. Its hashes no longer match "
                                    "anything."))


def _client() -> str:
    """The address the request came from (after the trusted proxies, see ProxyFix in the app
    factory): wrong PINs lock out this address, never the case."""
    return request.remote_addr or ""


def _credentials() -> tuple[str, str]:
    return request.form.get("case", "").strip(), request.form.get("pin", "").strip()


def _case_form_error(err: RegistryError, number: str) -> tuple[str, int]:
    field = "case" if err.code == "invalid_case_number" else "pin"
    return render_template("case.html", error=messages.case_error(err, EXAMPLE_CASE),
                           error_field=field, number=number), status_of(err)


# --- errors -----------------------------------------------------------------------------------
def status_of(err: RegistryError) -> int:
    return errors.describe(err)[0]


def json_error(err: RegistryError, message: str) -> Response:
    """``err`` in the API's JSON shape (its status and code: registry.web.errors.describe),
    with the page's own message (in the page's language)."""
    return errors.error_response(*errors.describe(err), message)
