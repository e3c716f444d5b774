"""Videos through the service, the API and the CLI: a registered video's frames are PDQ
signals labelled frame@<ms>; a video query matches a registered video by frames in time order
and a registered still by any frame; a screenshot of a frame matches the video."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from registry.domain import Scope, Signal, SignalKind, frame_ms
from registry.hashing import compute_signals
from registry.service import SubmittedImage
from registry.web import create_app
from tests.images import clip, encode, pan, photo_like, slideshow

SECONDS = 8


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return pan(21, SECONDS, travel=0.25)


@pytest.fixture(scope="module")
def original(frames) -> bytes:
    return clip(frames, crf=20)


@pytest.fixture
def registered(registry, original):
    video = registry.hash_video(original, registration=True)
    return registry.submit_case([SubmittedImage.from_video(video)]), video


def matches(registry, query):
    (result,) = registry.match([query])
    return {m.signal.value: m for m in result.matches}


def test_a_video_is_registered_as_its_frames(registry, registered):
    receipt, video = registered
    assert receipt.signals == 2 + len(video.frames.frames)  # digests + one PDQ per kept frame
    case = registry.show_case(receipt.number)
    assert case.number == receipt.number


def test_a_trimmed_reencoded_smaller_copy_matches_in_order(registry, registered, frames):
    receipt, _ = registered
    part = [np.asarray(Image.fromarray(f).resize((426, 240))) for f in frames[48:160]]
    copy = registry.hash_video(clip(part, crf=36))
    found = matches(registry, registry.query_of_video("copy", copy))
    assert set(found) == {"vpdq"}
    m = found["vpdq"]
    assert m.case == receipt.number and m.tier.value == "strong"
    assert m.frames is not None and m.frames >= 5 and m.coverage is not None
    assert 0.5 <= m.coverage <= 1.0 and 0.75 <= m.confidence <= 1.0
    assert m.to_json()["frames"] == m.frames


def test_a_registered_clip_inside_a_longer_video_matches(registry, frames):
    """A short registered clip re-posted inside a compilation: its frames are a small share of
    the query's, but most of the registered clip's own frames match in order."""
    clip_frames = frames[48:96]  # 2 s
    short = registry.hash_video(clip(clip_frames, crf=20), registration=True)
    receipt = registry.submit_case([SubmittedImage.from_video(short)])
    longer = pan(23, 4) + clip_frames + pan(24, 4)
    query = registry.hash_video(clip(longer, crf=28))
    m = matches(registry, registry.query_of_video("compilation", query))["vpdq"]
    assert m.case == receipt.number
    assert m.coverage is not None and m.coverage < 0.25  # matched through the clip's share


def test_the_same_frames_backwards_do_not_match_as_a_video(registry, registered, frames):
    backwards = registry.hash_video(clip(frames[::-1], crf=20))
    assert "vpdq" not in matches(registry, registry.query_of_video("reversed", backwards))


def test_an_exact_copy_matches_by_digest_too(registry, registered, original):
    found = matches(registry, registry.query_of_video("same", registry.hash_video(original)))
    assert {"md5", "sha256", "vpdq"} <= set(found)


def test_a_screenshot_of_a_frame_matches_the_video(registry, registered, frames):
    receipt, _ = registered
    shot = encode(Image.fromarray(frames[100]), "JPEG", quality=80)
    found = matches(registry, registry.query_of_image("shot", registry.hash_image(shot)))
    assert found["pdq"].case == receipt.number
    assert frame_ms(label_of(registry, found["pdq"].signal_id)) is not None


def test_a_video_showing_a_registered_still_matches_it(registry):
    still = encode(photo_like(31, (640, 360)), "JPEG", quality=92)
    receipt = registry.submit_case(
        [SubmittedImage.from_image(compute_signals(still, registration=True))])
    show = registry.hash_video(clip(slideshow([30, 31, 32], 2.0), crf=30))
    m = matches(registry, registry.query_of_video("slides", show))["vpdq"]
    assert m.case == receipt.number and m.frames == 1 and 0 < m.confidence <= 1
    assert m.coverage == pytest.approx(1 / 3, abs=0.01)


def test_unrelated_videos_and_a_withdrawn_case_match_nothing(registry, registered, frames):
    receipt, _ = registered
    other = registry.hash_video(clip(pan(22, 4)))
    assert matches(registry, registry.query_of_video("other", other)) == {}
    registry.withdraw_case(receipt.number, receipt.pin)
    copy = registry.hash_video(clip(frames[:96], crf=30))
    assert matches(registry, registry.query_of_video("copy", copy)) == {}


def test_a_video_signal_is_refused_with_other_signals_or_views(registry, registered):
    from registry.errors import InvalidInput

    _, video = registered
    still = compute_signals(encode(photo_like(33), "PNG"))
    with pytest.raises(InvalidInput, match="video"):
        registry.submit_case([SubmittedImage((*video.signals(), still.pdq), 100)])


def test_a_video_from_the_web_is_held_to_the_registration_budget(registry, frames):
    from registry.domain import VPDQ_FRAME, VPDQ_HEADER
    from registry.errors import InvalidInput
    from registry.hashing import registration_budget

    query = registry.hash_video(clip(frames), registration=False)  # a query keeps every frame
    vpdq = query.frames
    duration = VPDQ_HEADER.unpack_from(vpdq.pack())[3]
    assert len(vpdq.frames) > registration_budget(duration)  # 8 s: 7 allowed
    digests = tuple(s for s in query.signals() if s.kind is not SignalKind.VPDQ)
    too_many = SubmittedImage((Signal(SignalKind.VPDQ, vpdq.pack()), *digests))
    with pytest.raises(InvalidInput, match=f"at most {registration_budget(duration)} frame"):
        registry.submit_case([too_many], strict=True)
    # Cut to the budget it is accepted; without its digests it is not.
    n = registration_budget(duration)
    packed = vpdq.pack()
    header = VPDQ_HEADER.pack(*VPDQ_HEADER.unpack_from(packed)[:2], n, duration)
    within = Signal(SignalKind.VPDQ, header + packed[VPDQ_HEADER.size:][:n * VPDQ_FRAME.size])
    with pytest.raises(InvalidInput, match="md5 and sha256"):
        registry.submit_case([SubmittedImage((within,))], strict=True)
    assert registry.submit_case([SubmittedImage((within, *digests))], strict=True).number


def test_the_api_matches_an_uploaded_video_and_a_vpdq_query(registry, registered, frames):
    _, video = registered
    key = registry.add_platform("alpha", [Scope.MATCH])[1]
    client = create_app(registry).test_client()
    auth = {"Authorization": f"Bearer {key}"}
    data = clip(frames[24:120], crf=32)
    answer = client.post("/api/v1/match/video", headers=auth,
                         data={"file": (io.BytesIO(data), "clip.mp4")})
    assert answer.status_code == 200, answer.data
    body = answer.get_json()
    assert body["matched"] and {m["signal"] for m in body["matches"]} == {"vpdq"}
    assert {"frames", "coverage"} <= set(body["matches"][0])
    assert Signal.parse("vpdq", body["signals"]["vpdq"]).frames()
    sent = client.post("/api/v1/match", headers=auth, json={"queries": [
        {"id": "v", "signals": {"vpdq": video.frames.text}}]})
    assert sent.status_code == 200, sent.data
    assert [m["signal"] for m in sent.get_json()["results"][0]["matches"]] == ["vpdq"]
    for bad in ("not base64!", video.frames.text[:-8]):
        refused = client.post("/api/v1/match", headers=auth, json={"queries": [
            {"id": "v", "signals": {"vpdq": bad}}]})
        assert refused.status_code == 422, refused.data
        assert refused.get_json()["error"]["code"] == "invalid_hash"
    not_video = client.post("/api/v1/match/video", headers=auth,
                            data={"file": (io.BytesIO(encode(photo_like(1), "JPEG")), "a.jpg")})
    assert not_video.status_code == 422
    assert not_video.get_json()["error"]["code"] == "not_a_video"


def test_the_cli_hashes_submits_and_matches_videos(tmp_path, frames):
    data_dir = str(tmp_path / "data")
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip(frames, crf=22))
    runner = CliRunner()
    out = runner.invoke(cli, ["--data-dir", data_dir, "hash", "--json", str(path)])
    assert out.exit_code == 0, out.output
    hashed = json.loads(out.output)
    assert hashed["frames"] == len(Signal.parse("vpdq", hashed["vpdq"]).frames())
    out = runner.invoke(cli, ["--data-dir", data_dir, "submit", "--json", str(path)])
    assert out.exit_code == 0, out.output
    case = json.loads(out.output)["case"]
    copy = tmp_path / "copy.webm"
    copy.write_bytes(clip(frames[30:150], fmt="webm", codec="libvpx-vp9"))
    out = runner.invoke(cli, ["--data-dir", data_dir, "match", "--json", str(copy)])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)["matches"]
    assert [(m["signal"], m["case"]) for m in found] == [("vpdq", case)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(64))
    out = runner.invoke(cli, ["--data-dir", data_dir, "hash", str(broken)])
    assert out.exit_code == 1 and "not a readable video" in out.output


def label_of(registry, signal_id: int) -> str:
    """The stored view label of one signal, read from the store as the matcher reads it."""
    with registry._store.transaction(write=False) as tx:
        return tx.signals.get_many([signal_id], tx.banks.by_id())[signal_id].label


def test_frame_labels_carry_their_time():
    assert frame_ms("frame@12250") == 12250
    assert frame_ms("full") is None and frame_ms("frame@") is None and frame_ms("frame@-1") is None
    assert SignalKind.VPDQ.packed
