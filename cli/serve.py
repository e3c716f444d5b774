"""``takedown serve``: the web pages and API on the configured database."""

from __future__ import annotations

import click

from cli.main import Context, cli, handle_errors
from registry.web import create_app


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.pass_obj
@handle_errors
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the web pages and the API (embedded default: one process, threads)."""
    from werkzeug.serving import run_simple

    registry = ctx.registry()
    app = create_app(registry)
    click.echo(f"Serving on http://{host}:{port} (database: {registry.store.dialect}; "
               f"{len(registry.keeper.indexes)} hashes indexed)", err=True)
    run_simple(host, port, app, threaded=True, use_reloader=False)
