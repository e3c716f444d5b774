"""IndexSet: one index per perceptual signal kind, and the change-log position they reflect.

``IndexOptions`` picks the kind: ``multi`` (:class:`MultiIndex`, exact to each signal's strong
threshold) or ``flat`` (:class:`FlatIndex`, exact everywhere, a full scan per query).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from registry.domain import ChangeAction, Signal, SignalKind
from registry.errors import InvalidHash, SnapshotError
from registry.index import snapshot
from registry.index.base import Codes, EngineIndex, HashIndex, IdColumn, Ids, SearchResult
from registry.index.flat import FlatIndex
from registry.index.local import Keypoints, LocalIndex, Verified
from registry.index.multi import CompactionPlan, MultiIndex
from registry.index.sampled import SampledIndex

PERCEPTUAL = (SignalKind.PDQ, SignalKind.PHASH)
INDEXED = (*PERCEPTUAL, SignalKind.LOCAL)
# ORB descriptors of corresponding patches sit ~20-50 bits apart: the local descriptor index
# probes one bit deep per 16-bit chunk (exact to 31) and keeps whatever else it finds up to the
# search radius; votes need only some of the pairs (docs/accuracy.md).


def single_thread() -> None:
    """One OpenMP thread per server process: parallelism comes from processes, and two threads
    on a shared 2-core machine made single queries 5-15x slower (measured on this project's
    2-vCPU machines; faiss' OpenMP threads spin while they wait)."""
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True, slots=True)
class IndexOptions:
    kind: str = "multi"
    # The radius each kind's index must be exact to (its strong threshold).
    exact_radius: Mapping[SignalKind, int] = field(
        default_factory=lambda: {SignalKind.PDQ: 31, SignalKind.PHASH: 5})
    compact_ratio: float = 0.1
    # False in serving processes: their follower compacts multi-indexes in the background.
    auto_compact: bool = True
    # PDQ chunks probed one bit deeper than exactness needs (more weak-tier recall, more work).
    extra_probes: int = 1
    # kind "milvus": PDQ and pHash live in Milvus collections (registry.index.milvus).
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_collection: str = "takedown"
    milvus_index_type: str = "BIN_FLAT"

    @property
    def external(self) -> bool:
        """Whether PDQ and pHash live outside this process (a shared, persistent engine)."""
        return self.kind == "milvus"

    def open_external(self) -> dict[SignalKind, EngineIndex]:
        """The engine-backed index of each perceptual kind (kind ``milvus``), connected."""
        if not self.external:
            return {}
        from registry.index.milvus import MilvusIndex  # pymilvus only where it is used

        opened: dict[SignalKind, EngineIndex] = {}
        try:
            for kind in PERCEPTUAL:
                opened[kind] = MilvusIndex(kind.bits, self.milvus_uri,
                                           f"{self.milvus_collection}_{kind.value}",
                                           self.milvus_index_type, token=self.milvus_token)
        except BaseException:
            close_all(opened)
            raise
        return opened

    def new(self, kind: SignalKind) -> FlatIndex | MultiIndex:
        if self.external:
            raise ValueError("an engine-backed kind is opened once (open_external), not made")
        if self.kind == "flat":
            return FlatIndex(kind.bits, self.compact_ratio)
        return MultiIndex(kind.bits, self.exact_radius[kind], self.compact_ratio,
                          auto_compact=self.auto_compact, extra_probes=self._extra(kind))

    def _extra(self, kind: SignalKind) -> int:
        return self.extra_probes if kind is SignalKind.PDQ else 0

    def new_local(self) -> LocalIndex:
        # The bit-sampling index under either option: local matching needs enough descriptor
        # hits to rank candidates (each is then compared keypoint by keypoint), not every
        # neighbour, and an exact structure cannot answer 1,000 look-ups 40 bits wide in
        # milliseconds at 64M descriptors (bench/local_scale.py).
        return LocalIndex(SampledIndex(256, self.compact_ratio, auto_compact=self.auto_compact))

    def of_section(self, kind: SignalKind, section: snapshot.AnySection
                   ) -> FlatIndex | MultiIndex:
        """The index a snapshot section holds: a multi-index's tables are used as they are."""
        if isinstance(section, snapshot.TablesSection):
            if self.kind == "flat":
                ids = IdColumn.of_values(section.id_offset, section.id_values).full()
                return self.of_arrays(kind, ids, np.array(section.codes))
            try:
                index = MultiIndex.from_section(section, self.exact_radius[kind],
                                                self.compact_ratio, self._extra(kind))
            except ValueError as e:
                raise SnapshotError(f"The snapshot's {kind.value} tables are unusable: {e}."
                                    ) from None
            index.auto_compact = self.auto_compact
            return index
        return self.of_arrays(kind, section.ids, section.codes)

    def of_arrays(self, kind: SignalKind, ids: Ids, codes: Codes
                  ) -> FlatIndex | MultiIndex:
        if self.kind == "flat":
            return FlatIndex.from_arrays(kind.bits, ids, codes, self.compact_ratio)
        index = MultiIndex.from_arrays(kind.bits, ids, codes, self.exact_radius[kind],
                                       self.compact_ratio, self._extra(kind))
        index.auto_compact = self.auto_compact
        return index


