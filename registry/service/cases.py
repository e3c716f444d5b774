"""Cases: submit signals as a new case, check status with the PIN, withdraw."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry.config import Settings
from registry.domain import (
    LOCAL_REGISTER_KEYPOINTS,
    SUBMISSIONS_BANK,
    VPDQ_HEADER,
    BankKind,
    Case,
    CaseNumber,
    CaseStatus,
    ChangeAction,
    Signal,
    SignalKind,
    SignalStatus,
    frame_label,
    generate_pin,
    normalise_pin,
)
from registry.errors import CaseLocked, CaseNotFound, InvalidInput, LowQualityHash, WrongPin
from registry.hashing import (
    PIPELINE_VERSION,
    ImageSignals,
    VideoSignals,
    registration_budget,
    variants,
)
from registry.service import pins
from registry.store import Store, Transaction

MAX_IMAGES_PER_CASE = 50
MAX_SIGNALS_PER_IMAGE = 32


@dataclass(frozen=True, slots=True)
class SubmittedImage:
    """The signals of one image as the submitter's device computed them."""

    signals: tuple[Signal, ...]
    pdq_quality: int | None = None
    # Labelled PDQ hashes of views of the image (content box, mirror, crops, rotations) with
    # their quality; views below the quality floor are dropped, not refused.
    views: tuple[tuple[str, Signal, int], ...] = ()

    @classmethod
    def from_image(cls, image: ImageSignals) -> SubmittedImage:
        views = [(v.label, v.pdq, v.quality) for v in image.variants]
        if image.content is not None:
            views.insert(0, ("content", image.content.pdq, image.content.quality))
        return cls(image.signals(), image.pdq_quality, tuple(views))

    @classmethod
    def from_video(cls, video: VideoSignals) -> SubmittedImage:
        return cls(video.signals())

    def rows(self, min_quality: int) -> list[tuple[Signal, str, int | None]]:
        """``(signal, label, quality)`` of everything to store for this image. Views below the
        quality floor, and orientation views whose hash does not follow from the image's own
        (``variants.predicted_pdq``: not a view of this picture), are left out."""
        out: list[tuple[Signal, str, int | None]] = [
            (s, "full" if s.kind.perceptual or s.kind.is_local else "",
             self.pdq_quality if s.kind is SignalKind.PDQ else None)
            for s in self.signals if s.kind is not SignalKind.VPDQ]
        seen = {s.value for s in self.signals}
        for s in self.signals:  # a video: each kept frame is stored as a PDQ signal
            for ms, quality, frame in s.frames():
                if quality >= min_quality and frame.value not in seen:
                    seen.add(frame.value)
                    out.append((frame, frame_label(ms), quality))
        main = next((s for s in self.signals if s.kind is SignalKind.PDQ), None)
        for label, signal, quality in self.views:
            if main is not None and not view_agrees(label, signal, main):
                continue
            if quality >= min_quality and signal.value not in seen:
                seen.add(signal.value)
                out.append((signal, label, quality))
        return out


def view_agrees(label: str, view: Signal, main: Signal) -> bool:
    """Whether a view's PDQ hash can be the ``label`` view of the picture hashed ``main``
    (always true for the views that cannot be predicted: crops, small rotations, content)."""
    predicted = variants.predicted_pdq(label, main.value)
    return predicted is None or (
        view - Signal(SignalKind.PDQ, predicted) <= variants.DIHEDRAL_MAX_BITS)


@dataclass(frozen=True, slots=True)
class CaseReceipt:
    number: str
    pin: str
    signals: int

    def to_json(self) -> dict[str, object]:
        return {"case": self.number, "pin": self.pin, "signals": self.signals}


@dataclass(frozen=True, slots=True)
class CaseView:
    number: str
    status: CaseStatus
    created_at: datetime
    withdrawn_at: datetime | None
    signals: dict[str, int]
    takedowns: int

    def to_json(self) -> dict[str, object]:
        return {
            "case": self.number,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "withdrawn_at": self.withdrawn_at.isoformat() if self.withdrawn_at else None,
            "signals": self.signals,
            "takedowns": self.takedowns,
        }


VIEW_LABELS = frozenset(variants.view_labels())


