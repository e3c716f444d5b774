"""FlatIndex: faiss exhaustive Hamming scans over a large base plus a small delta.

Why this shape (measured with bench/index.py, docs/performance.md): adding to a large faiss
flat index occasionally stalls on a buffer copy and removing one id from 10M costs ~50 ms, so new
codes go to a small delta index and removals become tombstones (the overlay it shares with
MultiIndex, ``registry.index.overlay``); ``compact`` folds both into a new base when either grows
past a fraction of the base. Ids live beside faiss in a numpy array (row ->
id), so no IDMap wrapper is needed. faiss' binary range search radius is exclusive: we ask for
``T + 1`` so that T is inclusive.
"""

from __future__ import annotations

import faiss
import numpy as np
import numpy.typing as npt

from registry.index.base import (
    Codes,
    Ids,
    SearchResult,
    check_codes,
    check_pair,
    flat_hits,
    merge_hits,
)
from registry.index.overlay import Overlay, codes_of

_MIN_DELTA_BEFORE_COMPACT = 4096


class FlatIndex:
    def __init__(self, bits: int, compact_ratio: float = 0.1) -> None:
        if bits % 8:
            raise ValueError("bits must be a multiple of 8")
        self._bits = bits
        self._ratio = compact_ratio
        self._base = faiss.IndexBinaryFlat(bits)
        self._base_ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._overlay = Overlay(bits)

    # --- interface -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    def __len__(self) -> int:
        return int(self._base.ntotal) + self._overlay.delta_rows - self._overlay.dead_rows

    def add(self, ids: Ids, codes: Codes) -> None:
        ids, codes = check_pair(ids, codes, self._bits)
        if len(ids) == 0:
            return
        if self._overlay.resurrects(ids):
            self.compact()
        self._overlay.add(ids, codes)
        if self._overlay.delta_rows > max(_MIN_DELTA_BEFORE_COMPACT,
                                          self._ratio * self._base.ntotal):
            self.compact()

    def remove(self, ids: Ids) -> int:
        rows = self._overlay.remove(ids, self._base_ids)
        if rows and self._overlay.dead_rows > max(
                1024, self._ratio * (len(self) + self._overlay.dead_rows)):
            self.compact()
        return rows

    def search(self, queries: Codes, radius: int) -> list[SearchResult]:
        queries = check_codes(queries, self._bits)
        if radius < 0:
            raise ValueError("radius must be >= 0")
        per_query: list[list[tuple[Ids, npt.NDArray[np.int32]]]] = [[] for _ in queries]
        flat_hits(self._base, self._base_ids, queries, radius, per_query)
        flat_hits(self._overlay.delta, self._overlay.delta_ids, queries, radius, per_query)
        return merge_hits(per_query, self._overlay.tomb_array)

    def export(self) -> tuple[Ids, Codes]:
        return self._overlay.export(self._base_ids, codes_of(self._base))

    # --- maintenance -----------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        return {
            "live": len(self),
            "base": int(self._base.ntotal),
            "delta": self._overlay.delta_rows,
            "tombstones": self._overlay.dead_rows,
            "bytes": int(self.memory_bytes),
        }

    @property
    def memory_bytes(self) -> int:
        return int(self._base.ntotal) * (self._bits // 8 + 8) + self._overlay.memory_bytes

    def compact(self) -> None:
        """Fold delta and tombstones into a fresh base (a copy, then a swap)."""
        ids, codes = self.export()
        base = faiss.IndexBinaryFlat(self._bits)
        if len(codes):
            base.add(codes)
        self._base, self._base_ids = base, ids
        self._overlay = Overlay(self._bits)

    @classmethod
    def from_arrays(cls, bits: int, ids: Ids, codes: Codes, compact_ratio: float = 0.1
                    ) -> FlatIndex:
        index = cls(bits, compact_ratio)
        codes = check_codes(codes, bits)
        if len(ids) != len(codes):
            raise ValueError("ids and codes differ in length")
        if len(codes):
            index._base.add(codes)
        index._base_ids = np.asarray(ids, dtype=np.int64).copy()
        return index
