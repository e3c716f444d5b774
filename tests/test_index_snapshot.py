"""Index snapshots: round trips, atomic replacement and clear errors for damaged files."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from registry.domain import SignalKind
from registry.errors import SnapshotError
from registry.index import FlatIndex, IndexSet, MultiIndex, snapshot
from registry.index.catalog import IndexOptions
from registry.index.snapshot import MAGIC, Section


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def sections(seed: int = 0) -> list[Section]:
    rng = np.random.default_rng(seed)
    return [
        Section("pdq", 256, np.arange(10, 60, dtype=np.int64), random_codes(rng, 50, 256)),
        Section("phash", 64, np.array([-5, 0, 2**62], dtype=np.int64), random_codes(rng, 3, 64)),
        Section("empty", 64, np.zeros(0, np.int64), np.zeros((0, 8), np.uint8)),
    ]


def header_of(raw: bytes) -> tuple[dict[str, object], int]:
    head_len, _crc = struct.unpack_from("<II", raw, len(MAGIC))
    start = len(MAGIC) + 8
    return json.loads(raw[start : start + head_len]), start + head_len


def with_header(raw: bytes, header: dict[str, object]) -> bytes:
    """``raw`` with another header in its place; the arrays stay where they were (the header's
    room runs to the first 4096-byte boundary)."""
    frame = framed(json.dumps(header).encode())
    assert len(frame) <= 4096
    return frame + raw[len(frame):]


def framed(head: bytes) -> bytes:
    """Magic, header length and header CRC, then the header: a well-formed frame."""
    return MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head


def leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def filled_index_set(seed: int = 1) -> IndexSet:
    rng = np.random.default_rng(seed)
    s = IndexSet()
    pdq = s.indexes[SignalKind.PDQ]
    phash = s.indexes[SignalKind.PHASH]
    pdq.add(np.arange(0, 300), random_codes(rng, 300, 256))
    pdq.compact()
    pdq.add(np.arange(300, 350), random_codes(rng, 50, 256))  # delta
    pdq.remove(np.array([3, 301, 999]))  # tombstones in base and delta
    phash.add(np.arange(1000, 1100), random_codes(rng, 100, 64))
    phash.remove(np.array([1000]))
    s.position = 4242
    return s


# --- the raw format ---------------------------------------------------------------------------
def test_round_trip_preserves_position_ids_and_codes(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    written = sections()
    snapshot.save(path, 17, written)
    position, read = snapshot.load(path)
    assert position == 17
    assert [(s.kind, s.bits) for s in read] == [(s.kind, s.bits) for s in written]
    for w, r in zip(written, read, strict=True):
        assert r.ids.dtype == np.int64 and r.codes.dtype == np.uint8
        assert r.codes.shape == (len(w.ids), w.bits // 8)
        np.testing.assert_array_equal(r.ids, w.ids)
        np.testing.assert_array_equal(r.codes, w.codes)
    assert path.read_bytes().startswith(MAGIC)


def test_empty_snapshot_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "index.snap"  # missing parents are created
    snapshot.save(path, 0, [])
    assert snapshot.load(path) == (0, [])


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    snapshot.save(path, 1, sections(1))
    snapshot.save(path, 2, sections(2))  # replacing an existing snapshot
    assert leftovers(tmp_path, "index.snap") == []
    assert snapshot.load(path)[0] == 2


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_keeps_the_old_snapshot_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "index.snap"
    snapshot.save(path, 5, sections(5))
    before = path.read_bytes()

    def boom(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk on fire"):
        snapshot.save(path, 6, sections(6))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert leftovers(tmp_path, "index.snap") == []
    position, read = snapshot.load(path)
    assert position == 5
    np.testing.assert_array_equal(read[0].codes, sections(5)[0].codes)


def test_failure_while_writing_sections_keeps_the_old_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after the header went out: the old file stays intact and the partial
    temporary file is removed."""
    path = tmp_path / "index.snap"
    snapshot.save(path, 5, sections(5))
    before = path.read_bytes()
    partial: list[Path] = []

    class FullDisk:
        def __init__(self, name: Path, mode: str) -> None:
            self._f = open(name, mode)  # noqa: SIM115
            self._writes = 0
            partial.append(Path(name))

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def write(self, data: bytes) -> int:
            self._writes += 1
            if self._writes > 2:
                raise OSError(28, "No space left on device")
            return self._f.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._f, name)

    monkeypatch.setattr(snapshot, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        snapshot.save(path, 6, sections(6))
    monkeypatch.undo()

    assert partial and partial[0].parent == tmp_path and partial[0].name != "index.snap"
    assert not partial[0].exists()
    assert path.read_bytes() == before
    assert leftovers(tmp_path, "index.snap") == []
    assert snapshot.load(path)[0] == 5


# --- damaged files ----------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "index.snap"
    snapshot.save(path, 99, sections(3))
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.snap"
    with pytest.raises(SnapshotError, match="No index snapshot") as e:
        snapshot.load(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"TRIDX", b"TRIDX\x02" + b"\x00" * 40, b"PK\x03\x04not a snapshot", b"TRIDX\x01\x00"],
)
def test_wrong_magic_or_too_short(saved: Path, content: bytes) -> None:
    saved.write_bytes(content)
    with pytest.raises(SnapshotError, match="not an index snapshot") as e:
        snapshot.load(saved)
    assert str(saved) in str(e.value)


