"""Video signals: the file's digests and a bounded set of frame PDQ hashes with timestamps.

The definition (one place; the submit page's port follows it):

1. **Containers**: only MP4/QuickTime/3GP (ISO base media, not a HEIF/AVIF still), Matroska/
   WebM and AVI, recognised by their first bytes and opened with that demuxer named, so FFmpeg
   never probes its other formats (playlists and concat lists name other files and URLs).
   Decoded in memory by PyAV (FFmpeg) from the bytes given: no file is ever written.
2. **Limits**, before a frame is decoded where the container says: file size
   (``max_video_bytes``), frame size (``max_video_pixels``), duration (``max_video_seconds``,
   from the header and again from the frames' own timestamps while decoding), and a cap on
   decoded frames (``MAX_FPS`` per second of the limit) so an endless or timestamp-less stream
   ends quickly. Only the first video stream is read; audio is ignored; a file with no video
   stream or no decodable frame is refused.
3. **Candidates**: the first frame at or after each multiple of 1 / ``CANDIDATE_FPS`` seconds
   of presentation time (from the first frame's), converted to RGB and, when its short side is
   above ``FRAME_SIZE``, reduced (area filter) to that short side; its PDQ is computed as for
   a still image (``signals.pdq_of``), so a screenshot of the video matches its frame. A
   registration hashes each candidate's frame box (``content.content_box`` with
   ``FRAME_RULES``, the conservative peel: letterbox and pillarbox bars, a border of the edge's
   own colour; the whole frame where nothing is peeled).
4. **Kept frames**: a candidate of PDQ quality >= ``MIN_QUALITY`` is kept when it is more than
   ``d = DEDUP_BITS`` bits from the last kept frame: so every candidate is within ``d`` bits of
   a kept frame (the last one kept before it). Past the budget (for a registration
   ``FRAMES_PER_MINUTE`` per minute of its duration, at least ``MIN_FRAMES``, 37 bytes each:
   under 2 KiB per minute of video; for a query ``VPDQ_MAX_FRAMES``, queries not being
   stored) that many are taken evenly spaced among them (a pan or a fast cut): the guarantee
   then no longer holds, but a copy's candidates at the same times find them.
5. **Query frames**: the whole frame; as a still query carries its content-box and frame-box
   PDQs, each candidate's content box (caption bars, borders, the chrome of a screen
   recording) and frame box, kept by rule 4 as the signals ``vpdq_content`` and ``vpdq_frame``
   when any frame had such a box (and they differ).

The value of a ``vpdq`` signal (:meth:`VideoFrames.pack`; the layout is
``registry.domain.VPDQ_HEADER``/``VPDQ_FRAME``): a version byte, ``d``, the frame count (u16),
the duration in milliseconds (u32), then per kept frame its timestamp in milliseconds (u32),
its PDQ quality (u8) and its 32-byte PDQ hash. Registered, each frame becomes a PDQ signal
labelled ``frame@<ms>`` (``registry.service.cases``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from registry.config import Settings, default
from registry.domain import VPDQ_FRAME, VPDQ_HEADER, VPDQ_MAX_FRAMES, Signal, SignalKind
from registry.errors import EmptyImage, FileTooLarge, NotAVideo, VideoTooLarge
from registry.hashing import isobmff
from registry.hashing.content import FRAME_RULES, TrimRules, content_box, work_array
from registry.hashing.signals import digests_of, pdq_of, shaved

VERSION = 1
CANDIDATE_FPS = 4
FRAME_SIZE = 512  # short side at most, as a still registration's views are computed
MIN_QUALITY = 50  # as for stills: flatter frames (fades, black) match too much
DEDUP_BITS = 16
FRAMES_PER_MINUTE = 54  # 54 x 37 + 8 bytes: under 2 KiB per minute (registrations)
MIN_FRAMES = 4  # a registration keeps at least this many, however short
MAX_FPS = 240  # decoded frames per second of the duration limit
FRAME_BYTES = VPDQ_FRAME.size


@dataclass(frozen=True, slots=True)
class VideoOptions:
    max_bytes: int = default("max_video_bytes")
    max_pixels: int = default("max_video_pixels")
    max_seconds: int = default("max_video_seconds")

    @classmethod
    def of(cls, settings: Settings) -> VideoOptions:
        return cls(settings.max_video_bytes, settings.max_video_pixels, settings.max_video_seconds)


@dataclass(frozen=True, slots=True)
class Frame:
    ms: int  # presentation time from the first frame, in milliseconds
    quality: int
    pdq: bytes  # 32 bytes, Meta's bit order (signals.pdq_of)

    @property
    def hex(self) -> str:
        return self.pdq.hex()


@dataclass(frozen=True, slots=True)
class VideoFrames:
    """The kept frames of one video, with the dedup distance used and its duration."""

    frames: tuple[Frame, ...]
    dedup_bits: int
    duration_ms: int

    def pack(self) -> bytes:
        head = VPDQ_HEADER.pack(VERSION, self.dedup_bits, len(self.frames), self.duration_ms)
        return head + b"".join(VPDQ_FRAME.pack(f.ms, f.quality, f.pdq) for f in self.frames)

    @property
    def signal(self) -> Signal:
        return Signal(SignalKind.VPDQ, self.pack())

    @property
    def text(self) -> str:
        return self.signal.text

    @classmethod
    def unpack(cls, data: bytes) -> VideoFrames:
        """The frames of a packed value; raises ``InvalidHash`` when it is not well formed."""
        frames = Signal(SignalKind.VPDQ, data).frames()
        _, dedup, _, duration = VPDQ_HEADER.unpack_from(data)
        return cls(tuple(Frame(ms, q, pdq.value) for ms, q, pdq in frames), dedup, duration)


@dataclass(frozen=True, slots=True)
class VideoSignals:
    md5: Signal
    sha256: Signal
    frames: VideoFrames
    width: int
    height: int
    content: VideoFrames | None = None  # a query's content-box frames, where any was peeled
    framed: VideoFrames | None = None  # a query's frame-box frames (conservative), likewise

    def signals(self) -> tuple[Signal, ...]:
        inside = tuple(v.signal for v in (self.content, self.framed) if v is not None)
        return (self.md5, self.sha256, self.frames.signal, *inside)

    def to_json(self) -> dict[str, object]:
        inside = {name: v.text for name, v in (("vpdq_content", self.content),
                                               ("vpdq_frame", self.framed)) if v is not None}
        return {"md5": self.md5.hex, "sha256": self.sha256.hex, "vpdq": self.frames.text,
                **inside,
                "frames": len(self.frames.frames), "duration_ms": self.frames.duration_ms,
                "dedup_bits": self.frames.dedup_bits, "width": self.width,
                "height": self.height}


# --- containers -------------------------------------------------------------------------------
def container_of(data: bytes) -> str | None:
    """The FFmpeg demuxer for a supported container, from the first bytes; None otherwise."""
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # also WebM
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if len(data) >= 12 and data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        if data[4:8] == b"ftyp" and isobmff.family(data) is not None:
            return None  # a HEIF or AVIF still
        return "mov"
    return None


def _pdq_bytes(img: Image.Image) -> tuple[bytes, int]:
    signal, quality = pdq_of(img)
    return bytes.fromhex(signal.hex), quality


def _reduced(frame: object, width: int, height: int) -> Image.Image:
    short = min(width, height)
    if short > FRAME_SIZE:
        scale = FRAME_SIZE / short
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        array = frame.to_ndarray(format="rgb24", width=w, height=h,  # type: ignore[attr-defined]
                                 interpolation="AREA")
    else:
        array = frame.to_ndarray(format="rgb24")  # type: ignore[attr-defined]
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def candidates(data: bytes, options: VideoOptions = VideoOptions(), *, content: bool = False,
               frame_box: bool = False
               ) -> tuple[list[Frame], list[Frame], list[Frame], int, tuple[int, int]]:
    """Every candidate frame (rule 3) of every quality; with ``content`` / ``frame_box``, each
    candidate's content box / frame box as well (rules 3 and 5; the whole frame where nothing
    is peeled, an empty list when no frame had such a box); the duration in ms and the frame
    size."""
    import av  # PyAV: FFmpeg's demuxers and decoders, in memory

    if not data:
        raise EmptyImage("The file is empty.")
    if len(data) > options.max_bytes:
        raise FileTooLarge(f"The video is {len(data)} bytes; the limit is {options.max_bytes} "
                           "bytes.")
    demuxer = container_of(data)
    if demuxer is None:
        raise NotAVideo("The file is not a video in a supported container (MP4, MOV, 3GP, "
                        "WebM, MKV, AVI).")
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer,
                            options={"enable_drefs": "0"} if demuxer == "mov" else {})
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise NotAVideo(f"The file is not a readable video: {_reason(e)}.") from None
    with container:
        if not container.streams.video:
            raise NotAVideo("The file holds no video stream (audio only?).")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # slice threads only: frames in order, none held back
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_size(width, height, options)
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > options.max_seconds:
            raise VideoTooLarge(f"The video lasts {declared:.0f} s; the limit is "
                                f"{options.max_seconds} s.")
        out: list[Frame] = []
        boxed: list[Frame] = []
        framed: list[Frame] = []
        first: Fraction | None = None
        decoded, next_at, last_ms = 0, Fraction(0), 0
        limit = options.max_seconds * MAX_FPS
        step = Fraction(1, CANDIDATE_FPS)
        try:
            for frame in container.decode(stream):
                decoded += 1
                if decoded > limit:
                    raise VideoTooLarge(f"The video has more than {limit} frames within its "
                                        f"{options.max_seconds} s limit.")
                _check_size(frame.width, frame.height, options)
                if frame.pts is None or frame.time_base is None:
                    continue
                at = Fraction(frame.pts) * frame.time_base
                if first is None:
                    first = at
                since = at - first
                if since < 0:
                    continue  # a frame shown before the first (reordering): not a candidate
                if since > options.max_seconds:
                    raise VideoTooLarge(f"The video runs past {options.max_seconds} s; the "
                                        "limit stops endless streams.")
                last_ms = max(last_ms, int(since * 1000))
                if since < next_at:
                    continue
                picture = _reduced(frame, frame.width, frame.height)
                pdq, quality = _pdq_bytes(picture)
                out.append(Frame(int(since * 1000), quality, pdq))
                boxes: list[tuple[TrimRules | None, list[Frame]]] = (
                    [(None, boxed)] if content else [])
                if frame_box:
                    boxes.append((FRAME_RULES, framed))
                whole = out[-1]
                work = work_array(picture) if boxes else None
                for rules, into in boxes:
                    box = content_box(picture, rules, work=work)
                    if shaved(box, picture):
                        pdq, quality = _pdq_bytes(picture.crop(box))
                        into.append(Frame(whole.ms, quality, pdq))
                    else:
                        into.append(whole)
                next_at = (math.floor(since / step) + 1) * step
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if not out:
                raise NotAVideo(f"No frame of the video could be decoded: {_reason(e)}.") from None
            # A damaged tail: the frames before it stand (a partly downloaded clip).
    if not out:
        raise NotAVideo("No frame of the video could be decoded.")
    if boxed == out:
        boxed = []
    if framed == out:
        framed = []
    return out, boxed, framed, last_ms, (width, height)


def registration_budget(duration_ms: int) -> int:
    """Rule 4: the most frames a registration of a video this long keeps."""
    return max(MIN_FRAMES, math.floor(FRAMES_PER_MINUTE * duration_ms / 60_000))


def keep(frames: list[Frame], duration_ms: int, registration: bool = True) -> VideoFrames:
    """Rule 4: the kept frames (a registration's within its storage budget, at least
    ``MIN_FRAMES``; a query's up to ``VPDQ_MAX_FRAMES``), with the dedup distance used."""
    budget = registration_budget(duration_ms) if registration else VPDQ_MAX_FRAMES
    usable = [f for f in frames if f.quality >= MIN_QUALITY]
    if not usable:
        raise NotAVideo("Every frame of the video is too plain (for example black or one "
                        "colour) to be recognised reliably.")
    values = [int.from_bytes(f.pdq, "big") for f in usable]
    kept = [0]
    for i in range(1, len(usable)):
        if (values[i] ^ values[kept[-1]]).bit_count() > DEDUP_BITS:
            kept.append(i)
    if len(kept) > budget:  # evenly in time among the distinct frames: a copy's frames at
        step = (len(kept) - 1) / (budget - 1)  # the same times then find theirs
        kept = [kept[round(j * step)] for j in range(budget)]
    return VideoFrames(tuple(usable[i] for i in kept), DEDUP_BITS, duration_ms)


def compute_video_signals(data: bytes, options: VideoOptions = VideoOptions(), *,
                          registration: bool = False) -> VideoSignals:
    """Digests of the file and its kept frame hashes (the module's rules 1-5): a registration's
    within the storage budget; a query's with its content-box frames too."""
    found, boxed, framed, duration, (width, height) = candidates(
        data, options, content=not registration, frame_box=True)
    md5, sha256 = digests_of(data)
    if registration:  # the picture as shown: letterbox and pillarbox bars peeled
        return VideoSignals(md5, sha256, keep(framed or found, duration), width, height)

    def kept(frames: list[Frame]) -> VideoFrames | None:
        if frames and any(f.quality >= MIN_QUALITY for f in frames):
            return keep(frames, duration, registration)
        return None

    return VideoSignals(md5, sha256, keep(found, duration, registration), width, height,
                        kept(boxed), kept(framed) if framed != boxed else None)


def _check_size(width: int, height: int, options: VideoOptions) -> None:
    if width <= 0 or height <= 0:
        raise NotAVideo("The video's frames have no pixels.")
    if width * height > options.max_pixels:
        raise VideoTooLarge(f"The video's frames are {width}x{height} pixels; the limit is "
                            f"{options.max_pixels} pixels.")


def _declared_seconds(container: object, stream: object) -> float | None:
    duration = getattr(container, "duration", None)  # in AV_TIME_BASE (microseconds)
    if duration:
        return float(duration) / 1_000_000
    if getattr(stream, "duration", None) and getattr(stream, "time_base", None):
        return float(stream.duration * stream.time_base)  # type: ignore[attr-defined]
    return None


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).rstrip(".").split(": '")[0][:120] or type(e).__name__
