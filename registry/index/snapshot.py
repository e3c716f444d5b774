"""Index snapshots: one file per machine holding every kind's index and the change-log position,
laid out so that every serving process can ``mmap`` it as it is.

Layout (format 3): ``TRIDX\\x03`` magic, a little-endian u32 header length and u32 CRC-32 of the
header, a JSON header, zero padding to the first 4096-byte boundary, then the arrays, each
starting on a 4096-byte boundary (zero padding between). The header::

    {"format": 3, "position": int, "created": float, "fingerprint": str, "size": int,
     "sections": [{"kind", "bits", "count", "layout": "rows" | "tables", "id_offset": int,
                   "arrays": [{"name", "dtype", "shape", "offset", "xxh3"}]}]}

``size`` is the file's exact length; ``offset`` is from the start of the file; ``xxh3`` is the
XXH3-64 checksum of the array's bytes (about 15 GB/s, so verifying 10M PDQ hashes' 730 MB takes
well under 0.1 s where CRC-32 took 0.3 s). Two layouts:

- ``rows``: ``ids`` (int64) and ``codes`` (uint8, count x bits/8). Flat indexes, the local
  descriptors, and anything a test writes by hand.
- ``tables``: a multi-index base as :class:`registry.index.multi.MultiIndex` searches it:
  ``codes``, ``ids`` (uint32 plus ``id_offset``, or int64), and per 16-bit chunk the
  ``dirs`` directory (uint32, chunks x 2*65537) and ``blob`` buckets (uint8). Mapped read-only,
  these are the index: a process that maps the file builds nothing, and every process of a
  machine that maps the same file shares one copy of it in the page cache.

A snapshot is written to a temporary file in the same folder, fsynced, then renamed over the
old one: a reader sees the old snapshot or the new one, never half of one, and a process still
mapping the old file keeps a valid mapping (the old inode lives until the last mapping goes).
No pickle: a snapshot is data, not code. Every check a loader makes raises
:class:`SnapshotError`; the caller rebuilds from the database and never serves a bad file.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from registry.errors import SnapshotError
from registry.index.base import Codes, Ids

MAGIC = b"TRIDX\x03"
FORMAT = 3
ALIGN = 4096
_PREFIX = len(MAGIC) + 8
_DTYPES: dict[str, np.dtype[Any]] = {"<i8": np.dtype("<i8"), "<u4": np.dtype("<u4"),
                                     "|u1": np.dtype("u1")}
CHUNK_VALUES = 65536


@dataclass(frozen=True, slots=True)
class Section:
    """A kind's live ``(ids, codes)``, one row per code."""

    kind: str
    bits: int
    ids: Ids
    codes: Codes


@dataclass(frozen=True, slots=True)
class TablesSection:
    """A multi-index base: the arrays ``MultiIndex`` searches (see ``_mih.c`` for their
    layout). ``ids`` are ``id_offset + id_values[row]``."""

    kind: str
    bits: int
    codes: Codes
    id_offset: int
    id_values: npt.NDArray[np.uint32] | Ids
    dirs: npt.NDArray[np.uint32]
    blob: npt.NDArray[np.uint8]

    @property
    def count(self) -> int:
        return len(self.codes)


AnySection = Section | TablesSection


def _arrays_of(s: AnySection) -> list[tuple[str, np.ndarray[Any, Any]]]:
    if isinstance(s, TablesSection):
        return [("codes", np.ascontiguousarray(s.codes, dtype=np.uint8)),
                ("ids", np.ascontiguousarray(s.id_values,
                                             dtype="<u4" if s.id_values.dtype == np.uint32
                                             else "<i8")),
                ("dirs", np.ascontiguousarray(s.dirs, dtype="<u4")),
                ("blob", np.ascontiguousarray(s.blob, dtype=np.uint8))]
    return [("ids", np.ascontiguousarray(s.ids, dtype="<i8")),
            ("codes", np.ascontiguousarray(s.codes, dtype=np.uint8))]


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _header(position: int, fingerprint: str, sections: list[AnySection],
            arrays: list[list[tuple[str, np.ndarray[Any, Any]]]], sums: list[list[int]],
            body_start: int) -> tuple[dict[str, object], int]:
    header: dict[str, object] = {"format": FORMAT, "position": position, "created": time.time(),
                                 "fingerprint": fingerprint}
    meta, offset = [], body_start
    for s, arrs, checks in zip(sections, arrays, sums, strict=True):
        entries = []
        for (name, arr), check in zip(arrs, checks, strict=True):
            # An empty array takes no room: the file ends with the last byte of the last array,
            # so every byte past the header but the zero padding between arrays is checksummed.
            entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                            "offset": _align(offset), "xxh3": check})
            if arr.nbytes:
                offset = _align(offset) + arr.nbytes
        meta.append({"kind": s.kind, "bits": s.bits,
                     "count": s.count if isinstance(s, TablesSection) else len(s.ids),
                     "layout": "tables" if isinstance(s, TablesSection) else "rows",
                     "id_offset": s.id_offset if isinstance(s, TablesSection) else 0,
                     "arrays": entries})
    header["sections"] = meta
    header["size"] = offset
    return header, offset


