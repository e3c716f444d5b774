"""The index interface: range search by inclusive Hamming radius, add and remove by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import faiss
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

    @property
    def stats(self) -> dict[str, int]: ...


@runtime_checkable
class Foldable(Protocol):
    """An in-process index with a delta and tombstones beside its base: ``compact`` folds them
    into a new base at once (FlatIndex, MultiIndex, SampledIndex)."""

    def compact(self) -> None: ...


@runtime_checkable
class Compactable(Foldable, Protocol):
    """A foldable index that can also fold in the background (MultiIndex, SampledIndex): the
    plan is taken under the keeper's lock, built outside it (searches go on), and swapped in
    under the lock again; ``auto_compact`` off keeps ``add``/``remove`` from folding inline."""

    auto_compact: bool

    @property
    def needs_compaction(self) -> bool: ...

    def begin_compaction(self) -> Any: ...

    def build(self, plan: Any) -> None: ...

    def finish_compaction(self, plan: Any) -> bool: ...


class EngineIndex(HashIndex, Protocol):
    """A HashIndex kept in a shared, persistent engine (``registry.index.milvus``): it records
    how far along the change log it is, and can be emptied for a refill."""

    @property
    def collection(self) -> str: ...

    def position(self) -> tuple[int, str]: ...

    def set_position(self, seq: int, fingerprint: str = "") -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


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


_NO_HITS = SearchResult(np.zeros(0, np.int64), np.zeros(0, np.int32))


def hits_per_query(nq: int, qs: list[npt.NDArray[np.int64]], ids: list[Ids],
                   dists: list[npt.NDArray[np.int32]], tombstones: Ids) -> list[SearchResult]:
    """The hits of ``nq`` queries given as parallel flat arrays (the query each belongs to, its
    id, its distance), tombstoned ids dropped, each query's sorted by distance then id; what
    :func:`merge_hits` gives, in one sort for the whole batch."""
    if not qs:
        return [_NO_HITS] * nq
    q = np.concatenate(qs) if len(qs) > 1 else qs[0]
    hit_ids = np.concatenate(ids) if len(ids) > 1 else ids[0]
    dist = np.concatenate(dists) if len(dists) > 1 else dists[0]
    if len(tombstones) and len(hit_ids):
        live = ~np.isin(hit_ids, tombstones)
        q, hit_ids, dist = q[live], hit_ids[live], dist[live]
    if not len(q):
        return [_NO_HITS] * nq
    order = np.lexsort((hit_ids, dist, q))
    hit_ids = hit_ids[order].astype(np.int64, copy=False)
    dist = dist[order].astype(np.int32, copy=False)
    ends = np.cumsum(np.bincount(q, minlength=nq)).tolist()
    out, start = [], 0
    for end in ends:
        out.append(SearchResult(hit_ids[start:end], dist[start:end]) if end > start
                   else _NO_HITS)
        start = end
    return out


def check_pair(ids: npt.ArrayLike, codes: Codes, bits: int) -> tuple[Ids, Codes]:
    """Validated ``(ids, codes)`` for ``add``: int64 ids, one per code of the right width."""
    codes = check_codes(codes, bits)
    ids_arr = np.asarray(ids, dtype=np.int64)
    if len(ids_arr) != len(codes):
        raise ValueError("ids and codes differ in length")
    return ids_arr, codes


class IdColumn:
    """The ids of a base's rows: ``offset + values[row]``, the values in 4 bytes each (uint32)
    when the ids span less than 2**32, as database ids nearly always do; otherwise plain int64
    with offset 0."""

    __slots__ = ("offset", "values")

    def __init__(self, ids: npt.ArrayLike) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        self.offset = int(arr.min()) if len(arr) else 0
        self.values: npt.NDArray[np.uint32] | Ids
        if len(arr) == 0 or int(arr.max()) - self.offset < 2**32:
            self.values = (arr - self.offset).astype(np.uint32)
        else:
            self.offset = 0
            self.values = np.ascontiguousarray(arr)

    @classmethod
    def of_values(cls, offset: int, values: npt.NDArray[np.uint32] | Ids) -> IdColumn:
        """A column over existing values (a snapshot's, possibly a read-only mapping)."""
        column = cls.__new__(cls)
        column.offset = int(offset)
        column.values = values
        return column

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def take(self, rows: npt.NDArray[np.integer] | slice) -> Ids:
        """The ids of ``rows`` (row numbers, or a slice), as int64."""
        return self.values[rows].astype(np.int64, copy=False) + self.offset

    def full(self) -> Ids:
        return self.take(slice(None))

    def matching(self, wanted: Ids) -> Ids:
        """Every stored id (with repeats, one per row) that is in ``wanted``."""
        local = np.asarray(wanted, dtype=np.int64) - self.offset
        if self.values.dtype == np.uint32:
            local = local[(local >= 0) & (local < 2**32)].astype(np.uint32)
        return self.values[np.isin(self.values, local)].astype(np.int64, copy=False) + self.offset


def live_rows(ids: npt.ArrayLike, tombstones: set[int], *columns: Ids | IdColumn
              ) -> tuple[int, set[int]]:
    """For ``remove``: how many rows of ``columns`` (the base's and the delta's ids) hold one of
    ``ids`` not yet tombstoned, and which of those ids they are (an id may own several rows)."""
    wanted = {int(i) for i in np.asarray(ids, dtype=np.int64)} - tombstones
    if not wanted:
        return 0, set()
    wanted_arr = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
    rows, found = 0, set()
    for column in columns:
        if isinstance(column, IdColumn):
            hit = column.matching(wanted_arr)
        else:
            hit = column[np.isin(column, wanted_arr)]
        rows += len(hit)
        found |= set(hit.tolist())
    return rows, found


def flat_hits(index: faiss.IndexBinaryFlat, ids: Ids, queries: Codes, radius: int,
              per_query: list[list[tuple[Ids, npt.NDArray[np.int32]]]]) -> None:
    """Append each query's hits within ``radius`` (inclusive) in a faiss flat index."""
    if index.ntotal == 0 or len(queries) == 0:
        return
    lims, dist, rows = index.range_search(queries, radius + 1)  # faiss' radius is exclusive
    for q in range(len(queries)):
        lo, hi = lims[q], lims[q + 1]
        if hi > lo:
            per_query[q].append((ids[rows[lo:hi]], dist[lo:hi]))
