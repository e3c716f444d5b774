"""``threatexchange``: Meta ThreatExchange's ``/threat_updates`` records, and the signal files
of the ``threatexchange`` CLI.

Two real shapes are read (facebook/ThreatExchange at commit baefb4e, python-threatexchange):

1. JSON, chosen when the file starts with ``{`` or ``[``: the records of the Graph API's
   ``/<privacy group>/threat_updates`` delta stream, which the library syncs from
   (``threatexchange/exchanges/clients/fb_threatexchange/threat_updates.py``,
   ``ThreatUpdateJSON``; fields from ``descriptor.py`` ``te_threat_updates_fields``):
   ``{"id": "<indicator id>", "indicator": "<hex>", "type": "HASH_PDQ", "last_updated": <unix
   time>, "should_delete": false, "descriptors": {"data": [...]}}``, as JSON lines, an array,
   or Graph API pages ``{"data": [...], "paging": {...}}``. ``should_delete`` true withdraws;
   so does a ``descriptors`` member with no descriptors (the library treats that as a
   tombstone: issue facebook/ThreatExchange#834). ``id`` is ``ref``; ThreatExchange has no
   grouping of hashes and no PDQ quality.
2. Text, otherwise: the lines ``LocalFileSignalExchangeAPI`` reads
   (``threatexchange/exchanges/impl/file_api.py``) and ``threatexchange dataset -P -S``
   prints: ``<signal type> <signal>``, the type a ``SignalType.get_name()``. No status, id or
   group: every line is an active hash.

Type names. ThreatExchange indicator types (``INDICATOR_TYPE`` in ``signal_type/*.py``):
``HASH_PDQ`` is PDQ; ``HASH_MD5`` and ``HASH_VIDEO_MD5`` MD5; ``HASH_SHA256`` and
``HASH_VIDEO_SHA256`` SHA-256; ``HASH_TMK``, ``HASH_PHOTODNA``, ``URI``, ``TEXT_STRING`` and
others are skipped. CLI names: ``pdq``, ``video_md5``, ``video_sha256``; ``url``, ``url_md5``,
``raw_text``, ``trend_query``, ``vpdq``, ``video_tmk_pdqf`` are skipped. There is no pHash.

Case. ``PdqSignal.validate_signal_str`` requires lowercase, so PDQ is strict; MD5 and SHA-256
are lowercased here because the library lowercases them (``VideoMD5Signal`` and
``VideoSHA256Signal.validate_signal_str``: ``signal_str.strip().lower()``), ThreatExchange
holding digests in either case.

Export writes JSON lines of ``/threat_updates`` records (``HASH_PDQ``, ``HASH_MD5``,
``HASH_SHA256``), ``should_delete`` true for a withdrawn hash.
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
    timestamp,
)
from registry.interop.streams import first_char, lines, records

CARRIES = frozenset({SignalKind.PDQ, SignalKind.MD5, SignalKind.SHA256})
_TYPES = {"HASH_PDQ": SignalKind.PDQ, "HASH_MD5": SignalKind.MD5,
          "HASH_VIDEO_MD5": SignalKind.MD5, "HASH_SHA256": SignalKind.SHA256,
          "HASH_VIDEO_SHA256": SignalKind.SHA256}
_TYPE_OF = {SignalKind.PDQ: "HASH_PDQ", SignalKind.MD5: "HASH_MD5",
            SignalKind.SHA256: "HASH_SHA256"}
_OTHER_TYPES = {"HASH_TMK": "a video TMK hash", "HASH_PHOTODNA": "a PhotoDNA hash",
                "HASH_PDQ_OCR": "a PDQ hash with OCR text", "URI": "a URL",
                "RAW_URI": "a URL", "HASH_URL_MD5": "an MD5 of a URL",
                "TEXT_STRING": "a text", "TREND_QUERY": "a trend query"}
_NAMES = {"pdq": SignalKind.PDQ, "video_md5": SignalKind.MD5,
          "video_sha256": SignalKind.SHA256}
_OTHER_NAMES = {"vpdq": "a video vPDQ hash", "video_tmk_pdqf": "a video TMK hash",
                "url": "a URL", "url_md5": "an MD5 of a URL", "raw_text": "a text",
                "trend_query": "a trend query"}


def read(stream: BinaryIO) -> Iterator[Entry | Problem]:
    head, stream = first_char(stream)
    if head in ("{", "["):
        for line, record in records(stream, "data"):
            yield _update(line, record)
    else:
        yield from _signal_lines(stream)


def _value(kind: SignalKind, text: object) -> object:
    if kind is SignalKind.PDQ or not isinstance(text, str):
        return text
    return text.lower()


def _update(line: int, record: object) -> Entry | Problem:
    if not isinstance(record, dict) or "indicator" not in record or "type" not in record:
        return Problem(line, "Not a ThreatExchange threat update (an object with id, "
                             "indicator, type, should_delete).")
    type_name = record["type"]
    kind = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if kind is None:
        what = _OTHER_TYPES.get(type_name) if isinstance(type_name, str) else None
        return not_held(line, what or f"an unknown ThreatExchange type {type_name!r}")
    gone = record.get("should_delete", False)
    if not isinstance(gone, bool):
        return Problem(line, "should_delete must be true or false.")
    descriptors = record.get("descriptors")
    if isinstance(descriptors, dict) and not descriptors.get("data"):
        gone = True
    ref = checked_text(line, "id", record.get("id"))
    if isinstance(ref, Problem):
        return ref
    return entry(line, kind, _value(kind, record["indicator"]), gone, None, ref, "")


def _signal_lines(stream: BinaryIO) -> Iterator[Entry | Problem]:
    for line, text in enumerate(lines(stream), 1):
        name, _, signal = text.strip().partition(" ")
        if not name:
            continue
        kind = _NAMES.get(name)
        if kind is None:
            yield not_held(line, _OTHER_NAMES.get(name)
                           or f"an unknown threatexchange signal type {name[:40]!r}")
        elif not signal:
            yield Problem(line, "A threatexchange signal line is '<signal type> <signal>'.")
        else:
            yield entry(line, kind, _value(kind, signal.strip()))


def write(items: Iterable[ExportRecord], out: TextIO) -> int:
    n = 0
    for r in items:
        type_name = _TYPE_OF.get(r.signal.kind)
        if type_name is None:
            continue
        record = {"id": r.ref, "indicator": r.signal.hex, "type": type_name,
                  "last_updated": timestamp(r.at), "should_delete": r.withdrawn}
        out.write(json.dumps(record) + "\n")
        n += 1
    return n
