"""SampledIndex: approximate Hamming search by bit sampling, for millions of local descriptors.

The multi-index (:mod:`registry.index.multi`) is exact to a radius; ORB descriptors of a copy
sit 10-50 bits from the registered ones, and at a million registered images (64 million
descriptors) no exact structure answers a thousand such look-ups in milliseconds. Local
matching does not need every neighbour: it needs enough of them to rank the right picture
among the first candidates, which are then verified against all their keypoints
(:class:`registry.index.local.LocalIndex`).

Each of :data:`TABLES` tables keys a descriptor by ``k`` of its bits (bit sampling, the classic
LSH for Hamming space): two descriptors ``d`` bits apart share a table's key with probability
``(1 - d/256)^k``, and a pair is found when it shares any table's key and lies within the
radius. Table ``t`` draws its bits from four of the 32 bytes (fixed by a seed), so a key is four
byte look-ups. ``k`` follows the number of rows at build time (about one row per key on
average, 12 to 26 bits), so the rows examined per query stay about constant as the index grows.
A table is a counting sort: ``offsets`` (2^k + 1) into ``order`` (row numbers by key).

Rows added after a build go to an exact delta (faiss ``IndexBinaryFlat``) until the next
compaction; removed ids are tombstoned and filtered. Compaction follows the same plan/build/
finish protocol as :class:`MultiIndex`, so a serving process rebuilds without blocking reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from registry.index.base import Codes, Ids, SearchResult, check_codes, live_rows

TABLES = 12
BYTES_PER_TABLE = 4
MIN_KEY_BITS = 12
MAX_KEY_BITS = 26
SEED = 20261206
_MIN_DELTA_BEFORE_COMPACT = 50_000


def key_bits_for(rows: int) -> int:
    """About one row per key: 2^k ~ 1.5 x rows, within 12..26 bits."""
    return int(min(MAX_KEY_BITS, max(MIN_KEY_BITS, round(np.log2(max(2, rows)) + 0.6))))


@dataclass
class _Tables:
    """One build: the rows, their ids, ``k`` and per table the key look-up and the sort."""

    ids: Ids
    codes: Codes
    key_bits: int
    luts: npt.NDArray[np.uint32]  # (tables, 4, 256): a byte's contribution to the key
    table_bytes: npt.NDArray[np.int64]  # (tables, 4): which bytes each table reads
    offsets: list[npt.NDArray[np.uint32]]
    order: list[npt.NDArray[np.uint32]]

    @property
    def memory_bytes(self) -> int:
        return int(self.ids.nbytes + self.codes.nbytes + sum(o.nbytes for o in self.offsets)
                   + sum(o.nbytes for o in self.order))

    def keys(self, t: int, codes: Codes) -> npt.NDArray[np.uint32]:
        lut, cols = self.luts[t], self.table_bytes[t]
        key: npt.NDArray[np.uint32] = lut[0][codes[:, cols[0]]]
        for j in range(1, BYTES_PER_TABLE):
            key = key | lut[j][codes[:, cols[j]]]
        return key


def _layout(bits: int, key_bits: int, tables: int
            ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """Which bytes each table reads and, per byte value, the key bits it sets (seeded)."""
    rng = np.random.default_rng(SEED)
    nbytes = bits // 8
    cols = np.stack([rng.choice(nbytes, BYTES_PER_TABLE, replace=False) for _ in range(tables)])
    luts = np.zeros((tables, BYTES_PER_TABLE, 256), dtype=np.uint32)
    values = np.arange(256, dtype=np.uint32)
    for t in range(tables):
        chosen = rng.choice(8 * BYTES_PER_TABLE, key_bits, replace=False)
        for out_bit, source in enumerate(sorted(chosen.tolist())):
            j, b = divmod(source, 8)
            luts[t, j] |= ((values >> b) & 1) << out_bit
    return luts, cols.astype(np.int64)


def build_tables(bits: int, ids: Ids, codes: Codes, tables: int = TABLES) -> _Tables:
    k = key_bits_for(len(codes))
    luts, cols = _layout(bits, k, tables)
    out = _Tables(np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(codes), k,
                  luts, cols, [], [])
    if len(codes) >= 2**32:
        raise ValueError("a sampled index holds fewer than 2^32 rows")
    for t in range(tables):
        key = out.keys(t, out.codes)
        counts = np.bincount(key, minlength=1 << k)
        offsets = np.zeros((1 << k) + 1, dtype=np.uint32)
        np.cumsum(counts, out=offsets[1:])
        out.offsets.append(offsets)
        out.order.append(np.argsort(key, kind="stable").astype(np.uint32))
    return out


def _empty(bits: int) -> _Tables:
    return build_tables(bits, np.zeros(0, dtype=np.int64), np.zeros((0, bits // 8), np.uint8))


class _Delta:
    """Rows added since the last build: kept as numpy chunks (no copy per add) and searched
    exactly by a faiss flat index built when first needed after a change."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.chunks: list[Codes] = []
        self.ntotal = 0
        self._flat: faiss.IndexBinaryFlat | None = None

    def add(self, codes: Codes) -> None:
        self.chunks.append(np.ascontiguousarray(codes))
        self.ntotal += len(codes)
        self._flat = None

    def codes(self) -> Codes:
        if len(self.chunks) != 1:
            joined = (np.concatenate(self.chunks) if self.chunks
                      else np.zeros((0, self.bits // 8), dtype=np.uint8))
            self.chunks = [joined]
        return self.chunks[0]

    def range_search(self, queries: Codes, radius: int
                     ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32], Ids]:
        if self._flat is None:
            self._flat = faiss.IndexBinaryFlat(self.bits)
            self._flat.add(self.codes())
        lims, dist, rows = self._flat.range_search(queries, radius)
        return lims, dist, rows


@dataclass
class CompactionPlan:
    generation: int
    base: _Tables
    delta_ids: Ids
    delta_codes: Codes
    tombstones: Ids
    delta_rows: int
    removals: int
    tables: _Tables | None = None


class SampledIndex:
    """Approximate range search over binary codes (module docstring)."""

    def __init__(self, bits: int = 256, compact_ratio: float = 0.1,
                 auto_compact: bool = True, tables: int = TABLES) -> None:
        self._bits = bits
        self._ratio = compact_ratio
        self._tables_n = tables
        self.auto_compact = auto_compact
        self._base = _empty(bits)
        self._delta = _Delta(bits)
        self._delta_ids: Ids = np.zeros(0, dtype=np.int64)
        self._tombstones: set[int] = set()
        self._removals: list[int] = []
        self._tomb_array: Ids = np.zeros(0, dtype=np.int64)
        self._dead_rows = 0
        self._generation = 0

    @property
    def bits(self) -> int:
        return self._bits

    def __len__(self) -> int:
        return len(self._base.ids) + int(self._delta.ntotal) - self._dead_rows

    def add(self, ids: Ids, codes: Codes) -> None:
        codes = check_codes(codes, self._bits)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(codes):
            raise ValueError("ids and codes differ in length")
        if not len(ids):
            return
        if self._tombstones and not self._tombstones.isdisjoint(ids.tolist()):
            self.compact()  # a re-added id must not resurrect its old row
        self._delta.add(codes)
        self._delta_ids = np.concatenate([self._delta_ids, ids])
        if self.auto_compact and self.needs_compaction:
            self.compact()

    @property
    def needs_compaction(self) -> bool:
        bound = max(_MIN_DELTA_BEFORE_COMPACT, self._ratio * len(self._base.ids))
        dead = max(1024, self._ratio * (len(self) + self._dead_rows))
        return self._delta.ntotal > bound or self._dead_rows > dead

    def remove(self, ids: Ids) -> int:
        rows, gone = live_rows(ids, self._tombstones, self._base.ids, self._delta_ids)
        if not rows:
            return 0
        self._tombstones |= gone
        self._removals += sorted(gone)
        self._tomb_array = np.array(sorted(self._tombstones), dtype=np.int64)
        self._dead_rows += rows
        if self.auto_compact and self.needs_compaction:
            self.compact()
        return rows

    def pairs(self, queries: Codes, radius: int
              ) -> tuple[npt.NDArray[np.int64], Ids, npt.NDArray[np.int64]]:
        """Every (query row, id, distance) found within ``radius``: the base's by shared keys
        (approximate), the delta's exactly; tombstoned ids left out."""
        queries = check_codes(queries, self._bits)
        parts_q, parts_i, parts_d = [], [], []
        base = self._base
        if len(base.ids) and len(queries):
            rows_q: list[npt.NDArray[np.int64]] = []
            rows: list[npt.NDArray[np.uint32]] = []
            for t in range(len(base.order)):
                key = base.keys(t, queries)
                start = base.offsets[t][key].astype(np.int64)
                n = base.offsets[t][key + 1].astype(np.int64) - start
                total = int(n.sum())
                if not total:
                    continue
                qi = np.repeat(np.arange(len(queries), dtype=np.int64), n)
                first = np.repeat(start - (np.cumsum(n) - n), n)
                rows_q.append(qi)
                rows.append(base.order[t][first + np.arange(total, dtype=np.int64)])
            if rows:
                both = np.unique(np.concatenate(rows_q) * len(base.ids)
                                 + np.concatenate(rows).astype(np.int64))
                qi, row = np.divmod(both, len(base.ids))
                dist = np.bitwise_count(queries[qi] ^ base.codes[row]).sum(
                    axis=1).astype(np.int64)
                ok = dist <= radius
                parts_q.append(qi[ok])
                parts_i.append(base.ids[row[ok]])
                parts_d.append(dist[ok])
        if self._delta.ntotal and len(queries):
            lims, d, found = self._delta.range_search(queries, radius + 1)
            counts = np.diff(lims).astype(np.int64)
            parts_q.append(np.repeat(np.arange(len(queries), dtype=np.int64), counts))
            parts_i.append(self._delta_ids[found])
            parts_d.append(d.astype(np.int64))
        if not parts_q:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        qi, ids, dist = np.concatenate(parts_q), np.concatenate(parts_i), np.concatenate(parts_d)
        if len(self._tomb_array):
            live = ~np.isin(ids, self._tomb_array)
            qi, ids, dist = qi[live], ids[live], dist[live]
        return qi, ids, dist

    def search(self, queries: Codes, radius: int) -> list[SearchResult]:
        qi, ids, dist = self.pairs(queries, radius)
        order = np.argsort(qi, kind="stable")
        qi, ids, dist = qi[order], ids[order], dist[order]
        bounds = np.searchsorted(qi, np.arange(len(queries) + 1))
        return [SearchResult.of(ids[a:b], dist[a:b])
                for a, b in itertools.pairwise(bounds.tolist())]

    def export(self) -> tuple[Ids, Codes]:
        ids = np.concatenate([self._base.ids, self._delta_ids])
        codes = np.concatenate([self._base.codes, self._delta.codes()])
        if len(self._tomb_array):
            live = ~np.isin(ids, self._tomb_array)
            ids, codes = ids[live], codes[live]
        return ids, codes

    # --- compaction -----------------------------------------------------------------------
    def compact(self) -> None:
        plan = self.begin_compaction()
        self.build(plan)
        self.finish_compaction(plan)

    def begin_compaction(self) -> CompactionPlan:
        return CompactionPlan(self._generation, self._base, self._delta_ids.copy(),
                              self._delta.codes(), self._tomb_array.copy(),
                              int(self._delta.ntotal), len(self._removals))

    def build(self, plan: CompactionPlan) -> None:
        if len(plan.base.ids):
            ids = np.concatenate([plan.base.ids, plan.delta_ids])
            codes = np.concatenate([plan.base.codes, plan.delta_codes])
        else:  # the first build (a rebuild, a load): no copy of what the delta holds
            ids, codes = plan.delta_ids, plan.delta_codes
        if len(plan.tombstones):
            live = ~np.isin(ids, plan.tombstones)
            ids, codes = ids[live], codes[live]
        plan.tables = build_tables(self._bits, ids, codes, self._tables_n)

    def finish_compaction(self, plan: CompactionPlan) -> bool:
        if plan.generation != self._generation or plan.tables is None:
            return False
        late_ids = self._delta_ids[plan.delta_rows:]
        late_codes = self._delta.codes()[plan.delta_rows:].copy()
        late = set(self._removals[plan.removals:])
        self._base = plan.tables
        self._delta = _Delta(self._bits)
        if len(late_codes):
            self._delta.add(late_codes)
        self._delta_ids = late_ids.copy()
        self._tombstones = late
        self._removals = sorted(late)
        self._tomb_array = np.array(sorted(late), dtype=np.int64)
        rows = np.concatenate([self._base.ids, self._delta_ids])
        self._dead_rows = int(np.isin(rows, self._tomb_array).sum()) if late else 0
        self._generation += 1
        return True

    @property
    def memory_bytes(self) -> int:
        delta = int(self._delta.ntotal) * (self._bits // 8 + 8)
        return self._base.memory_bytes + delta + int(self._tomb_array.nbytes)

    @property
    def stats(self) -> dict[str, int]:
        return {"live": len(self), "base": len(self._base.ids),
                "delta": int(self._delta.ntotal), "tombstones": self._dead_rows,
                "tables": len(self._base.order), "key_bits": self._base.key_bits,
                "bytes": self.memory_bytes}
