"""Shared fixtures: settings and a registry on a fresh SQLite file per test, a fresh
PostgreSQL database when the server is reachable, and images generated in code."""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.domain import Signal, SignalKind
from registry.service import Registry, SubmittedImage

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
FAST_KDF = 1024  # scrypt N for tests; production default is 2**15


def unavailable(service: str, reason: str) -> None:
    """Skip, or fail when CI demands every service (REQUIRE_SERVICES=1)."""
    message = f"{service} is not available ({reason})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and REQUIRE_SERVICES=1")
    pytest.skip(message + "; set up the service or run without it")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = build_registry(settings)
    yield reg
    reg.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for as long as the block runs, dropped afterwards
    (skipped, or failed under REQUIRE_SERVICES=1, without a server)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"takedown_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        unavailable("PostgreSQL", str(e.orig).strip().splitlines()[0])
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with postgres_database() as url:
        yield url


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A smooth, photo-like RGB image (upscaled noise, blurred): PDQ quality 100."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def write_image(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a generated image to a file (for CLI tests) and return its path."""

    def write(name: str, img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> Path:
        path = tmp_path / name
        path.write_bytes(encode(img, fmt, **kwargs))
        return path

    return write


def pdq_images(rng: np.random.Generator, n: int) -> list[SubmittedImage]:
    """``n`` images of one uniform random PDQ hash each (quality 100)."""
    codes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    return [SubmittedImage((Signal(SignalKind.PDQ, bytes(c)),), 100) for c in codes]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> float:
    """Seconds until ``predicate()`` is true; fails past ``timeout`` (a hang guard, not a speed
    bar)."""
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < timeout, f"timed out waiting for {what or predicate}"
        time.sleep(0.005)
    return time.perf_counter() - start