def save(path: Path, position: int, sections: list[AnySection], fingerprint: str = "",
         left_out: list[str] | None = None) -> None:
    """``fingerprint`` identifies the change-log entry at ``position`` (see
    :meth:`registry.store.logs.ChangeLog.fingerprint`): a loader checks that the database it
    replays the tail from has the same history. ``left_out``: kinds whose index lives elsewhere
    (an engine), so a loader that needs them can refuse the file instead of serving them empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [_arrays_of(s) for s in sections]
    sums = [[_checksum(a) for _, a in arrs] for arrs in arrays]
    body_start = ALIGN
    while True:  # the header's own length decides where the arrays start
        header, _ = _header(position, fingerprint, sections, arrays, sums, body_start)
        header["left_out"] = sorted(left_out or [])
        head = json.dumps(header).encode()
        if _PREFIX + len(head) <= body_start:
            break
        body_start = _align(_PREFIX + len(head))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            frame = MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head
            f.write(frame + b"\0" * (body_start - len(frame)))
            written = body_start
            metas = header["sections"]
            assert isinstance(metas, list)
            for arrs, m in zip(arrays, metas, strict=True):
                for (_, arr), entry in zip(arrs, m["arrays"], strict=True):
                    if not arr.nbytes:
                        continue
                    if entry["offset"] > written:
                        f.write(b"\0" * (entry["offset"] - written))
                    if arr.nbytes:
                        f.write(arr.data)
                    written = entry["offset"] + arr.nbytes
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> tuple[int, list[AnySection]]:
    """Read and verify a snapshot into private memory; raise :class:`SnapshotError` if it is
    missing or corrupt."""
    position, sections, _ = load_with_fingerprint(path, mapped=False)
    return position, sections


def load_with_fingerprint(path: Path, mapped: bool = True
                          ) -> tuple[int, list[AnySection], str]:
    position, sections, fingerprint, _ = load_full(path, mapped)
    return position, sections, fingerprint


def load_full(path: Path, mapped: bool = True) -> tuple[int, list[AnySection], str, list[str]]:
    """:func:`load`, plus the change-log fingerprint the snapshot was written with.

    With ``mapped`` the arrays are read-only views of the file mapped into memory (shared with
    every other process mapping it; the mapping lives as long as the arrays do); otherwise each
    is read into an array of its own. Either way every array's checksum is verified first."""
    try:
        with open(path, "rb") as f:
            return _read(path, f, mapped)
    except FileNotFoundError:
        raise SnapshotError(f"No index snapshot at {path}.") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise SnapshotError(f"Cannot read the index snapshot at {path}: {e.strerror}.") from None


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one written snapshot from the next (device, inode, size, mtime), or None when
    there is none: a process compares it to notice that another one wrote a new snapshot."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: Path, f: io.BufferedReader, mapped: bool
          ) -> tuple[int, list[AnySection], str, list[str]]:
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
    file_size = os.fstat(f.fileno()).st_size
    try:
        header = json.loads(head)
        if header["format"] != FORMAT:
            raise SnapshotError(
                f"{path} has snapshot format {header['format']}; want {FORMAT}.")
        if int(header["size"]) != file_size:
            raise SnapshotError(f"{path} is corrupt: it is {file_size} bytes, its header says "
                                f"{int(header['size'])} (truncated or overwritten).")
        plans = [_section_plan(m, _PREFIX + head_len, file_size) for m in header["sections"]]
        position, fingerprint = int(header["position"]), str(header.get("fingerprint", ""))
        left_out = [str(k) for k in header.get("left_out", [])]
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError,
            json.JSONDecodeError):
        raise SnapshotError(
            f"{path} is corrupt: its header or sections do not parse.") from None
    source: mmap.mmap | None = None
    if mapped and any(nbytes for p in plans for _, _, _, _, nbytes, _ in p[4]):
        source = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ)
    sections = []
    for kind, bits, layout, id_offset, entries in plans:
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, dtype, shape, offset, nbytes, checksum in entries:
            if not nbytes:
                arr = np.zeros(shape, dtype=dtype)
                arr.flags.writeable = not mapped  # as a mapped one would be
            elif source is not None:
                arr = np.frombuffer(source, dtype=dtype, count=nbytes // dtype.itemsize,
                                    offset=offset).reshape(shape)
            else:
                arr = np.empty(shape, dtype=dtype)
                f.seek(offset)
                if nbytes and f.readinto(arr.data.cast("B")) != nbytes:
                    raise SnapshotError(f"{path} is corrupt: it is truncated.")
            if _checksum(arr) != checksum:
                raise SnapshotError(
                    f"{path} is corrupt: section {kind} ({name}) fails its checksum.")
            arrays[name] = arr
        sections.append(_section(path, kind, bits, layout, id_offset, arrays))
    return position, sections, fingerprint, left_out


