"""Service layer: cases, PINs and lockout, matching and tiers, platforms, index keeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from registry.bootstrap import build_registry
from registry.domain import CaseNumber, CaseStatus, Query, Scope, Signal, SignalKind, Tier
from registry.errors import (
    CaseLocked,
    CaseNotFound,
    DegenerateHash,
    Forbidden,
    InvalidCaseNumber,
    InvalidInput,
    InvalidTransition,
    LowQualityHash,
    PlatformExists,
    PlatformNotFound,
    TooManyQueries,
    Unauthenticated,
    WrongPin,
)
from registry.service import SubmittedImage
from tests.conftest import encode, photo


def image(registry, seed, **kw):
    return registry.hash_image(encode(photo(seed), **kw))


def submit(registry, *seeds):
    return registry.submit_case([SubmittedImage.from_image(image(registry, s)) for s in seeds])


def test_submit_status_withdraw_round_trip(registry):
    receipt = submit(registry, 1, 2)
    assert str(CaseNumber.parse(receipt.number)) == receipt.number
    assert receipt.signals == 10  # per image: PDQ, pHash, MD5, SHA-256 and local
    view = registry.case_status(receipt.number, receipt.pin)
    assert view.status is CaseStatus.ACTIVE
    assert view.signals == {"pdq": 2, "phash": 2, "md5": 2, "sha256": 2, "local": 2}
    assert view.takedowns == 0
    # The PIN is accepted in any grouping, the case number in lowercase without hyphens.
    loose = registry.case_status(receipt.number.replace("-", "").lower(),
                                 receipt.pin.replace("-", " "))
    assert loose.number == receipt.number
    withdrawn = registry.withdraw_case(receipt.number, receipt.pin)
    assert withdrawn.status is CaseStatus.WITHDRAWN and withdrawn.withdrawn_at is not None
    with pytest.raises(InvalidTransition):
        registry.withdraw_case(receipt.number, receipt.pin)


def test_pin_is_stored_only_as_a_slow_hash(registry):
    receipt = submit(registry, 1)
    with registry.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT pin_hash FROM cases")).scalar()
    digits = receipt.pin.replace("-", "")
    assert stored.startswith("scrypt$") and digits not in stored


def test_wrong_pin_and_unknown_case_answer_alike(registry):
    receipt = submit(registry, 1)
    with pytest.raises(WrongPin) as wrong:
        registry.case_status(receipt.number, "0000-0000-0000")
    unknown = str(CaseNumber(CaseNumber.parse(receipt.number).value ^ 1))
    with pytest.raises(WrongPin) as missing:
        registry.case_status(unknown, receipt.pin)
    assert wrong.value.message == missing.value.message
    with pytest.raises(InvalidCaseNumber):
        registry.case_status("not-a-case", receipt.pin)


def test_lockout_after_repeated_failures_then_expiry(registry, settings):
    receipt = submit(registry, 1)
    for _ in range(settings.pin_max_failures - 1):
        with pytest.raises(WrongPin):
            registry.case_status(receipt.number, "1111-1111-1111")
    with pytest.raises(CaseLocked) as locked:
        registry.case_status(receipt.number, "1111-1111-1111")
    assert locked.value.retry_after_s > settings.pin_lockout_s - 5
    # While locked even the right PIN is refused: guessing cannot continue in the background.
    with pytest.raises(CaseLocked):
        registry.case_status(receipt.number, receipt.pin)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with registry.store.engine.begin() as conn:
        conn.execute(text("UPDATE cases SET locked_until = :t"), {"t": past})
    assert registry.case_status(receipt.number, receipt.pin).status is CaseStatus.ACTIVE
    with registry.store.engine.connect() as conn:
        assert conn.execute(text("SELECT failed_attempts FROM cases")).scalar() == 0


def test_submission_validation(registry):
    good = image(registry, 1)
    with pytest.raises(InvalidInput, match="at least one image"):
        registry.submit_case([])
    with pytest.raises(LowQualityHash, match="too plain"):
        registry.submit_case([SubmittedImage(good.signals(), pdq_quality=20)])
    with pytest.raises(InvalidInput, match="quality"):
        registry.submit_case([SubmittedImage((good.pdq,), None)])
    with pytest.raises(DegenerateHash):
        registry.submit_case([SubmittedImage((Signal(SignalKind.PDQ, bytes(32)),), 100)])
    with pytest.raises(InvalidInput, match="same signal twice"):
        registry.submit_case([SubmittedImage((good.md5, good.md5))])
    with registry.store.engine.connect() as conn:  # nothing was half-registered
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 0


def test_match_tiers_exact_strong_weak_and_none(registry):
    receipt = submit(registry, 1)
    original = image(registry, 1)
    exact = registry.match([Query("same", original.signals())])[0]
    assert {(m.signal, m.tier, m.distance) for m in exact.matches} >= {
        (SignalKind.MD5, Tier.EXACT, 0), (SignalKind.SHA256, Tier.EXACT, 0),
        (SignalKind.PDQ, Tier.STRONG, 0)}
    assert all(m.case == receipt.number and m.bank == "submissions" for m in exact.matches)
    copy = registry.hash_image(encode(photo(1).resize((320, 240)), quality=50))
    result = registry.match([registry.query_of_image("copy", copy)])[0]
    pdq = [m for m in result.matches if m.signal is SignalKind.PDQ]
    assert pdq and pdq[0].tier is Tier.STRONG and 0 < pdq[0].distance <= 31
    assert not any(m.tier is Tier.EXACT for m in result.matches)
    # A weak-tier hit: flip bits of the registered PDQ to land between the thresholds.
    t = registry.settings.thresholds(SignalKind.PDQ)
    value = int.from_bytes(original.pdq.value, "big") ^ ((1 << (t.strong + 3)) - 1)
    weak = Signal(SignalKind.PDQ, value.to_bytes(32, "big"))
    (m,) = registry.match([Query("weak", (weak,))])[0].matches
    assert (m.tier, m.distance) == (Tier.WEAK, t.strong + 3)
    assert m.confidence < 0.75
    unrelated = image(registry, 99)
    assert not registry.match([registry.query_of_image("other", unrelated)])[0].matched


def test_match_results_keep_query_order_and_limit(registry):
    submit(registry, 1)
    queries = [registry.query_of_image(str(s), image(registry, s)) for s in (5, 1, 6)]
    results = registry.match(queries)
    assert [r.id for r in results] == ["5", "1", "6"]
    assert [r.matched for r in results] == [False, True, False]
    with pytest.raises(TooManyQueries):
        registry.match([Query(str(i), ()) for i in range(registry.settings.max_queries + 1)])


def test_withdrawn_hash_never_matches_even_before_the_index_catches_up(settings):
    writer = build_registry(settings)
    reader = build_registry(settings)
    receipt = submit(writer, 1)
    query = reader.query_of_image("q", image(reader, 1))
    assert reader.match([query])[0].matched
    writer.withdraw_case(receipt.number, receipt.pin)
    reader.keeper.sync = lambda: 0  # type: ignore[method-assign]  # a lagging worker
    assert len(reader.keeper.indexes) == 3  # still holds the withdrawn hashes (PDQ, pHash, local)
    assert not reader.match([query])[0].matched
    writer.close()
    reader.close()


def test_match_records_are_audited_without_query_hashes(registry):
    submit(registry, 1)
    unrelated = image(registry, 42)
    registry.match([registry.query_of_image("u", unrelated)])
    with registry.store.engine.connect() as conn:
        details = [r[0] for r in conn.execute(text("SELECT details FROM audit_events"))]
    assert all(unrelated.pdq.hex not in d and unrelated.md5.hex not in d for d in details)


def test_operator_case_verbs(registry):
    receipt = submit(registry, 1)
    submit(registry, 2)
    assert registry.show_case(receipt.number).status is CaseStatus.ACTIVE
    assert len(registry.list_cases()) == 2
    registry.operator_withdraw_case(receipt.number)
    assert [v.number for v in registry.list_cases(CaseStatus.WITHDRAWN)] == [receipt.number]
    missing = str(CaseNumber(CaseNumber.parse(receipt.number).value ^ 7))
    with pytest.raises(CaseNotFound):
        registry.show_case(missing)


def test_platform_keys(registry):
    _, key = registry.add_platform("example-app", [Scope.MATCH])
    assert key.startswith("trk_") and len(key) > 40
    assert registry.authenticate(key, Scope.MATCH).name == "example-app"
    with pytest.raises(Forbidden):
        registry.authenticate(key, Scope.FEED)
    for bad in (None, "", "trk_wrong"):
        with pytest.raises(Unauthenticated):
            registry.authenticate(bad, Scope.MATCH)
    with pytest.raises(PlatformExists):
        registry.add_platform("example-app", [])
    with pytest.raises(InvalidInput):
        registry.add_platform("Bad Name!", [])
    _, new_key = registry.rotate_platform_key("example-app")
    with pytest.raises(Unauthenticated):
        registry.authenticate(key, Scope.MATCH)
    assert registry.authenticate(new_key, Scope.MATCH).name == "example-app"
    registry.revoke_platform("example-app")
    with pytest.raises(Unauthenticated):
        registry.authenticate(new_key, Scope.MATCH)
    with pytest.raises(PlatformNotFound):
        registry.revoke_platform("nobody")
    (listed,) = registry.list_platforms()
    assert not listed.active and listed.to_json()["status"] == "revoked"
    with registry.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM platforms")).scalar()
    assert new_key not in stored and key not in stored


def test_index_verify_rebuild_and_snapshot_restart(settings):
    registry = build_registry(settings)
    receipts = [submit(registry, s) for s in (1, 2, 3)]
    registry.withdraw_case(receipts[1].number, receipts[1].pin)
    report = registry.verify_index()
    assert report.ok and report.checked == {"pdq": 2, "phash": 2, "local": 2}
    # Damage the in-memory index: verify must say exactly what is wrong.
    ids, _ = registry.keeper.indexes.indexes[SignalKind.PDQ].export()
    registry.keeper.indexes.indexes[SignalKind.PDQ].remove(ids[:1])
    broken = registry.verify_index()
    assert not broken.ok and broken.missing["pdq"] == [int(ids[0])]
    assert registry.rebuild_index() == 6  # PDQ, pHash and local of two live images
    assert registry.verify_index().ok
    registry.close()
    # A restart loads the snapshot and replays the log tail written since.
    other = build_registry(settings)
    late = submit(other, 4)
    other.close()
    restarted = build_registry(settings)
    assert restarted.keeper.loaded_from == "snapshot"
    assert restarted.verify_index().ok
    assert restarted.match([restarted.query_of_image("q", image(restarted, 4))])[0].matched
    assert restarted.case_status(late.number, late.pin).status is CaseStatus.ACTIVE
    restarted.close()


def test_snapshot_older_than_the_logs_retention_is_rebuilt(settings):
    registry = build_registry(settings)
    first = submit(registry, 1)
    registry.keeper.save_snapshot()
    position = registry.keeper.indexes.position
    second = submit(registry, 2)  # after the snapshot: only the log knows it
    registry.close()
    other = build_registry(settings)
    with other.store.engine.begin() as conn:  # the log's older entries pruned
        conn.execute(text("DELETE FROM change_log WHERE seq <= :p"), {"p": position + 1})
    other.close()
    restarted = build_registry(settings)
    assert restarted.keeper.loaded_from == "database"
    assert restarted.verify_index().ok
    for receipt, seed in ((first, 1), (second, 2)):
        assert restarted.case_status(receipt.number, receipt.pin).status is CaseStatus.ACTIVE
        assert restarted.match([restarted.query_of_image("q", image(restarted, seed))])[0].matched
    restarted.close()


def test_snapshot_of_another_history_is_rebuilt(settings):
    """A database restored from a backup and written to since has a change P again, but not the
    snapshot's change P: replaying its tail onto the snapshot would mix two histories."""
    registry = build_registry(settings)
    submit(registry, 1)
    registry.keeper.save_snapshot()
    position = registry.keeper.indexes.position
    registry.close()
    other = build_registry(settings, load_index=False)
    with other.store.engine.begin() as conn:
        conn.execute(text("UPDATE change_log SET action = 'withdraw' WHERE seq = :p"),
                     {"p": position})
    other.close()
    restarted = build_registry(settings)
    assert restarted.keeper.loaded_from == "database"
    assert restarted.verify_index().ok
    restarted.close()
    # The same history is accepted: the snapshot it writes matches the database.
    again = build_registry(settings)
    assert again.keeper.loaded_from == "snapshot"
    again.close()


