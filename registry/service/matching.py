"""Matching: batched lookups of query signals, tiers, confidence, and the match records.

Perceptual signals are searched in the in-memory index up to the weak threshold; digests are
looked up in the database (exact, always current). Every hit is then re-read from the database
and dropped unless still active, so a withdrawn hash is never returned even if this process'
index has not caught up yet.

A query whose whole-picture hashes (PDQ, pHash, digests) match a hash of the ``benign`` bank (a
common image an operator found causing false matches) exactly or in the strong tier gets no
whole-picture matches: it is a copy of that image, not of a victim's. Its local matches stand (a
collage may put a benign picture beside a victim's, and the local signal is what finds the
victim's there), and so do its video matches (one frame of a common intro must not hide the
rest). Such queries are counted in the audit record of the request.

Each bank's policy applies per request (``banks``: a few rows, read with the hits): a disabled
bank's hashes match nothing, and a bank with thresholds tighter than the registry's (never
looser: those are the measured false-positive bar and the search radius) tiers its perceptual
hits by its own.

A video query (a ``vpdq`` signal: its kept frame hashes) looks each usable frame up in the PDQ
index, where a registered video's frames are PDQ signals labelled ``frame@<ms>``. Per query
and registered image the frame hits make one ``vpdq`` match: for a registered still, when any
frame matches it (tiered as PDQ); for a registered video, when at least ``VIDEO_MIN_FRAMES``
query frames (or all of a shorter query's) match frames of it in the same time order (the
longest chain of pairs whose registered times never go back; at least two distinct frames on
each side) and that chain holds ``VIDEO_MIN_SHARE`` (a quarter) of the query's usable frames or
of the registered video's frames; strong with ``VIDEO_STRONG_FRAMES`` and
``VIDEO_STRONG_SHARE`` and a frame within the PDQ strong threshold. These are first choices,
to be set by ``bench/accuracy_video.py``. A still query
matches a registered video's frame as any PDQ hit does (signal ``pdq``).

A pHash hit is returned only beside another signal of the same query matching the same
registered image (PDQ, local or a digest): 64 bits matched up to 7 apart are a supporting
signal, and alone they would be an oracle. A platform probing with random pHash values lands
within 7 bits of one of a million registered ones ~66,000 times a day at its rate limit, and
each such hit, with 64 one-bit variants in one request, spells the registered pHash out.
"""

from __future__ import annotations

import bisect
import secrets
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from registry.config import Settings
from registry.domain import (
    Bank,
    BankKind,
    Match,
    Query,
    QueryResult,
    RegisteredSignal,
    SignalKind,
    SignalStatus,
    Tier,
    confidence,
    frame_ms,
    local_confidence,
)
from registry.errors import InvalidInput, TooManyQueries
from registry.hashing import ImageSignals
from registry.index.local import Keypoints
from registry.service.indexing import IndexKeeper
from registry.store import Store


@dataclass(frozen=True, slots=True)
class _Hit:
    query: int
    signal_id: int
    kind: SignalKind
    distance: int
    tier: Tier
    inliers: int | None = None
    coverage: float | None = None
    frames: int | None = None

    @property
    def order(self) -> tuple[int, int, int, int]:
        # Within a query: the strongest evidence first (for local, the most inliers; for a
        # video, the most frames).
        rank = (-(self.inliers or 0) if self.kind is SignalKind.LOCAL
                else -(self.frames or 0) if self.kind is SignalKind.VPDQ else self.distance)
        return (self.query, 0 if self.tier is Tier.EXACT else 1, rank, self.signal_id)


def query_of_image(ref: str, image: ImageSignals, settings: Settings) -> Query:
    """The query for an image hashed here. A PDQ hash below the quality floor is left out (a
    featureless image matches other featureless images); digests and pHash still count."""
    signals = [image.phash, image.md5, image.sha256]
    if image.local is not None:
        signals.append(image.local)
    if image.pdq_quality >= settings.pdq_min_quality:
        signals.insert(0, image.pdq)
    for view in (image.content, image.frame):
        if view is not None and view.quality >= settings.pdq_min_quality:
            signals.insert(1, view.pdq)
    usable = []
    for s in signals:
        try:
            s.check_not_degenerate()
            usable.append(s)
        except InvalidInput:
            continue
    return Query(ref, tuple(usable))


