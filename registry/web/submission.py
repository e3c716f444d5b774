"""What the submit page sends: the signals its Web Worker computed, never the image.

Body::

    {"images": [{"signals": {"pdq": hex, "phash": hex, "md5": hex, "sha256": hex},
                 "pdq_quality": 0-100,
                 "views": [{"label": "mirror", "pdq": hex, "quality": 0-100}, ...],
                 "pipeline_version": 4,
                 "local": base64 (optional; inside "signals")}]}

The shape is checked here, by hand and strictly (unknown fields are refused, as on the API);
each value is parsed by :meth:`Signal.parse`, exactly as API input, and the images are then
held to the same rules as every other case (``cases.validate_submission``, in the service).
"""

from __future__ import annotations

from registry.domain import Signal, SignalKind
from registry.errors import InvalidInput
from registry.hashing import PIPELINE_VERSION
from registry.service import SubmittedImage
from registry.service.cases import MAX_IMAGES_PER_CASE as MAX_IMAGES

_IMAGE_FIELDS = {"signals", "pdq_quality", "views", "pipeline_version"}
_VIEW_FIELDS = {"label", "pdq", "quality"}


def _fail(where: str, problem: str) -> InvalidInput:
    return InvalidInput(f"The submission does not match its schema: {where}: {problem}")


def _quality(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise _fail(where, "must be a whole number from 0 to 100.")
    return value


def _signal(kind: str, value: object, where: str) -> Signal:
    try:
        return Signal.parse(kind, value)
    except InvalidInput as e:
        raise type(e)(f"{where}: {e.message}") from None


def parse_image(raw: object, where: str) -> SubmittedImage:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object.")
    unknown = set(raw) - _IMAGE_FIELDS
    if unknown:
        raise _fail(f"{where}.{sorted(unknown)[0]}", "unknown field.")
    version = raw.get("pipeline_version", PIPELINE_VERSION)
    if version != PIPELINE_VERSION:
        raise InvalidInput(
            f"{where}: these hashes come from hashing pipeline {version!r}; this registry uses "
            f"version {PIPELINE_VERSION}. Reload the page and hash the images again.")
    signals = raw.get("signals")
    if not isinstance(signals, dict) or not signals:
        raise _fail(f"{where}.signals", "must be an object with at least one signal.")
    parsed = tuple(_signal(str(name), value, f"{where}.signals.{name}")
                   for name, value in signals.items())
    quality = raw.get("pdq_quality")
    if quality is not None:
        quality = _quality(quality, f"{where}.pdq_quality")
    views = raw.get("views", [])
    if not isinstance(views, list):
        raise _fail(f"{where}.views", "must be a list.")
    return SubmittedImage(parsed, quality, tuple(
        _view(view, f"{where}.views.{n}") for n, view in enumerate(views)))


def _view(raw: object, where: str) -> tuple[str, Signal, int]:
    if not isinstance(raw, dict) or set(raw) != _VIEW_FIELDS:
        raise _fail(where, "must be an object with label, pdq and quality.")
    label = raw["label"]
    if not isinstance(label, str):
        raise _fail(f"{where}.label", "must be a string.")
    return label, _signal(SignalKind.PDQ, raw["pdq"], f"{where}.pdq"), _quality(
        raw["quality"], f"{where}.quality")


def parse_submission(body: object) -> list[SubmittedImage]:
    if not isinstance(body, dict) or set(body) != {"images"}:
        raise _fail("body", "must be an object with one field, images.")
    images = body["images"]
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_IMAGES:
        raise _fail("images", f"must be a list of 1 to {MAX_IMAGES} images.")
    return [parse_image(raw, f"images.{n}") for n, raw in enumerate(images)]
