"""The index interface: range search by inclusive Hamming radius, add and remove by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Codes = npt.NDArray[np.uint8]  # shape (n, bits // 8)
Ids = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits of one query: ids and their distances, sorted by distance then id."""

    ids: Ids
    distances: npt.NDArray[np.int32]

    @staticmethod
    def of(ids: Ids, distances: npt.ArrayLike) -> SearchResult:
        dist = np.asarray(distances, dtype=np.int32)
        order = np.lexsort((ids, dist))
        return SearchResult(ids[order].astype(np.int64), dist[order])


class HashIndex(Protocol):
    @property
    def bits(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, ids: Ids, codes: Codes) -> None: ...

    def remove(self, ids: Ids) -> int: ...

    def search(self, queries: Codes, radius: int) -> list[SearchResult]: ...

    def export(self) -> tuple[Ids, Codes]:
        """Every live (id, code), for snapshots and verification."""
        ...


def check_codes(codes: Codes, bits: int) -> Codes:
    arr = np.ascontiguousarray(codes, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != bits // 8:
        raise ValueError(f"codes must have shape (n, {bits // 8}); got {arr.shape}")
    return arr


def merge_hits(per_query: list[list[tuple[Ids, npt.NDArray[np.int32]]]], tombstones: Ids
               ) -> list[SearchResult]:
    """Each query's hits from the base and the delta as one sorted result, tombstoned ids
    dropped."""
    results = []
    for parts in per_query:
        if not parts:
            results.append(SearchResult.of(np.zeros(0, np.int64), np.zeros(0, np.int32)))
            continue
        hit_ids = np.concatenate([p[0] for p in parts])
        hit_dist = np.concatenate([p[1] for p in parts])
        if len(tombstones):
            live = ~np.isin(hit_ids, tombstones)
            hit_ids, hit_dist = hit_ids[live], hit_dist[live]
        results.append(SearchResult.of(hit_ids, hit_dist))
    return results
