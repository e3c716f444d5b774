"""MilvusIndex on Milvus Lite against the brute-force oracle: planted neighbours at every distance,
inclusive radius edges, paging past a full page, replace-on-re-add and in-order replays, removals,
both signal widths in one file, the stored position across a reopen, reset, and what Milvus Lite
refuses (BIN_IVF_FLAT). Runs for real: one Milvus Lite file per module, a collection per test.

Skips without pymilvus/milvus-lite (fails under REQUIRE_SERVICES=1). ``TEST_MILVUS_URI``
(``http://host:19530``) runs the BIN_IVF_FLAT test against a Milvus server."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.errors import ConfigError, IndexMismatch, StorageUnavailable
from registry.index import BruteForceIndex, SearchResult
from tests.conftest import unavailable
from tests.test_index_flat import assert_sorted, flip, flip_n, hamming, pairs, random_codes

if importlib.util.find_spec("milvus_lite") is None or importlib.util.find_spec("pymilvus") is None:
    if os.environ.get("REQUIRE_SERVICES") == "1":
        unavailable("Milvus Lite", "pymilvus or milvus_lite cannot be imported")
    pytest.skip("Milvus Lite is not available (pymilvus or milvus_lite cannot be imported); "
                "pip install pymilvus==2.6.17 milvus-lite==2.5.1", allow_module_level=True)

from registry.index import milvus as milvus_module
from registry.index.milvus import MilvusIndex

THRESHOLD = {64: 8, 256: 31}
Make = Callable[..., MilvusIndex]


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Milvus Lite file (and server process) for the module; a holder keeps it open."""
    path = str(tmp_path_factory.mktemp("milvus") / "registry.db")
    holder = MilvusIndex(8, path, "holder")
    yield path
    holder.close()


@pytest.fixture
def make(lite_file: str) -> Iterator[Make]:
    """A fresh collection per call, closed after the test."""
    opened: list[MilvusIndex] = []
    counter = itertools.count()

    def new(bits: int, name: str = "", **kwargs: Any) -> MilvusIndex:
        index = MilvusIndex(bits, lite_file, name or f"t{os.getpid()}_{next(counter)}_{bits}",
                            **kwargs)
        opened.append(index)
        return index

    yield new
    for index in opened:
        if not index.closed:
            index.reset()  # leaves the shared file small
            index.close()


def check(index: MilvusIndex, brute: BruteForceIndex, queries: np.ndarray, radius: int) -> None:
    got = index.search(queries, radius)
    want = brute.search(queries, radius)
    assert len(got) == len(want) == len(queries)
    for q, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.ids.dtype == np.int64 and g.distances.dtype == np.int32
        assert_sorted(g)
        assert pairs(g) == pairs(w), f"query {q} at radius {radius}"


def oracle(live: dict[int, bytes], bits: int) -> BruteForceIndex:
    """The brute-force index of an id -> code map (one code per id, as Milvus keeps it)."""
    brute = BruteForceIndex(bits)
    if live:
        ids = np.fromiter(live, dtype=np.int64, count=len(live))
        brute.add(ids, np.frombuffer(b"".join(live.values()), np.uint8).reshape(len(live), -1))
    return brute


