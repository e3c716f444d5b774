"""Brute-force oracle: an exhaustive numpy popcount scan. Slow, obviously correct."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from registry.index.base import Codes, Ids, SearchResult, check_codes


class BruteForceIndex:
    def __init__(self, bits: int) -> None:
        self._bits = bits
        self._ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._codes: npt.NDArray[np.uint8] = np.zeros((0, bits // 8), dtype=np.uint8)

    @property
    def bits(self) -> int:
        return self._bits

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Ids, codes: Codes) -> None:
        codes = check_codes(codes, self._bits)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])
        self._codes = np.concatenate([self._codes, codes])

    def remove(self, ids: Ids) -> int:
        keep = ~np.isin(self._ids, ids)
        removed = int((~keep).sum())
        self._ids, self._codes = self._ids[keep], self._codes[keep]
        return removed

    def distances(self, query: Codes) -> npt.NDArray[np.int32]:
        """Distance from one query (shape (bits//8,)) to every stored code."""
        x = np.bitwise_xor(self._codes, query[None, :])
        counts: npt.NDArray[np.int32] = np.bitwise_count(x).sum(axis=1, dtype=np.int32)
        return counts

    def search(self, queries: Codes, radius: int) -> list[SearchResult]:
        queries = check_codes(queries, self._bits)
        out = []
        for q in queries:
            d = self.distances(q)
            hit = d <= radius
            out.append(SearchResult.of(self._ids[hit], d[hit]))
        return out

    def export(self) -> tuple[Ids, Codes]:
        return self._ids.copy(), self._codes.copy()
