"""``csv``: this registry's own hash-list format (docs/formats.md), and the lines PDQ's
``pdq-photo-hasher`` prints.

A header row names the columns: ``signal`` (pdq, phash, md5, sha256) and ``value`` (lowercase
hex, exactly as the API takes it) are required; ``status`` (active | withdrawn, empty: active),
``quality`` (PDQ quality 0-100), ``ref`` (the source's id of the record) and ``group`` (a case
number, an item) are optional; ``bank``, ``seq`` and ``at`` are written on export and ignored on
import. Any other column, a missing required one or a repeated one stops the file.

Without a header, a file whose first line is ``<64 hex>,<quality>,<file name>`` is read as the
output of ``pdq-photo-hasher`` (facebook/ThreatExchange pdq/cpp/bin/pdq-photo-hasher.cpp prints
``printf("%s,%d,%s\\n", hash, quality, filename)``, no header, no quoting): PDQ with its quality;
the file name is dropped (it may name the person).

Measured on the 2-vCPU build machine (Python 3.11): 1M pdq rows (101 MB, every import
column) read in 4.9 s, about 200,000 rows/s; peak RSS 19 MiB against 18.4 MiB for the bare
imports, and the peak that reading a 103 MB file adds under tracemalloc is 0.03 MB: rows are
parsed a line at a time and nothing is kept.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TextIO

from registry.domain import SignalKind
from registry.interop.records import (
    KINDS,
    Entry,
    ExportRecord,
    ListFormatError,
    Problem,
    entry,
    iso,
    quality_of,
)
from registry.interop.streams import lines

REQUIRED = ("signal", "value")
OPTIONAL = ("status", "quality", "ref", "group")
IGNORED = ("bank", "seq", "at")
HEADER = (*REQUIRED, *OPTIONAL, *IGNORED)
_KINDS = {k.value: k for k in KINDS}
_STATUS = {"": False, "active": False, "withdrawn": True}


def read(stream: BinaryIO) -> Iterator[Entry | Problem]:
    source = lines(stream)
    first, number = "", 0
    for first in source:
        number += 1
        if first.strip():
            break
    else:
        return
    cells = first.rstrip("\r\n").split(",", 2)
    if len(cells) == 3 and len(cells[0]) == 64 and cells[1].isdigit():
        yield from _photo_hasher(number, first, source)
        return
    header = next(csv.reader([first]))
    columns = _columns(number, [c.strip() for c in header])
    yield from _rows(number, source, columns, len(header))


def _columns(line: int, header: list[str]) -> dict[str, int]:
    unknown = [c for c in header if c not in HEADER]
    if unknown:
        raise ListFormatError(line, f"unknown column {unknown[0]!r}; the columns are "
                              f"{', '.join(HEADER)} (signal and value required).")
    repeated = {c for c in header if header.count(c) > 1}
    if repeated:
        raise ListFormatError(line, f"the column {sorted(repeated)[0]!r} appears twice.")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ListFormatError(line, f"the header has no {missing[0]!r} column (a header "
                              "row naming signal and value is required).")
    return {c: i for i, c in enumerate(header)}


def _rows(header_line: int, source: Iterator[str], columns: dict[str, int],
          width: int) -> Iterator[Entry | Problem]:
    reader = csv.reader(source, strict=True)
    at_signal, at_value = columns["signal"], columns["value"]
    # An absent optional column reads the "" appended to each row.
    at_status, at_quality, at_ref, at_group = (columns.get(c, width) for c in OPTIONAL)
    kinds, statuses = _KINDS, _STATUS
    done = header_line  # lines read so far (a quoted cell may span lines)
    try:
        for row in reader:
            line = done + 1
            done = header_line + reader.line_num
            if len(row) != width:
                if row and (len(row) > 1 or row[0].strip()):
                    yield Problem(line, f"This row has {len(row)} fields; the header has "
                                        f"{width}.")
                continue  # else a blank line
            row.append("")
            kind = kinds.get(row[at_signal])
            if kind is None:
                yield Problem(line, f"Unknown signal {row[at_signal][:20]!r}; a list's signals "
                                    "are pdq, phash, md5 and sha256.")
                continue
            withdrawn = statuses.get(row[at_status])
            if withdrawn is None:
                yield Problem(line, f"The status {row[at_status][:20]!r} is neither active nor "
                                    "withdrawn.")
                continue
            quality = quality_of(line, row[at_quality]) if row[at_quality] else None
            if isinstance(quality, Problem):
                yield quality
                continue
            yield entry(line, kind, row[at_value], withdrawn, quality, row[at_ref],
                        row[at_group])
    except csv.Error as e:
        raise ListFormatError(header_line + reader.line_num, f"not CSV: {e}.") from None


def _photo_hasher(first_line: int, first: str, source: Iterable[str]
                  ) -> Iterator[Entry | Problem]:
    line = first_line
    text: str | None = first
    rest = iter(source)
    while text is not None:
        cells = text.rstrip("\r\n").split(",", 2)
        if len(cells) == 3:
            q = quality_of(line, cells[1])
            yield q if isinstance(q, Problem) else entry(line, SignalKind.PDQ, cells[0],
                                                         quality=q)
        elif text.strip():
            yield Problem(line, "A pdq-photo-hasher line is hash,quality,filename.")
        text = next(rest, None)
        line += 1


def write(records: Iterable[ExportRecord], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    n = 0
    for r in records:
        if r.signal.kind not in KINDS:
            continue
        writer.writerow((r.signal.kind.value, r.signal.hex,
                         "withdrawn" if r.withdrawn else "active",
                         "" if r.quality is None else r.quality, r.ref, r.group, r.bank, r.seq,
                         iso(r.at)))
        n += 1
    return n
