"""``takedown match --url``: a platform's client. Hashes locally (the image never leaves this
machine) and asks the registry's API; standard library HTTP only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from registry.errors import RegistryError
from registry.hashing import ImageSignals

SIGNALS = ("pdq", "pdq_content", "pdq_frame", "phash", "md5", "sha256", "local")
# A request holds at most 1000 queries; with local signals (~48 KB each, and tens of
# milliseconds of verification each on the server) batches are cut at this many bytes too.
BATCH_BYTES = 4 * 1024 * 1024


class ApiError(RegistryError):
    code = "api_error"


def query_json(ref: str, image: ImageSignals, min_quality: int) -> dict[str, Any]:
    signals = {k: v for k, v in image.to_json().items() if k in SIGNALS}
    if image.pdq_quality < min_quality:
        signals.pop("pdq", None)
    if image.content is not None and image.content.quality < min_quality:
        signals.pop("pdq_content", None)
    if image.frame is not None and image.frame.quality < min_quality:
        signals.pop("pdq_frame", None)
    return {"id": ref, "signals": signals}


def match(url: str, key: str, queries: list[dict[str, Any]], timeout: float = 30.0
          ) -> list[dict[str, Any]]:
    """POST the queries (in batches of at most 1000 and about BATCH_BYTES) and return the
    results in order."""
    results: list[dict[str, Any]] = []
    for batch in _batches(queries):
        body = json.dumps({"queries": batch}).encode()
        request = urllib.request.Request(
            url.rstrip("/") + "/api/v1/match", data=body, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                results += json.loads(response.read())["results"]
        except urllib.error.HTTPError as e:
            raise ApiError(f"The registry answered {e.code}: {_message(e)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise ApiError(f"Cannot reach the registry at {url}: {reason}.") from None
    return results


def _batches(queries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    size = 0
    for q in queries:
        n = len(json.dumps(q))
        if not out or len(out[-1]) >= 1000 or size + n > BATCH_BYTES:
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