def exported(index: MilvusIndex) -> dict[int, bytes]:
    ids, codes = index.export()
    assert codes.dtype == np.uint8 and codes.shape == (len(ids), index.bits // 8)
    assert list(ids) == sorted(ids)
    return dict(zip(ids.tolist(), map(bytes, codes), strict=True))


# --- exactness against the oracle ---------------------------------------------------------------
@pytest.mark.parametrize("bits", [64, 256])
def test_planted_neighbours_at_every_distance_match_brute_force(make: Make, bits: int) -> None:
    """Around each query, one code at every distance 0..bits, among random codes; every radius
    from 0 to past the maximum returns exactly brute force's hits."""
    rng = np.random.default_rng(bits)
    background = random_codes(rng, 1500, bits)
    queries = random_codes(rng, 4, bits)
    planted = np.array([flip_n(rng, q, d) for q in queries for d in range(bits + 1)])
    codes = np.concatenate([background, planted])
    ids = rng.permutation(10 * len(codes))[:len(codes)].astype(np.int64)
    index, brute = make(bits), BruteForceIndex(bits)
    index.add(ids, codes)
    brute.add(ids, codes)
    assert len(index) == len(codes)
    t = THRESHOLD[bits]
    probes = np.concatenate([queries, random_codes(rng, 4, bits)])
    for radius in (0, 1, t - 1, t, t + 1, bits // 2, bits - 1, bits, bits + 10):
        check(index, brute, probes, radius)


@pytest.mark.parametrize("bits", [64, 256])
def test_threshold_is_inclusive(make: Make, bits: int) -> None:
    """A query exactly 0, T-1, T and T+1 bits from a stored code: T is in, T+1 is out."""
    rng = np.random.default_rng(bits + 1)
    t = THRESHOLD[bits]
    codes = random_codes(rng, 200, bits)
    ids = np.arange(1000, 1200, dtype=np.int64)
    index, brute = make(bits), BruteForceIndex(bits)
    index.add(ids, codes)
    brute.add(ids, codes)
    for radius in (t, 0):
        for k in sorted({0, max(radius - 1, 0), radius, radius + 1}):
            q = flip_n(rng, codes[137], k)
            (res,) = index.search(q[None, :], radius)
            found = dict(zip(res.ids.tolist(), res.distances.tolist(), strict=True))
            assert found.get(1137) == (k if k <= radius else None), (k, radius)
            check(index, brute, q[None, :], radius)


@pytest.mark.parametrize("bits", [64, 256])
def test_every_bit_position_counts_once(make: Make, bits: int) -> None:
    """First, last and byte-boundary bits: Milvus' byte order gives numpy's distance."""
    rng = np.random.default_rng(7)
    c = random_codes(rng, 1, bits)[0]
    index = make(bits)
    index.add(np.array([42]), c[None, :])
    for p in range(bits):
        (res,) = index.search(flip(c, [p])[None, :], 1)
        assert pairs(res) == [(42, 1)], f"bit {p}"
    edges = [0, 7, 8, bits - 8, bits - 1]
    q = flip(c, edges)
    (res,) = index.search(q[None, :], bits)
    assert pairs(res) == [(42, hamming(q, c))] == [(42, 5)]


@pytest.mark.parametrize("page", [1, 3, 16])
def test_hits_past_a_full_page_are_paged_not_truncated(make: Make, page: int) -> None:
    """Many identical codes (ties at one distance) and neighbours at a few distances, with a
    page smaller than the hits: every hit comes back once."""
    rng = np.random.default_rng(page)
    base = random_codes(rng, 1, 256)[0]
    codes = np.concatenate([np.repeat(base[None, :], 40, axis=0),
                            np.array([flip_n(rng, base, d) for d in (1, 1, 2, 5, 5, 5, 9)]),
                            random_codes(rng, 300, 256)])
    ids = np.arange(len(codes), dtype=np.int64) * 7 - 100
    index, brute = make(256, page=page), BruteForceIndex(256)
    index.add(ids, codes)
    brute.add(ids, codes)
    queries = np.stack([base, flip_n(rng, base, 3), random_codes(rng, 1, 256)[0]])
    for radius in (0, 4, 9, 31, 256):
        check(index, brute, queries, radius)


def test_batches_and_pages_of_every_internal_size(make: Make, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """Writes, look-ups, searches and exports split into many small calls give one answer."""
    for name in ("_WRITE_BATCH", "_QUERY_BATCH", "_SEARCH_BATCH", "_EXPORT_PAGE"):
        monkeypatch.setattr(milvus_module, name, 7)
    rng = np.random.default_rng(11)
    codes = random_codes(rng, 100, 64)
    ids = rng.permutation(1000)[:100].astype(np.int64)
    index = make(64)
    index.add(ids, codes)
    assert exported(index) == dict(zip(ids.tolist(), map(bytes, codes), strict=True))
    assert index.remove(ids[:30]) == 30
    live = dict(zip(ids[30:].tolist(), map(bytes, codes[30:]), strict=True))
    assert exported(index) == live
    check(index, oracle(live, 64), codes[:40], 20)


# --- the change log's operations ----------------------------------------------------------------
def test_readding_an_id_replaces_its_code(make: Make) -> None:
    rng = np.random.default_rng(3)
    a, b, c = random_codes(rng, 3, 64)
    index = make(64)
    index.add(np.array([1, 2]), np.stack([a, b]))
    index.add(np.array([1]), c[None, :])
    assert len(index) == 2
    assert [pairs(r) for r in index.search(np.stack([a, c]), 0)] == [[], [(1, 0)]]
    # within one batch the last code wins
    index.add(np.array([5, 5, 5]), np.stack([a, b, c]))
    assert exported(index) == {1: c.tobytes(), 2: b.tobytes(), 5: c.tobytes()}


def test_replaying_the_log_in_order_is_harmless(make: Make) -> None:
    """add, add (replayed), remove, then the whole tail again: the id stays removed."""
    rng = np.random.default_rng(4)
    a, b = random_codes(rng, 2, 256)
    index = make(256)
    tail = [("add", 9, a), ("add", 10, b), ("remove", 9, a)]
    for _ in range(3):
        for op, i, code in tail:
            if op == "add":
                index.add(np.array([i]), code[None, :])
            else:
                index.remove(np.array([i]))
        assert exported(index) == {10: b.tobytes()}
        assert [pairs(r) for r in index.search(np.stack([a, b]), 0)] == [[], [(10, 0)]]


def test_remove_counts_only_present_ids(make: Make) -> None:
    rng = np.random.default_rng(5)
    index = make(64)
    index.add(np.array([1, 2, 3]), random_codes(rng, 3, 64))
    assert index.remove(np.array([2, 2, 99, -4])) == 1
    assert index.remove(np.array([2])) == 0
    assert index.remove(np.zeros(0, np.int64)) == 0
    assert sorted(exported(index)) == [1, 3]


def test_random_operations_match_the_oracle(make: Make) -> None:
    """Seeded random adds (with re-adds), removals and searches against an id -> code oracle."""
    rng = np.random.default_rng(6)
    index, live = make(64), {}
    for _ in range(30):
        op = rng.integers(3)
        if op == 0:
            n = int(rng.integers(1, 40))
            ids = rng.integers(0, 120, n).astype(np.int64)
            codes = random_codes(rng, n, 64)
            index.add(ids, codes)
            live.update(zip(ids.tolist(), map(bytes, codes), strict=True))
        elif op == 1:
            ids = rng.integers(0, 120, int(rng.integers(1, 10))).astype(np.int64)
            present = set(ids.tolist()) & set(live)
            assert index.remove(ids) == len(present)
            for i in present:
                del live[i]
        else:
            queries = [np.frombuffer(c, np.uint8) for c in list(live.values())[:5]]
            queries.append(random_codes(rng, 1, 64)[0])
            check(index, oracle(live, 64), np.stack(queries), int(rng.integers(0, 65)))
        assert len(index) == len(live)
    assert exported(index) == live


def test_empty_index_empty_queries_and_no_op_calls(make: Make) -> None:
    index = make(256)
    assert len(index) == 0
    assert index.search(np.zeros((0, 32), np.uint8), 31) == []
    (res,) = index.search(np.zeros((1, 32), np.uint8), 256)
    assert isinstance(res, SearchResult) and len(res.ids) == 0 and res.ids.dtype == np.int64
    index.add(np.zeros(0, np.int64), np.zeros((0, 32), np.uint8))
    ids, codes = index.export()
    assert ids.shape == (0,) and codes.shape == (0, 32) and codes.dtype == np.uint8
    assert index.stats == {"live": 0, "base": 0, "delta": 0, "tombstones": 0, "bytes": 0,
                           "position": 0}


def test_two_kinds_share_one_file_independently(make: Make) -> None:
    rng = np.random.default_rng(8)
    pdq, phash = make(256, "pdq_kind"), make(64, "phash_kind")
    p_codes, h_codes = random_codes(rng, 50, 256), random_codes(rng, 50, 64)
    pdq.add(np.arange(50), p_codes)
    phash.add(np.arange(50), h_codes)  # the same ids in another kind
    assert phash.remove(np.arange(10)) == 10
    assert len(pdq) == 50 and len(phash) == 40
    pdq.set_position(7, "pdq")
    assert phash.position() == (0, "")
    brute = BruteForceIndex(256)
    brute.add(np.arange(50), p_codes)
    check(pdq, brute, p_codes[:5], 100)


def test_concurrent_searches_while_a_follower_writes(make: Make) -> None:
    rng = np.random.default_rng(9)
    codes = random_codes(rng, 400, 64)
    index = make(64)
    index.add(np.arange(200), codes[:200])
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        try:
            while not done.is_set():
                for res in index.search(codes[:20], 10):
                    assert_sorted(res)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for start in range(200, 400, 20):
        index.add(np.arange(start, start + 20), codes[start:start + 20])
        index.remove(np.arange(start - 200, start - 190))
    done.set()
    for t in threads:
        t.join()
    assert not errors
    live = {i: codes[i].tobytes() for i in range(400) if not (i < 200 and i % 20 < 10)}
    assert exported(index) == live


# --- position, reopen, reset, refusals ----------------------------------------------------------
def test_position_and_data_survive_reopening(tmp_path: Path) -> None:
    """A process that closes (stopping its Milvus Lite server) and reopens finds both."""
    path = str(tmp_path / "own.db")
    rng = np.random.default_rng(10)
    codes = random_codes(rng, 30, 256)
    with MilvusIndex(256, path, "takedown_pdq") as index:
        assert index.position() == (0, "")
        index.add(np.arange(30), codes)
        index.set_position(41, "41:add:29:2026-01-01T00:00:00+00:00")
        index.set_position(42, "42:withdraw:3:2026-01-02T00:00:00+00:00")
        index.remove(np.array([3]))
    with MilvusIndex(256, path, "takedown_pdq") as index:
        assert index.position() == (42, "42:withdraw:3:2026-01-02T00:00:00+00:00")
        assert index.stats["position"] == 42 and len(index) == 29
        ids, got = index.export()
        assert ids.tolist() == [i for i in range(30) if i != 3]
        assert np.array_equal(got, np.delete(codes, 3, axis=0))
        index.reset()
        assert index.position() == (0, "") and len(index) == 0
        index.add(np.array([1]), codes[:1])
    with MilvusIndex(256, path, "takedown_pdq") as index:
        assert len(index) == 1 and index.position() == (0, "")


def test_a_second_process_cannot_open_the_same_lite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "one.db")
    with MilvusIndex(64, path, "takedown_phash"):
        code = ("from registry.index.milvus import MilvusIndex\n"
                "from registry.errors import StorageUnavailable\n"
                f"try:\n    MilvusIndex(64, {path!r}, 'takedown_phash')\n"
                "except StorageUnavailable as e:\n    print('refused:', e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=Path(__file__).parent.parent)
    assert "refused:" in out.stdout and "one process at a time" in out.stdout, out.stderr[-2000:]


def test_an_existing_collection_of_another_shape_is_refused(make: Make, lite_file: str) -> None:
    make(64, "shape_kind")
    with pytest.raises(IndexMismatch, match="reset"):
        MilvusIndex(256, lite_file, "shape_kind")


def test_bin_ivf_flat_is_refused_by_milvus_lite(lite_file: str) -> None:
    with pytest.raises(ConfigError, match="local mode only support BIN_FLAT"):
        MilvusIndex(64, lite_file, "ivf_kind", "BIN_IVF_FLAT", nlist=4)
    # nothing half-made is left behind: the name is free for a BIN_FLAT collection
    with MilvusIndex(64, lite_file, "ivf_kind") as index:
        assert index.index_type == "BIN_FLAT"
        index.reset()


def test_bin_ivf_flat_search_needs_a_milvus_server() -> None:
    uri = os.environ.get("TEST_MILVUS_URI")
    if not uri:
        pytest.skip("Milvus Lite 2.5.1 lacks BIN_IVF_FLAT (create_index answers 'invalid index "
                    "type: BIN_IVF_FLAT, local mode only support BIN_FLAT'); set "
                    "TEST_MILVUS_URI=http://host:19530 to run this against a Milvus server")
    rng = np.random.default_rng(12)
    codes = random_codes(rng, 2000, 256)
    # every cluster probed: IVF's range search must then equal brute force
    with MilvusIndex(256, uri, f"t{os.getpid()}_ivf", "BIN_IVF_FLAT", nlist=8, nprobe=8) as index:
        try:
            index.add(np.arange(2000), codes)
            brute = BruteForceIndex(256)
            brute.add(np.arange(2000), codes)
            queries = np.array([flip_n(rng, codes[i], int(d))
                                for i, d in zip(range(20), rng.integers(0, 60, 20), strict=True)])
            check(index, brute, queries, 52)
        finally:
            index.reset()


def test_invalid_arguments_and_closed_index(make: Make, lite_file: str) -> None:
    for kwargs in ({"bits": 60}, {"collection": "9bad"}, {"collection": "bad-name"},
                   {"index_type": "HNSW"}, {"page": 0}, {"page": 16385}):
        args: dict[str, Any] = {"bits": 64, "uri": lite_file, "collection": "ok", **kwargs}
        with pytest.raises(ConfigError):
            MilvusIndex(**args)
    index = make(64)
    with pytest.raises(ValueError, match="radius"):
        index.search(np.zeros((1, 8), np.uint8), -1)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), np.zeros((1, 32), np.uint8))
    with pytest.raises(ValueError):
        index.set_position(-1)
    index.close()
    index.close()  # idempotent
    with pytest.raises(StorageUnavailable, match="closed"):
        len(index)
