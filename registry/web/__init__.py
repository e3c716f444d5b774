"""The web edge: ``create_app(registry)`` builds the Flask app over one Registry.

Blueprints stay thin: they translate HTTP to service calls and RegistryError to the JSON error
shape (one handler, in ``errors``). The API and the submitter pages arrive in their own modules.
"""

from __future__ import annotations

from flask import Flask

from registry.service import Registry
from registry.web import errors, ops


def create_app(registry: Registry, test_config: dict[str, object] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=registry.settings.max_upload_bytes + 64 * 1024)
    if test_config:
        app.config.update(test_config)
    app.extensions["registry"] = registry
    errors.register(app)
    app.register_blueprint(ops.bp)
    return app