def test_only_one_process_writes_the_snapshot_at_a_time(registry):
    import fcntl

    lock_path = registry.keeper.snapshot_path.with_name(
        registry.keeper.snapshot_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker is writing one
        assert registry.keeper.save_snapshot(if_free=True) is None
    assert registry.keeper.save_snapshot(if_free=True) == registry.keeper.snapshot_path


def test_corrupt_or_future_snapshot_is_rebuilt(settings):
    registry = build_registry(settings)
    submit(registry, 1)
    path = registry.keeper.save_snapshot()
    registry.close()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    again = build_registry(settings)
    assert again.keeper.loaded_from == "database" and again.verify_index().ok
    again.keeper.indexes.position = 10_000  # a snapshot from another (newer) database
    again.keeper.save_snapshot()
    again.close()
    third = build_registry(settings)
    assert third.keeper.loaded_from == "database" and third.verify_index().ok
    third.close()


def test_ready_reports_lag(registry):
    assert registry.ready()["ready"] is True
    registry.keeper.indexes.position -= 1  # one entry behind: a commit landing right now
    state = registry.ready()
    assert state["index_lag"] == 1 and state["ready"] is True
    registry.keeper.indexes.position -= registry.settings.max_index_lag
    state = registry.ready()
    assert state["index_lag"] == registry.settings.max_index_lag + 1
    assert state["ready"] is False


def test_ready_reports_a_follower_that_stopped_syncing(registry):
    follower = registry.follow_changes()
    deadline = time.time() + 10
    while not follower.status.last_sync_at and time.time() < deadline:
        time.sleep(0.01)
    state = registry.ready()
    assert state["ready"] is True and state["follower"]["running"] is True
    follower.stop()
    state = registry.ready()
    assert state["ready"] is False and state["follower"]["running"] is False


@pytest.mark.services
def test_service_on_postgresql(pg_url, tmp_path):
    from registry.config import Settings

    settings = Settings.from_env({}, database_url=pg_url, data_dir=str(tmp_path), pin_kdf_n=1024)
    registry = build_registry(settings, migrate=True)
    receipt = submit(registry, 1)
    assert registry.match([registry.query_of_image("q", image(registry, 1))])[0].matched
    registry.withdraw_case(receipt.number, receipt.pin)
    assert not registry.match([registry.query_of_image("q", image(registry, 1))])[0].matched
    assert registry.verify_index().ok
    registry.close()


@pytest.mark.services
def test_postgresql_plans_use_the_indexes_after_a_bulk_import(pg_url, tmp_path):
    """Where autovacuum is off (as on this machine's PostgreSQL) a bulk-loaded table is never
    analysed and the change-log query every request makes turns into a sequential scan and a
    hash join over all signals. The registry analyses stale tables itself, after a bulk
    import and when a serving process starts."""
    import numpy as np

    from registry.config import Settings
    from registry.domain import BankKind

    settings = Settings.from_env({}, database_url=pg_url, data_dir=str(tmp_path), pin_kdf_n=1024)
    registry = build_registry(settings, migrate=True)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(20_000, 32), dtype=np.uint8)
    images = [SubmittedImage((Signal(SignalKind.PDQ, bytes(c)),), 100) for c in codes]
    assert sum(registry.register_bank("bulk", BankKind.IMPORTED, images[i:i + 5000])
               for i in range(0, 20_000, 5000)) == 20_000
    with registry.store.transaction(write=False) as tx:
        tuples = dict(tx.session.execute(text(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('signals', 'change_log')"
        )).all())
        head = tx.changes.head()
        plan = "\n".join(r[0] for r in tx.session.execute(text(
            "EXPLAIN SELECT c.seq, c.action, c.signal_id, s.kind, s.value FROM change_log c "
            "JOIN signals s ON s.id = c.signal_id WHERE c.seq > :p ORDER BY c.seq LIMIT 100000"),
            {"p": head}))
    assert tuples["signals"] >= 19_000 and tuples["change_log"] >= 19_000
    assert "Seq Scan" not in plan, plan
    assert registry.store.refresh_statistics() == []  # nothing stale any more
    registry.close()


