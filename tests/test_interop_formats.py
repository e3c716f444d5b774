"""registry.interop: every sample file under tests/data/interop read to the exact entries and
problems with their lines, the broken ones to the expected problem or ListFormatError, each
format written and read back, and a 100 MB list read in bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from registry.domain import Signal, SignalKind
from registry.interop import (
    FORMATS,
    KINDS,
    Entry,
    ExportRecord,
    ListFormatError,
    Problem,
    carried_fields,
    carries,
    read,
    write,
)

DATA = Path(__file__).parent / "data" / "interop"
HOLDS = ": this registry holds pdq, phash, md5 and sha256"


def h(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


P1, P2, P3 = h("pdq-1"), h("pdq-2"), h("pdq-3")
PH = h("phash-1")[:16]
M1, M2 = hashlib.md5(b"video-1").hexdigest(), hashlib.md5(b"video-2").hexdigest()
S1 = hashlib.sha256(b"file-1").hexdigest()
C1, C2 = "27664732-76e1-4a17-8099-455798e67022", "bd2bff7c-8160-4615-8dce-38c2f066d1ac"
KIND_OF = {"pdq": SignalKind.PDQ, "phash": SignalKind.PHASH, "md5": SignalKind.MD5,
           "sha256": SignalKind.SHA256}


def E(line: int, kind: str, value: str, withdrawn: bool = False, quality: int | None = None,
      ref: str = "", group: str = "") -> Entry:
    return Entry(line, Signal.parse(kind, value), withdrawn, quality, ref, group)


def skipped(line: int, what: str) -> Problem:
    return Problem(line, what + HOLDS, skipped=True)


def read_file(fmt: str, name: str) -> list[Entry | Problem]:
    with open(DATA / name, "rb") as f:
        return list(read(fmt, f))


def read_until_error(fmt: str, name: str) -> tuple[list[Entry | Problem], ListFormatError]:
    got: list[Entry | Problem] = []
    with open(DATA / name, "rb") as f, pytest.raises(ListFormatError) as err:
        for item in read(fmt, f):
            got.append(item)
    return got, err.value


LEN63 = "A pdq signal has 64 hex digits; this one has 63."
UPPER = "A {} signal must be lowercase hex digits (0-9, a-f) only."
TRUNCATED = "the file ends inside the record that starts on this line: it is truncated."

GOOD = {
    ("csv", "good.csv"): [
        E(2, "pdq", P1, quality=92, ref="101", group="case-7"),
        E(3, "pdq", P2, withdrawn=True, ref="102", group="case-7"),
        E(5, "phash", PH, ref="103", group="case-8"),
        E(6, "md5", M1, ref="104", group="case, with comma"),
        E(7, "sha256", S1)],
    ("csv", "minimal.csv"): [E(2, "pdq", P3), E(3, "md5", M2)],
    ("csv", "pdq-photo-hasher.csv"): [E(1, "pdq", P1, quality=100),
                                      E(2, "pdq", P2, quality=49)],
    ("stopncii", "good.stopncii.json"): [
        E(7, "pdq", P1, group=C1), E(8, "pdq", P2, withdrawn=True, group=C1),
        E(9, "md5", M1, group=C2), skipped(10, "a video TMK hash"),
        E(11, "pdq", P3, withdrawn=True)],
    ("stopncii", "records.stopncii.jsonl"): [
        E(1, "pdq", P1, group=C1), E(2, "pdq", P2, withdrawn=True, group=C1),
        E(3, "md5", M1, group=C2)],
    ("hma", "good.hma.jsonl"): [
        E(1, "pdq", P1, ref="1", group="item-1"), E(1, "md5", M1, ref="1", group="item-1"),
        E(2, "pdq", P2, withdrawn=True, ref="2", group="item-2"),
        E(3, "sha256", S1, ref="3"), skipped(3, "a video vPDQ hash"),
        skipped(4, "a video TMK hash")],
    ("threatexchange", "good.threatexchange.jsonl"): [
        E(1, "pdq", P1, ref="3058061737574159"),
        E(2, "pdq", P2, withdrawn=True, ref="3058061737574160"),
        E(3, "md5", M1, ref="3058061737574161"),  # written uppercase there
        E(4, "sha256", S1, ref="3058061737574162"), skipped(5, "a video TMK hash"),
        E(6, "pdq", P3, withdrawn=True, ref="3058061737574164")],  # no descriptors left
    ("threatexchange", "page.threatexchange.json"): [
        E(3, "pdq", P1, ref="3058061737574159"),
        E(26, "pdq", P2, withdrawn=True, ref="3058061737574160")],
    ("threatexchange", "signals.threatexchange.txt"): [
        E(1, "pdq", P1), E(2, "md5", M1), E(4, "sha256", S1), skipped(5, "a URL"),
        skipped(6, "a text")],
}

BROKEN = {
    ("csv", "bad-hex.csv"): [
        Problem(2, LEN63), Problem(3, UPPER.format("pdq")),
        Problem(4, "This pdq hash has 0 of 256 bits set; it comes from a blank or "
                   "near-uniform image and would match unrelated images."),
        Problem(5, "This md5 digest is that of an empty file."),
        Problem(6, "The quality '101' is not a whole number from 0 to 100."),
        E(7, "pdq", P2, quality=80)],
    ("csv", "unknown-signal.csv"): [
        Problem(2, "Unknown signal 'tmk'; a list's signals are pdq, phash, md5 and sha256."),
        E(3, "pdq", P2)],
    ("csv", "truncated.csv"): [E(2, "pdq", P1),
                               Problem(3, "This row has 2 fields; the header has 3.")],
    ("csv", "duplicates.csv"): [E(2, "pdq", P1, ref="1"), E(3, "pdq", P1, ref="1")],
    ("stopncii", "bad-hex.stopncii.jsonl"): [
        Problem(1, LEN63), Problem(2, UPPER.format("pdq")),
        Problem(3, "The hashStatus 'Expired' is none of Received, Active, Withdrawn, Deleted, "
                   "Unknown."),
        Problem(4, "Not a StopNCII hash record (an object with signalType, hashValue, "
                   "hashStatus).")],
    ("stopncii", "duplicates.stopncii.jsonl"): [E(1, "pdq", P1, group=C1),
                                                E(2, "pdq", P1, group=C1)],
    ("stopncii", "unknown-type.stopncii.jsonl"): [
        skipped(1, "an unknown StopNCII signal type 'ImagePhotoDNA'"), skipped(2, "a URL"),
        E(3, "pdq", P2)],
    ("hma", "bad-hex.hma.jsonl"): [
        Problem(1, LEN63), Problem(2, UPPER.format("md5")),
        Problem(3, "Not an HMA bank content object (an object with id and signals).")],
    ("hma", "duplicates.hma.jsonl"): [E(1, "pdq", P1, ref="1"), E(2, "pdq", P1, ref="1")],
    ("hma", "unknown-type.hma.jsonl"): [skipped(1, "an unknown HMA signal type 'photodna'"),
                                        E(1, "pdq", P3, ref="8")],
    ("threatexchange", "bad-hex.threatexchange.jsonl"): [
        Problem(1, UPPER.format("pdq")),
        Problem(2, "A md5 signal has 32 hex digits; this one has 31.")],
    ("threatexchange", "duplicates.threatexchange.txt"): [E(1, "pdq", P1), E(2, "pdq", P1)],
    ("threatexchange", "unknown-type.threatexchange.txt"): [
        skipped(1, "an unknown threatexchange signal type 'photo_dna'"),
        skipped(2, "an unknown threatexchange signal type 'tmk'"), E(3, "pdq", P3)],
}

FATAL = {  # (format, file): (entries yielded first, line named, message)
    ("csv", "wrong-columns.csv"): (0, 1, "unknown column 'hash'"),
    ("csv", "missing-column.csv"): (0, 1, "the header has no 'value' column"),
    ("stopncii", "truncated.stopncii.json"): (2, 9, TRUNCATED),
    ("stopncii", "not-json.stopncii.json"): (0, 2, "not valid JSON: Expecting value."),
    ("hma", "truncated.hma.jsonl"): (2, 2, TRUNCATED),
    ("threatexchange", "truncated.threatexchange.json"): (0, 3, TRUNCATED),
}


@pytest.mark.parametrize(("fmt", "name"), sorted(GOOD | BROKEN))
def test_sample_files_read_to_the_exact_entries_and_problems(fmt, name):
    assert read_file(fmt, name) == (GOOD | BROKEN)[fmt, name]


@pytest.mark.parametrize(("fmt", "name"), sorted(FATAL))
def test_a_broken_file_stops_with_the_line_named(fmt, name):
    yielded, line, message = FATAL[fmt, name]
    got, err = read_until_error(fmt, name)
    assert len(got) == yielded and all(isinstance(g, Entry) for g in got)
    assert err.code == "invalid_list" and err.line == line
    assert err.message.startswith(f"line {line}: ") and message in err.message


def test_every_format_has_a_good_sample_with_active_withdrawn_kinds_and_a_group():
    for fmt in FORMATS:
        entries = [e for (f, _), items in GOOD.items() if f == fmt for e in items
                   if isinstance(e, Entry)]
        assert {e.withdrawn for e in entries} == {True, False}, fmt
        assert len({e.signal.kind for e in entries}) >= 2, fmt
        if "group" in carried_fields(fmt):
            assert any(e.group for e in entries), fmt


def test_not_utf8_and_unknown_formats_are_file_errors():
    for fmt, body in [("csv", b"signal,value\npdq,\xff\n"),
                      ("threatexchange", b"pdq abc\npdq \xfe\n"),
                      ("stopncii", b'{"hashRecords": [\n{"hashValue": "\xff"}]}'),
                      ("hma", b'{"id": 1}\n{"id": "\xc3"}\n')]:
        with pytest.raises(ListFormatError, match="line 2: this line is not UTF-8"):
            list(read(fmt, io.BytesIO(body)))
    with pytest.raises(ListFormatError, match="Unknown list format 'xml'") as err:
        read("xml", io.BytesIO(b""))
    assert err.value.code == "invalid_list"
    with pytest.raises(ListFormatError):
        carries("xml")


def test_blank_files_and_lines_give_nothing():
    for fmt in FORMATS:
        assert list(read(fmt, io.BytesIO(b"\n  \n"))) == []
    body = f"\n\nsignal,value\n\n \npdq,{P1}\n\n".encode()
    assert list(read("csv", io.BytesIO(body))) == [E(6, "pdq", P1)]


def test_csv_is_strict_where_the_api_is_and_checks_its_columns():
    def one(row: str, header: str = "signal,value,status,quality,ref,group") -> object:
        return next(iter(read("csv", io.BytesIO(f"{header}\n{row}\n".encode()))))
    assert one(f"pdq,{P1},gone,,,").reason.startswith("The status 'gone'")  # type: ignore
    assert one(f"pdq,{P1},,x,,") == Problem(2, "The quality 'x' is not a whole number from 0 "
                                               "to 100.")
    assert one(f"pdq,{P1},,,{'r' * 65},") == Problem(
        2, "The record's id has 65 characters; at most 64 are kept.")
    assert one(f"pdq,{P1},,,,{'g' * 65}") == Problem(
        2, "The record's group has 65 characters; at most 64 are kept.")
    assert one(f"pdq,{P1},,,{'r' * 64},{'g' * 64}") == E(2, "pdq", P1, ref="r" * 64,
                                                         group="g" * 64)
    assert one(f"PDQ,{P1},,,,").reason.startswith("Unknown signal 'PDQ'")  # type: ignore
    with pytest.raises(ListFormatError, match="line 1: the column 'ref' appears twice"):
        one("", "signal,value,ref,ref")
    with pytest.raises(ListFormatError, match="line 3: not CSV"):
        list(read("csv", io.BytesIO(f'signal,value\npdq,{P1}\npdq,"{P2}\n'.encode())))


def test_a_foreign_record_that_is_not_an_object_is_a_problem():
    assert list(read("stopncii", io.BytesIO(b'{"hashRecords": [1, "x"]}'))) == [
        Problem(1, "Not a StopNCII hash record (an object with signalType, hashValue, "
                   "hashStatus)."),
        Problem(1, "Not a StopNCII hash record (an object with signalType, hashValue, "
                   "hashStatus).")]
    assert [p.line for p in read("hma", io.BytesIO(b'[\n{"id": 1},\n\n{"id": 2}\n]'))] == [2, 4]


class _Unseekable(io.RawIOBase):
    """A file read through a pipe (the CLI wraps its file like this for its progress bar)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read_bytes = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = self.data.readinto(buffer)
        self.read_bytes += n
        return n


