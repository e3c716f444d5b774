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
    _, body_start = header_of(raw)
    head = json.dumps(header).encode()
    return framed(head) + raw[body_start:]


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
    [b"", b"TRIDX", b"TRIDX\x03" + b"\x00" * 40, b"PK\x03\x04not a snapshot", b"TRIDX\x01\x00"],
)
def test_wrong_magic_or_too_short(saved: Path, content: bytes) -> None:
    saved.write_bytes(content)
    with pytest.raises(SnapshotError, match="not an index snapshot") as e:
        snapshot.load(saved)
    assert str(saved) in str(e.value)


def test_flipped_byte_in_the_body_fails_the_checksum(saved: Path) -> None:
    raw = saved.read_bytes()
    _, body_start = header_of(raw)
    body_len = len(raw) - body_start
    for offset in (0, 7, 8 * 50 + 3, body_len - 1):  # pdq ids, pdq codes, last phash code byte
        damaged = bytearray(raw)
        damaged[body_start + offset] ^= 0x10
        saved.write_bytes(bytes(damaged))
        with pytest.raises(SnapshotError, match="checksum") as e:
            snapshot.load(saved)
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
        b'{"format": 2, "position": 3}',
        b'{"format": 2, "position": 3, "sections": [{"kind": "x"}]}',
        b'{"format": 2, "position": "many", "sections": []}',
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
    saved.write_bytes(with_header(raw, {**header, "format": 3}))
    with pytest.raises(SnapshotError, match="format 3; want 2"):
        snapshot.load(saved)


def test_section_offset_beyond_the_body(saved: Path) -> None:
    raw = saved.read_bytes()
    header, _ = header_of(raw)
    header["sections"][0]["offset"] = len(raw)  # type: ignore[index]
    saved.write_bytes(with_header(raw, header))
    with pytest.raises(SnapshotError, match="corrupt"):
        snapshot.load(saved)


@pytest.mark.parametrize(("field", "value"), [("count", -1), ("count", 2**62), ("bits", 0),
                                              ("offset", -8)])
def test_impossible_section_sizes_are_corrupt_not_a_crash(saved: Path, field: str,
                                                          value: int) -> None:
    """Sections are read into arrays allocated from the header's sizes: a header that passes its
    checksum but asks for a negative or absurd size is refused, not allocated."""
    raw = saved.read_bytes()
    header, _ = header_of(raw)
    header["sections"][0][field] = value  # type: ignore[index]
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
