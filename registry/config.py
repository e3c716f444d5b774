"""Settings: one frozen object built from ``TAKEDOWN_*`` environment variables plus overrides.

Each setting is declared once, with its type, default and help text; the README's configuration
table and the CLI options are checked against this list by a test. Standard library only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.domain import LocalThresholds, SignalKind, Thresholds
from registry.errors import ConfigError

ENV_PREFIX = "TAKEDOWN_"


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Every knob of the registry. Build with :meth:`from_env`; never mutate."""

    data_dir: str = _setting("data", "Folder for the SQLite database and index snapshots.")
    database_url: str = _setting(
        "", "SQLAlchemy URL of the system of record; empty means SQLite at DATA_DIR/registry.db."
    )
    redis_url: str = _setting("", "Redis URL for shared rate limits; empty means in-memory.")
    secret_key: str = _setting(
        "", "Secret for CSRF tokens and for signing the audit chain's head; empty generates a "
        "CSRF secret per process and leaves heads unsigned.")
    max_image_pixels: int = _setting(
        50_000_000, "Largest decoded image (width x height) accepted; stops decompression bombs."
    )
    max_upload_bytes: int = _setting(
        20 * 1024 * 1024, "Largest image file accepted, in bytes."
    )
    max_video_bytes: int = _setting(
        200 * 1024 * 1024, "Largest video file hashed (bytes), by the CLI or the server.")
    max_video_pixels: int = _setting(
        4096 * 2304, "Largest video frame (width x height) accepted; 4K phone video fits.")
    max_video_seconds: int = _setting(
        900, "Longest video hashed (seconds), from its header and from its frames' timestamps.")
    jpeg_draft_size: int = _setting(
        512,
        "JPEGs are decoded by DCT scaling to at least this many pixels per side (0 = full "
        "decode); see docs/hashing.md for the bits it moves.",
    )
    pdq_min_quality: int = _setting(50, "PDQ hashes with a lower quality score are rejected.")
    # Derived in docs/accuracy.md (bench/accuracy.py): weak keeps false positives within 1e-6 per
    # unrelated pair on 47.5M pairs and on 2.6M people-vs-people pairs (0 observed); strong keeps
    # a margin below the nearest unrelated pair (PDQ 56, pHash 8) and, for PDQ, stays at the
    # customary 31, the radius the index searches exactly at 16-bit chunks (docs/performance.md).
    pdq_strong: int = _setting(31, "PDQ distance (inclusive) of the strong tier.")
    pdq_weak: int = _setting(55, "PDQ distance (inclusive) of the weak tier.")
    phash_strong: int = _setting(5, "pHash distance (inclusive) of the strong tier.")
    phash_weak: int = _setting(7, "pHash distance (inclusive) of the weak tier.")
    # Local features (docs/accuracy.md): a verified match needs this many keypoints consistent
    # with one similarity transform; the weak tier keeps false positives within 1e-6 per
    # unrelated pair overall and among people-vs-people pairs.
    local_strong: int = _setting(45, "Inliers (inclusive) of a strong local-feature match.")
    local_weak: int = _setting(38, "Inliers (inclusive) of a weak local-feature match.")
    local_strong_coverage: float = _setting(
        0.15, "Fraction of the registered picture a strong local match must span.")
    local_radius: int = _setting(
        56, "Hamming distance (inclusive) at which two ORB descriptors may correspond.")
    max_queries: int = _setting(1000, "Most queries in one match request.")
    pin_kdf_n: int = _setting(2**15, "scrypt cost parameter N for case PINs (power of two).")
    pin_max_failures: int = _setting(
        5, "Wrong PINs for one case from one client address before that address is locked "
        "out of that case (others are not).")
    pin_client_max_failures: int = _setting(
        20, "Wrong PINs from one client address over all cases before it is locked out of "
        "every case.")
    pin_case_max_failures: int = _setting(
        50, "Wrong PINs for one case from all addresses in a day after which each address "
        "gets a single try at it per lockout.")
    pin_lockout_s: int = _setting(
        900, "Seconds a lockout lasts; each further wrong PIN from that address doubles it, up "
        "to a day.")
    quarantine_after: int = _setting(
        3, "Matches of a hash reported 'not_violating' before it can be quarantined.")
    quarantine_platforms: int = _setting(
        2, "Different platforms that must report a hash 'not_violating' before it is "
        "quarantined.")
    quarantine_rate: float = _setting(
        0.5, "Share of a hash's decided matches (removed or not_violating) that must be "
        "'not_violating' before it is quarantined.")
    rate_limit: str = _setting(
        "1200 per minute", "Requests per API key (Flask-Limiter syntax, e.g. '20 per second').")
    auth_failure_limit: str = _setting(
        "30 per minute", "Failed API authentications per client address before 429.")
    submit_limit: str = _setting(
        "20 per hour", "Case submissions from the web page per client address.")
    case_limit: str = _setting(
        "60 per hour", "Case status checks and withdrawals on the web page per client address.")
    quick_exit_url: str = _setting(
        "https://www.naver.com/", "Where the pages' quick-exit button goes: a neutral site.")
    proxy_hops: int = _setting(
        0, "Reverse proxies in front that append the client address to X-Forwarded-For (1 for "
        "one nginx); per-address limits use that address. 0 trusts no forwarded header.")
    index: str = _setting(
        "multi", "Index kind: 'multi' (multi-index hashing: exact to the strong threshold, "
        "measured recall beyond it), 'flat' (exhaustive scans: exact everywhere, slower) or "
        "'milvus' (PDQ and pHash in a Milvus collection: beyond one machine's memory).")
    milvus_uri: str = _setting(
        "", "With TAKEDOWN_INDEX=milvus: the Milvus server (http://host:19530), or a file "
        "ending in .db for Milvus Lite (one process only). Empty: DATA_DIR/index/milvus.db.")
    milvus_token: str = _setting("", "With TAKEDOWN_INDEX=milvus: the server's credentials.")
    milvus_collection: str = _setting(
        "takedown", "With TAKEDOWN_INDEX=milvus: collection name prefix (one per kind, "
        "e.g. takedown_pdq).")
    milvus_index_type: str = _setting(
        "BIN_FLAT", "With TAKEDOWN_INDEX=milvus: 'BIN_FLAT' (exact) or 'BIN_IVF_FLAT' "
        "(approximate; a Milvus server only).")
    index_extra_probes: int = _setting(
        1, "PDQ chunks the multi-index probes one bit deeper than exactness needs: more recall "
        "in the weak tier for more work per query (docs/performance.md).")
    follow_poll_s: float = _setting(
        0.5, "Serving processes re-read the change log at least this often (seconds), besides "
        "waking on PostgreSQL notifications.")
    snapshot_every: int = _setting(
        10000, "A serving process writes an index snapshot after this many changes (0: never).")
    max_index_lag: int = _setting(
        100, "/readyz reports not ready when the index is more change-log entries behind.")
    max_sync_age_s: float = _setting(
        5.0, "/readyz reports not ready when the follower has not synced for this long.")
    compact_ratio: float = _setting(
        0.1, "Compact an index when tombstones or delta exceed this fraction of its size."
    )
    upstream_url: str = _setting(
        "", "Another registry whose hash feed 'serve' follows into TAKEDOWN_UPSTREAM_BANK (one "
        "process of all holds the job); empty: none. 'takedown follow' does the same alone.")
    upstream_key: str = _setting(
        "", "With TAKEDOWN_UPSTREAM_URL: an API key of that registry with the feed scope.")
    upstream_bank: str = _setting(
        "", "With TAKEDOWN_UPSTREAM_URL: the local bank its hashes go into.")
    upstream_interval_s: float = _setting(
        2.0, "With TAKEDOWN_UPSTREAM_URL: how often the feed is read once caught up (seconds).")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then ``TAKEDOWN_<NAME>`` variables, then explicit overrides (CLI options)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for kind in (SignalKind.PDQ, SignalKind.PHASH):
            t = self.thresholds(kind)
            if t.weak >= kind.bits // 2:
                raise ConfigError(
                    f"The {kind.value} weak threshold must be below {kind.bits // 2}.")
        if not 0 <= self.index_extra_probes <= 16:
            raise ConfigError("TAKEDOWN_INDEX_EXTRA_PROBES must be between 0 and 16.")
        if self.index not in ("multi", "flat", "milvus"):
            raise ConfigError("TAKEDOWN_INDEX must be 'multi', 'flat' or 'milvus'.")
        if self.milvus_index_type not in ("BIN_FLAT", "BIN_IVF_FLAT"):
            raise ConfigError("TAKEDOWN_MILVUS_INDEX_TYPE must be 'BIN_FLAT' or 'BIN_IVF_FLAT'.")
        if self.upstream_url and not (self.upstream_url.startswith(("http://", "https://"))
                                      and self.upstream_key and self.upstream_bank):
            raise ConfigError("TAKEDOWN_UPSTREAM_URL must be an http(s) URL and needs "
                              "TAKEDOWN_UPSTREAM_KEY and TAKEDOWN_UPSTREAM_BANK.")
        if self.upstream_interval_s <= 0:
            raise ConfigError("TAKEDOWN_UPSTREAM_INTERVAL_S must be positive.")
        if self.follow_poll_s <= 0 or self.max_sync_age_s <= 0:
            raise ConfigError(
                "TAKEDOWN_FOLLOW_POLL_S and TAKEDOWN_MAX_SYNC_AGE_S must be positive.")
        if self.snapshot_every < 0 or self.max_index_lag < 0:
            raise ConfigError(
                "TAKEDOWN_SNAPSHOT_EVERY and TAKEDOWN_MAX_INDEX_LAG must be 0 or more.")
        if self.index == "multi":
            # The multi-index is exact to the strong threshold by probing each 16-bit chunk to
            # at most 3 bits: 4 bits per chunk of the code, minus one.
            for kind in (SignalKind.PDQ, SignalKind.PHASH):
                limit = kind.bits // 4 - 1
                if self.thresholds(kind).strong + (
                        self.index_extra_probes if kind is SignalKind.PDQ else 0) > limit:
                    raise ConfigError(
                        f"With TAKEDOWN_INDEX=multi the {kind.value} strong threshold (plus the "
                        f"extra probes) can be at most {limit}; use TAKEDOWN_INDEX=flat for more.")
        if min(self.max_image_pixels, self.max_upload_bytes, self.max_queries,
               self.max_video_bytes, self.max_video_pixels, self.max_video_seconds) <= 0:
            raise ConfigError("Size limits must be positive.")
        if self.proxy_hops < 0:
            raise ConfigError("TAKEDOWN_PROXY_HOPS must be 0 or more.")
        if self.pin_kdf_n < 2 or self.pin_kdf_n & (self.pin_kdf_n - 1):
            raise ConfigError("TAKEDOWN_PIN_KDF_N must be a power of two.")
        if min(self.pin_max_failures, self.pin_client_max_failures, self.pin_case_max_failures,
               self.pin_lockout_s, self.quarantine_after, self.quarantine_platforms) < 1:
            raise ConfigError("PIN lockout and quarantine limits must be 1 or more.")
        if not 0 < self.quarantine_rate <= 1:
            raise ConfigError("TAKEDOWN_QUARANTINE_RATE must be above 0 and at most 1.")

    def local_thresholds(self) -> LocalThresholds:
        try:
            return LocalThresholds(self.local_strong, self.local_weak, self.local_strong_coverage)
        except ValueError as e:
            raise ConfigError(f"Thresholds of local: {e}.") from None

    def thresholds(self, kind: SignalKind) -> Thresholds:
        try:
            if kind is SignalKind.PDQ:
                return Thresholds(self.pdq_strong, self.pdq_weak)
            if kind is SignalKind.PHASH:
                return Thresholds(self.phash_strong, self.phash_weak)
        except ValueError as e:
            raise ConfigError(f"Thresholds of {kind.value}: {e}.") from None
        raise ValueError(f"{kind.value} is not a perceptual signal")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'registry.db'}"

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.data_dir) / "index"

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.snapshot_dir / "milvus.db")


def _convert(name: str, type_name: object, raw: str) -> Any:
    try:
        if type_name in ("int", int):
            return int(raw)
        if type_name in ("float", float):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()} must be a number; got {raw!r}."
        ) from None
    return raw


def default(name: str) -> Any:
    """The default of setting ``name``: for the few values (decode options) that also need one
    outside a Settings object, so that it is still written only here."""
    found = {f.name: f for f in dataclasses.fields(Settings)}[name]
    return found.default


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting, for docs and ``--help``."""
    return [
        (ENV_PREFIX + f.name.upper(), repr(f.default), f.metadata["help"])
        for f in dataclasses.fields(Settings)
    ]
