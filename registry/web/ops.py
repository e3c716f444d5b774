"""Operational endpoints: liveness, readiness (database, index, lag) and Prometheus metrics.
A plain Blueprint, so they stay out of the API's OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from registry.service import Registry
from registry.web.metrics import exposition

bp = Blueprint("ops", __name__)


def _registry() -> Registry:
    registry: Registry = current_app.extensions["registry"]
    return registry


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    state = _registry().ready()
    response = jsonify(state)
    response.status_code = 200 if state["ready"] else 503
    return response


@bp.get("/metrics")
def metrics() -> Response:
    return exposition()
