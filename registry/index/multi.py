"""MultiIndex: multi-index hashing over 16-bit chunks, exact to a chosen radius.

A flat scan reads every code for every query (about 30 ms at 10M PDQ codes). Multi-index
hashing (Norouzi et al.) cuts each code into 16-bit chunks and keeps, per chunk, the rows holding
each of the 65536 chunk values; a query reads only the rows whose chunk is within a small probe
radius of its own, then checks their full distance (the kernels are in ``_mih.c``).

Exactness is pigeonhole arithmetic: probing chunk ``c`` to radius ``r_c`` finds every code within
``E`` when ``sum(r_c + 1) > E``. :func:`probe_schedule` picks the cheapest radii for a given
``exact_radius`` (the strong-tier threshold): for PDQ's 16 chunks, radius 1 everywhere is exact to
31 and radius 2 (one chunk at 1) exact to 47. Hits further out, up to the search radius, are found
when some chunk happens to differ little, which is most of them: ``bench/scale.py`` measures that
recall against brute force.

Like :class:`~registry.index.flat.FlatIndex`, new codes go to a small faiss delta scanned flat,
removals are tombstones, and both are folded into a rebuilt base past a size bound.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from registry.index import _mih, snapshot
from registry.index.base import (
    Codes,
    IdColumn,
    Ids,
    SearchResult,
    check_codes,
    check_pair,
    hits_per_query,
)
from registry.index.overlay import Overlay

CHUNK_BITS = 16
CHUNK_VALUES = 1 << CHUNK_BITS
MAX_PROBE = 3
_SKIP = 0xFF  # a chunk the schedule does not probe
_MIN_DELTA_BEFORE_COMPACT = 4096


def probe_schedule(chunks: int, exact_radius: int, extra: int = 0) -> bytes:
    """Per-chunk probe radii with ``sum(r + 1) > exact_radius``, spread evenly (the cheapest
    spread, as probing cost grows steeply with r). Chunks needing no probe are skipped.
    ``extra`` more chunks are probed one bit deeper: beyond the exact radius, that finds more
    of the codes a little further out (the weak tier), at more candidates per query."""
    if exact_radius < 0 or extra < 0:
        raise ValueError("exact_radius and extra must be >= 0")
    need = exact_radius + 1 + extra
    per, rest = divmod(need, chunks)
    radii = [per - 1 + (1 if c < rest else 0) for c in range(chunks)]
    if max(radii) > MAX_PROBE:
        raise ValueError(
            f"exact to {exact_radius} bits needs probe radius {max(radii)} per 16-bit chunk; "
            f"at most {MAX_PROBE} is supported")
    return bytes(r if r >= 0 else _SKIP for r in radii)


def exact_radius_of(schedule: bytes) -> int:
    """The largest radius a schedule is exact to."""
    return sum(r + 1 for r in schedule if r != _SKIP) - 1


class _Tables:
    """The immutable base: codes, their ids and one chunk table per 16-bit chunk.

    Memory per code: the code (32 bytes for PDQ), its id (4), and per chunk about 18 bits of
    table (the row's low 16 bits plus about 2 bits of unary high part; see ``_mih.c``): about
    72 bytes a PDQ hash, plus 576 KiB of directory and rounding per chunk."""

    def __init__(self, bits: int, ids: Ids, codes: Codes, threads: int = 2) -> None:
        self.nbytes = bits // 8
        self.chunks = bits // CHUNK_BITS
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        n = len(self.codes)
        if n >= 2**32:
            raise ValueError("a base holds fewer than 2**32 codes")
        if len(ids) != n:
            raise ValueError("ids and codes differ in length")
        self.ids = IdColumn(ids)
        # Per chunk: (row position, byte offset) of each bucket, and the buckets' bytes.
        self.dirs = np.empty((self.chunks, 2 * (CHUNK_VALUES + 1)), dtype=np.uint32)
        self.blob = np.empty((self.chunks, _mih.blob_bytes(n)), dtype=np.uint8)

        if n == 0:
            # What the build writes for no rows (all zeros), as untouched zero pages: an empty
            # index (every process has several) costs no resident memory.
            self.dirs = np.zeros((self.chunks, 2 * (CHUNK_VALUES + 1)), dtype=np.uint32)
            self.blob = np.zeros((self.chunks, _mih.blob_bytes(0)), dtype=np.uint8)
            return

        def build(c: int) -> None:
            _mih.build(self.codes, self.nbytes, c, self.dirs[c], self.blob[c])

        # The kernel releases the GIL: chunks build in parallel.
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(build, range(self.chunks)))

    @classmethod
    def of_section(cls, section: snapshot.TablesSection) -> _Tables:
        """Tables over a snapshot's arrays as they are (with a mapped snapshot, read-only views
        of the file shared by every process mapping it): nothing is built or copied."""
        tables = cls.__new__(cls)
        tables.nbytes = section.bits // 8
        tables.chunks = section.bits // CHUNK_BITS
        tables.codes = section.codes
        tables.ids = IdColumn.of_values(section.id_offset, section.id_values)
        tables.dirs = section.dirs.reshape(section.dirs.shape[0], -1)
        tables.blob = section.blob.reshape(section.blob.shape[0], -1)
        if tables.blob.shape != (tables.chunks, _mih.blob_bytes(len(section.codes))):
            raise ValueError("the tables do not fit their codes")
        return tables

    def section(self, kind: str) -> snapshot.TablesSection:
        return snapshot.TablesSection(kind, self.nbytes * 8, self.codes, self.ids.offset,
                                      self.ids.values, self.dirs, self.blob)

    @property
    def mapped(self) -> bool:
        """Whether the tables are views of a mapped snapshot (shared) rather than private."""
        return not self.codes.flags.writeable

    def __len__(self) -> int:
        return len(self.codes)

    def search(self, queries: Codes, radius: int, schedule: bytes
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32], int]:
        lims, rows, dist, examined = _mih.search(self.codes, self.nbytes, self.dirs, self.blob,
                                                 queries, radius, schedule)
        return (np.frombuffer(lims, dtype=np.int64),
                self.ids.take(np.frombuffer(rows, dtype=np.uint32)),
                np.frombuffer(dist, dtype=np.int32), examined)

    @property
    def memory_parts(self) -> dict[str, int]:
        """Bytes held, by part: codes, ids, the tables' buckets (rows' low parts and unary high
        parts) and their directories."""
        return {"codes": int(self.codes.nbytes), "ids": self.ids.nbytes,
                "buckets": int(self.blob.nbytes), "directories": int(self.dirs.nbytes)}

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory_parts.values())


@dataclass
class CompactionPlan:
    """What :meth:`MultiIndex.begin_compaction` froze: the base (immutable), a copy of the
    delta and the tombstones at that moment, and how far the change records had got."""

    generation: int
    base: _Tables
    delta_ids: Ids
    delta_codes: Codes
    tomb_array: Ids
    delta_rows: int
    removals: int
    tables: _Tables | None = None


class MultiIndex:
    """With ``auto_compact`` (the default) ``add``/``remove`` rebuild the base inline once the
    delta or the tombstones pass their bound. A serving process turns it off and compacts in
    the background instead (:meth:`begin_compaction`, :meth:`build`, :meth:`finish_compaction`):
    at 10M codes a rebuild takes seconds, and searches must not wait for it."""

    def __init__(self, bits: int, exact_radius: int, compact_ratio: float = 0.1,
                 max_delta: int = 32768, auto_compact: bool = True,
                 extra_probes: int = 0) -> None:
        if bits % CHUNK_BITS:
            raise ValueError(f"bits must be a multiple of {CHUNK_BITS}")
        self._bits = bits
        self.schedule = probe_schedule(bits // CHUNK_BITS, exact_radius, extra_probes)
        self.exact_radius = exact_radius_of(self.schedule)
        self._ratio = compact_ratio
        self._max_delta = max_delta
        self._base = _Tables(bits, np.zeros(0, np.int64), np.zeros((0, bits // 8), np.uint8))
        self._overlay = Overlay(bits)  # the delta and the tombstones (registry.index.overlay)
        self._generation = 0  # bumped by every compaction: a stale background plan is dropped
        self.auto_compact = auto_compact
        self.examined = 0  # candidate rows checked by base searches, for the benchmarks

    # --- interface -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    def __len__(self) -> int:
        return len(self._base) + self._overlay.delta_rows - self._overlay.dead_rows

    def add(self, ids: Ids, codes: Codes) -> None:
        ids, codes = check_pair(ids, codes, self._bits)
        if len(ids) == 0:
            return
        if self._overlay.resurrects(ids):
            self.compact()
        self._overlay.add(ids, codes)
        if self.auto_compact and self.needs_compaction:
            self.compact()

    @property
    def needs_compaction(self) -> bool:
        bound = min(self._max_delta, max(_MIN_DELTA_BEFORE_COMPACT, self._ratio * len(self._base)))
        dead_rows = self._overlay.dead_rows
        dead = max(1024, self._ratio * (len(self) + dead_rows))
        return self._overlay.delta_rows > bound or dead_rows > dead

    def remove(self, ids: Ids) -> int:
        rows = self._overlay.remove(ids, self._base.ids)
        if rows and self.auto_compact and self.needs_compaction:
            self.compact()
        return rows

    def search(self, queries: Codes, radius: int) -> list[SearchResult]:
        queries = check_codes(queries, self._bits)
        if radius < 0:
            raise ValueError("radius must be >= 0")
        nq = len(queries)
        # Every hit of the batch in three flat arrays (query, id, distance), ordered once with
        # numpy and cut per query: a batch of 1000 queries with few hits costs well under a
        # millisecond here instead of a sort and two concatenations per query.
        qs, ids, dists = [], [], []
        if len(self._base) and nq:
            lims, base_ids, dist, examined = self._base.search(queries, radius, self.schedule)
            self.examined += examined
            qs.append(np.repeat(np.arange(nq, dtype=np.int64), np.diff(lims)))
            ids.append(base_ids)
            dists.append(dist)
        delta = self._overlay.delta_hits(queries, radius)
        if delta is not None:
            qs.append(delta[0])
            ids.append(delta[1])
            dists.append(delta[2])
        return hits_per_query(nq, qs, ids, dists, self._overlay.tomb_array)

    def export(self) -> tuple[Ids, Codes]:
        return self._overlay.export(self._base.ids.full(), self._base.codes)

    # --- maintenance -----------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        return {
            "live": len(self),
            "mapped": int(self._base.mapped),
            "base": len(self._base),
            "delta": self._overlay.delta_rows,
            "tombstones": self._overlay.dead_rows,
            "exact_radius": self.exact_radius,
            "bytes": self.memory_bytes,
        }

    @property
    def memory_parts(self) -> dict[str, int]:
        """:attr:`memory_bytes` by part: the base's (see ``_Tables.memory_parts``), the delta
        and the tombstones."""
        o = self._overlay
        return {**self._base.memory_parts, "delta": o.delta_rows * (self._bits // 8 + 8),
                "tombstones": len(o.tombstones) * 80}

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory_parts.values())

    @property
    def mapped(self) -> bool:
        """Whether the base is shared through a mapped snapshot (see ``snapshot.py``)."""
        return self._base.mapped

    def base_section(self, kind: str) -> snapshot.TablesSection:
        """The base's tables as a snapshot section (the delta and tombstones are not in it)."""
        return self._base.section(kind)

    @property
    def pending(self) -> tuple[int, int]:
        """Rows in the delta and tombstoned rows: what the next base folds in."""
        return self._overlay.delta_rows, self._overlay.dead_rows

    def compact(self) -> None:
        """Fold delta and tombstones into a rebuilt base, inline."""
        plan = self.begin_compaction()
        self.build(plan)
        self.finish_compaction(plan)

    def begin_compaction(self) -> CompactionPlan:
        """Freeze what the next base holds (cheap: the delta is small, the base is shared).
        Call under the lock that guards this index."""
        o = self._overlay
        return CompactionPlan(self._generation, self._base, o.delta_ids.copy(), o.delta_codes(),
                              o.tomb_array.copy(), o.delta_rows, len(o.removals))

    def build(self, plan: CompactionPlan) -> None:
        """The slow part, with no lock held: merge and build the new tables."""
        ids, codes = Overlay.live(np.concatenate([plan.base.ids.full(), plan.delta_ids]),
                                  np.concatenate([plan.base.codes, plan.delta_codes]),
                                  plan.tomb_array)
        plan.tables = _Tables(self._bits, ids, codes)

    def finish_compaction(self, plan: CompactionPlan) -> bool:
        """Swap the new base in, keeping what arrived since the plan: delta rows added after it
        stay in the delta, ids removed after it stay tombstoned. Call under the lock. False
        (and nothing changes) when another compaction happened since the plan."""
        if plan.generation != self._generation or plan.tables is None:
            return False
        self._base = plan.tables
        self._overlay = self._overlay.after(plan.delta_rows, plan.removals, self._base.ids)
        self._generation += 1
        return True

    @classmethod
    def from_section(cls, section: snapshot.TablesSection, exact_radius: int,
                     compact_ratio: float = 0.1, extra_probes: int = 0) -> MultiIndex:
        """An index whose base is a snapshot's tables as they are (see ``_Tables.of_section``)."""
        index = cls(section.bits, exact_radius, compact_ratio, extra_probes=extra_probes)
        index._base = _Tables.of_section(section)
        return index

    @classmethod
    def from_arrays(cls, bits: int, ids: Ids, codes: Codes, exact_radius: int,
                    compact_ratio: float = 0.1, extra_probes: int = 0) -> MultiIndex:
        index = cls(bits, exact_radius, compact_ratio, extra_probes=extra_probes)
        codes = check_codes(codes, bits)
        if len(ids) != len(codes):
            raise ValueError("ids and codes differ in length")
        index._base = _Tables(bits, np.asarray(ids, dtype=np.int64), codes)
        return index
