"""Request and response schemas of the platform API: they validate input and generate the
OpenAPI document, so the spec cannot drift from the code."""

from __future__ import annotations

from apiflask import Schema
from apiflask.fields import Boolean, Dict, File, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range, Regexp
from marshmallow import ValidationError

from registry.domain import LOCAL_MAX_TEXT, VPDQ_MAX_TEXT


def _hex(digits: int) -> str:
    # Documented, not enforced here: the domain parses hex (and rejects degenerate hashes) with
    # specific error codes (invalid_hash, degenerate_hash).
    return f"^[0-9a-f]{{{digits}}}$"


class Signals(Schema):
    pdq = String(metadata={"description": "PDQ of the whole image, 64 lowercase hex digits",
                           "pattern": _hex(64)})
    pdq_content = String(metadata={
        "description": "PDQ of the picture inside borders, caption bars or screenshot chrome "
                       "(`takedown hash` prints it when it differs from `pdq`)",
        "pattern": _hex(64)})
    pdq_frame = String(metadata={
        "description": "PDQ of the picture with only its outer frame or caption bar removed "
                       "(`takedown hash` prints it when it differs from `pdq_content`)",
        "pattern": _hex(64)})
    phash = String(metadata={"description": "pHash (imagehash.phash), 16 lowercase hex digits",
                             "pattern": _hex(16)})
    md5 = String(metadata={"description": "MD5 of the file bytes, 32 lowercase hex digits",
                           "pattern": _hex(32)})
    sha256 = String(metadata={"description": "SHA-256 of the file bytes, 64 lowercase hex "
                                             "digits", "pattern": _hex(64)})
    local = String(metadata={
        "description": "Local features (ORB keypoints and descriptors, docs/hashing.md), "
                       "standard base64 of the packed layout; `takedown hash` and the "
                       "browser compute it. Up to 4,096 keypoints per query.",
        "maxLength": LOCAL_MAX_TEXT})
    vpdq = String(metadata={
        "description": "A video's kept frame hashes (PDQ per frame with its time and quality, "
                       "docs/hashing.md#video), standard base64 of the packed layout; "
                       "`takedown hash VIDEO` computes it. Up to 1,024 frames.",
        "maxLength": VPDQ_MAX_TEXT})
    vpdq_content = String(metadata={
        "description": "The same for the picture inside each frame's caption bars, borders "
                       "or screen-recording chrome (`takedown hash VIDEO` prints it when any "
                       "frame has them)",
        "maxLength": VPDQ_MAX_TEXT})
    vpdq_frame = String(metadata={
        "description": "The same for each frame with only its outer frame or letterbox bars "
                       "removed (printed when it differs from `vpdq_content`)",
        "maxLength": VPDQ_MAX_TEXT})


class MatchQuery(Schema):
    id = String(required=True, validate=Length(1, 128),
                metadata={"description": "Your reference for this query, echoed back"})
    signals = Nested(Signals, required=True)


class MatchRequest(Schema):
    # At most max_queries items: a setting, so the OpenAPI document's maxItems is filled in per
    # app (registry.web.docs.complete_spec) and the API checks the same number.
    queries = List(Nested(MatchQuery), required=True, validate=Length(min=1))


class MatchOut(Schema):
    match_id = String(metadata={"description": "Quote it when you send feedback"})
    signal = String(metadata={"description": "pdq, phash, md5, sha256, local or vpdq"})
    distance = Integer(metadata={"description": "Hamming bits (0 for digests; for local, the "
                                                "median over the inlier keypoints; for vpdq, the "
                                                "closest matched frame)"})
    inliers = Integer(metadata={"description": "local only: keypoints consistent with one "
                                               "similarity transform"})
    coverage = Float(metadata={"description": "local: fraction of the registered picture the "
                                              "inliers span; vpdq: fraction of the query "
                                              "video's frames matched"})
    frames = Integer(metadata={"description": "vpdq only: query frames matched (for a "
                                              "registered video, in time order)"})
    tier = String(validate=OneOf(["exact", "strong", "weak"]))
    bank = String()
    confidence = Float(metadata={"description": "0-1, lowered by not_violating feedback"})


class QueryResultOut(Schema):
    id = String()
    matched = Boolean()
    matches = List(Nested(MatchOut))


class MatchResponse(Schema):
    index_version = Integer(metadata={"description": "Change-log position answered at"})
    results = List(Nested(QueryResultOut))


class ImageMatchResponse(QueryResultOut):
    index_version = Integer()
    signals = Dict(keys=String(), values=String(),
                   metadata={"description": "The signals computed from the upload"})


class ImageUpload(Schema):
    file = File(  # type: ignore[no-untyped-call]
        required=True,
        metadata={"description": "The image (JPEG, PNG, GIF, WebP, BMP, TIFF, HEIC/HEIF or "
                                 "AVIF); hashed in "
                                 "memory, never stored"})


class VideoUpload(Schema):
    file = File(  # type: ignore[no-untyped-call]
        required=True,
        metadata={"description": "The video (MP4, MOV, 3GP, WebM, MKV or AVI) up to the "
                                 "upload limit; decoded and hashed in memory, never stored"})


class FeedbackRequest(Schema):
    match_id = String(required=True, validate=Length(1, 64))
    outcome = String(required=True,
                     validate=OneOf(["removed", "not_violating", "under_review"]))


class FeedbackResponse(Schema):
    match_id = String()
    outcome = String()
    recorded = Boolean()
    quarantined = Boolean()


def _cursor_in_range(value: str) -> None:
    # Change-log positions are 64-bit signed integers; a larger number is no cursor we gave out
    # (and would overflow the database's integer type).
    if value.isdigit() and int(value) >= 2**63:
        raise ValidationError("The cursor is not one this feed gave out.")


class FeedQuery(Schema):
    cursor = String(load_default="", validate=[Regexp(r"^[0-9]{0,19}$"), _cursor_in_range],
                    metadata={"description": "next_cursor of the last page (empty: from the "
                                             "start)"})
    limit = Integer(load_default=500, validate=Range(1, 1000))


class FeedRecordOut(Schema):
    seq = Integer()
    status = String(validate=OneOf(["active", "withdrawn"]))
    id = String(metadata={"description": "Stable id of the registered hash"})
    signal = String()
    value = String()
    bank = String()
    view = String(metadata={"description": "Which view of the image (full, content, mirror…)"})
    pipeline_version = Integer()
    at = String()


class FeedResponse(Schema):
    records = List(Nested(FeedRecordOut))
    next_cursor = String()
    has_more = Boolean()


class ErrorDetail(Schema):
    code = String(required=True)
    message = String(required=True)


class ErrorResponse(Schema):
    error = Nested(ErrorDetail, required=True)