@pytest.mark.parametrize("name", ["good.threatexchange.jsonl", "signals.threatexchange.txt"])
def test_threatexchange_tells_json_from_text_without_seeking(name):
    raw = _Unseekable((DATA / name).read_bytes())
    assert list(read("threatexchange", io.BufferedReader(raw))) == GOOD["threatexchange", name]


@pytest.mark.parametrize("fmt", ["csv", "stopncii", "threatexchange"])
def test_readers_stream_the_first_entry_comes_before_the_file_is_read(fmt):
    records = make_records(60_000, kinds=[SignalKind.PDQ])
    out = io.StringIO()
    write(fmt, records, out)
    data = out.getvalue().encode()
    assert len(data) > 6_000_000
    raw = _Unseekable(data)
    items = read(fmt, io.BufferedReader(raw))  # type: ignore[arg-type]
    assert isinstance(next(items), Entry)
    assert raw.read_bytes < 2_500_000
    assert sum(1 for _ in items) == len(records) - 1


def make_records(n: int, seed: int = 7, kinds: list[SignalKind] | None = None
                 ) -> list[ExportRecord]:
    rng = random.Random(seed)
    kinds = kinds or sorted(KINDS)
    groups = ["", "case-1", "사건 2", 'quo"te, comma', "g" * 64, C1]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = rng.randbytes(kind.bits // 8)
        signal = Signal(kind, value)
        signal.check_not_degenerate()
        out.append(ExportRecord(
            signal=signal, withdrawn=rng.random() < 0.3,
            quality=rng.randint(50, 100) if kind is SignalKind.PDQ and i % 3 else None,
            ref=str(i + 1) if i % 5 else f"ref-{i}", group=rng.choice(groups), seq=i + 1,
            at=start + timedelta(seconds=i), bank="ngo-a"))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_what_is_written_reads_back(fmt):
    records = make_records(400)
    out = io.StringIO()
    written = write(fmt, records, out)
    kept = [r for r in records if r.signal.kind in carries(fmt)]
    assert written == len(kept) and carries(fmt) <= KINDS
    back = list(read(fmt, io.BytesIO(out.getvalue().encode())))
    assert all(isinstance(b, Entry) for b in back)
    fields = carried_fields(fmt)

    def view(x: Entry | ExportRecord) -> tuple[object, ...]:
        return (x.signal, x.withdrawn, x.quality if "quality" in fields else None,
                x.ref if "ref" in fields else "", x.group if "group" in fields else "")
    assert [view(b) for b in back] == [view(r) for r in kept]  # type: ignore[arg-type]
    assert [b.line for b in back] == sorted(b.line for b in back)


def test_written_foreign_files_have_the_foreign_shape():
    records = make_records(8)
    out = io.StringIO()
    write("stopncii", records, out)
    page = json.loads(out.getvalue())
    assert page["count"] == len(page["hashRecords"]) == 4 and page["hasMoreRecords"] is False
    assert {r["signalType"] for r in page["hashRecords"]} == {"ImagePDQ", "VideoMD5"}
    assert set(page["hashRecords"][0]) == {"lastModtimestamp", "signalType", "hashValue",
                                           "hashStatus", "caseNumbers", "CSPFeedbacks"}
    out = io.StringIO()
    write("threatexchange", records, out)
    update = json.loads(out.getvalue().splitlines()[0])
    assert set(update) == {"id", "indicator", "type", "last_updated", "should_delete"}
    out = io.StringIO()
    write("hma", records[:1], out)
    content = json.loads(out.getvalue())
    assert content["signals"] == {"video_md5": records[0].signal.hex}
    assert content["disable_until_ts"] in (0, 1) and content["bank"]["name"] == "ngo-a"
    out = io.StringIO()
    write("csv", records[:1], out)
    assert out.getvalue().splitlines()[0] == "signal,value,status,quality,ref,group,bank,seq,at"
    assert out.getvalue().splitlines()[1].endswith(",ngo-a,1,2026-01-01T00:00:00Z")


@pytest.mark.slow
def test_a_100_mb_csv_is_read_in_bounded_memory(tmp_path):
    path = tmp_path / "big.csv"
    rng = random.Random(3)
    n = 370_000  # every column at its widest (ref and group 64 characters): ~275 bytes a row
    at = datetime(2026, 1, 1, tzinfo=UTC)
    records = (ExportRecord(Signal(SignalKind.PDQ, rng.randbytes(32)), False, 90,
                            f"{i:064d}", f"{i:064x}", i, at, "n" * 40) for i in range(n))
    with open(path, "w", encoding="utf-8") as f:
        assert write("csv", records, f) == n
    assert path.stat().st_size > 100_000_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        count = 0
        with open(path, "rb") as f:
            for item in read("csv", f):
                count += isinstance(item, Entry)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 16_000_000, f"reading added {peak / 1e6:.1f} MB at its peak"