def match(store: Store, keeper: IndexKeeper, settings: Settings, queries: Sequence[Query],
          platform_id: int | None = None, actor: str = "operator") -> list[QueryResult]:
    if len(queries) > settings.max_queries:
        raise TooManyQueries(
            f"A request holds at most {settings.max_queries} queries; this one has {len(queries)}.")
    keeper.sync()
    hits = (_perceptual_hits(keeper, settings, queries) + _local_hits(keeper, settings, queries)
            + _exact_hits(store, queries))
    frame_hits, usable = _frame_hits(keeper, settings, queries)
    if not hits and not frame_hits:
        _audit(store, actor, len(queries), [])
        return [QueryResult(q.id) for q in queries]
    with store.transaction(write=False) as tx:
        by_id = tx.banks.by_id()
        registered = tx.signals.get_many(
            [*(h.signal_id for h in hits), *(f[2] for f in frame_hits)], by_id)
        lengths = tx.signals.frames_per_image(
            reg.image_key for f in frame_hits if (reg := registered.get(f[2])) is not None
            and frame_ms(reg.label) is not None) if frame_hits else {}
    hits += _video_hits(frame_hits, usable, lengths, registered, settings)
    banks = {b.name: b for b in by_id.values()}
    hits = _by_bank_policy(hits, registered, banks, settings)
    benign = {h.query for h in hits if h.tier is not Tier.WEAK and not h.kind.packed
              and (reg := registered.get(h.signal_id)) is not None
              and reg.bank_kind is BankKind.BENIGN and reg.status is SignalStatus.ACTIVE}
    def image_of(reg: RegisteredSignal) -> str | int:
        return reg.image_key or reg.case_number or reg.id

    corroborated = {(h.query, image_of(reg)) for h in hits if h.kind is not SignalKind.PHASH
                    and (reg := registered.get(h.signal_id)) is not None
                    and reg.status is SignalStatus.ACTIVE}
    per_query: list[list[Match]] = [[] for _ in queries]
    records = []
    # One match per query, signal kind and case (or, outside cases, registered image): the
    # closest of its views.
    seen: set[tuple[int, SignalKind, str | int]] = set()
    for h in sorted(hits, key=lambda h: h.order):
        reg = registered.get(h.signal_id)
        if (reg is None or reg.status is not SignalStatus.ACTIVE
                or reg.bank_kind is BankKind.BENIGN  # suppresses; never a match itself
                or (h.query in benign and not h.kind.packed)
                or (h.kind is SignalKind.PHASH and (h.query, image_of(reg)) not in corroborated)):
            continue
        key = (h.query, h.kind, reg.case_number or reg.image_key or h.signal_id)
        if key in seen:
            continue
        seen.add(key)
        m = _match(h, reg, settings, banks.get(reg.bank))
        per_query[h.query].append(m)
        records.append((m.match_id, platform_id, h.signal_id, h.distance, h.tier.value,
                        queries[h.query].id))
    with store.transaction() as tx:
        tx.matches.add_many(records)
        details: dict[str, object] = {"queries": len(queries),
                                      "match_ids": [r[0] for r in records]}
        if benign:
            details["benign_suppressed"] = len(benign)
        tx.audit.record(actor, "match", "", details)
    return [QueryResult(q.id, tuple(ms)) for q, ms in zip(queries, per_query, strict=True)]


def _by_bank_policy(hits: list[_Hit], registered: dict[int, RegisteredSignal],
                    banks: dict[str, Bank], settings: Settings) -> list[_Hit]:
    """Hits on disabled banks go (a disabled benign bank suppresses nothing either); a
    perceptual hit takes its bank's tier, which may be weaker or none where the bank's
    thresholds are tighter than the registry's."""
    out = []
    for h in hits:
        reg = registered.get(h.signal_id)
        bank = banks.get(reg.bank) if reg is not None else None
        if bank is not None and not bank.enabled:
            continue
        if bank is not None and bank.thresholds and h.kind.perceptual:
            tier = bank.tier(h.kind, h.distance, settings.thresholds(h.kind))
            if tier is None:
                continue
            h = replace(h, tier=tier)
        out.append(h)
    return out


def _audit(store: Store, actor: str, queries: int, match_ids: list[str]) -> None:
    with store.transaction() as tx:
        tx.audit.record(actor, "match", "", {"queries": queries, "match_ids": match_ids})


