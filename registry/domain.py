"""Value objects of the registry's vocabulary: signals, tiers, cases, banks, scopes and matches.

Everything here is immutable and pure (standard library only), so it can be shared by the hashing
core, the index, the store and both edges without dragging any of them along.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
import struct
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from registry.errors import (
    DegenerateHash,
    InvalidCaseNumber,
    InvalidHash,
    InvalidInput,
    InvalidScope,
    InvalidTransition,
    UnknownSignal,
)


class SignalKind(StrEnum):
    """A kind of signal: two perceptual hashes, two exact digests of the file bytes, and the
    local features (keypoints with descriptors: a variable-length value, matched by geometry)."""

    PDQ = "pdq"
    PHASH = "phash"
    MD5 = "md5"
    SHA256 = "sha256"
    LOCAL = "local"
    # The kept frame hashes of a video (registry.hashing.video): a query signal. Registered,
    # its frames are stored as PDQ signals labelled ``frame@<ms>``, so stills and PDQ-only
    # platforms match them too.
    VPDQ = "vpdq"

    @property
    def bits(self) -> int:
        """Width of a fixed-size value (for ``local``: of one descriptor)."""
        return _BITS[self]

    @property
    def perceptual(self) -> bool:
        """A fixed-width hash compared by Hamming distance (PDQ, pHash)."""
        return self is SignalKind.PDQ or self is SignalKind.PHASH

    @property
    def is_local(self) -> bool:
        return self is SignalKind.LOCAL

    @property
    def packed(self) -> bool:
        """A variable-length value written as base64 (local keypoints, video frames)."""
        return self is SignalKind.LOCAL or self is SignalKind.VPDQ

    @classmethod
    def parse(cls, name: str) -> SignalKind:
        kind = _BY_NAME.get(name) if isinstance(name, str) else None
        if kind is None:
            known = ", ".join(k.value for k in cls)
            raise UnknownSignal(f"Unknown signal {name!r}; known signals are {known}.")
        return kind


_BITS = {SignalKind.PDQ: 256, SignalKind.PHASH: 64, SignalKind.MD5: 128, SignalKind.SHA256: 256,
         SignalKind.LOCAL: 256, SignalKind.VPDQ: 256}
# A dict lookup: parsing runs for every signal of every query (1000 queries x 4 per request).
_BY_NAME = {k.value: k for k in SignalKind}
_HEX = re.compile(r"[0-9a-f]+")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# The layout of a local signal (registry.hashing.local defines it): a header, then per keypoint
# 4 bytes of position/orientation and a 32-byte descriptor.
LOCAL_HEADER = struct.Struct("<BHHH")
LOCAL_KEYPOINT_BYTES = 36
LOCAL_MIN_KEYPOINTS = 16
# A match query's signal names and the kind each is parsed as (the API and `takedown match
# --url` both read this).
QUERY_SIGNALS = {"pdq": "pdq", "pdq_content": "pdq", "pdq_frame": "pdq", "phash": "phash",
                 "md5": "md5", "sha256": "sha256", "local": "local", "vpdq": "vpdq",
                 "vpdq_content": "vpdq", "vpdq_frame": "vpdq"}
LOCAL_REGISTER_KEYPOINTS = 112  # a registered image stores at most this many (<= 4,039 bytes)
LOCAL_MAX_KEYPOINTS = 4096
LOCAL_MAX_TEXT = 4 * ((LOCAL_HEADER.size + LOCAL_MAX_KEYPOINTS * LOCAL_KEYPOINT_BYTES + 2) // 3)
# The layout of a vpdq signal (registry.hashing.video defines it): version, dedup distance,
# frame count, duration in ms; then per frame its time in ms, PDQ quality and 32-byte PDQ.
VPDQ_HEADER = struct.Struct(">BBHI")
VPDQ_FRAME = struct.Struct(">IB32s")
VPDQ_MAX_FRAMES = 1024  # 54 a minute for the longest video (TAKEDOWN_MAX_VIDEO_SECONDS 900)
VPDQ_MAX_TEXT = 4 * ((VPDQ_HEADER.size + VPDQ_MAX_FRAMES * VPDQ_FRAME.size + 2) // 3)
FRAME_LABEL = "frame@"  # a registered video frame's view label: frame@<ms>


def frame_label(ms: int) -> str:
    return f"{FRAME_LABEL}{ms}"


def frame_ms(label: str) -> int | None:
    """The time of a registered video frame from its label; None for any other view."""
    if label.startswith(FRAME_LABEL) and label[len(FRAME_LABEL):].isdigit():
        return int(label[len(FRAME_LABEL):])
    return None

# Digests of the empty file: a list entry with these matches every broken upload.
_EMPTY_DIGESTS = {
    "d41d8cd98f00b204e9800998ecf8427e",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
}


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal value. For perceptual kinds ``a - b`` is the Hamming distance in bits."""

    kind: SignalKind
    value: bytes

    @classmethod
    def parse(cls, kind: SignalKind | str, text: object) -> Signal:
        """Strictly parse lowercase hex of the kind's exact length; reject degenerate values."""
        kind = SignalKind.parse(kind) if isinstance(kind, str) else kind
        if kind.packed:
            return cls._parse_packed(kind, text)
        if not isinstance(text, str):
            raise InvalidHash(f"The {kind.value} signal must be a string of hex digits.")
        digits = kind.bits // 4
        if len(text) != digits:
            raise InvalidHash(
                f"A {kind.value} signal has {digits} hex digits; this one has {len(text)}."
            )
        if not _HEX.fullmatch(text):
            raise InvalidHash(
                f"A {kind.value} signal must be lowercase hex digits (0-9, a-f) only."
            )
        signal = cls(kind, bytes.fromhex(text))
        signal.check_not_degenerate()
        return signal

    @classmethod
    def _parse_packed(cls, kind: SignalKind, text: object) -> Signal:
        name = kind.value
        if not isinstance(text, str) or not text:
            raise InvalidHash(f"The {name} signal must be a base64 string.")
        most, what = ((LOCAL_MAX_TEXT, f"{LOCAL_MAX_KEYPOINTS} keypoints") if kind.is_local
                      else (VPDQ_MAX_TEXT, f"{VPDQ_MAX_FRAMES} frames"))
        if len(text) > most:
            raise InvalidHash(f"A {name} signal is at most {most} base64 characters "
                              f"({what}); this one has {len(text)}.")
        if not _B64.fullmatch(text):
            raise InvalidHash(f"A {name} signal must be standard base64 (A-Z, a-z, 0-9, +, /).")
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidHash(f"A {name} signal must be valid base64 with its padding.") from None
        signal = cls(kind, blob)
        signal.check_not_degenerate()
        return signal

    @property
    def hex(self) -> str:
        return self.value.hex()

    @property
    def text(self) -> str:
        """The value as the API and the CLI write it: hex, or base64 for ``local``/``vpdq``."""
        if self.kind.packed:
            return base64.b64encode(self.value).decode("ascii")
        return self.value.hex()

    @property
    def keypoints(self) -> int:
        """How many keypoints a local signal holds (0 for other kinds)."""
        if self.kind is not SignalKind.LOCAL or len(self.value) < LOCAL_HEADER.size:
            return 0
        return int(LOCAL_HEADER.unpack_from(self.value)[1])

    @property
    def popcount(self) -> int:
        return int.from_bytes(self.value, "big").bit_count()

    def check_not_degenerate(self) -> None:
        """Perceptual hashes are median-thresholded, so about half their bits are set; a hash
        with at most 1/8 or at least 7/8 of its bits set comes from a blank or broken image and
        would match other blank images. Digests of the empty file are rejected too. A local
        signal must be well formed and hold enough keypoints to be verified geometrically."""
        if self.kind is SignalKind.LOCAL:
            self._check_local()
        elif self.kind is SignalKind.VPDQ:
            self.frames()
        elif self.kind.perceptual:
            bits = self.kind.bits
            ones = self.popcount
            if ones <= bits // 8 or ones >= bits - bits // 8:
                raise DegenerateHash(
                    f"This {self.kind.value} hash has {ones} of {bits} bits set; it comes from a "
                    "blank or near-uniform image and would match unrelated images."
                )
        elif self.hex in _EMPTY_DIGESTS:
            raise DegenerateHash(f"This {self.kind.value} digest is that of an empty file.")
        elif len(set(self.value)) == 1 and self.value[0] in (0, 255):
            raise DegenerateHash(f"This {self.kind.value} digest is all zeros or all ones.")

    def _check_local(self) -> None:
        if len(self.value) < LOCAL_HEADER.size:
            raise InvalidHash("A local signal is too short to hold its header.")
        version, n, width, height = LOCAL_HEADER.unpack_from(self.value)
        if version != 1:
            raise InvalidHash(f"A local signal of format {version} is not understood (format 1).")
        want = LOCAL_HEADER.size + n * LOCAL_KEYPOINT_BYTES
        if len(self.value) != want:
            raise InvalidHash(f"A local signal with {n} keypoints is {want} bytes; this one is "
                              f"{len(self.value)}.")
        if n > LOCAL_MAX_KEYPOINTS or width < 2 or height < 2:
            raise InvalidHash(f"A local signal holds at most {LOCAL_MAX_KEYPOINTS} keypoints of "
                              "an image at least 2x2; this one does not.")
        if n < LOCAL_MIN_KEYPOINTS:
            raise DegenerateHash(f"This local signal has {n} keypoints; at least "
                                 f"{LOCAL_MIN_KEYPOINTS} are needed to verify a match.")

    def frames(self) -> list[tuple[int, int, Signal]]:
        """A vpdq signal's frames: (time in ms, PDQ quality, PDQ signal), in time order; raises
        :class:`InvalidHash` when the value is not well formed."""
        if self.kind is not SignalKind.VPDQ:
            return []
        if len(self.value) < VPDQ_HEADER.size:
            raise InvalidHash("A vpdq signal is too short to hold its header.")
        version, _, n, _ = VPDQ_HEADER.unpack_from(self.value)
        if version != 1:
            raise InvalidHash(f"A vpdq signal of format {version} is not understood (format 1).")
        want = VPDQ_HEADER.size + n * VPDQ_FRAME.size
        if len(self.value) != want or not 0 < n <= VPDQ_MAX_FRAMES:
            raise InvalidHash(f"A vpdq signal holds 1 to {VPDQ_MAX_FRAMES} frames of "
                              f"{VPDQ_FRAME.size} bytes after its header; this one does not.")
        out = [(ms, quality, Signal(SignalKind.PDQ, pdq)) for ms, quality, pdq in
               VPDQ_FRAME.iter_unpack(self.value[VPDQ_HEADER.size:])]
        if any(b[0] < a[0] for a, b in itertools.pairwise(out)):
            raise InvalidHash("A vpdq signal's frames must be in time order.")
        if any(quality > 100 for _, quality, _ in out):
            raise InvalidHash("A vpdq frame's PDQ quality is at most 100.")
        return out

    def __sub__(self, other: Signal) -> int:
        if other.kind is not self.kind:
            raise TypeError(f"cannot compare {self.kind.value} with {other.kind.value}")
        if self.kind.packed:
            raise TypeError(f"{self.kind.value} signals are compared frame by frame or by "
                            "geometric verification, not bits")
        a = int.from_bytes(self.value, "big")
        b = int.from_bytes(other.value, "big")
        return (a ^ b).bit_count()


