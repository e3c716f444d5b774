"""``hma``: bank content of Hasher-Matcher-Actioner 2.0 ("open-media-match"), one JSON object
per line.

HMA has no file export and no HMA-to-HMA exchange (facebook/ThreatExchange at commit baefb4e:
``hasher-matcher-actioner/src/OpenMediaMatch/blueprints/curation.py`` serves banks, their
content and third-party exchanges only). So this format is defined here as JSON lines of the
objects HMA's own API uses for one piece of bank content: what ``GET
/c/bank/<bank>/content/<id>?include_signals=true`` answers (``BankContentResponse`` in
``OpenMediaMatch/schemas/curation.py``), which holds the ``signals`` map that ``POST
/c/bank/<bank>/signal`` takes. A script can replay each line into HMA with that call.

- ``{"id": 42, "disable_until_ts": 1, "bank": {"name": "NCII", "matching_enabled_ratio": 1.0},
  "signals": {"pdq": "<hex>", "video_md5": "<hex>"}, "metadata": {"content_id": "case-1"},
  "note": "..."}``; a JSON array of them, or a page ``{"data": [...]}``, is read too.
- ``signals`` keys are python-threatexchange signal type names (``SignalType.get_name()``):
  ``pdq`` is PDQ, ``video_md5`` MD5, ``video_sha256`` SHA-256 (``signal_type/md5.py``,
  ``sha256.py``); ``vpdq``, ``video_tmk_pdqf``, ``url``, ``url_md5``, ``raw_text``,
  ``trend_query`` and unknown names are skipped. HMA stores the values its signal types
  validated, lowercase hex, so they are parsed strictly. One object with several signals gives
  one entry per signal, all on the object's line.
- ``disable_until_ts`` 0 (``BankContentConfig.DISABLED`` in
  ``python-threatexchange/threatexchange/storage/interfaces.py``) withdraws the content's
  hashes; 1 (``ENABLED``) or a time (disabled until then, then enabled by itself) keeps them.
- ``id`` (HMA's content id) is ``ref``; ``metadata.content_id`` (the uploader's id of the
  content) is ``group``. HMA has no PDQ quality.
- On export each record is one object with one signal; ``id`` is our id of the hash (a
  number), the bank our bank's name; withdrawn records get ``disable_until_ts`` 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TextIO

from registry.domain import SignalKind
from registry.interop.records import (
    Entry,
    ExportRecord,
    Problem,
    checked_text,
    entry,
    not_held,
)
from registry.interop.streams import records

CARRIES = frozenset({SignalKind.PDQ, SignalKind.MD5, SignalKind.SHA256})
_KINDS = {"pdq": SignalKind.PDQ, "video_md5": SignalKind.MD5,
          "video_sha256": SignalKind.SHA256}
_NAMES = {k: n for n, k in _KINDS.items()}
_OTHER = {"vpdq": "a video vPDQ hash", "video_tmk_pdqf": "a video TMK hash", "url": "a URL",
          "url_md5": "an MD5 of a URL", "raw_text": "a text", "trend_query": "a trend query"}
DISABLED = 0
ENABLED = 1


def read(stream: BinaryIO) -> Iterator[Entry | Problem]:
    for line, record in records(stream, "data"):
        yield from _entries(line, record)


def _entries(line: int, record: object) -> Iterator[Entry | Problem]:
    if not isinstance(record, dict) or not isinstance(record.get("signals"), dict):
        yield Problem(line, "Not an HMA bank content object (an object with id and "
                            "signals).")
        return
    disabled = record.get("disable_until_ts", ENABLED)
    if isinstance(disabled, bool) or not isinstance(disabled, int) or disabled < 0:
        yield Problem(line, "disable_until_ts must be 0, 1 or a Unix time.")
        return
    ref = checked_text(line, "id", record.get("id"))
    metadata = record.get("metadata")
    group = checked_text(line, "metadata.content_id",
                         metadata.get("content_id") if isinstance(metadata, dict) else None)
    for found in (ref, group):
        if isinstance(found, Problem):
            yield found
            return
    assert isinstance(ref, str) and isinstance(group, str)
    for name, value in record["signals"].items():
        kind = _KINDS.get(name)
        if kind is None:
            yield not_held(line, _OTHER.get(name) or f"an unknown HMA signal type {name!r}")
        else:
            yield entry(line, kind, value, disabled == DISABLED, None, ref, group)


def write(items: Iterable[ExportRecord], out: TextIO) -> int:
    n = 0
    for r in items:
        name = _NAMES.get(r.signal.kind)
        if name is None:
            continue
        record: dict[str, object] = {
            "id": int(r.ref) if r.ref.isdecimal() and str(int(r.ref)) == r.ref else r.ref,
            "disable_until_ts": DISABLED if r.withdrawn else ENABLED,
            "bank": {"name": r.bank, "matching_enabled_ratio": 1.0},
            "signals": {name: r.signal.hex}}
        if r.group:
            record["metadata"] = {"content_id": r.group}
        out.write(json.dumps(record) + "\n")
        n += 1
    return n