def _perceptual_hits(keeper: IndexKeeper, settings: Settings, queries: Sequence[Query]
                     ) -> list[_Hit]:
    hits: list[_Hit] = []
    for kind in (SignalKind.PDQ, SignalKind.PHASH):
        which = [(qi, s) for qi, q in enumerate(queries) for s in q.signals if s.kind is kind]
        if not which:
            continue
        thresholds = settings.thresholds(kind)
        results = keeper.search(kind, [s.value for _, s in which], thresholds.weak)
        for (qi, _), result in zip(which, results, strict=True):
            for sid, dist in zip(result.ids.tolist(), result.distances.tolist(), strict=True):
                tier = thresholds.tier(dist)
                assert tier is not None  # searched up to the weak threshold
                hits.append(_Hit(qi, sid, kind, dist, tier))
    return hits


def _local_hits(keeper: IndexKeeper, settings: Settings, queries: Sequence[Query]
                ) -> list[_Hit]:
    """Registered images verified inside each query's local signal (registry.index.local)."""
    hits: list[_Hit] = []
    thresholds = settings.local_thresholds()
    for qi, q in enumerate(queries):
        for s in q.signals:
            if s.kind is not SignalKind.LOCAL:
                continue
            found = keeper.search_local(Keypoints.of(s), settings.local_radius, thresholds.weak)
            for v in found:
                tier = thresholds.tier(v.inliers, v.coverage)
                if tier is not None:
                    hits.append(_Hit(qi, v.signal_id, SignalKind.LOCAL, v.distance, tier,
                                     v.inliers, v.coverage))
    return hits


VIDEO_MIN_FRAMES = 2  # query frames in time order for a video to match a registered video
VIDEO_STRONG_FRAMES = 5
VIDEO_MIN_SHARE = 0.25  # of the query's frames, or of the registered video's, in that order
VIDEO_STRONG_SHARE = 0.8


def _frame_hits(keeper: IndexKeeper, settings: Settings, queries: Sequence[Query]
                ) -> tuple[list[tuple[int, int, int, int]], Counter[int]]:
    """(query, frame time in ms, registered signal id, distance) for every usable frame of
    every vpdq query signal within the PDQ weak threshold, and the usable frames per query."""
    which = [(qi, ms, frame) for qi, q in enumerate(queries) for s in q.signals
             if s.kind is SignalKind.VPDQ for ms, quality, frame in s.frames()
             if quality >= settings.pdq_min_quality]
    usable = Counter(qi for qi, _ in {(qi, ms) for qi, ms, _ in which})  # distinct times
    if not which:
        return [], usable
    results = keeper.search(SignalKind.PDQ, [f.value for _, _, f in which],
                            settings.thresholds(SignalKind.PDQ).weak)
    out = [(qi, ms, sid, dist) for (qi, ms, _), result in zip(which, results, strict=True)
           for sid, dist in zip(result.ids.tolist(), result.distances.tolist(), strict=True)]
    return out, usable


def _video_hits(frame_hits: list[tuple[int, int, int, int]], usable: Counter[int],
                lengths: dict[str, int], registered: dict[int, RegisteredSignal],
                settings: Settings) -> list[_Hit]:
    """One vpdq hit per (query, registered image) from the frame hits (the module's rule)."""
    groups: dict[tuple[int, str | int], list[tuple[int, int | None, int, int]]] = (
        defaultdict(list))
    for qi, q_ms, sid, dist in frame_hits:
        reg = registered.get(sid)
        if reg is None or reg.status is not SignalStatus.ACTIVE:
            continue
        image = reg.image_key or reg.case_number or reg.id
        groups[(qi, image)].append((q_ms, frame_ms(reg.label), dist, sid))
    thresholds = settings.thresholds(SignalKind.PDQ)
    hits = []
    for (qi, image), pairs in groups.items():
        frames_of_video = [p for p in pairs if p[1] is not None]
        if frames_of_video:
            chain = _in_time_order(frames_of_video)
            matched = len({q for q, _, _, _ in chain})
            distinct = len({r for _, r, _, _ in chain})
            registered_frames = max(1, lengths.get(str(image), 0))
            # The share of the query's frames in the chain, or of the registered video's (a
            # registered clip inside a longer query video).
            share = max(matched / usable[qi], distinct / registered_frames)
            # Frames in order on both sides: one registered frame matched by many query frames
            # (a static shot, or a reversed copy's neighbouring frames) counts once.
            if (min(matched, distinct) < min(VIDEO_MIN_FRAMES, usable[qi], registered_frames)
                    or share < VIDEO_MIN_SHARE):
                continue
            best = min(chain, key=lambda p: p[2])
            strong = (matched >= min(VIDEO_STRONG_FRAMES, usable[qi])
                      and share >= VIDEO_STRONG_SHARE and best[2] <= thresholds.strong)
            tier, distance = (Tier.STRONG if strong else Tier.WEAK), best[2]
        else:  # a registered still: any frame of the query matching it
            best = min(pairs, key=lambda p: p[2])
            matched = len({q for q, _, _, _ in pairs})
            found = thresholds.tier(best[2])
            assert found is not None  # searched up to the weak threshold
            tier, distance = found, best[2]
        hits.append(_Hit(qi, best[3], SignalKind.VPDQ, distance, tier,
                         coverage=round(matched / usable[qi], 4), frames=matched))
    return hits