def _check_registered_video(n: int, image: SubmittedImage) -> None:
    """A video from the web is held to what a registration keeps (registry.hashing.video,
    rule 4): its digests, and no more frames than its duration allows (under 2 KiB a minute)."""
    kinds = {s.kind for s in image.signals}
    if not {SignalKind.MD5, SignalKind.SHA256} <= kinds:
        raise InvalidInput(f"Image {n}: a video carries its md5 and sha256 digests with its vpdq "
                           "signal (as the submit page computes them).")
    (vpdq,) = [s for s in image.signals if s.kind is SignalKind.VPDQ]
    frames = vpdq.frames()
    duration_ms = VPDQ_HEADER.unpack_from(vpdq.value)[3]
    if len(frames) > registration_budget(duration_ms):
        raise InvalidInput(
            f"Image {n}: a registered video keeps at most {registration_budget(duration_ms)} "
            f"frame hashes for its {duration_ms / 1000:.1f} s; this one has {len(frames)}.")


def validate_submission(images: Sequence[SubmittedImage], settings: Settings,
                        max_images: int = MAX_IMAGES_PER_CASE, *, strict: bool = False) -> None:
    """The rules every registered image meets. ``strict`` (what anyone on the web sends) adds:
    each image carries what the submit page always computes, a PDQ hash with its quality and
    both digests (no bare digests, no lone hash), and its views carry the labels this registry
    makes, each once (an orientation view that does not follow from the image's PDQ hash is
    then left out, see ``SubmittedImage.rows``)."""
    if not images:
        raise InvalidInput("A case needs at least one image.")
    if len(images) > max_images:
        raise InvalidInput(f"A case holds at most {max_images} images.")
    for n, image in enumerate(images, 1):
        kinds = [s.kind for s in image.signals]
        if not kinds:
            raise InvalidInput(f"Image {n} has no signals.")
        if len(set(kinds)) != len(kinds):
            raise InvalidInput(f"Image {n} has the same signal twice.")
        if SignalKind.VPDQ in kinds:
            if set(kinds) - {SignalKind.VPDQ, SignalKind.MD5, SignalKind.SHA256} or image.views:
                raise InvalidInput(f"Image {n}: a video carries its vpdq, md5 and sha256 "
                                   "signals only (its frames are its views).")
            if strict:
                _check_registered_video(n, image)
        elif strict and not {SignalKind.PDQ, SignalKind.MD5, SignalKind.SHA256} <= set(kinds):
            raise InvalidInput(
                f"Image {n}: a case's image carries its pdq, md5 and sha256 signals (as the "
                "submit page computes them); bare digests or a lone hash are not accepted.")
        if SignalKind.PDQ in kinds:
            if image.pdq_quality is None:
                raise InvalidInput(f"Image {n}: a PDQ signal needs its quality score.")
            if image.pdq_quality < settings.pdq_min_quality:
                raise LowQualityHash(
                    f"Image {n} is too plain to match reliably (PDQ quality {image.pdq_quality};"
                    f" at least {settings.pdq_min_quality} is needed)."
                )
        for s in image.signals:
            s.check_not_degenerate()
            if s.kind is SignalKind.LOCAL and s.keypoints > LOCAL_REGISTER_KEYPOINTS:
                raise InvalidInput(
                    f"Image {n}: a registered local signal holds at most "
                    f"{LOCAL_REGISTER_KEYPOINTS} keypoints; this one has {s.keypoints}.")
        if len(image.signals) + len(image.views) > MAX_SIGNALS_PER_IMAGE:
            raise InvalidInput(
                f"Image {n} has more than {MAX_SIGNALS_PER_IMAGE} signals and views.")
        labels = [label for label, _, _ in image.views]
        if len(set(labels)) != len(labels):
            raise InvalidInput(f"Image {n} has the same view twice.")
        for label, view, _quality in image.views:
            if view.kind is not SignalKind.PDQ or not label or len(label) > 32:
                raise InvalidInput(f"Image {n}: views are labelled PDQ hashes.")
            if strict and label not in VIEW_LABELS:
                raise InvalidInput(
                    f"Image {n}: {label!r} is not a view this registry makes; views are "
                    f"{', '.join(sorted(VIEW_LABELS))}.")
            view.check_not_degenerate()


