"""The overlay FlatIndex and MultiIndex share (registry.index.overlay): the delta, tombstones,
what an export keeps, and what survives a background fold. The indexes built on it are checked
against brute force in tests/test_index_flat.py and tests/test_index_multi.py."""

from __future__ import annotations

import numpy as np

from registry.index.base import IdColumn
from registry.index.overlay import Overlay


def codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 8), dtype=np.uint8)


def test_adds_go_to_the_delta_and_searches_find_them_inclusively():
    rng = np.random.default_rng(1)
    o = Overlay(64)
    c = codes(rng, 5)
    o.add(np.arange(10, 15, dtype=np.int64), c)
    assert o.delta_rows == 5
    found = o.delta_hits(c[[2]], 0)
    assert found is not None
    qs, ids, dists = found
    assert list(ids) == [12] and list(qs) == [0] and list(dists) == [0]
    assert Overlay(64).delta_hits(c, 64) is None  # nothing to search


def test_removing_counts_rows_in_the_base_and_the_delta_once_per_id():
    rng = np.random.default_rng(2)
    o = Overlay(64)
    o.add(np.array([7, 8], dtype=np.int64), codes(rng, 2))
    base_ids = np.array([1, 7, 7, 3], dtype=np.int64)  # id 7 owns two base rows and one delta row
    assert o.remove(np.array([7, 99], dtype=np.int64), base_ids) == 3
    assert o.dead_rows == 3 and o.tombstones == {7} and o.removals == [7]
    assert o.remove(np.array([7], dtype=np.int64), base_ids) == 0  # already gone
    assert o.resurrects(np.array([7], dtype=np.int64))
    assert not o.resurrects(np.array([8], dtype=np.int64))


def test_export_keeps_only_live_rows_of_base_and_delta():
    rng = np.random.default_rng(3)
    o = Overlay(64)
    base_ids, base_codes = np.array([1, 2, 3], dtype=np.int64), codes(rng, 3)
    delta = codes(rng, 2)
    o.add(np.array([4, 5], dtype=np.int64), delta)
    o.remove(np.array([2, 5], dtype=np.int64), base_ids)
    ids, out = o.export(base_ids, base_codes)
    assert list(ids) == [1, 3, 4]
    assert np.array_equal(out, np.vstack([base_codes[[0, 2]], delta[[0]]]))


def test_after_a_plan_later_adds_and_removals_survive_the_fold():
    rng = np.random.default_rng(4)
    o = Overlay(64)
    o.add(np.array([1, 2], dtype=np.int64), codes(rng, 2))
    o.remove(np.array([1], dtype=np.int64), np.zeros(0, dtype=np.int64))
    plan_rows, plan_removals = o.delta_rows, len(o.removals)  # the plan folds these
    late = codes(rng, 1)
    o.add(np.array([3], dtype=np.int64), late)
    o.remove(np.array([2], dtype=np.int64), np.zeros(0, dtype=np.int64))
    new_base = IdColumn(np.array([2], dtype=np.int64))  # the fold kept 2, dropped 1
    after = o.after(plan_rows, plan_removals, new_base)
    assert list(after.delta_ids) == [3] and np.array_equal(after.delta_codes(), late)
    assert after.tombstones == {2} and after.dead_rows == 1  # 2's row in the new base
    assert after.removals == [2]