def _in_time_order(pairs: list[tuple[int, int | None, int, int]]
                   ) -> list[tuple[int, int | None, int, int]]:
    """The longest chain of (query ms, registered ms, ...) pairs with both times never going
    back; pairs of one query frame are ordered by falling registered time so that at most one
    of them (or several of equal time) joins the chain. O(n log n)."""
    ordered = sorted(pairs, key=lambda p: (p[0], -(p[1] or 0)))
    tails: list[int] = []  # tails[k]: registered time ending the best chain of length k + 1
    ends: list[int] = []  # the index in ``ordered`` of that chain's last pair
    back: list[int] = [-1] * len(ordered)
    for i, p in enumerate(ordered):
        r = p[1] or 0
        k = bisect.bisect_right(tails, r)
        back[i] = ends[k - 1] if k else -1
        if k == len(tails):
            tails.append(r)
            ends.append(i)
        else:
            tails[k], ends[k] = r, i
    chain, i = [], ends[-1] if ends else -1
    while i >= 0:
        chain.append(ordered[i])
        i = back[i]
    return chain[::-1]


def _exact_hits(store: Store, queries: Sequence[Query]) -> list[_Hit]:
    hits: list[_Hit] = []
    wanted = {kind: [(qi, s.hex) for qi, q in enumerate(queries) for s in q.signals
                     if s.kind is kind] for kind in (SignalKind.MD5, SignalKind.SHA256)}
    if not any(wanted.values()):
        return hits
    with store.transaction(write=False) as tx:  # one round trip for both digests
        for kind, which in wanted.items():
            found = tx.signals.find_exact(kind, [v for _, v in which]) if which else {}
            for qi, value in which:
                hits.extend(_Hit(qi, sid, kind, 0, Tier.EXACT) for sid in found.get(value, []))
    return hits


def _match(hit: _Hit, reg: RegisteredSignal, settings: Settings, bank: Bank | None) -> Match:
    if hit.kind is SignalKind.VPDQ:
        pdq = settings.thresholds(SignalKind.PDQ)
        # A weak video match may hold a close frame: scored at no closer than the weak band's
        # nearest distance, so its confidence stays in the weak band (0.3-0.7).
        scored = hit.distance if hit.tier is Tier.STRONG else max(hit.distance, pdq.strong + 1)
        return Match(
            match_id="m_" + secrets.token_hex(10), signal=hit.kind, distance=hit.distance,
            tier=hit.tier, bank=reg.bank,
            confidence=confidence(hit.tier, scored, pdq, reg.not_violating),
            signal_id=hit.signal_id, case=reg.case_number, coverage=hit.coverage,
            frames=hit.frames)
    if hit.kind is SignalKind.LOCAL:
        return Match(
            match_id="m_" + secrets.token_hex(10), signal=hit.kind, distance=hit.distance,
            tier=hit.tier, bank=reg.bank,
            confidence=local_confidence(hit.tier, hit.inliers or 0, settings.local_thresholds(),
                                        reg.not_violating),
            signal_id=hit.signal_id, case=reg.case_number, inliers=hit.inliers,
            coverage=hit.coverage)
    thresholds = None
    if hit.kind.perceptual:
        thresholds = settings.thresholds(hit.kind)
        if bank is not None:
            thresholds = bank.thresholds.get(hit.kind, thresholds)
    return Match(
        match_id="m_" + secrets.token_hex(10),
        signal=hit.kind,
        distance=hit.distance,
        tier=hit.tier,
        bank=reg.bank,
        confidence=confidence(hit.tier, hit.distance, thresholds, reg.not_violating),
        signal_id=hit.signal_id,
        case=reg.case_number,
    )