def submit(store: Store, settings: Settings, images: Sequence[SubmittedImage], *,
           strict: bool = False) -> CaseReceipt:
    validate_submission(images, settings, strict=strict)
    pin = generate_pin()
    pin_hash = pins.hash_pin(normalise_pin(pin), settings.pin_kdf_n)
    with store.transaction() as tx:
        bank_id = tx.banks.ensure(SUBMISSIONS_BANK, BankKind.SUBMISSIONS, "Cases from submitters")
        number = _new_number(tx)
        case_id = tx.cases.add(number, pin_hash)
        ids = register_images(tx, settings, images, bank_id, case_id,
                              audit=("submitter", "case_submitted", number))
    return CaseReceipt(number, pin, len(ids))


def register_images(tx: Transaction, settings: Settings, images: Sequence[SubmittedImage],
                    bank_id: int, case_id: int | None, *, audit: tuple[str, str, str]
                    ) -> list[int]:
    """The one path of a registration, a case's or a bank's (validated images, inside the
    caller's transaction): each image's signals with a random grouping key, their additions to
    the change log, and one audit event ``(actor, event, subject)`` counting them."""
    ids = tx.signals.add_images(
        bank_id, case_id, [(image.rows(settings.pdq_min_quality), secrets.token_hex(8))
                           for image in images], PIPELINE_VERSION)
    tx.changes.append(ChangeAction.ADD, ids)
    actor, event, subject = audit
    tx.audit.record(actor, event, subject, {"images": len(images), "signals": len(ids)})
    return ids


def _new_number(tx: Transaction) -> str:
    while True:  # 60 random bits: a collision is astronomically rare, but never reuse one
        number = str(CaseNumber.generate())
        if tx.cases.get(number) is None:
            return number


def status(store: Store, settings: Settings, number: str, pin: str, client: str = "") -> CaseView:
    case = _authenticate(store, settings, number, pin, client)
    return _view(store, case)


def withdraw(store: Store, settings: Settings, number: str, pin: str | None,
             actor: str = "submitter", client: str = "") -> CaseView:
    """Withdraw with the PIN (submitter) or without it (``pin=None``: operator, audited)."""
    case = (_find(store, number) if pin is None
            else _authenticate(store, settings, number, pin, client))
    with store.transaction() as tx:
        fresh = tx.cases.get(case.number, for_update=True)
        assert fresh is not None
        fresh.status.withdraw()  # raises InvalidTransition when already withdrawn
        ids = tx.signals.ids_of_case(fresh.id, SignalStatus.ACTIVE)
        tx.signals.set_status(ids, SignalStatus.WITHDRAWN)
        tx.cases.set_withdrawn(fresh.id)
        tx.changes.append(ChangeAction.WITHDRAW, ids)
        tx.audit.record(actor, "case_withdrawn", fresh.number, {"signals": len(ids)})
    return _view(store, _find(store, number))


def unlock(store: Store, number: str, actor: str = "operator") -> int:
    """An operator clears every wrong-PIN counter of a case (audited); returns how many."""
    case = _find(store, number)
    with store.transaction() as tx:
        cleared = tx.pin_failures.clear(case.id)
        tx.audit.record(actor, "case_unlocked", case.number, {"counters": cleared})
    return cleared


def reset_pin(store: Store, settings: Settings, number: str, actor: str = "operator") -> str:
    """An operator gives a case a new PIN (after checking who asks, out of band): the old PIN
    stops working, every counter is cleared; the new PIN is returned once and stored hashed."""
    case = _find(store, number)
    pin = generate_pin()
    with store.transaction() as tx:
        tx.cases.set_pin_hash(case.id, pins.hash_pin(normalise_pin(pin), settings.pin_kdf_n))
        tx.pin_failures.clear(case.id)
        tx.audit.record(actor, "pin_reset", case.number)
    return pin


def show(store: Store, number: str) -> CaseView:
    return _view(store, _find(store, number))


def list_cases(store: Store, status_filter: CaseStatus | None, limit: int) -> list[CaseView]:
    with store.transaction(write=False) as tx:
        cases = tx.cases.list(status_filter, limit)
    return [_view(store, c) for c in cases]