class Tier(StrEnum):
    """How strong a match is: equal digests, or perceptual distance under a tier threshold."""

    EXACT = "exact"
    STRONG = "strong"
    WEAK = "weak"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Inclusive Hamming thresholds of one perceptual signal: distance <= strong is strong."""

    strong: int
    weak: int

    def __post_init__(self) -> None:
        if not 0 <= self.strong <= self.weak:
            raise ValueError("thresholds need 0 <= strong <= weak")

    def tier(self, distance: int) -> Tier | None:
        if distance <= self.strong:
            return Tier.STRONG
        if distance <= self.weak:
            return Tier.WEAK
        return None


class CaseStatus(StrEnum):
    ACTIVE = "active"
    WITHDRAWN = "withdrawn"

    def withdraw(self) -> CaseStatus:
        if self is not CaseStatus.ACTIVE:
            raise InvalidTransition("This case has already been withdrawn.")
        return CaseStatus.WITHDRAWN


class SignalStatus(StrEnum):
    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    QUARANTINED = "quarantined"
    # A withdrawn case's hashes erased for good (``takedown case purge``): the row stays, with
    # no value, so the matches, feedback and change log that point at it stay whole.
    PURGED = "purged"


class BankKind(StrEnum):
    SUBMISSIONS = "submissions"
    IMPORTED = "imported"
    CANARY = "canary"
    BENIGN = "benign"


SUBMISSIONS_BANK = "submissions"
BANK_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Bank:
    """A bank and its policy: whether it matches, and thresholds tighter than the registry's
    for some perceptual signals (a list known to hold near-duplicates of common pictures, say).
    ``source`` and ``cursor``: the registry a followed bank mirrors and how far it has read."""

    name: str
    kind: BankKind
    description: str = ""
    enabled: bool = True
    thresholds: dict[SignalKind, Thresholds] = field(default_factory=dict)
    source: str = ""
    cursor: str = ""

    def tier(self, kind: SignalKind, distance: int, default: Thresholds) -> Tier | None:
        """The tier of a perceptual hit on this bank (None: past this bank's thresholds)."""
        return self.thresholds.get(kind, default).tier(distance)

    def thresholds_json(self) -> dict[str, list[int]]:
        return {k.value: [t.strong, t.weak] for k, t in sorted(self.thresholds.items())}

    @staticmethod
    def check_name(name: str) -> str:
        if not BANK_NAME.fullmatch(name):
            raise InvalidInput(
                f"{name!r} is not a bank name: 1 to 64 lowercase letters, digits, '_', '.' or "
                "'-', starting with a letter or digit.")
        return name


class Scope(StrEnum):
    MATCH = "match"
    FEED = "feed"

    @classmethod
    def parse(cls, name: str) -> Scope:
        try:
            return cls(name)
        except ValueError:
            raise InvalidScope(
                f"Unknown scope {name!r}; scopes are {', '.join(s.value for s in cls)}."
            ) from None


class ChangeAction(StrEnum):
    ADD = "add"
    WITHDRAW = "withdraw"


# --- case numbers -----------------------------------------------------------------------------
# Crockford base32: no I, L, O, U, so a number read aloud or retyped survives; the check symbol
# (value mod 37, Crockford's extra symbols) catches any single wrong or swapped character.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CHECK = _CROCKFORD + "*~$=U"
_DECODE = {c: i for i, c in enumerate(_CHECK)} | {"I": 1, "L": 1, "O": 0}
CASE_NUMBER_BITS = 60


@dataclass(frozen=True, slots=True)
class CaseNumber:
    """A random 60-bit case number shown as ``7K3M-Q9ZT-W2AB-C``: 12 Crockford base32 characters
    and a check symbol."""

    value: int

    @classmethod
    def generate(cls) -> CaseNumber:
        return cls(secrets.randbits(CASE_NUMBER_BITS))

    @classmethod
    def parse(cls, text: str) -> CaseNumber:
        cleaned = re.sub(r"[\s-]", "", text.upper())
        if len(cleaned) != 13 or any(c not in _DECODE for c in cleaned):
            raise InvalidCaseNumber(
                "A case number has 12 letters or digits and a check character, "
                "like 7K3M-Q9ZT-W2AB-C."
            )
        value = 0
        for c in cleaned[:12]:
            digit = _DECODE[c]
            if digit >= 32:
                raise InvalidCaseNumber("This case number contains a character it cannot have.")
            value = value * 32 + digit
        if _DECODE[cleaned[12]] != value % 37:
            raise InvalidCaseNumber("This case number is mistyped: its check character differs.")
        return cls(value)

    def __str__(self) -> str:
        chars = []
        v = self.value
        for _ in range(12):
            chars.append(_CROCKFORD[v % 32])
            v //= 32
        body = "".join(reversed(chars))
        return f"{body[0:4]}-{body[4:8]}-{body[8:12]}-{_CHECK[self.value % 37]}"


def generate_pin() -> str:
    """A 12-digit PIN (about 40 bits) grouped ``1234-5678-9012``; stored only as a slow KDF hash,
    and guessing online is stopped by the lockout."""
    digits = "".join(secrets.choice("0123456789") for _ in range(12))
    return f"{digits[0:4]}-{digits[4:8]}-{digits[8:12]}"


def normalise_pin(text: str) -> str:
    """Digits only, so ``1234 5678 9012`` and ``123456789012`` are the same PIN."""
    return "".join(str(unicodedata.decimal(c)) for c in text if c.isdecimal())


# --- matching ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Query:
    """One lookup: a client reference and any subset of signals."""

    id: str
    signals: tuple[Signal, ...]


@dataclass(frozen=True, slots=True)
class Match:
    """One registered signal within a threshold of a query signal."""

    match_id: str
    signal: SignalKind
    distance: int
    tier: Tier
    bank: str
    confidence: float
    signal_id: int
    case: str | None = None
    # Local matches only: keypoints consistent with one transform, and the fraction of the
    # registered picture they span (``distance`` is then their median descriptor distance).
    inliers: int | None = None
    coverage: float | None = None
    # vpdq matches only: query frames matched (in time order, for a registered video), and
    # their fraction of the query's usable frames (``distance``: the closest frame's).
    frames: int | None = None

    def to_json(self, *, with_case: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "match_id": self.match_id,
            "signal": self.signal.value,
            "distance": self.distance,
            "tier": self.tier.value,
            "bank": self.bank,
            "confidence": self.confidence,
        }
        if self.inliers is not None:
            out["inliers"] = self.inliers
            out["coverage"] = self.coverage
        if self.frames is not None:
            out["frames"] = self.frames
            out["coverage"] = self.coverage
        if with_case:
            out["case"] = self.case
        return out


@dataclass(frozen=True, slots=True)
class QueryResult:
    id: str
    matches: tuple[Match, ...] = field(default_factory=tuple)

    @property
    def matched(self) -> bool:
        return bool(self.matches)


def confidence(tier: Tier, distance: int, thresholds: Thresholds | None,
               not_violating: int = 0) -> float:
    """A score in [0, 1] for routing to review: 1.0 for exact digests, decreasing with distance
    inside the perceptual tiers (strong matches never fall below 0.75); each platform that
    reported this hash ``not_violating`` since its last review halves it."""
    if tier is Tier.EXACT or thresholds is None:
        base = 1.0
    elif tier is Tier.STRONG:
        base = 1.0 - 0.25 * distance / max(thresholds.strong + 1, 1)
    else:
        span = max(thresholds.weak - thresholds.strong, 1)
        base = 0.7 - 0.4 * (distance - thresholds.strong - 1) / span
    return round(base * 0.5 ** max(0, not_violating), 4)


@dataclass(frozen=True, slots=True)
class LocalThresholds:
    """Inliers (inclusive) a verified local match needs for each tier; a strong match must
    also span ``strong_coverage`` of the registered picture."""

    strong: int
    weak: int
    strong_coverage: float

    def __post_init__(self) -> None:
        if not 0 < self.weak <= self.strong:
            raise ValueError("local thresholds need 0 < weak <= strong")

    def tier(self, inliers: int, coverage: float) -> Tier | None:
        if inliers >= self.strong and coverage >= self.strong_coverage:
            return Tier.STRONG
        if inliers >= self.weak:
            return Tier.WEAK
        return None


def local_confidence(tier: Tier, inliers: int, thresholds: LocalThresholds,
                     not_violating: int = 0) -> float:
    """Like :func:`confidence` for local matches: rising with the inliers inside each tier."""
    if tier is Tier.STRONG:
        base = min(1.0, 0.75 + 0.25 * (inliers - thresholds.strong) / max(thresholds.strong, 1))
    else:
        span = max(thresholds.strong - thresholds.weak, 1)
        base = 0.3 + 0.4 * min(1.0, (inliers - thresholds.weak) / span)
    return round(base * 0.5 ** max(0, not_violating), 4)


class Outcome(StrEnum):
    """What a platform reports after reviewing a match."""

    REMOVED = "removed"
    NOT_VIOLATING = "not_violating"
    UNDER_REVIEW = "under_review"


# --- records the store returns ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Case:
    id: int
    number: str
    status: CaseStatus
    pin_hash: str
    created_at: datetime
    withdrawn_at: datetime | None


@dataclass(frozen=True, slots=True)
class RegisteredSignal:
    id: int
    signal: Signal
    bank: str
    status: SignalStatus
    case_number: str | None
    label: str = ""
    removed: int = 0
    not_violating: int = 0
    image_key: str = ""
    bank_kind: BankKind = BankKind.SUBMISSIONS


@dataclass(frozen=True, slots=True)
class Platform:
    id: int
    name: str
    key_prefix: str
    scopes: frozenset[Scope]
    active: bool
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "platform": self.name,
            "key_prefix": self.key_prefix,
            "scopes": sorted(s.value for s in self.scopes),
            "status": "active" if self.active else "revoked",
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log entry: a signal added or withdrawn, at position ``seq``."""

    seq: int
    action: ChangeAction
    signal_id: int
    signal: Signal


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One entry of the hash feed: a registered signal became active or was withdrawn."""

    seq: int
    status: str
    signal_id: int
    signal: Signal
    bank: str
    label: str
    pipeline_version: int
    at: datetime

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "status": self.status, "id": str(self.signal_id),
                "signal": self.signal.kind.value, "value": self.signal.text, "bank": self.bank,
                "view": self.label, "pipeline_version": self.pipeline_version,
                "at": self.at.isoformat()}
