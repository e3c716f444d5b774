"""SampledIndex (bit sampling): every pair it returns is a true pair at its true distance, it
finds the close pairs it should, and adds, removals and compaction keep it consistent."""

from __future__ import annotations

import numpy as np
import pytest

from registry.index.brute import BruteForceIndex
from registry.index.sampled import MAX_KEY_BITS, MIN_KEY_BITS, SampledIndex, key_bits_for


def _codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def _near(rng: np.random.Generator, codes: np.ndarray, flips: int) -> np.ndarray:
    out = codes.copy()
    for row in out:
        for b in rng.choice(256, flips, replace=False):
            row[b >> 3] ^= 1 << (b & 7)
    return out


def _pairs(index: SampledIndex, queries: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    qi, ids, dist = index.pairs(queries, radius)
    return set(zip(qi.tolist(), ids.tolist(), dist.tolist(), strict=True))


def _truth(brute: BruteForceIndex, queries: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    out = set()
    for q, r in enumerate(brute.search(queries, radius)):
        out |= {(q, int(i), int(d)) for i, d in zip(r.ids, r.distances, strict=True)}
    return out


def test_key_bits_follow_the_rows():
    assert key_bits_for(0) == MIN_KEY_BITS and key_bits_for(10**12) == MAX_KEY_BITS
    assert key_bits_for(64_000_000) == 26 and key_bits_for(100_000) == 17


def test_results_are_true_pairs_and_close_pairs_are_found():
    rng = np.random.default_rng(1)
    base = _codes(rng, 20_000)
    ids = np.arange(20_000, dtype=np.int64) * 3
    index = SampledIndex(256)
    index.add(ids, base)
    index.compact()
    brute = BruteForceIndex(256)
    brute.add(ids, base)
    picked = rng.choice(20_000, 300, replace=False)
    for flips, floor in ((8, 0.95), (24, 0.6)):
        queries = _near(rng, base[picked], flips)
        got, truth = _pairs(index, queries, 56), _truth(brute, queries, 56)
        assert got <= truth  # nothing invented, distances exact
        planted = {(q, int(ids[p])) for q, p in enumerate(picked)}
        found = {(q, i) for q, i, _ in got} & planted
        assert len(found) >= floor * len(planted), (flips, len(found))
    random_queries = _codes(rng, 200)
    assert _pairs(index, random_queries, 40) <= _truth(brute, random_queries, 40)


def test_delta_removal_and_compaction():
    rng = np.random.default_rng(2)
    a, b = _codes(rng, 3000), _codes(rng, 500)
    index = SampledIndex(256, auto_compact=False)
    index.add(np.arange(3000, dtype=np.int64), a)
    index.compact()
    index.add(np.arange(3000, 3500, dtype=np.int64), b)  # delta: searched exactly
    assert len(index) == 3500 and index.stats["delta"] == 500
    _, ids, dist = index.pairs(b[:50], 0)
    assert set(ids.tolist()) >= set(range(3000, 3050)) and not dist.any()
    assert index.remove(np.array([3001, 5, 10**9], dtype=np.int64)) == 2
    assert index.remove(np.array([5], dtype=np.int64)) == 0
    _, ids, _ = index.pairs(np.concatenate([a[5:6], b[1:2]]), 0)
    assert 5 not in ids.tolist() and 3001 not in ids.tolist()
    plan = index.begin_compaction()
    index.build(plan)
    index.add(np.array([7000], dtype=np.int64), a[5:6])  # arrives during the build
    index.remove(np.array([6], dtype=np.int64))
    assert index.finish_compaction(plan)
    assert len(index) == 3498 and index.stats["delta"] == 1
    _, ids, _ = index.pairs(a[5:7], 0)
    assert sorted(ids.tolist()) == [7000]
    live, codes = index.export()
    assert len(live) == 3498 and 6 not in live.tolist() and len(codes) == 3498
    assert not index.finish_compaction(plan)  # a plan is used once


def test_refuses_codes_of_the_wrong_width():
    index = SampledIndex(256)
    with pytest.raises(ValueError):
        index.add(np.array([1], dtype=np.int64), np.zeros((1, 8), dtype=np.uint8))
