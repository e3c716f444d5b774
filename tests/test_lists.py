"""Hash lists in banks (registry.service.lists): all-or-nothing imports that are idempotent and
carry withdrawals, exports that round-trip, bank policy (disabled, tighter thresholds), and the
purge of a withdrawn case's hashes."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import Query, Signal, SignalKind, Thresholds
from registry.errors import BankExists, InvalidInput, InvalidTransition
from registry.interop import FORMATS, Entry, Problem, carries, read
from registry.service.purge import PurgeBlocked
from tests.conftest import pdq_images


def pdq(rng: np.random.Generator) -> Signal:
    return Signal(SignalKind.PDQ, bytes(rng.integers(0, 256, 32, dtype=np.uint8)))


def flip(sig: Signal, bits: int) -> Signal:
    value = bytearray(sig.value)
    for i in range(bits):
        value[i // 8] ^= 1 << (i % 8)
    return Signal(sig.kind, bytes(value))


def md5(n: int) -> Signal:
    import hashlib
    return Signal(SignalKind.MD5, hashlib.md5(str(n).encode()).digest())


def entry(line: int, signal: Signal, withdrawn: bool = False, ref: str = "", group: str = "",
          quality: int | None = None) -> Entry:
    return Entry(line=line, signal=signal, withdrawn=withdrawn, quality=quality, ref=ref,
                 group=group)


def matched_banks(registry, signal: Signal) -> list[tuple[str, str]]:
    (result,) = registry.match([Query("q", (signal,))])
    return [(m.bank, m.tier.value) for m in result.matches]


def signal_counts(registry, bank: str) -> dict[str, int]:
    return next(b for b in registry.list_banks() if b["name"] == bank)["signals"]


@pytest.fixture
def rng():
    return np.random.default_rng(14)


def test_an_import_adds_and_importing_it_again_changes_nothing(registry, rng):
    hashes = [pdq(rng) for _ in range(5)] + [md5(1)]
    items = [entry(i + 1, s, group="item-a" if i < 2 else "") for i, s in enumerate(hashes)]
    report = registry.import_list("ngo-a", "csv", items)
    assert (report.ok, report.applied, report.added, report.rows) == (True, True, 6, 6)
    assert matched_banks(registry, hashes[0]) == [("ngo-a", "exact")] or \
        matched_banks(registry, hashes[0]) == [("ngo-a", "strong")]
    assert matched_banks(registry, md5(1)) == [("ngo-a", "exact")]
    again = registry.import_list("ngo-a", "csv", items)
    assert (again.added, again.unchanged, again.withdrawn) == (0, 6, 0)
    assert signal_counts(registry, "ngo-a") == {"active": 6}


def test_one_bad_record_and_nothing_is_imported(registry, rng):
    items: list[Entry | Problem] = [entry(2, pdq(rng)), Problem(3, "bad hex"),
                                    entry(4, pdq(rng))]
    report = registry.import_list("ngo-b", "csv", items)
    assert not report.ok and not report.applied and report.errors == 1
    assert [(p.line, p.reason) for p in report.problems] == [(3, "bad hex")]
    assert "ngo-b" not in {b["name"] for b in registry.list_banks()}  # not even the bank
    assert matched_banks(registry, items[0].signal) == []  # type: ignore[union-attr]


def test_a_withdrawal_marker_withdraws_and_a_dry_run_changes_nothing(registry, rng):
    a, b = pdq(rng), pdq(rng)
    registry.import_list("ngo-c", "csv", [entry(1, a), entry(2, b)])
    dry = registry.import_list("ngo-c", "csv", [entry(1, a, withdrawn=True)], dry_run=True)
    assert dry.ok and not dry.applied and dry.withdrawn == 1
    assert matched_banks(registry, a) != []
    done = registry.import_list("ngo-c", "csv", [entry(1, a, withdrawn=True), entry(2, b)])
    assert (done.withdrawn, done.unchanged) == (1, 1)
    assert matched_banks(registry, a) == [] and matched_banks(registry, b) != []
    # Re-listing a withdrawn hash registers it again, once.
    back = registry.import_list("ngo-c", "csv", [entry(1, a), entry(2, a)])
    assert (back.added, back.duplicates) == (1, 1)
    assert signal_counts(registry, "ngo-c") == {"active": 2, "withdrawn": 1}


def test_duplicates_count_once_and_the_later_of_two_conflicting_records_wins(registry, rng):
    a = pdq(rng)
    report = registry.import_list("ngo-d", "csv", [entry(1, a), entry(2, a),
                                                   entry(3, a, withdrawn=True)])
    assert (report.added, report.duplicates, report.withdrawn) == (1, 1, 1)
    assert matched_banks(registry, a) == []


def test_one_value_under_two_source_ids_stays_two_hashes(registry, rng):
    a = pdq(rng)
    registry.import_list("mirror", "csv", [entry(1, a, ref="1"), entry(2, a, ref="2")])
    registry.import_list("mirror", "csv", [entry(1, a, withdrawn=True, ref="1")])
    assert matched_banks(registry, a) != []  # record 2 still holds it
    assert signal_counts(registry, "mirror") == {"active": 1, "withdrawn": 1}


def test_skipped_records_are_counted_and_do_not_fail_the_import(registry, rng):
    low = entry(1, pdq(rng), quality=20)
    report = registry.import_list("ngo-e", "csv", [low, Problem(2, "a TMK hash", skipped=True),
                                                   entry(3, pdq(rng), quality=90)])
    assert report.ok and (report.added, report.skipped) == (1, 2)
    assert matched_banks(registry, low.signal) == []


def test_lists_go_into_banks_of_their_own(registry, rng):
    registry.submit_case(pdq_images(rng, 1))
    with pytest.raises(InvalidInput, match="submissions"):
        registry.import_list("submissions", "csv", [entry(1, pdq(rng))])
    with pytest.raises(InvalidInput, match="not a bank name"):
        registry.import_list("Bad Name", "csv", [entry(1, pdq(rng))])
    registry.add_bank("ngo-f", "from NGO F")
    with pytest.raises(BankExists):
        registry.add_bank("ngo-f")


def test_a_disabled_bank_matches_nothing_and_thresholds_are_per_bank(registry, rng):
    a = pdq(rng)
    registry.add_bank("strict", thresholds={SignalKind.PDQ: Thresholds(8, 16)})
    registry.import_list("strict", "csv", [entry(1, a)])
    registry.import_list("loose", "csv", [entry(1, a)])
    assert sorted(matched_banks(registry, flip(a, 6))) == [("loose", "strong"),
                                                           ("strict", "strong")]
    assert sorted(matched_banks(registry, flip(a, 12))) == [("loose", "strong"),
                                                            ("strict", "weak")]
    assert matched_banks(registry, flip(a, 20)) == [("loose", "strong")]
    registry.configure_bank("loose", enabled=False)
    assert matched_banks(registry, flip(a, 6)) == [("strict", "strong")]
    registry.configure_bank("loose", enabled=True)
    registry.configure_bank("strict", thresholds={})
    assert len(matched_banks(registry, flip(a, 20))) == 2
    with pytest.raises(InvalidInput, match="looser"):
        registry.configure_bank("strict", thresholds={SignalKind.PDQ: Thresholds(40, 50)})
    with pytest.raises(InvalidInput, match="exactly"):
        registry.add_bank("x", thresholds={SignalKind.MD5: Thresholds(0, 0)})


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_into_a_fresh_registry_gives_the_same_matches(
        registry, rng, tmp_path, fmt):
    live = [pdq(rng) for _ in range(4)] + [md5(7)]
    gone = pdq(rng)
    registry.import_list("source", "csv", [entry(i, s, quality=90 if s.kind is SignalKind.PDQ
                                                 else None, group="g1" if i < 2 else "")
                                           for i, s in enumerate([*live, gone], 1)])
    registry.import_list("source", "csv", [entry(1, gone, withdrawn=True)])
    out = io.StringIO()
    report = registry.export_list("source", fmt, out)
    kinds = carries(fmt)
    assert report.records == sum(s.kind in kinds for s in [*live, gone])
    other = build_registry(Settings.from_env({}, data_dir=str(tmp_path / "other")))
    try:
        back = other.import_list("copy", fmt, read(fmt, io.BytesIO(out.getvalue().encode())))
        carried_live = sum(s.kind in kinds for s in live)
        # The withdrawn hash travels too; a fresh registry has nothing to withdraw.
        assert back.ok and (back.added, back.unchanged) == (carried_live, 1), back.to_json()
        for s in [*live, gone]:
            expected = [("copy", t) for _, t in matched_banks(registry, s)]
            if s.kind not in kinds:
                expected = []
            assert matched_banks(other, s) == expected, (fmt, s.kind)
        # Nothing changed since: an export from its cursor is empty.
        assert registry.export_list("source", fmt, io.StringIO(), report.next_cursor
                                    ).records == 0
    finally:
        other.close()


def test_export_is_audited_and_an_unknown_bank_is_an_error(registry, rng):
    from registry.errors import BankNotFound
    registry.import_list("ngo-g", "csv", [entry(1, pdq(rng))])
    registry.export_list("ngo-g", "csv", io.StringIO())
    trail = registry.audit_trail(limit=5)
    assert any(e["action"] == "list_exported" for e in trail["events"])  # type: ignore[index]
    with pytest.raises(BankNotFound):
        registry.export_list("nope", "csv", io.StringIO())


def test_purge_erases_a_withdrawn_cases_hashes_once_feed_readers_have_read_it(
        registry, rng, settings):
    from registry.domain import Scope
    images = pdq_images(rng, 3)
    receipt = registry.submit_case(images)
    with pytest.raises(InvalidTransition, match="withdraw it first"):
        registry.purge_case(receipt.number)
    mirror, _ = registry.add_platform("mirror", [Scope.FEED])
    page = registry.read_feed(mirror, None, 1000)  # it holds the adds now
    registry.withdraw_case(receipt.number, receipt.pin)
    with pytest.raises(PurgeBlocked, match="mirror"):
        registry.purge_case(receipt.number)
    page = registry.read_feed(mirror, page.next_cursor, 1000)  # it receives the withdrawals
    registry.read_feed(mirror, page.next_cursor, 1000)  # and asks from past them
    report = registry.purge_case(receipt.number)
    assert report.signals == sum(len(i.rows(50)) for i in images) and not report.forced
    db = sqlite3.connect(f"{settings.data_dir}/registry.db")
    values = {v for (v,) in db.execute("SELECT value FROM signals WHERE case_id IS NOT NULL")}
    db.close()
    assert values == {""}
    for image in images:
        assert matched_banks(registry, image.signals[0]) == []
    assert registry.read_feed(mirror, None, 1000).records == ()  # gone from the feed
    assert registry.purge_case(receipt.number).signals == 0
    snapshot = registry._keeper.snapshot_path
    if snapshot.exists():
        blob = snapshot.read_bytes()
        assert not any(image.signals[0].value in blob for image in images)


def test_a_forced_purge_names_the_readers_left_behind(registry, rng):
    from registry.domain import Scope
    receipt = registry.submit_case(pdq_images(rng, 1))
    mirror, _ = registry.add_platform("slow-mirror", [Scope.FEED])
    registry.read_feed(mirror, None, 1000)
    registry.withdraw_case(receipt.number, receipt.pin)
    report = registry.purge_case(receipt.number, force=True)
    assert report.forced and report.behind == ("slow-mirror",)


def test_quiet_imports_keep_submissions_apart(registry, rng):
    """A case's image and the same hash imported both match, each in its own bank."""
    image = pdq_images(rng, 1)
    registry.submit_case(image)
    registry.import_list("ngo-h", "csv", [entry(1, image[0].signals[0])])
    assert sorted(b for b, _ in matched_banks(registry, image[0].signals[0])) == [
        "ngo-h", "submissions"]


def test_a_platform_that_read_the_feed_before_migration_0006_holds_up_a_purge(tmp_path):
    """Platforms have no feed position before revision 0006; one that read the feed then
    (its audit events say so) must still read past a withdrawal before a purge."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from registry.store.engine import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        for name, action in (("reader", "feed_read"), ("matcher", "match")):
            conn.execute(text(
                "INSERT INTO platforms (name, key_hash, key_prefix, scopes, status, created_at)"
                " VALUES (:n, :h, 'k', 'feed', 'active', CURRENT_TIMESTAMP)"),
                {"n": name, "h": name * 4})
            conn.execute(text(
                "INSERT INTO audit_events (at, actor, action, subject, details, digest) "
                "VALUES (CURRENT_TIMESTAMP, :a, :act, '', '{}', '')"),
                {"a": f"platform:{name}", "act": action})
        command.upgrade(cfg, "head")
        positions = dict(conn.execute(text("SELECT name, feed_position FROM platforms")).all())
    engine.dispose()
    assert positions == {"reader": 0, "matcher": None}
