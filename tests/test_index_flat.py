"""FlatIndex against the BruteForceIndex oracle: boundaries, scale, random operation sequences,
delta/compaction behaviour and input validation."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.index import BruteForceIndex, FlatIndex, SearchResult
from registry.index import flat as flat_module

BITS = (64, 256)
THRESHOLD = {64: 8, 256: 31}


# --- helpers ----------------------------------------------------------------------------------
def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def flip(code: np.ndarray, positions: list[int] | np.ndarray) -> np.ndarray:
    """A copy of one code (shape (bits//8,)) with the given distinct bit positions flipped."""
    out = code.copy()
    for p in positions:
        out[p // 8] ^= np.uint8(1 << (p % 8))
    return out


def flip_n(rng: np.random.Generator, code: np.ndarray, n: int) -> np.ndarray:
    positions = rng.choice(code.shape[0] * 8, size=n, replace=False)
    return flip(code, positions)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.bitwise_count(np.bitwise_xor(a, b)).sum())


def pairs(result: SearchResult) -> list[tuple[int, int]]:
    return sorted(zip(result.ids.tolist(), result.distances.tolist(), strict=True))


def assert_sorted(result: SearchResult) -> None:
    keys = list(zip(result.distances.tolist(), result.ids.tolist(), strict=True))
    assert keys == sorted(keys), "hits must be sorted by distance, then id"


def assert_same(flat: FlatIndex, brute: BruteForceIndex, queries: np.ndarray, radius: int) -> None:
    got = flat.search(queries, radius)
    want = brute.search(queries, radius)
    assert len(got) == len(want) == len(queries)
    for q, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.ids.dtype == np.int64
        assert_sorted(g)
        assert pairs(g) == pairs(w), f"query {q} at radius {radius}"


def both(bits: int, compact_ratio: float = 0.1) -> tuple[FlatIndex, BruteForceIndex]:
    return FlatIndex(bits, compact_ratio), BruteForceIndex(bits)


# --- boundaries -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("where", ["base", "delta"])
def test_threshold_is_inclusive(bits: int, where: str) -> None:
    """Queries at exactly 0, T-1, T and T+1 bits from a stored code: T is in, T+1 is out."""
    rng = np.random.default_rng(bits)
    t = THRESHOLD[bits]
    codes = random_codes(rng, 200, bits)
    ids = np.arange(1000, 1200, dtype=np.int64)
    flat, brute = both(bits)
    if where == "base":
        flat.add(ids, codes)
        flat.compact()
        assert flat.stats["base"] == 200 and flat.stats["delta"] == 0
    else:
        flat.add(ids, codes)
        assert flat.stats["delta"] == 200
    brute.add(ids, codes)

    target = 137
    c = codes[target]
    for radius in (t, 0):
        for k in sorted({0, max(radius - 1, 0), radius, radius + 1}):
            q = flip_n(rng, c, k)
            assert hamming(q, c) == k
            (res,) = flat.search(q[None, :], radius)
            hits = dict(zip(res.ids.tolist(), res.distances.tolist(), strict=True))
            if k <= radius:
                assert hits.get(int(ids[target])) == k, f"distance {k} at radius {radius}"
            else:
                assert int(ids[target]) not in hits, f"distance {k} beyond radius {radius}"
            assert_same(flat, brute, q[None, :], radius)


@pytest.mark.parametrize("bits", BITS)
def test_chosen_bit_flips_at_the_edges_of_the_code(bits: int) -> None:
    """Flipping the first, the last and byte-boundary bits is counted like any other bit."""
    rng = np.random.default_rng(7)
    c = random_codes(rng, 1, bits)[0]
    t = THRESHOLD[bits]
    edges = [0, 7, 8, bits - 8, bits - 1, *range(9, bits - 9)]
    flat, brute = both(bits)
    flat.add(np.array([42]), c[None, :])
    brute.add(np.array([42]), c[None, :])
    for k in (t - 1, t, t + 1):
        q = flip(c, edges[:k])
        assert hamming(q, c) == k
        (res,) = flat.search(q[None, :], t)
        assert pairs(res) == ([(42, k)] if k <= t else [])
        assert_same(flat, brute, q[None, :], t)


@pytest.mark.parametrize("bits", BITS)
def test_radius_zero_finds_only_exact_duplicates(bits: int) -> None:
    rng = np.random.default_rng(3)
    codes = random_codes(rng, 50, bits)
    codes[10] = codes[3]  # a duplicate code under another id
    flat, brute = both(bits)
    flat.add(np.arange(50), codes)
    brute.add(np.arange(50), codes)
    (res,) = flat.search(codes[3:4], 0)
    assert pairs(res) == [(3, 0), (10, 0)]
    (res,) = flat.search(flip_n(rng, codes[3], 1)[None, :], 0)
    assert pairs(res) == []
    assert_same(flat, brute, codes, 0)


@pytest.mark.parametrize("bits", BITS)
def test_full_radius_returns_everything(bits: int) -> None:
    rng = np.random.default_rng(4)
    codes = random_codes(rng, 30, bits)
    flat, brute = both(bits)
    flat.add(np.arange(30), codes)
    brute.add(np.arange(30), codes)
    q = np.bitwise_not(codes[:1])  # distance exactly `bits` from code 0
    (res,) = flat.search(q, bits)
    assert len(res.ids) == 30 and (0, bits) in pairs(res)
    (res,) = flat.search(q, bits - 1)
    assert 0 not in res.ids.tolist()
    assert_same(flat, brute, q, bits)
    assert_same(flat, brute, q, bits - 1)


@pytest.mark.parametrize("bits", BITS)
def test_hits_in_base_and_delta_are_merged_and_sorted(bits: int) -> None:
    rng = np.random.default_rng(5)
    t = THRESHOLD[bits]
    center = random_codes(rng, 1, bits)[0]
    near = np.stack([flip_n(rng, center, k) for k in range(0, t + 3)])
    flat, brute = both(bits)
    half = len(near) // 2
    ids = np.arange(len(near), dtype=np.int64)[::-1].copy()  # ids not in distance order
    flat.add(ids[:half], near[:half])
    flat.compact()
    flat.add(ids[half:], near[half:])
    brute.add(ids, near)
    assert flat.stats["base"] == half and flat.stats["delta"] == len(near) - half
    (res,) = flat.search(center[None, :], t)
    assert res.distances.tolist() == list(range(t + 1))
    assert_same(flat, brute, center[None, :], t)


# --- scale ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("bits", BITS)
def test_exact_brute_force_result_on_100k_random_codes_plus_boundary_cases(bits: int) -> None:
    """The index returns exactly the brute-force result set on 100k random codes plus
    boundary cases, with codes spread over base, delta and tombstones."""
    rng = np.random.default_rng(100_000 + bits)
    t = THRESHOLD[bits]
    n = 100_000
    codes = random_codes(rng, n, bits)
    # Plant clusters of near-duplicates so that queries have several non-trivial hits.
    centers = rng.choice(n, size=200, replace=False)
    planted = rng.choice(np.setdiff1d(np.arange(n), centers), size=1000, replace=False)
    for i, row in enumerate(planted):
        codes[row] = flip_n(rng, codes[centers[i % len(centers)]], int(rng.integers(0, t + 3)))
    ids = rng.permutation(np.arange(5_000_000, 5_000_000 + n, dtype=np.int64))

    flat, brute = both(bits)
    flat.add(ids[:94_000], codes[:94_000])  # one big batch: folds straight into the base
    for lo in range(94_000, n, 2_000):  # small batches stay in the delta (< 0.1 * base)
        flat.add(ids[lo : lo + 2_000], codes[lo : lo + 2_000])
    brute.add(ids, codes)
    assert flat.stats["base"] == 94_000 and flat.stats["delta"] == 6_000
    removed = rng.choice(ids, size=500, replace=False)
    assert flat.remove(removed) == brute.remove(removed) == 500
    assert flat.stats["tombstones"] == 500
    assert len(flat) == len(brute) == n - 500

    queries = [codes[c] for c in centers[:150]]  # cluster centers: many hits
    for row in rng.choice(n, size=100, replace=False):  # exactly on the threshold edges
        k = (0, t - 1, t, t + 1)[int(row) % 4]
        queries.append(flip_n(rng, codes[row], k))
    queries.extend(random_codes(rng, 50, bits))  # unrelated queries
    q = np.stack(queries)
    got = flat.search(q, t)
    want = brute.search(q, t)
    hits = 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_sorted(g)
        assert pairs(g) == pairs(w), f"query {i}"
        hits += len(g.ids)
        assert not np.isin(g.ids, removed).any()
    assert hits > 500, "planted near-duplicates should give many hits"
    # a second radius on a subset, with everything compacted
    flat.compact()
    assert_same(flat, brute, q[:40], t // 2)


# --- random operation sequences ---------------------------------------------------------------
N_CENTERS = 4
_CENTERS = {b: random_codes(np.random.default_rng(1000 + b), N_CENTERS, b) for b in BITS}


@st.composite
def codes_near_centers(draw: st.DrawFn, bits: int) -> np.ndarray:
    center = draw(st.integers(0, N_CENTERS - 1))
    positions = draw(st.sets(st.integers(0, bits - 1), max_size=min(bits // 2, 40)))
    return flip(_CENTERS[bits][center], sorted(positions))


def operations(bits: int) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    id_ = st.integers(0, 24)
    add = st.tuples(
        st.just("add"), st.lists(st.tuples(id_, codes_near_centers(bits)), min_size=0, max_size=6)
    )
    remove = st.tuples(st.just("remove"), st.lists(st.integers(-3, 30), max_size=5))
    compact = st.tuples(st.just("compact"))
    radius = st.one_of(
        st.sampled_from([0, 1, THRESHOLD[bits], bits // 2, bits]), st.integers(0, bits)
    )
    search = st.tuples(st.just("search"), st.lists(codes_near_centers(bits), max_size=4), radius)
    return st.lists(st.one_of(add, remove, compact, search), max_size=30)


def run_operations(bits: int, ops: list[tuple[Any, ...]], min_delta: int) -> None:
    with mock.patch.object(flat_module, "_MIN_DELTA_BEFORE_COMPACT", min_delta):
        flat, brute = both(bits, compact_ratio=0.5)
        live: set[int] = set()
        for op in ops:
            if op[0] == "add":
                batch = {}
                for i, code in op[1]:
                    if i not in live:  # ids are unique among live rows; re-adding after removal
                        batch[i] = code
                ids = np.array(sorted(batch), dtype=np.int64)
                codes = (
                    np.stack([batch[i] for i in sorted(batch)])
                    if batch
                    else np.zeros((0, bits // 8), np.uint8)
                )
                flat.add(ids, codes)
                brute.add(ids, codes)
                live |= set(batch)
            elif op[0] == "remove":
                gone = np.array(op[1], dtype=np.int64)
                expected = brute.remove(gone)
                assert flat.remove(gone) == expected
                live -= set(op[1])
            elif op[0] == "compact":
                flat.compact()
                assert flat.stats["delta"] == 0 and flat.stats["tombstones"] == 0
            else:
                queries = np.stack(op[1]) if op[1] else np.zeros((0, bits // 8), np.uint8)
                assert_same(flat, brute, queries, int(op[2]))
            assert len(flat) == len(brute) == len(live)
        ids, codes = flat.export()
        want_ids, want_codes = brute.export()
        assert sorted(zip(ids.tolist(), map(bytes, codes), strict=True)) == sorted(
            zip(want_ids.tolist(), map(bytes, want_codes), strict=True)
        )
        # a final sweep of every center at several radii
        for radius in (0, THRESHOLD[bits], bits // 2, bits):
            assert_same(flat, brute, _CENTERS[bits], radius)


PROPERTY = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(ops=operations(64), min_delta=st.sampled_from([1, 3, 4096]))
def test_random_operations_match_the_oracle_64(ops: list[tuple[Any, ...]], min_delta: int) -> None:
    run_operations(64, ops, min_delta)


@PROPERTY
@given(ops=operations(256), min_delta=st.sampled_from([1, 3, 4096]))
def test_random_operations_match_the_oracle_256(ops: list[tuple[Any, ...]], min_delta: int) -> None:
    run_operations(256, ops, min_delta)


@pytest.mark.parametrize("bits", BITS)
def test_readd_after_removal_does_not_resurrect_the_old_code(bits: int) -> None:
    rng = np.random.default_rng(11)
    old, new = random_codes(rng, 2, bits)
    for compact_between in (False, True):
        flat, brute = both(bits)
        for index in (flat, brute):
            index.add(np.array([7]), old[None, :])
        if compact_between:
            flat.compact()
        assert flat.remove(np.array([7])) == brute.remove(np.array([7])) == 1
        assert flat.remove(np.array([7])) == brute.remove(np.array([7])) == 0  # twice
        assert flat.remove(np.array([12345])) == 0  # unknown
        for index in (flat, brute):
            index.add(np.array([7]), new[None, :])
        assert len(flat) == 1
        assert pairs(flat.search(old[None, :], 0)[0]) == []
        assert pairs(flat.search(new[None, :], 0)[0]) == [(7, 0)]
        assert_same(flat, brute, np.stack([old, new]), bits // 2)
        ids, codes = flat.export()
        assert ids.tolist() == [7] and bytes(codes[0]) == bytes(new)


@pytest.mark.parametrize("bits", BITS)
def test_empty_index_and_empty_batches(bits: int) -> None:
    flat = FlatIndex(bits)
    q = random_codes(np.random.default_rng(0), 3, bits)
    assert len(flat) == 0
    assert [pairs(r) for r in flat.search(q, bits)] == [[], [], []]
    assert flat.search(q[:0], 5) == []
    assert flat.remove(np.array([1, 2])) == 0
    flat.add(np.zeros(0, np.int64), np.zeros((0, bits // 8), np.uint8))
    assert len(flat) == 0 and flat.stats["delta"] == 0
    ids, codes = flat.export()
    assert ids.shape == (0,) and codes.shape == (0, bits // 8)
    flat.compact()
    assert len(flat) == 0
    flat.add(np.array([1]), q[:1])
    flat.remove(np.array([1]))
    assert len(flat) == 0
    assert [pairs(r) for r in flat.search(q, bits)] == [[], [], []]


# --- delta and compaction ---------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_delta_folds_into_base_past_the_threshold(bits: int) -> None:
    rng = np.random.default_rng(21)
    threshold = flat_module._MIN_DELTA_BEFORE_COMPACT
    flat, brute = both(bits, compact_ratio=0.1)
    first = random_codes(rng, 1000, bits)
    flat.add(np.arange(1000), first)
    brute.add(np.arange(1000), first)
    assert flat.stats == {**flat.stats, "base": 0, "delta": 1000, "live": 1000}

    # more adds, in small batches, until the delta passes the threshold: it folds into the base
    next_id = 1000
    while flat.stats["delta"] > 0:
        batch = random_codes(rng, 500, bits)
        ids = np.arange(next_id, next_id + 500)
        flat.add(ids, batch)
        brute.add(ids, batch)
        next_id += 500
        assert flat.stats["delta"] <= threshold
    assert next_id > threshold
    assert flat.stats["base"] == next_id and flat.stats["tombstones"] == 0
    assert len(flat) == next_id

    # after that, a delta of ratio * base (below the minimum) stays a delta
    batch = random_codes(rng, 100, bits)
    flat.add(np.arange(next_id, next_id + 100), batch)
    brute.add(np.arange(next_id, next_id + 100), batch)
    assert flat.stats["base"] == next_id and flat.stats["delta"] == 100
    assert_same(flat, brute, np.concatenate([first[:20], batch[:20]]), 0)
    assert_same(flat, brute, random_codes(rng, 20, bits), bits // 2 - 4)


@pytest.mark.parametrize("bits", BITS)
def test_tombstones_are_never_returned_and_compact_away(bits: int) -> None:
    rng = np.random.default_rng(22)
    n = 5000
    codes = random_codes(rng, n, bits)
    flat, brute = both(bits, compact_ratio=0.1)
    flat.add(np.arange(n), codes)
    flat.compact()
    brute.add(np.arange(n), codes)
    gone = np.arange(0, 1000)
    assert flat.remove(gone) == brute.remove(gone) == 1000
    assert flat.stats["tombstones"] == 1000 and flat.stats["base"] == n
    assert len(flat) == n - 1000
    res = flat.search(codes[:50], 0)
    assert all(len(r.ids) == 0 for r in res), "a removed code is never returned"
    assert all(not np.isin(r.ids, gone).any() for r in flat.search(codes[:20], bits))
    assert_same(flat, brute, codes[::100], THRESHOLD[bits])

    # past max(1024, ratio * rows) tombstones, removal compacts
    more = np.arange(1000, 1100)
    assert flat.remove(more) == brute.remove(more) == 100
    assert flat.stats["tombstones"] == 0 and flat.stats["base"] == n - 1100
    assert len(flat) == len(brute) == n - 1100
    assert_same(flat, brute, codes[::100], THRESHOLD[bits])


@pytest.mark.parametrize("bits", BITS)
def test_export_returns_exactly_the_live_rows(bits: int) -> None:
    rng = np.random.default_rng(23)
    codes = random_codes(rng, 300, bits)
    flat = FlatIndex(bits)
    flat.add(np.arange(200), codes[:200])
    flat.compact()
    flat.add(np.arange(200, 300), codes[200:])
    flat.remove(np.array([0, 5, 199, 200, 299, 1000]))
    ids, got = flat.export()
    expected = {i: bytes(codes[i]) for i in range(300)}
    for i in (0, 5, 199, 200, 299):
        del expected[i]
    assert ids.dtype == np.int64 and got.dtype == np.uint8 and got.shape == (295, bits // 8)
    assert dict(zip(ids.tolist(), map(bytes, got), strict=True)) == expected
    assert len(ids) == len(set(ids.tolist())) == len(flat)
    rebuilt = FlatIndex.from_arrays(bits, ids, got)
    assert len(rebuilt) == 295 and rebuilt.stats["delta"] == 0
    q = codes[::7]
    assert [pairs(r) for r in rebuilt.search(q, 3)] == [pairs(r) for r in flat.search(q, 3)]


@pytest.mark.parametrize("bits", BITS)
def test_memory_bytes_is_sane(bits: int) -> None:
    rng = np.random.default_rng(24)
    flat = FlatIndex(bits)
    assert flat.memory_bytes == 0
    flat.add(np.arange(1000), random_codes(rng, 1000, bits))
    per_row = bits // 8 + 8  # the code and its int64 id
    assert flat.memory_bytes == 1000 * per_row
    flat.remove(np.arange(10))
    assert 1000 * per_row < flat.memory_bytes < 1000 * per_row + 10 * 1024
    flat.compact()
    assert flat.memory_bytes == 990 * per_row
    assert flat.stats["bytes"] == flat.memory_bytes
    assert flat.stats["live"] == len(flat) == 990


# --- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_wrong_code_width_is_rejected(bits: int) -> None:
    flat = FlatIndex(bits)
    width = bits // 8
    with pytest.raises(ValueError, match="shape"):
        flat.add(np.array([1]), np.zeros((1, width + 1), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        flat.add(np.array([1]), np.zeros((1, width - 1), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        flat.add(np.array([1]), np.zeros(width, np.uint8))  # 1-D, not a batch
    with pytest.raises(ValueError, match="shape"):
        flat.search(np.zeros((1, 40), np.uint8), 3)  # neither 8 nor 32 bytes
    with pytest.raises(ValueError, match="shape"):
        flat.search(np.zeros(width, np.uint8), 3)
    assert len(flat) == 0 and flat.stats["delta"] == 0


@pytest.mark.parametrize("bits", BITS)
def test_mismatched_ids_and_codes_are_rejected(bits: int) -> None:
    flat = FlatIndex(bits)
    codes = np.zeros((3, bits // 8), np.uint8)
    with pytest.raises(ValueError, match="length"):
        flat.add(np.array([1, 2]), codes)
    with pytest.raises(ValueError, match="length"):
        flat.add(np.array([1, 2, 3, 4]), codes)
    assert len(flat) == 0 and flat.export()[0].shape == (0,)


@pytest.mark.parametrize("bits", BITS)
def test_negative_radius_is_rejected(bits: int) -> None:
    flat = FlatIndex(bits)
    flat.add(np.array([1]), np.zeros((1, bits // 8), np.uint8))
    with pytest.raises(ValueError, match="radius"):
        flat.search(np.zeros((1, bits // 8), np.uint8), -1)


def test_bits_must_be_a_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        FlatIndex(60)


def test_len_matches_export_when_an_id_is_added_twice() -> None:
    rng = np.random.default_rng(31)
    codes = random_codes(rng, 2, 64)
    flat = FlatIndex(64)
    flat.add(np.array([5]), codes[:1])
    flat.add(np.array([5]), codes[1:])
    flat.remove(np.array([5]))
    assert len(flat.export()[0]) == 0
    assert len(flat) == 0
