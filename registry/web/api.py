"""The platform API, ``/api/v1``: match hashes or an image, report outcomes, read the feed.

Thin: parse and validate (schemas), authenticate (bearer key + scope), call the service, shape
the answer. Errors are raised as RegistryError and shaped once in ``registry.web.errors``.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response, current_app, g, jsonify, request

from registry.domain import QUERY_SIGNALS, Query, QueryResult, Scope, Signal
from registry.errors import InvalidInput, UnsupportedMediaType
from registry.service import Registry
from registry.web import limits, schemas
from registry.web.metrics import record_matches

bp = APIBlueprint("api", __name__, url_prefix="/api/v1", tag="Platform API")
SECURITY: list[str | dict[str, list[Any]]] = [{"ApiKey": []}]


def registry() -> Registry:
    found: Registry = current_app.extensions["registry"]
    return found


bearer_key = limits.bearer_key


_MEDIA = {"api.match": "application/json", "api.feedback": "application/json",
          "api.match_image": "multipart/form-data", "api.match_video": "multipart/form-data"}


@bp.before_request
def _gate() -> None:
    """Before any parsing: the key and its scope (401/403), then the media type (415) and
    well-formed JSON (400), so a caller learns the first thing that is wrong."""
    scope = Scope.FEED if request.endpoint == "api.feed" else Scope.MATCH
    g.platform = registry().authenticate(bearer_key(), scope)
    wanted = _MEDIA.get(request.endpoint or "")
    if wanted is None or request.method != "POST":
        return
    if request.mimetype != wanted:
        raise UnsupportedMediaType(
            f"This endpoint takes {wanted}; the request was {request.mimetype or 'untyped'}.")
    if wanted == "application/json":
        # Parsed once here (Werkzeug caches it for the schema's parser); invalid JSON raises
        # InvalidJson from InMemoryRequest.on_json_loading_failed.
        request.get_json()


def result_json(result: QueryResult) -> dict[str, Any]:
    return {"id": result.id, "matched": result.matched,
            "matches": [m.to_json() for m in result.matches]}


def parse_query(raw: dict[str, Any]) -> Query:
    signals = []
    for name, value in raw["signals"].items():  # names were checked by the schema
        if value is None:
            continue
        try:
            signals.append(Signal.parse(QUERY_SIGNALS[name], value))
        except InvalidInput as e:
            # Name the query: in a batch of a thousand the caller must know which one is wrong.
            raise type(e)(f"Query {raw['id']!r}, {name}: {e.message}") from None
    if not signals:
        raise InvalidInput(f"Query {raw['id']!r} has no signals.")
    return Query(raw["id"], tuple(signals))


class SchemaMismatch(InvalidInput):
    code = "validation_error"


def _mismatch(where: str, problem: str) -> SchemaMismatch:
    return SchemaMismatch(f"The request does not match the schema: {where}: {problem}")


def match_queries(body: object, most: int) -> list[dict[str, Any]]:
    """The MatchRequest schema, checked by hand, with at most ``most`` queries (the setting
    ``max_queries``, which the OpenAPI document also states): on the hot path a marshmallow
    load of 1000 nested queries cost ~64 µs per query, more than the rest of the request
    (docs/performance.md). The schema still documents the body; tests hold the two together."""
    if not isinstance(body, dict):
        raise _mismatch("body", "Invalid input type.")
    for key in body:
        if key != "queries":
            raise _mismatch(str(key), "Unknown field.")
    queries = body.get("queries")
    if queries is None:
        raise _mismatch("queries", "Missing data for required field.")
    if not isinstance(queries, list):
        raise _mismatch("queries", "Not a valid list.")
    if not 1 <= len(queries) <= most:
        raise _mismatch("queries", f"Length must be between 1 and {most}.")
    for n, query in enumerate(queries):
        where = f"queries.{n}"
        if not isinstance(query, dict):
            raise _mismatch(where, "Invalid input type.")
        for key in query:
            if key not in ("id", "signals"):
                raise _mismatch(f"{where}.{key}", "Unknown field.")
        ref, signals = query.get("id"), query.get("signals")
        if not isinstance(ref, str) or not 1 <= len(ref) <= 128:
            raise _mismatch(f"{where}.id", "Missing, not a string, or not 1 to 128 characters.")
        if not isinstance(signals, dict):
            raise _mismatch(f"{where}.signals", "Missing data for required field.")
        for name, value in signals.items():
            if name not in QUERY_SIGNALS:
                raise _mismatch(f"{where}.signals.{name}", "Unknown field.")
            if not isinstance(value, str):
                raise _mismatch(f"{where}.signals.{name}", "Not a valid string.")
    return queries


@bp.post("/match")
@bp.input(schemas.MatchRequest, arg_name="body", validation=False)
@bp.output(schemas.MatchResponse)
@bp.doc(security=SECURITY, responses=[400, 401, 403, 413, 415, 422, 429])
def match(body: object) -> Response:
    """Match hashes: 1 to `TAKEDOWN_MAX_QUERIES` queries (maxItems below; 1000 unless the
    operator set it), any subset of signals each; results in query order."""
    queries = [parse_query(q) for q in match_queries(body, registry().settings.max_queries)]
    results = registry().match(queries, platform=g.platform)
    record_matches(results)
    # Returned as a ready response: the output schema documents it, no per-match dump.
    return jsonify({"index_version": registry().index_version,
                    "results": [result_json(r) for r in results]})


def _upload_answer(query: Query, computed: dict[str, object]) -> dict[str, Any]:
    """Match one hashed upload and answer with the result and the signals computed."""
    (result,) = registry().match([query], platform=g.platform)
    record_matches([result])
    signals = {k: v for k, v in computed.items() if isinstance(v, str)}
    return {"index_version": registry().index_version, **result_json(result),
            "signals": signals}


@bp.post("/match/image")
@bp.input(schemas.ImageUpload, location="files", arg_name="files")
@bp.output(schemas.ImageMatchResponse)
@bp.doc(security=SECURITY, responses=[400, 401, 403, 413, 415, 422, 429])
def match_image(files: dict[str, Any]) -> dict[str, Any]:
    """Match an image: multipart field ``file``, hashed in memory (never stored) with the same
    pipeline as registration; the answer includes the computed signals."""
    upload = files["file"]
    data = upload.read()
    image = registry().hash_image(data)
    del data  # the bytes were only ever in memory; drop them now
    return _upload_answer(registry().query_of_image(upload.filename or "file", image),
                          image.to_json())


@bp.post("/match/video")
@bp.input(schemas.VideoUpload, location="files", arg_name="files")
@bp.output(schemas.ImageMatchResponse)
@bp.doc(security=SECURITY, responses=[400, 401, 403, 413, 415, 422, 429])
def match_video(files: dict[str, Any]) -> dict[str, Any]:
    """Match a video: multipart field ``file``, decoded and hashed in memory (never stored);
    its kept frame hashes are matched against registered videos (frames in time order) and
    stills (any frame), and the answer includes the computed signals (``vpdq``, digests).
    Sending the ``vpdq`` signal to ``/match`` instead keeps the video on your side."""
    upload = files["file"]
    data = upload.read()
    video = registry().hash_video(data)
    del data
    return _upload_answer(registry().query_of_video(upload.filename or "file", video),
                          video.to_json())


@bp.post("/feedback")
@bp.input(schemas.FeedbackRequest, arg_name="body")
@bp.output(schemas.FeedbackResponse)
@bp.doc(security=SECURITY, responses=[400, 401, 403, 404, 415, 422, 429])
def feedback(body: dict[str, Any]) -> dict[str, Any]:
    """Report what your review decided about a match (only the platform that received it)."""
    return registry().record_feedback(g.platform, body["match_id"], body["outcome"]).to_json()


@bp.get("/feed")
@bp.input(schemas.FeedQuery, location="query", arg_name="params")
@bp.output(schemas.FeedResponse)
@bp.doc(security=SECURITY, responses=[400, 401, 403, 409, 422, 429])
def feed(params: dict[str, Any]) -> dict[str, Any]:
    """Registered hashes in change order, ``active`` or ``withdrawn`` (scope ``feed``): apply
    them in order to a local copy; a withdrawn hash must stop matching at once. A cursor past
    the end of the log (the registry was restored or replaced) is refused with 409."""
    return registry().read_feed(g.platform, params["cursor"], params["limit"]).to_json()