def find(store: Store, number: str) -> Case:
    """The case of ``number`` (any accepted spelling), or CaseNotFound."""
    return _find(store, number)


def _find(store: Store, number: str) -> Case:
    canonical = str(CaseNumber.parse(number))
    with store.transaction(write=False) as tx:
        case = tx.cases.get(canonical)
    if case is None:
        raise CaseNotFound(f"There is no case {canonical}.")
    return case


def _now() -> datetime:
    return datetime.now(UTC)


def _authenticate(store: Store, settings: Settings, number: str, pin: str,
                  client_address: str) -> Case:
    """Check the PIN in constant time under the per-client lockout (``pins``). An unknown case
    number and a wrong PIN give the same answer in the same time, and count alike."""
    wrong = WrongPin("The case number or PIN is not right.")
    client = pins.client_key(client_address)
    try:
        canonical = str(CaseNumber.parse(number))
    except InvalidInput:
        pins.check_pin(normalise_pin(pin), _dummy(settings))
        raise
    now = _now()
    with store.transaction(write=False) as tx:
        case = tx.cases.get(canonical)
        _, everywhere, _ = tx.pin_failures.get(None, client)
        failed, here, _ = tx.pin_failures.get(case.id, client) if case else (0, None, now)
    for until in (everywhere, here):
        if until is not None and until > now:
            raise _locked(until - now)
    if case is not None and pins.check_pin(normalise_pin(pin), case.pin_hash):
        if failed:  # this client's wrong guesses at this case are forgiven; no one else's
            with store.transaction() as tx:
                tx.pin_failures.clear(case.id, client)
        return case
    if case is None:
        pins.check_pin(normalise_pin(pin), _dummy(settings))
    locked_for = _record_failure(store, settings, case, canonical, client, now)
    if locked_for is not None:
        raise _locked(locked_for)
    raise wrong


def _record_failure(store: Store, settings: Settings, case: Case | None, canonical: str,
                    client: str, now: datetime) -> timedelta | None:
    """Count a wrong PIN for this client (for the case, and over all cases); return how long the
    client is now locked out, if it is."""
    since = now - pins.WINDOW
    locks: list[timedelta] = []
    with store.transaction() as tx:
        tx.pin_failures.purge(since, now)
        targets: list[tuple[int | None, int]] = [(None, settings.pin_client_max_failures)]
        if case is not None:
            limit = settings.pin_max_failures
            if tx.pin_failures.of_case_since(case.id, since) >= settings.pin_case_max_failures:
                limit = 1  # under attack from many addresses: one try per client per lockout
            targets.append((case.id, limit))
        attempts = 0
        for case_id, limit in targets:
            failures, _, last = tx.pin_failures.get(case_id, client)
            failures = 1 if last < since else failures + 1
            lock = pins.lock_after(failures, limit, settings.pin_lockout_s)
            tx.pin_failures.put(case_id, client, failures, now + lock if lock else None, now)
            if lock is not None:
                locks.append(lock)
            if case_id is not None:
                attempts = failures
        if case is not None:  # guesses at numbers that do not exist are not audited per case
            tx.audit.record("submitter", "pin_failed", canonical,
                            {"attempts": attempts, "client": client[:8]})
    return max(locks) if locks else None


def _locked(remaining: timedelta) -> CaseLocked:
    seconds = max(1, int(remaining.total_seconds()) + 1)
    minutes = (seconds + 59) // 60
    return CaseLocked(
        f"Too many wrong PINs from this connection: it may try this case again in {minutes} "
        "minute(s). The case itself is not locked: from another connection its PIN still "
        "works.", seconds)


_DUMMY: dict[int, str] = {}


def _dummy(settings: Settings) -> str:
    if settings.pin_kdf_n not in _DUMMY:
        _DUMMY[settings.pin_kdf_n] = pins.dummy_hash(settings.pin_kdf_n)
    return _DUMMY[settings.pin_kdf_n]


def _view(store: Store, case: Case) -> CaseView:
    with store.transaction(write=False) as tx:
        counts = tx.signals.count_by_case(case.id)
        takedowns = tx.matches.takedowns_of_case(case.id)
    return CaseView(case.number, case.status, case.created_at, case.withdrawn_at, counts,
                    takedowns)
