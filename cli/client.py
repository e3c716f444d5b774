"""``takedown match --url``: a platform's client. Hashes locally (the image never leaves this
machine) and asks the registry's API; standard library HTTP only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry.domain import QUERY_SIGNALS, Signal
from registry.errors import DegenerateHash, InvalidHash, RegistryError

if TYPE_CHECKING:
    from registry.hashing import ImageSignals, VideoSignals

# A request holds at most the registry's max_queries (its OpenAPI document says how many);
# with local signals (~144 KB each, and tens of milliseconds of verification each on the
# server) batches are cut at this many bytes too, and never past the registry's body limit.
BATCH_BYTES = 4 * 1024 * 1024
RETRIES = 5  # answers 429 and 503 are retried this many times, after Retry-After (or backoff)
MAX_WAIT_S = 60.0


class ApiError(RegistryError):
    code = "api_error"


def query_json(ref: str, image: ImageSignals | VideoSignals, min_quality: int
               ) -> dict[str, Any]:
    """The API query for one hashed file: its signals, less those the registry would refuse
    (a PDQ under ``min_quality``, a hash of a blank picture): one such file must not make the
    registry refuse a whole batch. ``DegenerateHash`` when nothing usable is left."""
    from registry.hashing import VideoSignals

    signals = {k: v for k, v in image.to_json().items() if k in QUERY_SIGNALS}
    if isinstance(image, VideoSignals):  # its digests and frames (checked when they were kept)
        return {"id": ref, "signals": signals}
    if image.pdq_quality < min_quality:
        signals.pop("pdq", None)
    if image.content is not None and image.content.quality < min_quality:
        signals.pop("pdq_content", None)
    if image.frame is not None and image.frame.quality < min_quality:
        signals.pop("pdq_frame", None)
    for name, text in list(signals.items()):
        try:
            Signal.parse(QUERY_SIGNALS[name], text).check_not_degenerate()
        except (DegenerateHash, InvalidHash):
            del signals[name]
    if not signals:
        raise DegenerateHash("The picture is blank or too plain to match: no usable hash.")
    return {"id": ref, "signals": signals}


def most_queries(url: str, fallback: int, timeout: float = 30.0) -> int:
    """How many queries one request to the registry at ``url`` may hold: ``maxItems`` of its
    OpenAPI document's MatchRequest, or ``fallback`` (this machine's ``max_queries``) when the
    document cannot be read."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/openapi.json",
                                    timeout=timeout) as response:
            spec = json.loads(response.read())
        most = spec["components"]["schemas"]["MatchRequest"]["properties"]["queries"][
            "maxItems"]
        return most if isinstance(most, int) and most > 0 else fallback
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


def match(url: str, key: str, queries: list[dict[str, Any]], *, most: int,
          max_bytes: int = BATCH_BYTES, timeout: float = 30.0,
          sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """POST the queries (in batches of at most ``most`` and about ``max_bytes``) and return
    the results in order. A 429 or 503 is retried up to :data:`RETRIES` times, after the
    answer's Retry-After (capped at :data:`MAX_WAIT_S`) or an exponential backoff."""
    results: list[dict[str, Any]] = []
    for batch in _batches(queries, most, min(max_bytes, BATCH_BYTES)):
        body = json.dumps({"queries": batch}).encode()
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(
                url.rstrip("/") + "/api/v1/match", data=body, method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    results += json.loads(response.read())["results"]
                break
            except urllib.error.HTTPError as e:
                if e.code in (429, 503) and attempt < RETRIES:
                    sleep(_wait(e, attempt))
                    e.close()
                    continue
                raise ApiError(f"The registry answered {e.code}: {_message(e)}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                raise ApiError(f"Cannot reach the registry at {url}: {reason}.") from None
    return results


def _wait(e: urllib.error.HTTPError, attempt: int) -> float:
    try:
        seconds = float(e.headers.get("Retry-After", ""))
    except ValueError:
        seconds = 2.0 ** attempt
    return max(0.0, min(MAX_WAIT_S, seconds))


def _batches(queries: list[dict[str, Any]], most: int, max_bytes: int
             ) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    size = 0
    for q in queries:
        n = len(json.dumps(q))
        if not out or len(out[-1]) >= most or size + n > max_bytes:
            out.append([])
            size = 0
        out[-1].append(q)
        size += n
    return out


def _message(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return e.reason or "no details"
    finally:
        e.close()
