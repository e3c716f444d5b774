"""``takedown serve``: the web pages and API on the configured database."""

from __future__ import annotations

import os
import shutil
import sys

import click

from cli.context import Context


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="More than 1: run gunicorn with this many worker processes, each with its "
                   "own index following the change log (the production shape).")
@click.pass_obj
def serve(ctx: Context, host: str, port: int, workers: int) -> None:
    """Serve the web pages and the API (embedded default: one process, threads)."""
    if workers > 1:
        _gunicorn(ctx, host, port, workers)
    from werkzeug.serving import run_simple

    from registry.web import create_app
    from registry.web.wsgi import settle_heap

    registry = ctx.registry()
    registry.follow_changes()
    registry.follow_upstream()
    app = create_app(registry)
    settle_heap()
    status = registry.index_status()
    click.echo(f"Serving on http://{host}:{port} (database: {status.database}; "
               f"{status.total} hashes indexed)", err=True)
    run_simple(host, port, app, threaded=True, use_reloader=False)


def _gunicorn(ctx: Context, host: str, port: int, workers: int) -> None:
    """Replace this process with gunicorn; settings travel as TAKEDOWN_* variables."""
    settings = ctx.settings
    registry = ctx.registry(load_index=False)  # migrates SQLite, checks PostgreSQL is current
    database = registry.index_status().database
    registry.close()
    env = dict(os.environ, TAKEDOWN_DATA_DIR=settings.data_dir,
               TAKEDOWN_DATABASE_URL=settings.database_url)
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or "gunicorn"
    click.echo(f"Serving on http://{host}:{port} with {workers} gunicorn workers "
               f"(database: {database})", err=True)
    os.execvpe(gunicorn, [gunicorn, "registry.web.wsgi:create()", "--workers", str(workers),
                          "--bind", f"{host}:{port}", "--timeout", "120",
                          "--graceful-timeout", "10"], env)