@dataclass
class SnapshotPlan:
    """A snapshot frozen by :meth:`IndexSet.snapshot_plan`, built into sections later."""

    position: int
    parts: list[tuple[str, CompactionPlan | MultiIndex | snapshot.Section]]
    indexes: Mapping[SignalKind, object]
    left_out: list[str]  # kinds in an external engine

    def sections(self) -> list[snapshot.AnySection]:
        """The slow part, with no lock held: a multi-index with a delta or tombstones gets new
        tables (the C build releases the GIL), one without is written as it is."""
        out: list[snapshot.AnySection] = []
        for name, part in self.parts:
            if isinstance(part, CompactionPlan):
                index = self.indexes[SignalKind(name)]
                assert isinstance(index, MultiIndex)
                index.build(part)
                assert part.tables is not None
                out.append(part.tables.section(name))
            elif isinstance(part, MultiIndex):
                out.append(part.base_section(name))
            else:
                out.append(part)
        return out


def close_all(indexes: Mapping[SignalKind, EngineIndex]) -> None:
    for index in indexes.values():
        index.close()


class IndexSet:
    """``external``: engine-backed indexes (kind ``milvus``) the set uses but does not own or
    feed: they keep their own change-log position (see ``IndexKeeper``), so :meth:`apply`
    leaves their kinds alone and snapshots leave them out."""

    def __init__(self, options: IndexOptions | None = None,
                 external: Mapping[SignalKind, EngineIndex] | None = None) -> None:
        self.position = 0
        self.fingerprint = ""  # of the change-log entry at ``position``, when loaded
        self.options = options or IndexOptions()
        if self.options.external and external is None:
            external = self.options.open_external()
        self.external: dict[SignalKind, EngineIndex] = dict(external or {})
        self.indexes: dict[SignalKind, HashIndex] = {
            k: self.external[k] if k in self.external else self.options.new(k)
            for k in PERCEPTUAL
        }
        self.local = self.options.new_local()

    @property
    def own_kinds(self) -> tuple[SignalKind, ...]:
        """The kinds this set's :meth:`apply` feeds (all but the external ones)."""
        return tuple(k for k in INDEXED if k not in self.external)

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes.values()) + len(self.local)

    def apply(self, changes: Iterable[tuple[int, ChangeAction, int, Signal]],
              kinds: Iterable[SignalKind] | None = None) -> int:
        """Apply change-log entries ``(seq, action, signal_id, signal)`` in order; entries at or
        below the current position are skipped, so replaying a tail twice is harmless. Entries
        of kinds not in ``kinds`` only advance the position."""
        applied = 0
        pending = self.position  # the position advances only once its entries are applied
        adds: dict[SignalKind, tuple[list[int], list[bytes]]] = {}
        wanted = set(self.own_kinds if kinds is None else kinds) - set(self.external)
        for seq, action, signal_id, signal in changes:
            if seq <= pending:
                continue
            if signal.kind not in wanted:
                pass
            elif signal.kind is SignalKind.LOCAL:
                if action is ChangeAction.ADD:
                    ids, codes = adds.setdefault(signal.kind, ([], []))
                    ids.append(signal_id)
                    codes.append(signal.value)
                else:
                    self._flush(adds)
                    self.position = pending
                    self.local.remove(np.array([signal_id], dtype=np.int64))
            elif signal.kind in self.indexes:
                if len(signal.value) != signal.kind.bits // 8:
                    raise ValueError(f"change {seq}: a {signal.kind.value} code of wrong width")
                if action is ChangeAction.ADD:
                    ids, codes = adds.setdefault(signal.kind, ([], []))
                    ids.append(signal_id)
                    codes.append(signal.value)
                else:
                    self._flush(adds)
                    self.position = pending
                    self.indexes[signal.kind].remove(np.array([signal_id], dtype=np.int64))
            pending = seq
            applied += 1
        self._flush(adds)
        self.position = pending
        return applied

    def _flush(self, adds: dict[SignalKind, tuple[list[int], list[bytes]]]) -> None:
        for kind, (ids, codes) in adds.items():
            if kind is SignalKind.LOCAL:
                self.local.add(np.array(ids, dtype=np.int64), codes)
                continue
            arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), kind.bits // 8)
            self.indexes[kind].add(np.array(ids, dtype=np.int64), arr)
        adds.clear()

    def search(self, kind: SignalKind, codes: list[bytes], radius: int) -> list[SearchResult]:
        arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), kind.bits // 8)
        return self.indexes[kind].search(arr, radius)

    def search_local(self, query: Keypoints, radius: int, min_inliers: int
                     ) -> list[Verified]:
        return self.local.search(query, radius, min_inliers)

    def snapshot_plan(self) -> SnapshotPlan:
        """What a snapshot of this set holds, taken cheaply (call under the lock guarding the
        set): each multi-index's frozen base plus copies of its delta and tombstones, the other
        kinds' live rows. :meth:`SnapshotPlan.sections` then does the slow part without it."""
        parts: list[tuple[str, CompactionPlan | MultiIndex | snapshot.Section]] = []
        for kind, index in self.indexes.items():
            if kind in self.external:
                continue  # the engine keeps its own data
            if isinstance(index, MultiIndex):
                delta, dead = index.pending
                parts.append((kind.value, index.begin_compaction() if delta or dead else index))
            else:
                ids, codes = index.export()
                parts.append((kind.value, snapshot.Section(kind.value, kind.bits, ids, codes)))
        ids, codes = self.local.export()
        parts.append((SignalKind.LOCAL.value,
                      snapshot.Section(SignalKind.LOCAL.value, self.local.bits, ids, codes)))
        return SnapshotPlan(self.position, parts, self.indexes, [k.value for k in self.external])

    def sections(self) -> list[snapshot.AnySection]:
        """Every kind's index as snapshot sections (multi-indexes as their tables)."""
        return self.snapshot_plan().sections()

    def save(self, path: Path, fingerprint: str = "") -> None:
        snapshot.save(path, self.position, self.sections(), fingerprint,
                      [k.value for k in self.external])

    @classmethod
    def load(cls, path: Path, options: IndexOptions | None = None, *, mapped: bool = True,
             kinds: Iterable[SignalKind] = INDEXED,
             external: Mapping[SignalKind, EngineIndex] | None = None) -> IndexSet:
        """The set a snapshot holds. Multi-index tables are used as they are: with ``mapped``
        (the default) they stay in the file's shared mapping and nothing is built. Only
        ``kinds`` are loaded (the others stay empty, external ones as they are)."""
        position, sections, fingerprint, left_out = snapshot.load_full(path, mapped)
        out = cls(options, external)
        wanted = set(kinds) - set(out.external)
        missing = sorted({k.value for k in wanted} & set(left_out))
        if missing:
            raise SnapshotError(
                f"{path} was written with {', '.join(missing)} in an external engine "
                f"(TAKEDOWN_INDEX=milvus): it does not hold them for TAKEDOWN_INDEX="
                f"{out.options.kind}.")
        out.fingerprint = fingerprint
        for s in sections:
            try:
                kind = SignalKind(s.kind)
            except ValueError:
                raise SnapshotError(f"{path} holds an unknown signal kind {s.kind!r}.") from None
            if kind is SignalKind.LOCAL and s.bits == out.local.bits \
                    and isinstance(s, snapshot.Section):
                if kind not in wanted:
                    continue
                try:
                    out.local.add(s.ids, [LocalIndex.blob_of_row(r) for r in s.codes])
                except (ValueError, InvalidHash) as e:
                    raise SnapshotError(f"{path} holds a malformed local signal: {e}") from None
                continue
            if kind not in out.indexes or kind.bits != s.bits:
                raise SnapshotError(f"{path} holds {s.kind} codes of {s.bits} bits.")
            if kind in wanted and not out.options.external:
                out.indexes[kind] = out.options.of_section(kind, s)
        out.position = position
        return out

    def stats(self) -> dict[str, object]:
        return {
            "position": self.position,
            "index": self.options.kind,
            "kinds": {**{k.value: i.stats for k, i in self.indexes.items()},
                      SignalKind.LOCAL.value: self.local.stats},
        }
