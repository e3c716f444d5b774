"""API documentation: the OpenAPI document's finishing touches and a docs page at /api/docs that
is rendered here from that document (no third-party scripts, fonts or origins)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template_string

from registry.config import Settings

bp = Blueprint("docs", __name__)

DESCRIPTION = (
    "Match uploads against a registry of perceptual hashes of non-consensual intimate images. "
    "Send hashes (or an image, hashed in memory and never stored); a match is evidence for your "
    "own review, not a verdict. Authenticate with `Authorization: Bearer <key>`; keys are issued "
    "by the operator (`takedown platform add`). Errors are `{\"error\": {\"code\", \"message\"}}`."
)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ spec.info.title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{font-family:ui-monospace,monospace;background:#f3f3f3;padding:.1em .3em}
h2{border-top:1px solid #ccc;padding-top:1rem}.m{font-weight:bold;color:#063}</style>
</head><body>
<h1>{{ spec.info.title }} <small>v{{ spec.info.version }}</small></h1>
<p>{{ spec.info.description }}</p>
<p>Machine-readable: <a href="{{ url_for('openapi.spec') }}">OpenAPI {{ spec.openapi }}</a>.
Integration guide: <code>docs/api.md</code> in the repository.</p>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() %}
<h2><span class="m">{{ method.upper() }}</span> <code>{{ path }}</code></h2>
<p>{{ op.summary }}</p>{% if op.description %}<p>{{ op.description }}</p>{% endif %}
{% if op.requestBody %}<p>Body: {% for ct, body in op.requestBody.content.items() %}
<code>{{ ct }}</code> {{ ref_name(body.schema) }}{% endfor %}</p>{% endif %}
<p>Responses: {% for status, resp in op.responses.items() %}<code>{{ status }}</code>
{{ resp.description }}{% if not loop.last %}; {% endif %}{% endfor %}</p>
{% endfor %}{% endfor %}
<h2>Schemas</h2>{% for name, schema in spec.components.schemas.items() %}
<h3 id="{{ name }}">{{ name }}</h3><ul>{% for field, f in (schema.properties or {}).items() %}
<li><code>{{ field }}</code> {{ f.type or ref_name(f) }}{% if f.description %} —
{{ f.description }}{% endif %}</li>{% endfor %}</ul>{% endfor %}
</body></html>"""


def _ref_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref") or (schema.get("items") or {}).get("$ref") or ""
    return ref.rsplit("/", 1)[-1]


@bp.get("/api/docs")
def page() -> str:
    return render_template_string(_PAGE, spec=current_app.spec,  # type: ignore[attr-defined]
                                  ref_name=_ref_name)


def complete_spec(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What APIFlask leaves out: the bearer scheme, required request bodies, the error shape on
    every documented error response, and the limits that are settings (``settings``)."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {})["ApiKey"] = {
        "type": "http", "scheme": "bearer",
        "description": "A platform key from `takedown platform add`"}
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
    if "Signals" in schemas:
        schemas["Signals"]["minProperties"] = 1  # a query with no signals is refused (422)
    if "MatchRequest" in schemas:
        schemas["MatchRequest"]["properties"]["queries"]["maxItems"] = settings.max_queries
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            if "requestBody" in op:
                op["requestBody"]["required"] = True
            for status, response in op.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    response["content"] = {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}
    return spec
