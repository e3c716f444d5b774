"""The ``takedown`` click group: global options, the one error mapping, and the commands.

The command modules define their commands standalone and import nothing heavy at module level
(the service, hashing and web libraries are imported inside the commands), so ``takedown
--help`` does not load SQLAlchemy, NumPy, OpenCV or Flask."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli import audit, banks, cases, hashing, index, lists, platforms, serve, stats
from cli.context import Context
from registry.errors import RegistryError


class TakedownGroup(click.Group):
    """The top-level group; the one place a RegistryError raised by any command, however
    deeply nested, becomes 'Error: <message>' on stderr and exit status 1 (never a
    traceback). Commands that exit with their own status (sys.exit) keep it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as e:
            click.echo(f"Error: {e.message}", err=True)
            sys.exit(1)


@click.group(cls=TakedownGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="TAKEDOWN_DATABASE_URL", default=None,
              help="SQLAlchemy URL of the database [env TAKEDOWN_DATABASE_URL; default SQLite "
                   "at DATA_DIR/registry.db].")
@click.option("--data-dir", envvar="TAKEDOWN_DATA_DIR", default=None,
              help="Folder for the SQLite file and index snapshots [env TAKEDOWN_DATA_DIR; "
                   "default ./data].")
@click.version_option(package_name="takedown-registry")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, data_dir: str | None) -> None:
    """Takedown Registry: register perceptual hashes of abusive images, match uploads against
    them, withdraw at any time. Settings come from TAKEDOWN_* environment variables (see the
    README); the options here override them."""
    state = Context({"database_url": database_url, "data_dir": data_dir})
    ctx.obj = state
    ctx.call_on_close(state.close)


for _command in (
    audit.audit,
    banks.bank, banks.benign, banks.canary, banks.quarantine,
    cases.case,
    hashing.hash_cmd, hashing.match, hashing.submit,
    index.db, index.index,
    lists.export_cmd, lists.follow, lists.import_cmd,
    platforms.platform,
    serve.serve,
    stats.stats,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="takedown")
