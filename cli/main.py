"""The ``takedown`` click group: global options, error mapping, and the command groups."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

import click

from registry.bootstrap import build_registry
from registry.config import Settings
from registry.errors import RegistryError
from registry.service import Registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Context:
    """Per-invocation state: settings from env + options, and a lazily built registry."""

    overrides: dict[str, Any]
    _settings: Settings | None = None
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env(**self.overrides)
        return self._settings

    def registry(self, *, load_index: bool = True) -> Registry:
        if self._registry is None:
            self._registry = build_registry(self.settings, load_index=load_index)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def handle_errors(func: F) -> F:
    """RegistryError -> 'Error: <message>' on stderr and exit 1 (never a traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RegistryError as e:
            click.echo(f"Error: {e.message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="takedown")


# The command modules attach themselves to ``cli``; imported last so they can import it.
from cli import (  # noqa: E402, F401
    audit,
    banks,
    cases,
    hashing,
    index,
    lists,
    platforms,
    serve,
    stats,
)