def test_repeated_feedback_on_one_match_does_not_quarantine(registry, settings):
    submit(registry, 1)
    platform, _ = registry.add_platform("p", [Scope.MATCH])
    query = registry.query_of_image("q", image(registry, 1))
    (result,) = registry.match([query], platform=platform)
    match_id = next(m.match_id for m in result.matches if m.signal is SignalKind.PDQ)
    for _ in range(settings.quarantine_after + 1):
        receipt = registry.record_feedback(platform, match_id, "not_violating")
        assert not receipt.quarantined
    assert registry.match([query], platform=platform)[0].matched
    # Distinct matches of the same hash do add up.
    for _ in range(settings.quarantine_after - 1):
        (again,) = registry.match([query], platform=platform)
        mid = next(m.match_id for m in again.matches if m.signal is SignalKind.PDQ)
        last = registry.record_feedback(platform, mid, "not_violating")
    assert last.quarantined
    assert [s.signal.kind for s in registry.quarantined()] == [SignalKind.PDQ]


@pytest.mark.parametrize("cursor", ["-1", "1.5", "abc", "٣", "9" * 20, str(2**63)])
def test_feed_cursor_is_checked_before_the_database(cursor):
    from registry.service.feed import parse_cursor

    with pytest.raises(InvalidInput, match="cursor"):
        parse_cursor(cursor)
    assert parse_cursor(str(2**63 - 1)) == 2**63 - 1 and parse_cursor("") == 0
