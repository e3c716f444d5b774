"""The gunicorn entry point builds a working app from the environment, and nothing at import."""

from __future__ import annotations

import importlib

import pytest


def test_import_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    import registry.web.wsgi as wsgi

    importlib.reload(wsgi)
    assert callable(wsgi.create)
    assert not (tmp_path / "data").exists()


def test_create_serves_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    from registry.web.wsgi import create

    app = create()
    registry = app.extensions["registry"]
    try:
        assert registry.settings.data_dir == str(tmp_path / "data")
        assert (tmp_path / "data" / "registry.db").exists()
        client = app.test_client()
        assert client.get("/healthz").get_json() == {"status": "ok"}
        ready = client.get("/readyz").get_json()
        assert ready["ready"] is True and ready["index_lag"] == 0
        denied = client.post("/api/v1/match", json={"queries": []})
        assert denied.status_code == 401
        assert denied.get_json()["error"]["code"] == "unauthenticated"
    finally:
        registry.close()


def test_create_reports_bad_settings(monkeypatch, tmp_path):
    from registry.errors import ConfigError
    from registry.web.wsgi import create

    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAKEDOWN_MAX_QUERIES", "many")
    with pytest.raises(ConfigError, match="TAKEDOWN_MAX_QUERIES"):
        create()
