"""Promise 1: the original image is never written anywhere — not the database, its WAL, the
index snapshot, temp files or logs. Hashing happens in memory and the bytes are dropped."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
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
