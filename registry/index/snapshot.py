"""Index snapshots: one file holding every kind's (ids, codes) and the change-log position.

Layout: ``TRIDX\\x02`` magic, a little-endian u32 header length and u32 CRC-32 of the header,
a JSON header
``{"format": 1, "position": int, "created": float, "sections": [{"kind", "bits", "count",
"offset", "crc32"}]}``, then per section ``count`` int64 ids followed by ``count * bits/8`` code
bytes. Written to a temporary file in the same folder, fsynced, then renamed: a reader sees the old
snapshot or the new one, never half of one. No pickle: a snapshot is data, not code.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.errors import SnapshotError
from registry.index.base import Codes, Ids

MAGIC = b"TRIDX\x02"
FORMAT = 2
_PREFIX = len(MAGIC) + 8


@dataclass(frozen=True, slots=True)
class Section:
    kind: str
    bits: int
    ids: Ids
    codes: Codes


def save(path: Path, position: int, sections: list[Section], fingerprint: str = "") -> None:
    """``fingerprint`` identifies the change-log entry at ``position`` (see
    :meth:`registry.store.uow.ChangeLog.fingerprint`): a loader checks that the database it
    replays the tail from has the same history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header: dict[str, object] = {"format": FORMAT, "position": position, "created": time.time(),
                                 "fingerprint": fingerprint}
    meta, offset = [], 0
    for s in sections:
        ids = np.ascontiguousarray(s.ids, dtype="<i8")
        codes = np.ascontiguousarray(s.codes, dtype=np.uint8)
        crc = zlib.crc32(codes.data, zlib.crc32(ids.data))
        meta.append({"kind": s.kind, "bits": s.bits, "count": len(ids), "offset": offset,
                     "crc32": crc})
        offset += ids.nbytes + codes.nbytes
    header["sections"] = meta
    head = json.dumps(header).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head)
            for s in sections:
                f.write(np.ascontiguousarray(s.ids, dtype="<i8").data)
                f.write(np.ascontiguousarray(s.codes, dtype=np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> tuple[int, list[Section]]:
    """Read and verify a snapshot; raise :class:`SnapshotError` if it is missing or corrupt."""
    position, sections, _ = load_with_fingerprint(path)
    return position, sections


def load_with_fingerprint(path: Path) -> tuple[int, list[Section], str]:
    """:func:`load`, plus the change-log fingerprint the snapshot was written with.

    Each section is read straight into its own arrays (no copy of the whole file is kept: at
    10M PDQ codes that would be 400 MB held for as long as the codes live)."""
    try:
        with open(path, "rb") as f:
            return _read(path, f)
    except FileNotFoundError:
        raise SnapshotError(f"No index snapshot at {path}.") from None


def _read(path: Path, f: io.BufferedReader) -> tuple[int, list[Section], str]:
    """Parse and verify an open snapshot file."""
    prefix = f.read(_PREFIX)
    if not prefix.startswith(MAGIC):
        raise SnapshotError(f"{path} is not an index snapshot (or of an older format).")
    if len(prefix) < _PREFIX:
        raise SnapshotError(f"{path} is corrupt: it is truncated.")
    head_len, head_crc = struct.unpack_from("<II", prefix, len(MAGIC))
    head = f.read(head_len)
    if len(head) != head_len or zlib.crc32(head) != head_crc:
        raise SnapshotError(f"{path} is corrupt: its header fails its checksum.")
    body_start = _PREFIX + head_len
    try:
        header = json.loads(head)
        if header["format"] != FORMAT:
            raise SnapshotError(
                f"{path} has snapshot format {header['format']}; want {FORMAT}.")
        sections = []
        for m in header["sections"]:
            count, width = int(m["count"]), int(m["bits"]) // 8
            if count < 0 or width <= 0:
                raise ValueError("bad section size")
            f.seek(body_start + int(m["offset"]))
            ids = np.empty(count, dtype="<i8")
            codes = np.empty((count, width), dtype=np.uint8)
            if f.readinto(ids.data) != ids.nbytes or f.readinto(codes.data) != codes.nbytes:
                raise SnapshotError(f"{path} is corrupt: it is truncated.")
            if zlib.crc32(codes.data, zlib.crc32(ids.data)) != m["crc32"]:
                raise SnapshotError(
                    f"{path} is corrupt: section {m['kind']} fails its checksum.")
            sections.append(Section(str(m["kind"]), int(m["bits"]),
                                    ids.astype(np.int64, copy=False), codes))
        return int(header["position"]), sections, str(header.get("fingerprint", ""))
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError, MemoryError,
            json.JSONDecodeError):
        raise SnapshotError(
            f"{path} is corrupt: its header or sections do not parse.") from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
