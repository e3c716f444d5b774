"""Service layer: cases, PINs and lockout, matching and tiers, platforms, index keeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import (
    BankKind,
    CaseNumber,
    CaseStatus,
    Query,
    Scope,
    Signal,
    SignalKind,
    Tier,
)
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
from registry.hashing.canary import canary_image
from registry.service import SubmittedImage, pins
from tests.conftest import FAST_KDF, encode, photo


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
    with registry._store.engine.connect() as conn:
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


ATTACKER, VICTIM = "198.51.100.7", "203.0.113.9"
WRONG = "1111-1111-1111"


def lock_rows_expire(registry):
    past = datetime.now(UTC) - timedelta(seconds=1)
    with registry._store.engine.begin() as conn:
        conn.execute(text("UPDATE pin_failures SET locked_until = :t"), {"t": past})


def test_wrong_pins_lock_out_the_guessing_address_not_the_case(registry, settings):
    receipt = submit(registry, 1)
    for _ in range(settings.pin_max_failures - 1):
        with pytest.raises(WrongPin):
            registry.case_status(receipt.number, WRONG, ATTACKER)
    with pytest.raises(CaseLocked) as locked:
        registry.case_status(receipt.number, WRONG, ATTACKER)
    assert locked.value.retry_after_s > settings.pin_lockout_s - 5
    # While locked even the right PIN is refused from that address: guessing cannot go on...
    with pytest.raises(CaseLocked):
        registry.case_status(receipt.number, receipt.pin, ATTACKER)
    # ...but the case's owner, on another device, is not locked out of status or withdrawal.
    assert registry.case_status(receipt.number, receipt.pin, VICTIM).status is CaseStatus.ACTIVE
    # Each further wrong PIN after the lock ends doubles the next lock.
    lock_rows_expire(registry)
    with pytest.raises(CaseLocked) as doubled:
        registry.case_status(receipt.number, WRONG, ATTACKER)
    assert doubled.value.retry_after_s > 2 * settings.pin_lockout_s - 5
    lock_rows_expire(registry)
    assert registry.case_status(receipt.number, receipt.pin, ATTACKER).status is CaseStatus.ACTIVE
    with registry._store.engine.connect() as conn:  # its counter for this case is forgiven
        assert conn.execute(text("SELECT count(*) FROM pin_failures WHERE case_id IS NOT NULL")
                            ).scalar() == 0
    assert registry.withdraw_case(receipt.number, receipt.pin, VICTIM).status is (
        CaseStatus.WITHDRAWN)


def test_one_address_guessing_at_many_cases_is_locked_out_of_all(tmp_path):
    s = Settings.from_env({}, data_dir=str(tmp_path / "d"), pin_kdf_n=FAST_KDF,
                          pin_max_failures=10, pin_client_max_failures=4)
    registry = build_registry(s)
    try:
        numbers = [submit(registry, n).number for n in range(1, 4)]
        unknown = str(CaseNumber(CaseNumber.parse(numbers[0]).value ^ 1))
        for number in [*numbers, unknown][:3]:
            with pytest.raises(WrongPin):
                registry.case_status(number, WRONG, ATTACKER)
        with pytest.raises(CaseLocked):  # the 4th, at a number that does not even exist
            registry.case_status(unknown, WRONG, ATTACKER)
        fresh = submit(registry, 9)
        with pytest.raises(CaseLocked):  # locked out of every case, right PIN or not
            registry.case_status(fresh.number, fresh.pin, ATTACKER)
        assert registry.case_status(fresh.number, fresh.pin, VICTIM).status is CaseStatus.ACTIVE
    finally:
        registry.close()


def test_many_addresses_against_one_case_get_one_try_each_and_the_owner_gets_in(tmp_path):
    s = Settings.from_env({}, data_dir=str(tmp_path / "d"), pin_kdf_n=FAST_KDF,
                          pin_max_failures=3, pin_case_max_failures=6)
    registry = build_registry(s)
    try:
        receipt = submit(registry, 1)
        for n in range(3):  # 2 wrong each: no address reaches its own limit of 3
            for _ in range(2):
                with pytest.raises(WrongPin):
                    registry.case_status(receipt.number, WRONG, f"192.0.2.{n}")
        # 6 wrong PINs for this case in a day: a new address is locked after one.
        with pytest.raises(CaseLocked):
            registry.case_status(receipt.number, WRONG, "192.0.2.50")
        with pytest.raises(CaseLocked):
            registry.case_status(receipt.number, WRONG, "192.0.2.0")
        view = registry.case_status(receipt.number, receipt.pin, VICTIM)
        assert view.status is CaseStatus.ACTIVE
    finally:
        registry.close()


def test_operator_unlocks_a_case_and_resets_its_pin(registry, settings):
    receipt = submit(registry, 1)
    for _ in range(settings.pin_max_failures):
        with pytest.raises((WrongPin, CaseLocked)):
            registry.case_status(receipt.number, WRONG, VICTIM)
    with pytest.raises(CaseLocked):
        registry.case_status(receipt.number, receipt.pin, VICTIM)
    assert registry.unlock_case(receipt.number) == 1  # the one address counter of this case
    assert registry.case_status(receipt.number, receipt.pin, VICTIM).status is CaseStatus.ACTIVE
    new_pin = registry.reset_case_pin(receipt.number)
    assert new_pin != receipt.pin
    with pytest.raises(WrongPin):
        registry.case_status(receipt.number, receipt.pin, VICTIM)
    assert registry.case_status(receipt.number, new_pin, VICTIM).number == receipt.number
    with registry._store.transaction(write=False) as tx:
        events = [(e["action"], e["actor"]) for e in tx.audit.recent(20)]
        assert tx.audit.verify()[1] is None
    assert ("case_unlocked", "operator") in events and ("pin_reset", "operator") in events
    with pytest.raises(CaseNotFound):
        registry.unlock_case(str(CaseNumber(CaseNumber.parse(receipt.number).value ^ 1)))


def test_client_keys_group_an_ipv6_64_and_store_no_address():
    key = pins.client_key("2001:db8:1:2::1")
    assert key == pins.client_key("2001:db8:1:2:ffff::9")
    assert key != pins.client_key("2001:db8:1:3::1")
    assert pins.client_key("198.51.100.7") != pins.client_key("198.51.100.8")
    assert "198.51.100.7" not in pins.client_key("198.51.100.7") and len(key) == 32
    assert pins.lock_after(4, 5, 900) is None
    assert pins.lock_after(5, 5, 900) == timedelta(seconds=900)
    assert pins.lock_after(7, 5, 900) == timedelta(seconds=3600)
    assert pins.lock_after(40, 5, 900) == pins.MAX_LOCK


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
    with registry._store.engine.connect() as conn:  # nothing was half-registered
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 0


def test_web_submissions_carry_the_page_signals_and_known_views(registry):
    good = SubmittedImage.from_image(registry.hash_image(encode(photo(1), quality=90),
                                                          registration=True))
    registry.validate_submission([good], strict=True)
    by_kind = {s.kind: s for s in good.signals}
    bare = SubmittedImage((by_kind[SignalKind.MD5], by_kind[SignalKind.SHA256]))
    lone = SubmittedImage((by_kind[SignalKind.PDQ],), good.pdq_quality)
    for images in ([bare], [lone]):
        registry.validate_submission(images)  # an operator's own call may
        with pytest.raises(InvalidInput, match="carries its pdq, md5 and sha256"):
            registry.submit_case(images, strict=True)
    (_label, view, quality) = good.views[1]
    for views, problem in (((*good.views, ("mirror", view, quality)), "same view twice"),
                           ((*good.views[:1], ("poster", view, quality)), "not a view")):
        with pytest.raises(InvalidInput, match=problem):
            registry.submit_case([SubmittedImage(good.signals, good.pdq_quality, views)],
                                 strict=True)
    with registry._store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 0


def test_an_orientation_view_that_is_not_of_the_image_is_left_out(registry):
    good = SubmittedImage.from_image(registry.hash_image(encode(photo(1), quality=90),
                                                          registration=True))
    other = SubmittedImage.from_image(registry.hash_image(encode(photo(2), quality=90),
                                                           registration=True))
    views = dict((label, (v, q)) for label, v, q in good.views)
    foreign = {label: (v, q) for label, v, q in other.views}
    # The image's own mirror is kept; another picture's hash passed off as its mirror is not,
    # nor as its rot90; a crop cannot be checked and is kept as sent.
    assert variants_agree(good, "mirror", *views["mirror"])
    smuggled = tuple((label, *(foreign[label] if label in ("mirror", "rot90", "crop90-tl")
                               else views[label])) for label in views)
    receipt = registry.submit_case([SubmittedImage(good.signals, good.pdq_quality, smuggled)],
                                   strict=True)
    with registry._store.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT label, value FROM signals WHERE kind = 'pdq'")
                                   ).all())
    assert "mirror" not in stored and "rot90" not in stored
    assert stored["crop90-tl"] == foreign["crop90-tl"][0].hex and stored["flip-v"] == (
        views["flip-v"][0].hex)
    assert receipt.signals == len(good.rows(registry.settings.pdq_min_quality)) - 2


def test_the_benign_bank_suppresses_whole_picture_matches_only(registry):
    receipt = submit(registry, 1, 2)
    common = registry.hash_image(encode(photo(1), quality=90), registration=True)
    registry.register_bank("benign", BankKind.BENIGN, [SubmittedImage(
        tuple(s for s in SubmittedImage.from_image(common).signals if not s.kind.is_local),
        common.pdq_quality)])
    platform, _ = registry.add_platform("p", [Scope.MATCH, Scope.FEED])
    copy = registry.query_of_image("copy", image(registry, 1))
    other = registry.query_of_image("other", image(registry, 2))
    suppressed, kept = registry.match([copy, other], platform=platform)
    assert {m.signal for m in suppressed.matches} <= {SignalKind.LOCAL}
    assert all(m.bank != "benign" for r in (suppressed, kept) for m in r.matches)
    assert {m.signal for m in kept.matches} >= {SignalKind.PDQ, SignalKind.MD5}
    assert all(m.case == receipt.number for m in kept.matches)
    with registry._store.transaction(write=False) as tx:
        (event,) = [e for e in tx.audit.recent(5) if e["action"] == "match"][:1]
    assert event["details"]["benign_suppressed"] == 1
    banks = {r.bank for r in registry.read_feed(platform, None, 1000).records}
    assert banks == {"submissions"}


def variants_agree(image, label, view, _quality):
    from registry.service.cases import view_agrees
    main = next(s for s in image.signals if s.kind is SignalKind.PDQ)
    return view_agrees(label, view, main)


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
    reader._keeper.sync = lambda: 0  # type: ignore[method-assign]  # a lagging worker
    assert len(reader._keeper.indexes) == 3  # still holds the withdrawn hashes (PDQ, pHash, local)
    assert not reader.match([query])[0].matched
    writer.close()
    reader.close()


def test_match_records_are_audited_without_query_hashes(registry):
    submit(registry, 1)
    unrelated = image(registry, 42)
    registry.match([registry.query_of_image("u", unrelated)])
    with registry._store.engine.connect() as conn:
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
    with registry._store.engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM platforms")).scalar()
    assert new_key not in stored and key not in stored


def test_index_verify_rebuild_and_snapshot_restart(settings):
    registry = build_registry(settings)
    receipts = [submit(registry, s) for s in (1, 2, 3)]
    registry.withdraw_case(receipts[1].number, receipts[1].pin)
    report = registry.verify_index()
    assert report.ok and report.checked == {"pdq": 2, "phash": 2, "local": 2}
    # Damage the in-memory index: verify must say exactly what is wrong.
    ids, _ = registry._keeper.indexes.indexes[SignalKind.PDQ].export()
    registry._keeper.indexes.indexes[SignalKind.PDQ].remove(ids[:1])
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
    assert restarted._keeper.loaded_from == "snapshot"
    assert restarted.verify_index().ok
    assert restarted.match([restarted.query_of_image("q", image(restarted, 4))])[0].matched
    assert restarted.case_status(late.number, late.pin).status is CaseStatus.ACTIVE
    restarted.close()


def test_snapshot_older_than_the_logs_retention_is_rebuilt(settings):
    registry = build_registry(settings)
    first = submit(registry, 1)
    registry._keeper.save_snapshot()
    position = registry._keeper.indexes.position
    second = submit(registry, 2)  # after the snapshot: only the log knows it
    registry.close()
    other = build_registry(settings)
    with other._store.engine.begin() as conn:  # the log's older entries pruned
        conn.execute(text("DELETE FROM change_log WHERE seq <= :p"), {"p": position + 1})
    other.close()
    restarted = build_registry(settings)
    assert restarted._keeper.loaded_from == "database"
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
    registry._keeper.save_snapshot()
    position = registry._keeper.indexes.position
    registry.close()
    other = build_registry(settings, load_index=False)
    with other._store.engine.begin() as conn:
        conn.execute(text("UPDATE change_log SET action = 'withdraw' WHERE seq = :p"),
                     {"p": position})
    other.close()
    restarted = build_registry(settings)
    assert restarted._keeper.loaded_from == "database"
    assert restarted.verify_index().ok
    restarted.close()
    # The same history is accepted: the snapshot it writes matches the database.
    again = build_registry(settings)
    assert again._keeper.loaded_from == "snapshot"
    again.close()


def test_only_one_process_writes_the_snapshot_at_a_time(registry):
    import fcntl

    lock_path = registry._keeper.snapshot_path.with_name(
        registry._keeper.snapshot_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker is writing one
        assert registry._keeper.save_snapshot(if_free=True) is None
    assert registry._keeper.save_snapshot(if_free=True) == registry._keeper.snapshot_path


def test_corrupt_or_future_snapshot_is_rebuilt(settings):
    registry = build_registry(settings)
    submit(registry, 1)
    path = registry._keeper.save_snapshot()
    registry.close()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    again = build_registry(settings)
    assert again._keeper.loaded_from == "database" and again.verify_index().ok
    again._keeper.indexes.position = 10_000  # a snapshot from another (newer) database
    again._keeper.save_snapshot()
    again.close()
    third = build_registry(settings)
    assert third._keeper.loaded_from == "database" and third.verify_index().ok
    third.close()


def test_ready_reports_lag(registry):
    assert registry.ready()["ready"] is True
    registry._keeper.indexes.position -= 1  # one entry behind: a commit landing right now
    state = registry.ready()
    assert state["index_lag"] == 1 and state["ready"] is True
    registry._keeper.indexes.position -= registry.settings.max_index_lag
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
    with registry._store.transaction(write=False) as tx:
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
    assert registry._store.refresh_statistics() == []  # nothing stale any more
    registry.close()


def pdq_match(registry, platform, seed=1):
    (result,) = registry.match([registry.query_of_image("q", image(registry, seed))],
                               platform=platform)
    return next(m for m in result.matches if m.signal is SignalKind.PDQ)


def test_one_platform_alone_never_quarantines(registry, settings):
    submit(registry, 1)
    platform, _ = registry.add_platform("p", [Scope.MATCH])
    first = pdq_match(registry, platform)
    for _ in range(settings.quarantine_after + 1):  # the same match again and again
        assert not registry.record_feedback(platform, first.match_id, "not_violating").quarantined
    for _ in range(3 * settings.quarantine_after):  # and many distinct matches
        m = pdq_match(registry, platform)
        assert not registry.record_feedback(platform, m.match_id, "not_violating").quarantined
    assert registry.quarantined() == []
    # Its confidence is halved once, for the one platform.
    assert pdq_match(registry, platform).confidence == pytest.approx(first.confidence / 2)
    assert [s.not_violating for s in registry.reported()] == [1]


def test_quarantine_needs_platforms_and_a_rate_and_release_starts_over(registry, settings):
    submit(registry, 1)
    a, _ = registry.add_platform("a", [Scope.MATCH])
    b, _ = registry.add_platform("b", [Scope.MATCH])
    c, _ = registry.add_platform("c", [Scope.MATCH])
    for _ in range(settings.quarantine_after + 2):  # c took five copies down
        registry.record_feedback(c, pdq_match(registry, c).match_id, "removed")
    for sender in (a, a, b, b):  # 4 not_violating from 2 platforms against 5 removed: 44%
        assert not registry.record_feedback(
            sender, pdq_match(registry, sender).match_id, "not_violating").quarantined
    assert registry.record_feedback(  # 5 of 10 decided matches: the rate is reached
        b, pdq_match(registry, b).match_id, "not_violating").quarantined
    (held,) = registry.quarantined()
    assert held.signal.kind is SignalKind.PDQ
    registry.release_signal(held.id)
    # The reports before the release no longer count: one more does not quarantine it again.
    assert not registry.record_feedback(
        a, pdq_match(registry, a).match_id, "not_violating").quarantined
    assert registry.quarantined() == []
    assert [(s.id, s.not_violating, s.removed) for s in registry.reported()] == [(held.id, 1, 0)]
    # An operator may still decide on their own.
    registry.hold_signal(held.id)
    assert [s.id for s in registry.quarantined()] == [held.id]
    with pytest.raises(InvalidInput):
        registry.hold_signal(held.id)


def test_the_canary_is_never_quarantined(registry, settings):
    data = canary_image(0)
    registry.register_bank("canary", BankKind.CANARY, [
        SubmittedImage.from_image(registry.hash_image(data, registration=True))])
    platforms = [registry.add_platform(f"p{n}", [Scope.MATCH])[0] for n in range(3)]
    for platform in platforms * settings.quarantine_after:
        (result,) = registry.match([registry.query_of_image("c", registry.hash_image(data))],
                                   platform=platform)
        for m in result.matches:
            assert not registry.record_feedback(platform, m.match_id, "not_violating").quarantined
    assert registry.quarantined() == []


@pytest.mark.parametrize("cursor", ["-1", "1.5", "abc", "٣", "9" * 20, str(2**63)])
def test_feed_cursor_is_checked_before_the_database(cursor):
    from registry.service.feed import parse_cursor

    with pytest.raises(InvalidInput, match="cursor"):
        parse_cursor(cursor)
    assert parse_cursor(str(2**63 - 1)) == 2**63 - 1 and parse_cursor("") == 0
