"""``takedown match --url``: a platform's client. Hashes locally (the image never leaves this
machine) and asks the registry's API; standard library HTTP only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from registry.errors import RegistryError
from registry.hashing import ImageSignals

SIGNALS = ("pdq", "pdq_content", "pdq_frame", "phash", "md5", "sha256")


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
    """POST the queries (in batches of 1000) and return the results in order."""
    results: list[dict[str, Any]] = []
    for i in range(0, len(queries), 1000):
        body = json.dumps({"queries": queries[i : i + 1000]}).encode()
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


def _message(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return e.reason or "no details"
    finally:
        e.close()
