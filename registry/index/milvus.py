"""MilvusIndex: the ``HashIndex`` interface over a Milvus collection (a server, or Milvus Lite).

One collection per signal kind holds ``id`` (INT64 primary key, the signal id) and ``code``
(BINARY_VECTOR of ``bits`` dims, metric HAMMING). Milvus compares binary vectors byte for byte,
the same bytes faiss and the numpy oracle read, so its distances are exactly theirs.

Construction::

    MilvusIndex(bits, uri, collection, index_type="BIN_FLAT", *, nlist=1024, nprobe=16,
                token="", timeout=30.0, page=16384)

- ``uri``: a path ending in ``.db`` opens Milvus Lite on that file (its directory is created);
  ``http://host:19530`` (or https) a Milvus server, ``token`` its credentials.
- ``collection``: the collection's name, which should carry the signal kind
  (``takedown_pdq``); a second collection ``<collection>_meta`` holds the position. An existing
  collection is reused; one of another width or index type is refused (:class:`IndexMismatch`)
  until :meth:`reset`.
- ``index_type``: ``BIN_FLAT`` (exact, the default) or ``BIN_IVF_FLAT`` (approximate: ``nlist``
  clusters, ``nprobe`` of them searched). Milvus Lite refuses ``BIN_IVF_FLAT`` ("local mode only
  support BIN_FLAT"), which surfaces as :class:`ConfigError`.
- ``timeout``: seconds per Milvus call, retries included (pymilvus otherwise retries a failing
  call for minutes).
- ``page``: the most hits one search call returns (Milvus caps ``limit`` at 16384).

Semantics, as the other indexes: ``search`` returns every id within an inclusive Hamming radius,
sorted by distance then id. Milvus' range search returns ``range_filter <= d < radius``, so we
ask for ``radius + 1``. It returns at most ``page`` hits, the nearest ones; a query that fills a
page is paged on, never truncated: the next call asks from the last page's largest distance
upward, excluding the ids already found at that distance (see :meth:`_page_on`). Unlike the
in-process indexes, an id holds at most one code: ``add`` upserts, so re-adding an id replaces
its code, replaying an add is harmless and add-then-remove replayed in order leaves it removed.

Position: :meth:`position` and :meth:`set_position` keep ``(seq, fingerprint)`` of the last
change-log entry applied, in the meta collection (Milvus Lite has no collection properties:
``alter_collection_properties`` answers UNIMPLEMENTED). Set it after the entries it covers are
applied; a process that restarts replays the log after it, and a replay is harmless. :meth:`reset`
drops both collections and recreates them empty, position ``(0, "")``, for a rebuild.

Threads: one lock serialises every call on the client, so a follower thread may add and remove
while request threads search; a search's pages and ``remove``'s look-up-then-delete each see one
state. :meth:`close` releases the client (and, for Milvus Lite, its server process once the last
index on that file closes); the index is also a context manager.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient, MilvusException  # type: ignore[import-untyped]

from registry.errors import ConfigError, IndexMismatch, StorageUnavailable
from registry.index.base import Codes, Ids, SearchResult, check_codes, check_pair

INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
MAX_PAGE = 16384  # Milvus' largest search/query limit
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,249}")
_QUERY_BATCH = 4096  # ids per look-up; a query without a limit stops at 16384 rows
_WRITE_BATCH = 20_000  # rows per upsert, well inside gRPC's message size
_SEARCH_BATCH = 100  # queries per search call
_EXPORT_PAGE = 10_000
_META_KEY = 0
_FINGERPRINT_MAX = 1024
_INT64_MIN = -(2**63)

# Milvus Lite runs one server process per .db file, shared by every client in this process
# (pymilvus' server manager); counted here so closing one index leaves the others' server up.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def is_lite(uri: str) -> bool:
    """True when ``uri`` names a Milvus Lite file rather than a server (pymilvus' own rule)."""
    return uri.endswith(".db")


class MilvusIndex:
    def __init__(self, bits: int, uri: str, collection: str, index_type: str = "BIN_FLAT", *,
                 nlist: int = 1024, nprobe: int = 16, token: str = "", timeout: float = 30.0,
                 page: int = MAX_PAGE) -> None:
        if bits <= 0 or bits % 8:
            raise ConfigError("bits must be a positive multiple of 8")
        if not _NAME.fullmatch(collection):
            raise ConfigError(f"collection name {collection!r}: letters, digits and _, "
                              "not starting with a digit, at most 250 characters")
        if index_type not in INDEX_TYPES:
            raise ConfigError(f"index_type {index_type!r}: one of {', '.join(INDEX_TYPES)}")
        if not 1 <= page <= MAX_PAGE:
            raise ConfigError(f"page must be 1..{MAX_PAGE}")
        self._bits, self._uri, self._name = bits, uri, collection
        self._meta = f"{collection}_meta"
        self._index_type, self._nlist, self._nprobe = index_type, nlist, nprobe
        self._timeout, self._page = timeout, page
        self._lock = threading.RLock()
        self._lite_path = str(Path(uri).expanduser().resolve()) if is_lite(uri) else None
        self._client: MilvusClient | None = self._connect(token)
        try:
            with self._lock:
                self._open()
        except BaseException:
            self.close()
            raise

    # --- interface -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def collection(self) -> str:
        return self._name

    @property
    def index_type(self) -> str:
        return self._index_type

    @property
    def closed(self) -> bool:
        return self._client is None

    def __len__(self) -> int:
        with self._lock:
            rows = self._call("query", self._name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def add(self, ids: Ids, codes: Codes) -> None:
        """Insert or replace: each id ends up with its last code in ``codes``."""
        ids, codes = check_pair(ids, codes, self._bits)
        if len(ids) == 0:
            return
        _, last_from_end = np.unique(ids[::-1], return_index=True)
        rows = np.sort(len(ids) - 1 - last_from_end)  # the last occurrence of each id
        with self._lock:
            for start in range(0, len(rows), _WRITE_BATCH):
                chunk = rows[start:start + _WRITE_BATCH]
                data = [{"id": int(ids[r]), "code": codes[r].tobytes()} for r in chunk]
                self._call("upsert", self._name, data)

    def remove(self, ids: Ids) -> int:
        """Delete ``ids``; returns how many of them were present (absent ones are ignored)."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        removed = 0
        with self._lock:
            for start in range(0, len(wanted), _QUERY_BATCH):
                chunk = wanted[start:start + _QUERY_BATCH]
                rows = self._call("query", self._name, filter=f"id in {_id_list(chunk)}",
                                  output_fields=["id"], limit=len(chunk))
                present = [int(r["id"]) for r in rows]
                if present:
                    self._call("delete", self._name, ids=present)
                removed += len(present)
        return removed

    def search(self, queries: Codes, radius: int) -> list[SearchResult]:
        queries = check_codes(queries, self._bits)
        if radius < 0:
            raise ValueError("radius must be >= 0")
        high = min(radius, self._bits) + 1  # Milvus' radius is exclusive
        out: list[SearchResult] = []
        with self._lock:
            for start in range(0, len(queries), _SEARCH_BATCH):
                data = [q.tobytes() for q in queries[start:start + _SEARCH_BATCH]]
                for q, hits in zip(data, self._range(data, 0, high), strict=True):
                    ids, dist = hits
                    if len(ids) >= self._page:
                        ids, dist = self._page_on(q, high, ids, dist)
                    out.append(SearchResult.of(ids, dist))
        return out

    def export(self) -> tuple[Ids, Codes]:
        """Every (id, code), in id order, read in pages by a primary-key cursor."""
        ids: list[int] = []
        codes: list[bytes] = []
        with self._lock:
            for page in self._pages():
                ids.extend(int(r["id"]) for r in page)
                codes.extend(_code_bytes(r["code"]) for r in page)
            if len(ids) != len(self):
                raise IndexMismatch(f"{self._name}: export read {len(ids)} rows of {len(self)}")
        nbytes = self._bits // 8
        code_arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), nbytes)
        return np.asarray(ids, dtype=np.int64), code_arr.copy()

    # --- position and lifecycle ----------------------------------------------------------------
    def position(self) -> tuple[int, str]:
        """``(seq, fingerprint)`` of the last change-log entry applied; ``(0, "")`` if none."""
        with self._lock:
            rows = self._call("query", self._meta, filter=f"key == {_META_KEY}",
                              output_fields=["seq", "fingerprint"], limit=1)
        if not rows:
            return 0, ""
        return int(rows[0]["seq"]), str(rows[0]["fingerprint"])

    def set_position(self, seq: int, fingerprint: str = "") -> None:
        if seq < 0:
            raise ValueError("seq must be >= 0")
        if len(fingerprint.encode()) > _FINGERPRINT_MAX:
            raise ValueError(f"fingerprint longer than {_FINGERPRINT_MAX} bytes")
        row = {"key": _META_KEY, "seq": int(seq), "fingerprint": fingerprint, "pad": bytes(1)}
        with self._lock:
            self._call("upsert", self._meta, [row])

    def reset(self) -> None:
        """Drop the collection and its position and recreate both empty (before a rebuild)."""
        with self._lock:
            for name in (self._name, self._meta):
                if self._call("has_collection", name):
                    self._call("drop_collection", name)
            self._open()

    def close(self) -> None:
        """Release the client, and Milvus Lite's server once no index in this process uses the
        file. Idempotent; the index is unusable afterwards."""
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            client.close()
            if self._lite_path is not None:
                _release_lite(self._lite_path)

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """The keys the other indexes report (the data lives in Milvus: no base/delta split,
        tombstones or bytes in this process), plus the stored position."""
        live = len(self)
        return {"live": live, "base": live, "delta": 0, "tombstones": 0, "bytes": 0,
                "position": self.position()[0]}

    # --- Milvus ------------------------------------------------------------------------------
    def _connect(self, token: str) -> MilvusClient:
        path = self._lite_path
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with _lite_lock:
                _lite_users[path] = _lite_users.get(path, 0) + 1
        try:
            return MilvusClient(uri=path or self._uri, token=token, timeout=self._timeout)
        except MilvusException as e:
            if path is not None:
                _release_lite(path)
            hint = " (Milvus Lite serves a file to one process at a time)" if path else ""
            raise StorageUnavailable(f"cannot open Milvus at {self._uri}: {e.message}{hint}"
                                     ) from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise StorageUnavailable(f"MilvusIndex {self._name} is closed")
        return getattr(self._client, method)(*args, timeout=self._timeout, **kwargs)

    def _open(self) -> None:
        """Create the collections when missing, check them when present, load them."""
        if self._call("has_collection", self._name):
            self._check_existing()
        else:
            self._create(self._name, self._bits, self._index_type, "id")
        if not self._call("has_collection", self._meta):
            self._create(self._meta, 8, "BIN_FLAT", "key")
        for name in (self._name, self._meta):
            self._call("load_collection", name)

    def _create(self, name: str, dim: int, index_type: str, key: str) -> None:
        assert self._client is not None
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(key, DataType.INT64, is_primary=True)
        vector = "code" if key == "id" else "pad"  # Milvus servers want a vector in every schema
        if key != "id":
            schema.add_field("seq", DataType.INT64)
            schema.add_field("fingerprint", DataType.VARCHAR, max_length=_FINGERPRINT_MAX)
        schema.add_field(vector, DataType.BINARY_VECTOR, dim=dim)
        params = self._client.prepare_index_params()
        params.add_index(field_name=vector, index_type=index_type, metric_type="HAMMING",
                         params={"nlist": self._nlist} if index_type == "BIN_IVF_FLAT" else {})
        try:
            self._call("create_collection", name, schema=schema, index_params=params,
                       consistency_level="Strong")
        except MilvusException as e:
            # the collection is created before its index: do not leave it half made
            if self._call("has_collection", name):
                self._call("drop_collection", name)
            raise ConfigError(f"Milvus refused a {index_type} index on {name}: {e.message}"
                              ) from None

    def _check_existing(self) -> None:
        desc = self._call("describe_collection", self._name)
        dims = [int(f["params"].get("dim", 0)) for f in desc["fields"] if f["name"] == "code"]
        index = self._call("describe_index", self._name, "code") or {}
        found = (dims[0] if dims else None, index.get("index_type"), index.get("metric_type"))
        if found != (self._bits, self._index_type, "HAMMING"):
            raise IndexMismatch(
                f"collection {self._name} holds (dim, index, metric) {found}, not "
                f"({self._bits}, {self._index_type}, HAMMING); reset() it to rebuild")

    def _range(self, data: list[bytes], low: int, high: int, exclude: list[int] | None = None
               ) -> list[tuple[Ids, npt.NDArray[np.int32]]]:
        """Per query, the nearest ``page`` hits with ``low <= d < high``, ``exclude`` left out."""
        params: dict[str, int] = {"radius": high, "range_filter": low}
        if self._index_type == "BIN_IVF_FLAT":
            params["nprobe"] = self._nprobe
        res = self._call("search", self._name, data=data, anns_field="code", limit=self._page,
                         filter=f"id not in {_id_list(exclude)}" if exclude else "",
                         output_fields=[], search_params={"metric_type": "HAMMING",
                                                          "params": params})
        return [(np.asarray(h.ids, dtype=np.int64),
                 np.rint(np.asarray(h.distances, dtype=np.float64)).astype(np.int32))
                for h in res]

    def _page_on(self, query: bytes, high: int, ids: Ids, dist: npt.NDArray[np.int32]
                 ) -> tuple[Ids, npt.NDArray[np.int32]]:
        """The rest of a query's hits after a full page. A page holds the nearest hits, so
        every hit below its largest distance ``floor`` is in; those at ``floor`` may be only
        some, so the next page asks for ``floor <= d < high`` without the ids already found at
        ``floor``. Each page brings new hits until one comes back short."""
        found_ids, found_dist = [ids], [dist]
        floor = int(dist.max())
        at_floor = ids[dist == floor].tolist()
        while True:
            ((more_ids, more_dist),) = self._range([query], floor, high, at_floor)
            found_ids.append(more_ids)
            found_dist.append(more_dist)
            if len(more_ids) < self._page:
                break
            top = int(more_dist.max())
            if top > floor:
                floor, at_floor = top, more_ids[more_dist == top].tolist()
            else:
                at_floor.extend(more_ids.tolist())
        return np.concatenate(found_ids), np.concatenate(found_dist)

    def _pages(self) -> Iterator[list[dict[str, Any]]]:
        """All rows, ``_EXPORT_PAGE`` at a time: a query with a limit returns the rows of the
        smallest keys matching, so ``id > last`` walks the collection once."""
        cursor = f"id >= {_INT64_MIN}"
        while True:
            page = self._call("query", self._name, filter=cursor, output_fields=["id", "code"],
                              limit=_EXPORT_PAGE)
            if not page:
                return
            yield page
            if len(page) < _EXPORT_PAGE:
                return
            cursor = f"id > {max(int(r['id']) for r in page)}"


def _id_list(ids: npt.ArrayLike | list[int]) -> str:
    """An id list for a Milvus expression, from integers only (a malformed expression makes
    pymilvus retry until its timeout)."""
    return "[" + ",".join(str(int(i)) for i in np.asarray(ids, dtype=np.int64)) + "]"


def _code_bytes(value: Any) -> bytes:
    """A BINARY_VECTOR as a query returns it: bytes, or a list holding one bytes."""
    if isinstance(value, list):
        value = value[0]
    return bytes(value)


def _release_lite(path: str) -> None:
    with _lite_lock:
        left = _lite_users.get(path, 1) - 1
        if left > 0:
            _lite_users[path] = left
            return
        _lite_users.pop(path, None)
    # pymilvus starts the server through milvus_lite's manager and offers no way to stop it;
    # we stop it through the module pymilvus loaded (absent if no Lite client ever connected).
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_server(path)
