"""The local-feature signal: extraction, the packed layout, parsing, and geometric verification.

Images are generated here (shapes and text on a photo-like ground: corners for ORB to find).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from registry.domain import LOCAL_REGISTER_KEYPOINTS, ChangeAction, Signal, SignalKind
from registry.errors import DegenerateHash, InvalidHash
from registry.hashing import compute_signals
from registry.hashing.local import (
    FALLBACK_FOUND,
    QUERY_AREA,
    QUERY_GRID,
    QUERY_KEYPOINTS,
    REGISTER_AREA,
    REGISTER_FOUND,
    REGISTER_GRID,
    REGISTER_KEYPOINTS,
    REGISTER_LEVELS,
    LocalFeatures,
    _orb,
    analysed,
    canonical_order,
    extract,
    spread,
    unpack,
)
from registry.index.catalog import IndexOptions, IndexSet
from registry.index.local import (
    QUERY_LOOKUPS,
    RETRIEVAL_KEYPOINTS,
    Keypoints,
    LocalIndex,
    verify,
)
from tests.conftest import photo
from tests.images import gradient, jpeg_bytes, photo_like

RADIUS, WEAK = 56, 12


def textured(seed: int, size: tuple[int, int] = (480, 320)) -> Image.Image:
    """A photo-like ground with random shapes and words: plenty of corners."""
    rng = np.random.default_rng(seed)
    img = photo_like(seed, size)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(70):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(4, 30))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x, y, x + r, y + r // 2 + 2), fill=colour)
        elif shape == 1:
            draw.ellipse((x, y, x + r, y + r), outline=colour, width=3)
        else:
            draw.polygon([(x, y), (x + r, y + r // 3), (x + r // 2, y + r)], fill=colour)
    return img


def features(img: Image.Image, registration: bool) -> LocalFeatures:
    f = extract(img, registration=registration)
    assert f is not None
    return f


def index_of(*images: Image.Image) -> LocalIndex:
    index = IndexOptions().new_local()
    for sid, img in enumerate(images, 1):
        index.add(np.array([sid]), [features(img, True).pack()])
    return index


def found(index: LocalIndex, img: Image.Image) -> dict[int, int]:
    query = Keypoints.of(features(img, False).pack())
    return {v.signal_id: v.inliers for v in index.search(query, RADIUS, WEAK)}


# --- extraction ---------------------------------------------------------------------------------
def test_extraction_is_deterministic_bounded_and_strongest_first():
    img = textured(1)
    a, b = features(img, True), features(img, True)
    assert a.pack() == b.pack()
    assert len(a) == LOCAL_REGISTER_KEYPOINTS
    assert len(a.pack()) == 7 + 36 * len(a) <= 4096
    grey = analysed(img, REGISTER_AREA)
    assert abs(grey.size - REGISTER_AREA) < 0.01 * REGISTER_AREA  # area-normalised, aspect kept
    assert (a.width, a.height) == (grey.shape[1], grey.shape[0])
    assert (a.xy >= 0).all() and (a.xy[:, 0] <= a.width).all() and (a.xy[:, 1] <= a.height).all()
    assert a.angle.max() < 32 and a.octave.max() < 8
    q = features(img, False)
    assert LOCAL_REGISTER_KEYPOINTS < len(q) <= QUERY_KEYPOINTS


def test_a_registration_keeps_the_fine_pyramid_levels_and_a_query_all_of_them():
    # Pipeline 4: a registration's keypoints come from ORB's REGISTER_LEVELS finest levels
    # (their patches are the ones a sticker spares); a query looks at all eight, so that a
    # registered picture shown smaller or larger (a collage, a crop) is still found.
    img = textured(5, (900, 600))
    reg, query = features(img, True), features(img, False)
    assert int(reg.octave.max()) < REGISTER_LEVELS < 8
    assert int(query.octave.max()) >= REGISTER_LEVELS


def test_a_smooth_picture_registers_from_all_levels():
    # Its corners are coarse only (fewer than 112 on the fine levels): all eight levels, as
    # pipeline 3 registered every picture, rather than a handful of keypoints or none.
    img = photo(1)
    grey = analysed(img, REGISTER_AREA)
    fine = len(_orb(REGISTER_FOUND * REGISTER_KEYPOINTS, REGISTER_LEVELS).detect(grey, None))
    assert fine < REGISTER_KEYPOINTS
    reg = features(img, True)
    assert len(reg) > max(fine, 64) and int(reg.octave.max()) >= REGISTER_LEVELS


def test_the_browser_port_declares_the_same_registration_parameters():
    # local.js is a step-by-step port: its constants must be these (the parity tests in
    # test_browser_hashing check the keypoints themselves in Chromium).
    source = (Path(__file__).resolve().parent.parent
              / "registry/web/static/js/hash/local.js").read_text()
    for name, value in (("REGISTER_AREA", REGISTER_AREA), ("REGISTER_KEYPOINTS",
                        REGISTER_KEYPOINTS), ("REGISTER_GRID", REGISTER_GRID),
                        ("REGISTER_LEVELS", REGISTER_LEVELS), ("REGISTER_FOUND", REGISTER_FOUND),
                        ("FALLBACK_FOUND", FALLBACK_FOUND)):
        assert re.search(rf"export const {name} = {value:_};|export const {name} = {value};",
                         source), name
    assert "detect(cv, mat, REGISTER_FOUND * REGISTER_KEYPOINTS, REGISTER_LEVELS)" in source
    assert "detect(cv, mat, FALLBACK_FOUND * REGISTER_KEYPOINTS, 8)" in source
    assert "if (fine.kps.length >= REGISTER_KEYPOINTS)" in source


def test_keypoints_are_spread_over_the_picture():
    # All detail in one corner, a little elsewhere: the grid still gives every textured cell
    # its share instead of the corner taking every keypoint.
    img = photo_like(3, (480, 320))
    busy = textured(4, (160, 110))
    img.paste(busy, (0, 0))
    draw = ImageDraw.Draw(img)
    for i in range(8):
        draw.rectangle((200 + 30 * i, 200, 215 + 30 * i, 215), fill=(255, 255, 255))
    f = features(img, True)
    outside = (f.xy[:, 0] > f.width / 3) | (f.xy[:, 1] > f.height / 3)
    assert outside.sum() >= 10


def test_a_query_computes_descriptors_only_for_its_kept_keypoints_and_gets_the_same_ones():
    # The query path detects, spreads, then computes; detectAndCompute on the same picture
    # gives the same keypoints the same descriptors (a large picture: the reduced fast path).
    img = Image.new("RGB", (1920, 1280))  # 2.5 MP: over twice QUERY_AREA, reduced first
    for i in range(16):
        img.paste(textured(10 + i), (480 * (i % 4), 320 * (i // 4)))
    q = features(img, False)
    grey = analysed(img, QUERY_AREA, fast=True)
    assert not np.array_equal(grey, analysed(img, QUERY_AREA))  # the fast path was taken
    kps, desc = _orb(2 * QUERY_KEYPOINTS).detectAndCompute(grey, None)
    xy = np.asarray([k.pt for k in kps], dtype=np.float32)
    resp = np.array([k.response for k in kps], dtype=np.float32)
    octv = np.array([k.octave & 7 for k in kps], dtype=np.uint8)
    order = canonical_order(resp, xy, octv)
    keep = order[spread(resp[order], xy[order], grey.shape[1], grey.shape[0], QUERY_KEYPOINTS,
                        QUERY_GRID, by_round=True)]
    assert len(q) == len(keep) > QUERY_LOOKUPS
    assert np.array_equal(q.descriptors, desc[keep])


def test_a_query_lists_its_keypoints_round_by_round():
    # Its first QUERY_LOOKUPS (those looked up in the index) cover the picture's cells; the
    # rest, kept for verification, follow.
    img = photo_like(3, (900, 600))
    img.paste(textured(4, (300, 200)), (0, 0))
    q = features(img, False)
    cells = np.minimum(QUERY_GRID - 1, (q.xy * QUERY_GRID / [q.width, q.height]).astype(int))
    first = {tuple(c) for c in cells[:QUERY_LOOKUPS].tolist()}
    assert first == {tuple(c) for c in cells.tolist()}
    xy = np.array([[1, 1], [2, 2], [90, 90], [91, 91]], dtype=np.float32)
    responses = np.array([5, 4, 1, 3], dtype=np.float32)
    assert spread(responses, xy, 100, 100, 4, 2, by_round=True).tolist() == [0, 3, 1, 2]
    assert spread(responses, xy, 100, 100, 4, 2).tolist() == [0, 1, 3, 2]


def test_only_a_querys_first_keypoints_are_looked_up_but_all_are_verified(monkeypatch):
    img = textured(7)
    index = index_of(img)
    q = Keypoints.of(features(img, False).pack())
    assert index.search(q, RADIUS, WEAK)
    # The same keypoints behind enough noise that the look-ups see only noise: no candidate.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (QUERY_LOOKUPS, 32), dtype=np.uint8)
    far = Keypoints(q.width, q.height, np.concatenate([rng.uniform(0, 50, (QUERY_LOOKUPS, 2)),
                                                       q.xy]).astype(np.float32),
                    np.concatenate([np.zeros(QUERY_LOOKUPS, np.uint8), q.angle]),
                    np.concatenate([noise, q.descriptors]))
    assert index.search(far, RADIUS, WEAK) == []
    # With the look-ups widened to cover them, they are found, and verified on every keypoint.
    monkeypatch.setattr("registry.index.local.QUERY_LOOKUPS", len(far))
    assert [v.signal_id for v in index.search(far, RADIUS, WEAK)] == [1]


def test_spread_takes_round_robin_by_cell_then_strength():
    xy = np.array([[1, 1], [2, 2], [3, 3], [90, 90], [91, 91]], dtype=np.float32)
    responses = np.array([5, 4, 3, 1, 0.5], dtype=np.float32)
    # 2x2 grid over 100x100: three points in cell 0, two in cell 3. Round 0 takes 0 and 3.
    assert spread(responses, xy, 100, 100, 2, 2).tolist() == [0, 3]
    assert spread(responses, xy, 100, 100, 4, 2).tolist() == [0, 1, 3, 4]
    assert spread(responses[:0], xy[:0], 100, 100, 4, 2).tolist() == []


@pytest.mark.parametrize("img", [
    Image.new("RGB", (400, 300), (128, 128, 128)),  # flat
    Image.new("RGB", (12, 9), (10, 200, 30)),  # tiny
    gradient((400, 300)),  # smooth: no corners
], ids=["flat", "tiny", "gradient"])
def test_images_without_keypoints_give_no_local_signal(img):
    assert extract(img, registration=True) is None
    signals = compute_signals(jpeg_bytes(img), registration=True)
    assert signals.local is None and SignalKind.LOCAL not in {s.kind for s in signals.signals()}


def test_a_textured_image_gets_a_local_signal_through_compute_signals():
    data = jpeg_bytes(textured(6))
    reg = compute_signals(data, registration=True)
    query = compute_signals(data)
    assert reg.local is not None and reg.local.keypoints == LOCAL_REGISTER_KEYPOINTS
    assert query.local is not None and query.local.keypoints > LOCAL_REGISTER_KEYPOINTS
    assert reg.to_json()["local"] == reg.local.text


# --- the packed layout and its parsing -------------------------------------------------------
def test_pack_round_trip_and_parsers_agree():
    f = features(textured(7), True)
    blob = f.pack()
    back = unpack(blob)
    assert back.pack() == blob
    k = Keypoints.of(blob)
    assert (k.width, k.height) == (f.width, f.height)
    np.testing.assert_array_equal(k.descriptors, f.descriptors)
    np.testing.assert_allclose(k.xy, f.xy, atol=1e-3)
    np.testing.assert_array_equal(k.angle, f.angle)
    parsed = Signal.parse("local", base64.b64encode(blob).decode())
    assert parsed.value == blob and parsed.keypoints == len(f)
    assert parsed.text == base64.b64encode(blob).decode()


def test_positions_are_quantised_to_12_bits():
    f = features(textured(8), True)
    step = (f.width - 1) / 4095
    # Every stored position is on the 12-bit grid of the analysed picture.
    np.testing.assert_allclose(np.round(f.xy[:, 0] / step) * step, f.xy[:, 0], atol=1e-3)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


@pytest.mark.parametrize("text, error", [
    ("", InvalidHash),
    ("not base64!", InvalidHash),
    ("QUJD", InvalidHash),  # 3 bytes: no header
    ("QUJDRA", InvalidHash),  # missing padding
], ids=["empty", "alphabet", "short", "padding"])
def test_bad_local_values_are_clear_errors(text, error):
    with pytest.raises(error):
        Signal.parse("local", text)


def test_inconsistent_or_degenerate_local_values_are_refused():
    blob = features(textured(9), True).pack()
    with pytest.raises(InvalidHash, match="bytes"):
        Signal.parse("local", _b64(blob[:-1]))
    with pytest.raises(InvalidHash, match="format"):
        Signal.parse("local", _b64(b"\x02" + blob[1:]))
    few = unpack(blob)
    five = LocalFeatures(few.width, few.height, few.xy[:5], few.angle[:5], few.octave[:5],
                         few.descriptors[:5])
    with pytest.raises(DegenerateHash, match="keypoints"):
        Signal.parse("local", _b64(five.pack()))
    with pytest.raises(InvalidHash, match="at most"):
        Signal.parse("local", "A" * 200_000)
    with pytest.raises(InvalidHash):
        Signal.parse("local", 12345)
    with pytest.raises(TypeError):
        _ = Signal(SignalKind.LOCAL, blob) - Signal(SignalKind.LOCAL, blob)


# --- verification ------------------------------------------------------------------------------
def crop(img: Image.Image, keep: float, fx: float, fy: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return img.crop((x, y, x + cw, y + ch))


def test_copies_cut_anywhere_turned_or_pasted_are_verified():
    originals = [textured(s) for s in range(10, 14)]
    index = index_of(*originals)
    img = originals[1]
    canvas = Image.new("RGB", (760, 420), (240, 240, 240))
    canvas.paste(textured(99, (300, 420)), (460, 0))  # a collage with another picture
    canvas.paste(img.resize((440, 293)), (10, 60))
    for copy in (
        crop(img, 0.7, 0.83, 0.21),
        img.rotate(15, resample=Image.Resampling.BICUBIC),
        img.rotate(90, expand=True),
        img.resize((240, 160)),
        canvas,
    ):
        hits = found(index, copy)
        assert set(hits) == {2} and hits[2] >= WEAK, hits


def test_unrelated_pictures_are_not_verified():
    index = index_of(*[textured(s) for s in range(20, 26)])
    for s in range(30, 36):
        assert found(index, textured(s)) == {}


def test_geometry_is_what_verifies_not_the_descriptors_alone():
    # The same descriptors with their positions scrambled: every descriptor still finds its
    # partner, but no single transform maps them, so nothing is verified.
    img = textured(40)
    index = index_of(img)
    q = features(img, False)
    rng = np.random.default_rng(0)
    scrambled = LocalFeatures(q.width, q.height, q.xy[rng.permutation(len(q))], q.angle,
                              q.octave, q.descriptors)
    assert found(index, img) == {1: found(index, img)[1]} and found(index, img)[1] >= 40
    query = Keypoints.of(scrambled.pack())
    assert index.search(query, RADIUS, WEAK) == []


def test_verify_reports_inliers_coverage_and_distance():
    img = textured(41)
    reg = Keypoints.of(features(img, True).pack())
    query = Keypoints.of(features(crop(img, 0.5, 0, 0), False).pack())
    idx = IndexOptions().new_local()
    idx.add(np.array([7]), [features(img, True).pack()])
    [v] = idx.search(query, RADIUS, WEAK)
    assert v.signal_id == 7 and v.inliers >= WEAK
    # A quarter of the picture is in the copy: the inliers' hull spans at most that.
    assert 0.05 < v.coverage <= 0.3
    assert 0 <= v.distance <= RADIUS
    assert verify(query, reg, np.zeros(3, np.int64), np.zeros(3, np.int64),
                  np.zeros(3, np.int64)) is None  # too few pairs


# --- the index: add, remove, snapshot ------------------------------------------------------------
def test_local_index_removal_and_snapshot_round_trip(tmp_path):
    imgs = [textured(s) for s in (50, 51)]
    sets = IndexSet()
    changes = [(i + 1, ChangeAction.ADD, 100 + i, features(img, True).signal())
               for i, img in enumerate(imgs)]
    sets.apply(changes)
    assert len(sets.local) == 2 and sets.local.stats["signals"] == 2
    path = tmp_path / "snap.bin"
    sets.save(path)
    loaded = IndexSet.load(path)
    assert loaded.local.blobs == sets.local.blobs and loaded.position == 2
    query = Keypoints.of(features(crop(imgs[1], 0.8, 1, 1), False).pack())
    assert [v.signal_id for v in loaded.search_local(query, RADIUS, WEAK)] == [101]
    loaded.apply([(3, ChangeAction.WITHDRAW, 101, changes[1][3])])
    assert loaded.search_local(query, RADIUS, WEAK) == []
    # The descriptor index holds each image's strongest RETRIEVAL_KEYPOINTS; all are kept.
    assert len(loaded.local) == 1 and loaded.local.stats["live"] == RETRIEVAL_KEYPOINTS
    assert len(loaded.local.features[next(iter(loaded.local.features))]) == \
        LOCAL_REGISTER_KEYPOINTS


def test_a_registered_local_signal_is_bounded():
    index = IndexOptions().new_local()
    big = features(textured(52), False)  # a query's 1,000 keypoints
    with pytest.raises(ValueError, match="at most"):
        index.add(np.array([1]), [big.pack()])


# --- through the service and the API ------------------------------------------------------------
def _register(registry, img: Image.Image) -> str:  # type: ignore[no-untyped-def]
    from registry.service import SubmittedImage

    image = registry.hash_image(jpeg_bytes(img), registration=True)
    return str(registry.submit_case([SubmittedImage.from_image(image)]).number)


def test_a_crop_no_whole_image_hash_catches_is_matched_as_local(registry):
    img = textured(60)
    case = _register(registry, img)
    copy = registry.hash_image(jpeg_bytes(crop(img, 0.85, 0.8, 0.3)))
    [result] = registry.match([registry.query_of_image("copy", copy)])
    local = [m for m in result.matches if m.signal is SignalKind.LOCAL]
    assert len(local) == 1 and local[0].case == case  # one match per (query, case)
    m = local[0]
    assert m.inliers is not None and m.inliers >= registry.settings.local_weak
    assert m.coverage is not None and 0 < m.coverage <= 0.85
    assert 0 < m.confidence <= 1
    assert m.to_json()["inliers"] == m.inliers and "coverage" in m.to_json()
    # Without its local signal the same copy is not found (the crop is beyond PDQ's reach)...
    pdq_only = registry.query_of_image("copy", copy)
    no_local = type(pdq_only)("copy", tuple(s for s in pdq_only.signals
                                            if s.kind is not SignalKind.LOCAL))
    assert not registry.match([no_local])[0].matched
    # ... and an unrelated picture is not.
    other = registry.hash_image(jpeg_bytes(textured(61)))
    assert not registry.match([registry.query_of_image("other", other)])[0].matched


def test_api_takes_local_queries_and_refuses_bad_ones(registry):
    from registry.domain import Scope
    from registry.web import create_app

    img = textured(62)
    _register(registry, img)
    client = create_app(registry).test_client()
    key = registry.add_platform("p", [Scope.MATCH])[1]
    headers = {"Authorization": f"Bearer {key}"}
    copy = registry.hash_image(jpeg_bytes(crop(img, 0.8, 0.1, 0.9)))
    assert copy.local is not None
    body = {"queries": [{"id": "q", "signals": {"local": copy.local.text}}]}
    r = client.post("/api/v1/match", json=body, headers=headers)
    assert r.status_code == 200, r.data
    [m] = r.get_json()["results"][0]["matches"]
    assert m["signal"] == "local" and m["inliers"] >= 12 and m["tier"] in ("weak", "strong")
    for bad, code in (("@@@", "invalid_hash"), (_b64(b"\x01\x03\x00"), "invalid_hash")):
        r = client.post("/api/v1/match", json={"queries": [{"id": "q", "signals": {
            "local": bad}}]}, headers=headers)
        assert r.status_code in (400, 422) and r.get_json()["error"]["code"] == code