_Entry = tuple[str, np.dtype[Any], tuple[int, ...], int, int, int]


def _section_plan(m: dict[str, Any], header_end: int, file_size: int
                  ) -> tuple[str, int, str, int, list[_Entry]]:
    """One section's header entry, checked against the file's size before anything is read."""
    kind, bits, count, layout = str(m["kind"]), int(m["bits"]), int(m["count"]), str(m["layout"])
    if count < 0 or bits <= 0 or bits % 8 or layout not in ("rows", "tables"):
        raise ValueError("bad section")
    entries = []
    for a in m["arrays"]:
        dtype = _DTYPES[str(a["dtype"])]
        shape = tuple(int(x) for x in a["shape"])
        offset = int(a["offset"])
        if any(x < 0 for x in shape) or offset < header_end or offset % ALIGN:
            raise ValueError("bad array")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else 0
        if nbytes and offset + nbytes > file_size:
            raise ValueError("array beyond the file")
        entries.append((str(a["name"]), dtype, shape, offset, nbytes, int(a["xxh3"])))
    names = [e[0] for e in entries]
    want = ["codes", "ids", "dirs", "blob"] if layout == "tables" else ["ids", "codes"]
    if names != want:
        raise ValueError("unexpected arrays")
    shapes = {e[0]: e[2] for e in entries}
    width = bits // 8
    if shapes["codes"] != (count, width) or shapes["ids"] != (count,):
        raise ValueError("array shapes do not match the count")
    if layout == "tables":
        chunks = bits // 16
        if bits % 16 or shapes["dirs"] != (chunks, 2 * (CHUNK_VALUES + 1)) \
                or len(shapes["blob"]) != 2 or shapes["blob"][0] != chunks:
            raise ValueError("table shapes do not match")
        if dict((e[0], e[1]) for e in entries)["dirs"] != np.dtype("<u4"):
            raise ValueError("bad directory type")
    return kind, bits, layout, int(m.get("id_offset", 0)), entries


def _section(path: Path, kind: str, bits: int, layout: str, id_offset: int,
             arrays: dict[str, np.ndarray[Any, Any]]) -> AnySection:
    if layout == "rows":
        if arrays["codes"].dtype != np.uint8 or arrays["ids"].dtype != np.dtype("<i8"):
            raise SnapshotError(f"{path} is corrupt: section {kind} has arrays of wrong types.")
        return Section(kind, bits, arrays["ids"].astype(np.int64, copy=False), arrays["codes"])
    dirs, blob, n = arrays["dirs"], arrays["blob"], len(arrays["codes"])
    # The kernels trust these offsets: a directory that passes its checksum but does not
    # describe ``n`` rows inside its blob (a foreign writer's) is refused, not searched.
    # Checked a chunk at a time, so the temporaries stay small (a few hundred KiB).
    for chunk in dirs if n else ():
        pos, off = chunk[0::2], chunk[1::2]
        if (pos[0] != 0 or pos[-1] != n or int(off[-1]) + 8 > blob.shape[1]
                or np.any(pos[1:] < pos[:-1]) or np.any(off[1:] < off[:-1])):
            raise SnapshotError(f"{path} is corrupt: section {kind} has inconsistent tables.")
    if arrays["ids"].dtype == np.dtype("<i8") and id_offset != 0:
        raise SnapshotError(f"{path} is corrupt: section {kind} has an id offset with int64 ids.")
    return TablesSection(kind, bits, arrays["codes"], id_offset, arrays["ids"], dirs, blob)


def _checksum(arr: np.ndarray[Any, Any]) -> int:
    return int(xxhash.xxh3_64_intdigest(arr.data))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
