"""Promise 1: the original image is never written anywhere — not the database, its WAL, the
index snapshot, temp files or logs. Hashing happens in memory and the bytes are dropped."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from tests.conftest import FAST_KDF, encode


def noisy_png(seed: int) -> bytes:
    """Incompressible pixels, so any stored copy of the file would contain long runs of it."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize((640, 480))
    noise = rng.integers(-12, 12, (480, 640, 3))
    pixels = np.clip(np.asarray(smooth, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def fragments(data: bytes, size: int = 48, count: int = 40) -> list[bytes]:
    step = max(1, (len(data) - size) // count)
    return [data[i : i + size] for i in range(64, len(data) - size, step)]


def tree_bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_submit_and_match_store_no_image_bytes(tmp_path, monkeypatch, caplog):
    data_dir = tmp_path / "data"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TAKEDOWN_PIN_KDF_N", str(FAST_KDF))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    image = tmp_path / "victim.png"
    raw = noisy_png(7)
    image.write_bytes(raw)
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    for args in (["submit", str(image)], ["match", str(image)], ["index", "rebuild"]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    stored = tree_bytes(data_dir)
    assert any(p.name == "registry.db" for p in stored) and any(
        p.suffix == ".tridx" for p in stored)
    for path, content in stored.items():
        leaked = [f for f in fragments(raw) if f in content]
        assert not leaked, f"{path} holds bytes of the image"
    assert list(scratch.iterdir()) == [], "hashing created temporary files"
    assert not any(f.decode("latin-1") in caplog.text for f in fragments(raw))


def test_hashing_opens_no_files(monkeypatch):
    """compute_signals works on bytes in memory: no file is opened while hashing."""
    from registry.hashing import compute_signals

    raw = noisy_png(3)
    opened: list[str] = []
    real_open = os.open

    def watch(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", watch)
    import builtins

    real_builtin_open = builtins.open

    def watch_builtin(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(file))
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watch_builtin)
    compute_signals(raw)
    compute_signals(encode(Image.open(__import__("io").BytesIO(raw)).convert("RGB")))
    assert opened == []


TRACED = """
import io, os
from registry.hashing import compute_signals
from registry.hashing.video import compute_video_signals
from tests.images import boxed, clip, pan, photo_like

files = [boxed(photo_like(1, (640, 480)), "HEIF"), boxed(photo_like(2, (640, 480)), "AVIF")]
out = io.BytesIO()
photo_like(3, (640, 480)).save(out, "JPEG")
files.append(out.getvalue())
videos = [clip(pan(4, 2)), clip(pan(5, 2), fmt="webm", codec="libvpx-vp9")]


def hash_all():
    for data in files:
        compute_signals(data, registration=True)
    for data in videos:
        compute_video_signals(data)


hash_all()  # warm up: every codec library loaded, every lazy import done
for marker in ("/takedown-trace-start", None, "/takedown-trace-end"):
    if marker is None:
        hash_all()
    else:
        try:
            os.stat(marker)
        except FileNotFoundError:
            pass
"""


def test_native_decoders_touch_no_file_while_hashing(tmp_path):
    """The C libraries (libheif, libavif, libjpeg-turbo, OpenCV, FFmpeg) are outside Python's
    open(), so the process is traced: between two markers, hashing a HEIC, an AVIF, a JPEG, an
    MP4 and a WebM makes no file or file-descriptor system call at all (no open, write, temp
    file, pipe)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian package strace)")
    log = tmp_path / "trace.log"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(log), sys.executable, "-c",
         TRACED], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
        text=True, timeout=300)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "/takedown-trace-start" in line)
    end = next(i for i, line in enumerate(lines) if "/takedown-trace-end" in line)
    assert end > start
    # Anonymous memory maps (fd -1: thread stacks, FFmpeg's frame pools) are memory, not files.
    touched = [line for line in lines[start + 1:end]
               if not re.search(r"\bmmap\(.*MAP_ANONYMOUS.*, -1, 0\)", line)]
    assert touched == [], touched[:20]
