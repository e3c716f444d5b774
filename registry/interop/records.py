"""The values every list format reads and writes: :class:`Entry` and :class:`Problem` come out of
a reader, :class:`ExportRecord` goes into a writer, :class:`ListFormatError` stops a file.

Also the checks the four formats share, so that a value is judged the same whichever file it
came in: a signal through ``Signal.parse`` exactly like API input, a source id or group of at
most 64 characters, a PDQ quality of 0 to 100, and the one sentence for a kind we do not hold.
Standard library, ``registry.domain`` and ``registry.errors`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from registry.domain import Signal, SignalKind
from registry.errors import InvalidInput

# What an imported list can carry (local features never travel in lists).
KINDS: frozenset[SignalKind] = frozenset(
    {SignalKind.PDQ, SignalKind.PHASH, SignalKind.MD5, SignalKind.SHA256})
MAX_TEXT = 64  # longest source id or group kept
HOLDS = "this registry holds pdq, phash, md5 and sha256"


class ListFormatError(InvalidInput):
    """The file as a whole cannot be read as the named format (header, encoding, JSON syntax,
    truncation, unknown format). Rows already yielded are to be rolled back by the caller."""

    code = "invalid_list"

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Entry:
    """One hash of the source list."""

    line: int  # 1-based; JSON formats: the line its record starts on
    signal: Signal
    withdrawn: bool  # the source marks it deleted / withdrawn / disabled
    quality: int | None  # PDQ quality 0-100 when the source gives one
    ref: str  # the source's own id of this hash record ("" if none), <= 64 chars
    group: str  # what groups hashes in the source (case number, content id), <= 64 chars


@dataclass(frozen=True, slots=True)
class Problem:
    """A row that cannot be imported. ``skipped``: not an error but a record of a kind this
    registry does not hold (video TMK, URL, text...): reported and counted, not fatal."""

    line: int
    reason: str
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One hash as this registry exports it."""

    signal: Signal
    withdrawn: bool
    quality: int | None
    ref: str  # our id of the hash (the signal id as text)
    group: str  # our grouping key ("" if none)
    seq: int  # change-log position of its latest change
    at: datetime  # time of its latest change (aware UTC)
    bank: str


def entry(line: int, kind: SignalKind, text: object, withdrawn: bool = False,
          quality: int | None = None, ref: str = "", group: str = "") -> Entry | Problem:
    """The entry, or the problem with it (a bad value, an over-long id or group)."""
    try:
        signal = Signal.parse(kind, text)
    except InvalidInput as e:
        return Problem(line, e.message)
    if len(ref) > MAX_TEXT:
        return Problem(line, f"The record's id has {len(ref)} characters; at most {MAX_TEXT} "
                             "are kept.")
    if len(group) > MAX_TEXT:
        return Problem(line, f"The record's group has {len(group)} characters; at most "
                             f"{MAX_TEXT} are kept.")
    return Entry(line, signal, withdrawn, quality, ref, group)


def not_held(line: int, what: str) -> Problem:
    """A record of a kind we do not hold: ``what`` is e.g. ``"a video TMK hash"``."""
    return Problem(line, f"{what}: {HOLDS}", skipped=True)


def quality_of(line: int, text: str) -> int | Problem | None:
    """A PDQ quality written as decimal text ("" for none)."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        return Problem(line, f"The quality {text[:20]!r} is not a whole number from 0 to 100.")
    return int(text)


def timestamp(at: datetime) -> int:
    """Unix seconds of an aware time (the JSON formats' clocks)."""
    return int(at.timestamp())


def iso(at: datetime) -> str:
    """An aware time as ISO 8601 in UTC with a ``Z``."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def checked_text(line: int, what: str, value: object) -> str | Problem:
    """An optional string member of a JSON record (absent or null: "")."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Problem(line, f"The record's {what} must be a string.")
    return str(value)
