"""Video signals (registry/hashing/video.py) on clips PyAV makes in memory: the sampling and
dedup rules, the packed value, stills matching their frames, and every bad input refused
quickly with a clear error."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest

from registry import errors
from registry.hashing import compute_signals
from registry.hashing.video import (
    CANDIDATE_FPS,
    DEDUP_BITS,
    FRAME_BYTES,
    FRAMES_PER_MINUTE,
    VideoFrames,
    VideoOptions,
    candidates,
    compute_video_signals,
    container_of,
    keep,
)
from tests.images import boxed, clip, encode, pan, photo_like, slideshow


def bits(a: bytes, b: bytes) -> int:
    return int.from_bytes(bytes(x ^ y for x, y in zip(a, b, strict=True)), "big").bit_count()


@pytest.fixture(scope="module")
def panned() -> bytes:
    return clip(pan(1, 6, travel=0.06), fps=24)  # slow: consecutive candidates 0.25% apart


@pytest.fixture(scope="module")
def slides() -> bytes:
    return clip(slideshow([2, 3, 4], 2.0), fps=24)


def test_containers_are_recognised_from_their_first_bytes(panned):
    assert container_of(panned) == "mov"
    assert container_of(clip(pan(5, 1), fmt="webm", codec="libvpx-vp9")) == "matroska"
    assert container_of(clip(pan(5, 1), fmt="avi", codec="mpeg4")) == "avi"
    assert container_of(boxed(photo_like(1), "HEIF")) is None  # a still, not a video
    assert container_of(boxed(photo_like(1), "AVIF")) is None
    assert container_of(encode(photo_like(1), "JPEG")) is None
    assert container_of(b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://example.com/a.ts\n") is None


def test_candidates_are_four_per_second_and_every_one_is_near_a_kept_frame(panned):
    found, boxed, framed, duration, size = candidates(panned)
    assert boxed == framed == []  # not asked for
    assert size == (640, 360)
    assert 5_900 <= duration <= 6_000
    assert [f.ms // 250 for f in found] == list(range(len(found)))  # one per quarter second
    assert len(found) == 6 * CANDIDATE_FPS
    kept = keep(found, duration, registration=False)  # a query's: no storage budget
    assert kept.dedup_bits == DEDUP_BITS
    assert 1 < len(kept.frames) < len(found)
    for f in found:  # rule 4: each candidate is within d bits of the last frame kept before it
        before = [k for k in kept.frames if k.ms <= f.ms]
        assert bits(before[-1].pdq, f.pdq) <= kept.dedup_bits


def test_a_slideshow_keeps_one_frame_per_picture(slides):
    v = compute_video_signals(slides)
    assert [f.ms for f in v.frames.frames] == [0, 2000, 4000]
    for f, seed in zip(v.frames.frames, (2, 3, 4), strict=True):
        still = compute_signals(encode(photo_like(seed, (640, 360)), "PNG"))
        assert bits(f.pdq, bytes.fromhex(still.pdq.hex)) <= 16  # a screenshot matches its frame


def test_the_frames_fit_the_budget_per_minute():
    frames = [np.asarray(photo_like(100 + i, (160, 96))) for i in range(70 * CANDIDATE_FPS)]
    data = clip(frames, fps=CANDIDATE_FPS)  # 70 s of a different picture every candidate
    v = compute_video_signals(data, registration=True)
    assert len(v.frames.frames) <= FRAMES_PER_MINUTE * v.frames.duration_ms / 60_000
    times = [f.ms for f in v.frames.frames]  # evenly spaced among the distinct frames
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) - min(gaps) <= 500
    assert len(v.frames.pack()) <= 2048 * 70 / 60  # under 2 KiB per minute
    query = compute_video_signals(data)  # a query keeps every distinct candidate
    assert len(query.frames.frames) > 2 * len(v.frames.frames)


def test_the_packed_value_round_trips_and_bad_values_are_refused(panned):
    v = compute_video_signals(panned).frames
    packed = v.pack()
    assert len(packed) == 8 + FRAME_BYTES * len(v.frames)
    assert VideoFrames.unpack(packed) == v
    for bad in (packed[:5], packed[:-1], b"\x02" + packed[1:],
                packed[:2] + struct.pack(">H", 0) + packed[4:8]):
        with pytest.raises(errors.InvalidInput):
            VideoFrames.unpack(bad)
    swapped = packed[:8] + packed[8 + FRAME_BYTES:8 + 2 * FRAME_BYTES] + packed[8:8 + FRAME_BYTES]
    with pytest.raises(errors.InvalidInput, match="time order"):
        VideoFrames.unpack(swapped + packed[8 + 2 * FRAME_BYTES:])


def test_webm_avi_and_audio_tracks_hash_like_mp4():
    frames = pan(7, 2)
    reference = compute_video_signals(clip(frames)).frames.frames
    for kw in ({"fmt": "webm", "codec": "libvpx-vp9"}, {"fmt": "avi", "codec": "mpeg4"},
               {"audio": True}):
        other = compute_video_signals(clip(frames, **kw)).frames.frames
        assert abs(len(other) - len(reference)) <= 2, kw
        assert bits(other[0].pdq, reference[0].pdq) <= 20, kw


def test_digests_are_of_the_file(panned):
    import hashlib

    v = compute_video_signals(panned)
    assert v.md5.hex == hashlib.md5(panned).hexdigest()
    assert v.sha256.hex == hashlib.sha256(panned).hexdigest()


@pytest.mark.parametrize(("data", "error"), [
    (b"", errors.EmptyImage),
    (b"just some text, not a video" * 10, errors.NotAVideo),
    (b"\x1a\x45\xdf\xa3" + bytes(200), errors.NotAVideo),  # a Matroska header and nothing else
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(100), errors.NotAVideo),
])
def test_what_is_not_a_video_is_refused(data, error):
    with pytest.raises(error) as e:
        compute_video_signals(data)
    assert e.value.message.endswith(".") and "Traceback" not in e.value.message


def test_audio_only_is_refused():
    import io

    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        sound = container.add_stream("aac", rate=16_000)
        for _ in range(10):
            tone = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                              layout="mono")
            tone.sample_rate = 16_000
            container.mux(sound.encode(tone))
        container.mux(sound.encode())
    with pytest.raises(errors.NotAVideo, match="no video stream"):
        compute_video_signals(out.getvalue())


def test_limits_refuse_before_or_while_decoding(panned):
    with pytest.raises(errors.FileTooLarge):
        compute_video_signals(panned, VideoOptions(max_bytes=len(panned) - 1))
    with pytest.raises(errors.VideoTooLarge, match="640x360"):
        compute_video_signals(panned, VideoOptions(max_pixels=640 * 360 - 1))
    with pytest.raises(errors.VideoTooLarge, match="lasts 6 s; the limit is 5 s"):
        compute_video_signals(panned, VideoOptions(max_seconds=5))


def test_a_truncated_video_keeps_the_frames_before_the_cut_or_is_refused(panned):
    half = panned[: len(panned) // 2]
    try:
        v = compute_video_signals(half)
    except errors.NotAVideo as e:  # the index (moov) may be at the end: nothing to read
        assert "Traceback" not in e.message
    else:
        assert len(v.frames.frames) > 0


def test_flat_video_is_refused_as_too_plain():
    data = clip([np.full((96, 160, 3), 80, np.uint8)] * 24)
    with pytest.raises(errors.NotAVideo, match="too plain"):
        compute_video_signals(data)


def test_an_endless_stream_is_stopped_by_its_timestamps_or_its_frame_count(panned, monkeypatch):
    import registry.hashing.video as video

    monkeypatch.setattr(video, "_declared_seconds", lambda container, stream: None)  # no header
    with pytest.raises(errors.VideoTooLarge, match="runs past 5 s"):
        compute_video_signals(panned, VideoOptions(max_seconds=5))
    monkeypatch.setattr(video, "MAX_FPS", 2)  # frames without advancing time: capped by count
    with pytest.raises(errors.VideoTooLarge, match="more than 20 frames"):
        compute_video_signals(panned, VideoOptions(max_seconds=10))


def test_a_query_carries_content_frames_when_its_frames_have_bars():
    frames = pan(8, 3, travel=0.1)
    barred = [np.vstack([np.full((60, 640, 3), 255, np.uint8), f]) for f in frames]
    query = compute_video_signals(clip(barred))
    assert query.content is not None
    registered = compute_video_signals(clip(frames), registration=True)
    assert registered.content is None  # one set of frames: each content box
    inside, whole = query.content.frames[0].pdq, query.frames.frames[0].pdq
    original = registered.frames.frames[0].pdq
    assert bits(inside, original) < bits(whole, original)
    assert bits(inside, original) <= 24
    assert "vpdq_content" in query.to_json()
