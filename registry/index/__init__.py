"""Exact Hamming-range indexes over binary codes, their brute-force oracle and snapshots.

``HashIndex`` is the interface the service depends on: "every registered code within distance T
(inclusive)" for batches of queries, plus add and remove by id. ``FlatIndex`` implements it with
faiss flat scans over a large base and a small delta, with removals kept as tombstones;
``BruteForceIndex`` is the numpy oracle the tests compare it with. ``IndexSet`` holds one index
per perceptual signal kind and the change-log position it reflects.
"""

from registry.index.base import HashIndex, SearchResult
from registry.index.brute import BruteForceIndex
from registry.index.catalog import IndexSet
from registry.index.flat import FlatIndex
from registry.index.multi import MultiIndex

__all__ = ["BruteForceIndex", "FlatIndex", "HashIndex", "IndexSet", "MultiIndex", "SearchResult"]
