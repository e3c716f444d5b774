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