def array_spans(raw: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every non-empty array in a snapshot's body."""
    header, _ = header_of(raw)
    spans = []
    for m in header["sections"]:  # type: ignore[attr-defined]
        for a in m["arrays"]:
            n = int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
            if n:
                spans.append((a["offset"], n))
    return spans


def test_flipped_byte_in_the_body_fails_the_checksum(saved: Path) -> None:
    raw = saved.read_bytes()
    spans = array_spans(raw)
    assert len(spans) == 4  # pdq ids and codes, phash ids and codes
    for start, length in spans:
        for at in (start, start + length // 2, start + length - 1):
            damaged = bytearray(raw)
            damaged[at] ^= 0x10
            saved.write_bytes(bytes(damaged))
            for mapped in (True, False):
                with pytest.raises(SnapshotError, match="checksum") as e:
                    snapshot.load_with_fingerprint(saved, mapped)
                assert "corrupt" in str(e.value) and str(saved) in str(e.value)


@pytest.mark.parametrize("keep", [12, 40, -1, -100])
def test_truncated_file(saved: Path, keep: int) -> None:
    raw = saved.read_bytes()
    saved.write_bytes(raw[:keep])
    with pytest.raises(SnapshotError, match="corrupt"):
        snapshot.load(saved)


@pytest.mark.parametrize(
    "head",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b"42",
        b'"text"',
        b"{}",
        b'{"format": 3, "position": 3}',
        b'{"format": 3, "position": 3, "sections": [{"kind": "x"}]}',
        b'{"format": 3, "position": "many", "sections": []}',
        b'{"format": 3, "position": 3, "sections": [], "size": "big"}',
    ],
)
def test_garbage_header(saved: Path, head: bytes) -> None:
    raw = saved.read_bytes()
    _, body_start = header_of(raw)
    saved.write_bytes(framed(head) + raw[body_start:])
    with pytest.raises(SnapshotError, match="corrupt: its header or sections do not parse"):
        snapshot.load(saved)


def test_header_length_beyond_the_file(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    struct.pack_into("<I", raw, len(MAGIC), 2**31)
    saved.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="corrupt"):
        snapshot.load(saved)


def test_unknown_format_version(saved: Path) -> None:
    raw = saved.read_bytes()
    header, _ = header_of(raw)
    saved.write_bytes(with_header(raw, {**header, "format": 4}))
    with pytest.raises(SnapshotError, match="format 4; want 3"):
        snapshot.load(saved)


def test_section_offset_beyond_the_body(saved: Path) -> None:
    raw = saved.read_bytes()
    header, _ = header_of(raw)
    header["sections"][0]["arrays"][0]["offset"] = len(raw) // 4096 * 4096  # type: ignore[index]
    saved.write_bytes(with_header(raw, header))
    with pytest.raises(SnapshotError, match="corrupt"):
        snapshot.load(saved)


@pytest.mark.parametrize(("field", "value"), [("count", -1), ("count", 2**62), ("bits", 0),
                                              ("offset", -8), ("offset", 4097), ("shape", [2**62]),
                                              ("dtype", "<f8"), ("layout", "tables")])
def test_impossible_section_sizes_are_corrupt_not_a_crash(saved: Path, field: str,
                                                          value: int) -> None:
    """Sections are read into arrays allocated from the header's sizes: a header that passes its
    checksum but asks for a negative or absurd size is refused, not allocated."""
    raw = saved.read_bytes()
    header, _ = header_of(raw)
    section = header["sections"][0]  # type: ignore[index]
    (section["arrays"][0] if field in ("offset", "shape", "dtype") else section)[field] = value
    saved.write_bytes(with_header(raw, header))
    with pytest.raises(SnapshotError, match="corrupt"):
        snapshot.load(saved)


def test_flipped_bit_in_the_header_position_is_detected(saved: Path) -> None:
    raw = saved.read_bytes()
    at = raw.index(b'"position": 99') + len(b'"position": 9')
    damaged = bytearray(raw)
    damaged[at] ^= 0x01  # "99" -> "98"
    saved.write_bytes(bytes(damaged))
    with pytest.raises(SnapshotError):
        snapshot.load(saved)


# --- IndexSet snapshots -----------------------------------------------------------------------
def test_index_set_round_trip_preserves_everything(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    original = filled_index_set()
    original.save(path)
    assert leftovers(tmp_path, "index.snap") == []
    loaded = IndexSet.load(path)
    assert loaded.position == 4242
    assert len(loaded) == len(original) == 300 + 50 - 2 + 100 - 1
    rng = np.random.default_rng(9)
    for kind, index in original.indexes.items():
        twin = loaded.indexes[kind]
        assert twin.bits == kind.bits
        ids, codes = index.export()
        got_ids, got_codes = twin.export()
        assert dict(zip(ids.tolist(), map(bytes, codes), strict=True)) == dict(
            zip(got_ids.tolist(), map(bytes, got_codes), strict=True)
        )
        assert twin.stats["tombstones"] == 0 and twin.stats["delta"] == 0
        queries = np.concatenate([codes[:25], random_codes(rng, 5, kind.bits)])
        exact = getattr(twin, "exact_radius", kind.bits)  # beyond it a MultiIndex may miss
        for radius in [r for r in (0, 5, 8, 31, kind.bits // 2) if r <= exact]:
            want = [(r.ids.tolist(), r.distances.tolist()) for r in index.search(queries, radius)]
            got = [(r.ids.tolist(), r.distances.tolist()) for r in twin.search(queries, radius)]
            assert got == want
    # removed ids stay removed
    assert 3 not in loaded.indexes[SignalKind.PDQ].export()[0].tolist()
    assert 1000 not in loaded.indexes[SignalKind.PHASH].export()[0].tolist()
    # the loaded set keeps working: add, remove, search, save again
    loaded.indexes[SignalKind.PHASH].add(np.array([5000]), random_codes(rng, 1, 64))
    loaded.save(path)
    assert len(IndexSet.load(path)) == len(loaded)


@pytest.mark.parametrize("kind", ["multi", "flat"])
def test_index_set_load_honours_the_options(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "index.snap"
    filled_index_set().save(path)
    options = IndexOptions(kind=kind, compact_ratio=0.5)
    loaded = IndexSet.load(path, options)
    assert all(i._ratio == 0.5 for i in loaded.indexes.values())
    expected = MultiIndex if kind == "multi" else FlatIndex
    assert all(type(i) is expected for i in loaded.indexes.values())


def test_index_set_load_of_a_snapshot_without_some_kind(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    rng = np.random.default_rng(0)
    snapshot.save(path, 3, [Section("phash", 64, np.array([1, 2]), random_codes(rng, 2, 64))])
    loaded = IndexSet.load(path)
    assert loaded.position == 3
    assert len(loaded.indexes[SignalKind.PDQ]) == 0
    assert len(loaded.indexes[SignalKind.PHASH]) == 2


def test_index_set_load_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="No index snapshot"):
        IndexSet.load(tmp_path / "missing.snap")
    path = tmp_path / "index.snap"
    filled_index_set().save(path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="checksum"):
        IndexSet.load(path)


@pytest.mark.parametrize("kind", ["dhash", "PDQ", ""])
def test_index_set_load_unknown_kind(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "index.snap"
    snapshot.save(path, 1, [Section(kind, 64, np.array([1]), np.zeros((1, 8), np.uint8))])
    with pytest.raises(SnapshotError, match="unknown signal kind") as e:
        IndexSet.load(path)
    assert repr(kind) in str(e.value)


@pytest.mark.parametrize(
    ("kind", "bits"), [("pdq", 64), ("phash", 256), ("pdq", 128), ("md5", 128), ("sha256", 256)]
)
def test_index_set_load_wrong_bit_width_or_exact_kind(tmp_path: Path, kind: str, bits: int) -> None:
    path = tmp_path / "index.snap"
    rng = np.random.default_rng(0)
    snapshot.save(path, 1, [Section(kind, bits, np.array([1, 2]), random_codes(rng, 2, bits))])
    with pytest.raises(SnapshotError, match=f"holds {kind} codes of {bits} bits"):
        IndexSet.load(path)


def test_index_set_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "index.snap"
    first = filled_index_set(1)
    first.save(path)
    before = path.read_bytes()
    second = filled_index_set(2)
    second.position = 5000
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no rename")))
    with pytest.raises(OSError, match="no rename"):
        second.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path, "index.snap") == []
    assert IndexSet.load(path).position == 4242


# --- multi-index tables, mapped ---------------------------------------------------------------
def brute(ids: np.ndarray, codes: np.ndarray, queries: np.ndarray, radius: int
          ) -> list[list[tuple[int, int]]]:
    out = []
    for q in queries:
        d = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
        keep = np.flatnonzero(d <= radius)
        out.append(sorted((int(d[i]), int(ids[i])) for i in keep))
    return out


def planted(rng: np.random.Generator, codes: np.ndarray, n: int, max_flip: int) -> np.ndarray:
    queries = codes[rng.integers(0, len(codes), n)].copy()
    for q in queries:
        bits = rng.choice(codes.shape[1] * 8, int(rng.integers(0, max_flip + 1)), replace=False)
        for b in bits:
            q[b // 8] ^= np.uint8(1 << (b % 8))
    return queries


def test_multi_index_tables_are_written_once_and_mapped_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    original = filled_index_set(4)
    original.save(path)
    raw = path.read_bytes()
    header, _ = header_of(raw)
    layouts = {m["kind"]: m["layout"] for m in header["sections"]}  # type: ignore[attr-defined]
    assert layouts == {"pdq": "tables", "phash": "tables", "local": "rows"}
    assert all(a["offset"] % 4096 == 0 for m in header["sections"]  # type: ignore[attr-defined]
               for a in m["arrays"])
    assert header["size"] == len(raw)
    mapped = IndexSet.load(path)
    copied = IndexSet.load(path, mapped=False)
    rng = np.random.default_rng(5)
    for kind in (SignalKind.PDQ, SignalKind.PHASH):
        ids, codes = original.indexes[kind].export()
        queries = np.concatenate([planted(rng, codes, 40, 40), random_codes(rng, 10, kind.bits)])
        for loaded, shared in ((mapped, True), (copied, False)):
            index = loaded.indexes[kind]
            assert isinstance(index, MultiIndex) and index.mapped is shared
            assert index.stats["mapped"] == int(shared) and index.stats["delta"] == 0
            radius = index.exact_radius
            got = [sorted(zip(r.distances.tolist(), r.ids.tolist(), strict=True))
                   for r in index.search(queries, radius)]
            assert got == brute(ids, codes, queries, radius)
    # a mapped index takes adds and removals in its own delta and tombstones, and compacts into
    # private tables when asked: the mapping is never written to
    pdq = mapped.indexes[SignalKind.PDQ]
    assert isinstance(pdq, MultiIndex)
    extra = random_codes(rng, 3, 256)
    pdq.add(np.array([9001, 9002, 9003]), extra)
    first_id = int(pdq.export()[0][0])
    assert pdq.remove(np.array([first_id])) == 1
    hits = pdq.search(extra, 0)
    assert [r.ids.tolist() for r in hits] == [[9001], [9002], [9003]]
    pdq.compact()
    assert not pdq.mapped and first_id not in pdq.export()[0].tolist()
    assert path.read_bytes() == raw


def test_a_delta_is_folded_into_new_tables_when_saved(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    s = filled_index_set(6)  # pdq has a delta and tombstones
    pdq = s.indexes[SignalKind.PDQ]
    assert isinstance(pdq, MultiIndex) and pdq.pending != (0, 0)
    want = dict(zip(*(x.tolist() if i == 0 else list(map(bytes, x))
                      for i, x in enumerate(pdq.export())), strict=True))
    s.save(path)
    assert pdq.pending != (0, 0)  # saving does not change the live index
    loaded = IndexSet.load(path).indexes[SignalKind.PDQ]
    assert loaded.stats["base"] == len(want) and loaded.stats["delta"] == 0
    ids, codes = loaded.export()
    assert dict(zip(ids.tolist(), map(bytes, codes), strict=True)) == want


def rewrite_array(raw: bytes, kind: str, name: str, new: np.ndarray) -> bytes:
    """The snapshot with one array replaced and its checksum made to match: damage a writer
    could produce that the checksum cannot catch."""
    import xxhash

    header, _ = header_of(raw)
    body = bytearray(raw)
    for m in header["sections"]:  # type: ignore[attr-defined]
        for a in m["arrays"]:
            if m["kind"] == kind and a["name"] == name:
                data = np.ascontiguousarray(new, dtype=a["dtype"]).tobytes()
                body[a["offset"]:a["offset"] + len(data)] = data
                a["xxh3"] = xxhash.xxh3_64_intdigest(data)
    return with_header(bytes(body), header)


def test_tables_that_pass_their_checksum_but_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    filled_index_set(7).save(path)
    raw = path.read_bytes()
    _, sections = snapshot.load(path)
    tables = next(s for s in sections if s.kind == "pdq")
    assert isinstance(tables, snapshot.TablesSection)
    for damage in ("offset past the blob", "positions go backwards"):
        dirs = tables.dirs.copy()
        if damage == "offset past the blob":
            dirs[3, -1] = tables.blob.shape[1]
        else:
            dirs[0, 2 * 100] = dirs[0, 2 * 101] + 1
        path.write_bytes(rewrite_array(raw, "pdq", "dirs", dirs))
        with pytest.raises(SnapshotError, match="inconsistent tables"):
            IndexSet.load(path)


def test_a_snapshot_grown_or_cut_by_a_page_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    filled_index_set(8).save(path)
    raw = path.read_bytes()
    for damaged in (raw + b"\0" * 4096, raw[:-4096]):
        path.write_bytes(damaged)
        with pytest.raises(SnapshotError, match="corrupt"):
            IndexSet.load(path)


def test_buckets_that_do_not_decode_stop_the_search_instead_of_reading_past_them() -> None:
    """A crafted file can pass the checksums and the directory checks with bucket bytes that do
    not decode: the kernel refuses them (ValueError), one query or a batch, and reads nothing
    past a bucket or the codes."""
    from registry.index.multi import _Tables

    rng = np.random.default_rng(17)
    codes = random_codes(rng, 5000, 256)
    index = MultiIndex.from_arrays(256, np.arange(5000), codes, 31)
    good = index.base_section("pdq")
    for damage in ("no high bits", "rows past the codes"):
        blob = good.blob.copy()
        if damage == "no high bits":
            blob[:, :] = 0  # every bucket claims rows it has no bits for
        else:
            blob[:, :] = 0xFF  # high parts far past 5000 rows
        tables = _Tables.of_section(snapshot.TablesSection(
            "pdq", 256, good.codes, good.id_offset, good.id_values, good.dirs, blob))
        for queries in (codes[:1], codes[:40]):  # one query, and the batched kernel
            with pytest.raises(ValueError, match="do not decode"):
                tables.search(queries, 31, index.schedule)
    ok = _Tables.of_section(good).search(codes[:40], 31, index.schedule)
    assert len(ok[1]) >= 40  # the undamaged tables find every query's own code
