"""Rate limits shared through Redis: two apps (as two gunicorn workers or two machines would be)
draw on one budget per key when TAKEDOWN_REDIS_URL is set."""

from __future__ import annotations

import os

import pytest

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.web import create_app
from tests.conftest import FAST_KDF, unavailable

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as e:
        unavailable("Redis", str(e))
    return REDIS_URL


@pytest.mark.services
def test_two_apps_share_one_budget_per_key(tmp_path, redis_url):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "d"), pin_kdf_n=FAST_KDF,
                                 redis_url=redis_url, rate_limit="4 per minute")
    first, second = build_registry(settings), build_registry(settings)
    _, key = first.add_platform("shared", [])  # a fresh key: fresh counters in Redis
    workers = [create_app(first).test_client(), create_app(second).test_client()]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"queries": [{"id": "a", "signals": {"md5": "62ffda02f4fabd4f7a1410866b8adace"}}]}
    codes = [workers[n % 2].post("/api/v1/match", json=body, headers=headers).status_code
             for n in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]
    first.close()
    second.close()
