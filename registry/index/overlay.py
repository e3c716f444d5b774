"""The overlay beside an index's base: a small delta of new codes and the tombstones of removed
ids, which FlatIndex and MultiIndex share.

A large base is expensive to change (faiss copies its buffer on add; the multi-index tables are
sorted), so adds go to a small exact delta (a faiss flat index, row -> id in a numpy array) and
removals become tombstones that searches and exports filter out, until ``compact`` folds both
into a new base. An id may own several rows (a hash registered twice); ``dead_rows`` counts
the rows its tombstone hides, so that ``len`` stays the number of live rows.
"""

from __future__ import annotations

import faiss
import numpy as np
import numpy.typing as npt

from registry.index.base import Codes, IdColumn, Ids, live_rows


class Overlay:
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.delta = faiss.IndexBinaryFlat(bits)
        self.delta_ids: Ids = np.zeros(0, dtype=np.int64)
        self.tombstones: set[int] = set()
        self.tomb_array: Ids = np.zeros(0, dtype=np.int64)
        self.dead_rows = 0  # rows (of the base and the delta) whose id is tombstoned
        self.removals: list[int] = []  # ids tombstoned since the last fold, in order

    @property
    def delta_rows(self) -> int:
        return int(self.delta.ntotal)

    def resurrects(self, ids: Ids) -> bool:
        """Whether adding ``ids`` would bring back a tombstoned id: the owner must fold first
        (a re-added id must not resurrect its old row)."""
        return bool(self.tombstones) and not self.tombstones.isdisjoint(ids.tolist())

    def add(self, ids: Ids, codes: Codes) -> None:
        self.delta.add(codes)
        self.delta_ids = np.concatenate([self.delta_ids, ids])

    def remove(self, ids: Ids, base_ids: Ids | IdColumn) -> int:
        """Tombstone ``ids``: the number of live rows (in the base and the delta) they held."""
        rows, gone = live_rows(ids, self.tombstones, base_ids, self.delta_ids)
        if not rows:
            return 0
        self.tombstones |= gone
        self.removals += sorted(gone)
        self.tomb_array = np.array(sorted(self.tombstones), dtype=np.int64)
        self.dead_rows += rows
        return rows

    def delta_hits(self, queries: Codes, radius: int
                   ) -> tuple[npt.NDArray[np.int64], Ids, npt.NDArray[np.int32]] | None:
        """The delta's hits within ``radius`` (inclusive) as flat arrays (query, id, distance),
        tombstones not yet filtered; None when there is nothing to search."""
        if not self.delta.ntotal or not len(queries):
            return None
        lims, dist, rows = self.delta.range_search(queries, radius + 1)  # exclusive radius
        qs = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims.astype(np.int64)))
        return qs, self.delta_ids[rows], dist.astype(np.int32, copy=False)

    def export(self, base_ids: Ids, base_codes: Codes) -> tuple[Ids, Codes]:
        """Every live (id, code) of the base and the delta: what a fold keeps."""
        return self.live(np.concatenate([base_ids, self.delta_ids]),
                         np.concatenate([base_codes, self.delta_codes()]), self.tomb_array)

    @staticmethod
    def live(ids: Ids, codes: Codes, tomb_array: Ids) -> tuple[Ids, Codes]:
        if not len(tomb_array):
            return ids, codes
        keep = ~np.isin(ids, tomb_array)
        return ids[keep], codes[keep]

    def delta_codes(self) -> Codes:
        return codes_of(self.delta)

    @property
    def memory_bytes(self) -> int:
        return self.delta_rows * (self.bits // 8 + 8) + len(self.tombstones) * 80

    def after(self, delta_rows: int, removals: int, base_ids: IdColumn | Ids) -> Overlay:
        """What arrived after a compaction plan was taken (its first ``delta_rows`` delta rows
        and ``removals`` removals are in the new base ``base_ids``): a new overlay over that
        base, keeping later adds in the delta and later removals tombstoned."""
        late = Overlay(self.bits)
        late_codes = self.delta_codes()[delta_rows:]
        if len(late_codes):
            late.delta.add(late_codes)
        late.delta_ids = self.delta_ids[delta_rows:].copy()
        gone = set(self.removals[removals:])
        late.tombstones = gone
        late.removals = sorted(gone)
        late.tomb_array = np.array(sorted(gone), dtype=np.int64)
        if gone:
            dead = np.fromiter(gone, dtype=np.int64, count=len(gone))
            in_base = (base_ids.matching(dead) if isinstance(base_ids, IdColumn)
                       else base_ids[np.isin(base_ids, dead)])
            late.dead_rows = int(len(in_base) + np.isin(late.delta_ids, dead).sum())
        return late


def codes_of(index: faiss.IndexBinaryFlat) -> Codes:
    n = int(index.ntotal)
    if n == 0:
        return np.zeros((0, index.code_size), dtype=np.uint8)
    codes: Codes = faiss.vector_to_array(index.xb).reshape(n, index.code_size)  # type: ignore[attr-defined]
    return codes
