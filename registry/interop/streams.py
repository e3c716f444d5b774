"""Reading a list file a piece at a time: text lines for the line formats, JSON records for the
JSON ones, each with the line it starts on, in bounded memory however large the file.

:func:`lines` reads at most 1 MiB per line and decodes each line on its own, so a byte that is
not UTF-8 is reported on its own line. :func:`records` takes a file that is one JSON value
after another (JSON lines, pretty-printed objects, arrays, or page objects whose records sit in
one array member, the "envelope" named by the format) and yields the records one by one: a
page's array is walked element by element, never decoded whole, so a 100 MB page costs no more
memory than a 100 MB file of JSON lines (about two 1 MiB buffers plus one record).
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any, BinaryIO, cast

from registry.interop.records import ListFormatError

MAX_LINE = 1 << 20  # longest line / record read
CHUNK = 1 << 20
AHEAD = 1 << 16  # text kept ready after the read position before a record is decoded
_DECODER = json.JSONDecoder()
_SPACE = frozenset(" \t\r\n")


def lines(stream: BinaryIO) -> Iterator[str]:
    """The file's lines decoded (line endings kept; a leading byte order mark dropped)."""
    for number, raw in enumerate(iter(partial(stream.readline, MAX_LINE), b""), 1):
        if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
            raise ListFormatError(number, f"a line is longer than {MAX_LINE} bytes.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ListFormatError(number, f"this line is not UTF-8 text (byte {e.start + 1})."
                                  ) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


def records(stream: BinaryIO, envelope: str) -> Iterator[tuple[int, object]]:
    """(line, value) of every record: the top-level objects, the elements of top-level arrays,
    and the elements of a top-level object's ``envelope`` array (its other members dropped).
    Which it is, is decided by the first object: with the envelope member it is a page."""
    text = _Text(stream)
    paged = True
    while text.space():
        c = text.buf[text.pos]
        if c == "[":
            yield from text.array(text.line)
        elif c == "{" and paged:
            start = text.line
            record = yield from text.page(envelope, start)
            if record is not None:
                paged = False
                yield start, record
        elif c == "{":
            start = text.line
            yield start, text.value(start)
        else:
            raise ListFormatError(text.line, "expected a JSON object or array here.")


class _Text:
    """A window on the file's text: ``buf[pos:]`` is what is not read yet, ``line`` the line
    number at ``pos``."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.decoded_lines = 0

    def fill(self, want: int = AHEAD) -> None:
        """Read until ``want`` characters are ready after ``pos`` or the file ends."""
        while not self.eof and len(self.buf) - self.pos < want:
            chunk = self.stream.read(CHUNK)
            self.eof = not chunk
            try:
                more = self.decoder.decode(chunk, final=self.eof)
            except UnicodeDecodeError as e:
                line = self.decoded_lines + chunk[:e.start].count(b"\n") + 1
                raise ListFormatError(line, "this line is not UTF-8 text.") from None
            self.decoded_lines += more.count("\n")
            self.buf = self.buf[self.pos:] + more
            self.pos = 0

    def space(self) -> bool:
        """Skip whitespace; False at the end of the file."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in _SPACE:
                if buf[pos] == "\n":
                    self.line += 1
                pos += 1
            self.pos = pos
            if pos < n:
                return True
            if self.eof:
                return False
            self.fill()

    def inside(self, start: int) -> str:
        """Skip whitespace inside the record that began on line ``start``; its next char."""
        if not self.space():
            raise ListFormatError(start, "the file ends inside the record that starts on this "
                                  "line: it is truncated.")
        return self.buf[self.pos]

    def value(self, start: int) -> object:
        """Decode the JSON value at ``pos``."""
        while True:
            self.fill()
            buf, pos = self.buf, self.pos
            try:
                found, end = _DECODER.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if not self.eof and len(buf) - pos < MAX_LINE:
                    self.fill(len(buf) - pos + CHUNK)
                    continue
                raise self._broken(e, start) from None
            if end == len(buf) and not self.eof:  # a number might go on in the next chunk
                self.fill(len(buf) - pos + CHUNK)
                continue
            self.line += buf.count("\n", pos, end)
            self.pos = end
            return found

    def _broken(self, e: json.JSONDecodeError, start: int) -> ListFormatError:
        if not self.eof:
            return ListFormatError(start, f"a record longer than {MAX_LINE} characters, or "
                                   f"not JSON: {e.msg}.")
        if e.msg.startswith("Unterminated string") or e.pos >= len(self.buf.rstrip()):
            return ListFormatError(start, "the file ends inside the record that starts on "
                                   "this line: it is truncated.")
        line = self.line + self.buf.count("\n", self.pos, e.pos)
        return ListFormatError(line, f"not valid JSON: {e.msg}.")

    def expect(self, chars: str, start: int) -> str:
        c = self.inside(start)
        if c not in chars:
            wanted = " or ".join(repr(x) for x in chars)
            raise ListFormatError(self.line, f"not valid JSON: expected {wanted}, not {c!r}.")
        self.pos += 1
        return c

    def array(self, start: int) -> Iterator[tuple[int, object]]:
        """The elements of the array at ``pos``, each with its line."""
        self.pos += 1
        if self.inside(start) == "]":
            self.pos += 1
            return
        while True:
            self.inside(start)
            line = self.line
            yield line, self.value(line)
            if self.expect(",]", start) == "]":
                return

    def page(self, envelope: str, start: int
             ) -> Generator[tuple[int, object], None, dict[str, object] | None]:
        """Walk the object at ``pos`` member by member, yielding the ``envelope`` array's
        elements. Returns the object itself when it has no such member (it is a record)."""
        self.pos += 1
        members: dict[str, object] = {}
        paged = False
        if self.inside(start) == "}":
            self.pos += 1
            return members
        while True:
            self.inside(start)
            key = self.value(start)
            if not isinstance(key, str):
                raise ListFormatError(self.line, "not valid JSON: a member name must be a "
                                      "string.")
            self.expect(":", start)
            if key == envelope and self.inside(start) == "[":
                paged = True
                yield from self.array(start)
            else:
                self.inside(start)
                members[key] = self.value(start)
            if self.expect(",}", start) == "}":
                return None if paged else members


def first_char(stream: BinaryIO) -> tuple[str, BinaryIO]:
    """The file's first character that is not whitespace or a byte order mark ("" for none),
    and a stream that reads the file from its start again (``stream`` need not seek)."""
    head = b""
    while len(head) < MAX_LINE:
        more = stream.read(AHEAD)
        if not more:
            break
        head += more
        if head.removeprefix(b"\xef\xbb\xbf").strip():
            break
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1].decode("latin-1")
    return first, cast(BinaryIO, io.BufferedReader(_Rejoined(head, stream), CHUNK))


class _Rejoined(io.RawIOBase):
    """``head`` (already read from ``rest``) followed by the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(view))
        view[:len(data)] = data
        return len(data)
