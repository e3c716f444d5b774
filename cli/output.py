"""Printing helpers shared by the commands: JSON lines, tables, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from registry.errors import FileTooLarge, UnreadableFile

F = TypeVar("F", bound=Callable[..., Any])

JSON_LINES = "One JSON object per line."


def json_option(help: str | None = None) -> Callable[[F], F]:
    """The ``--json`` flag every command that can print JSON takes, as parameter ``as_json``;
    ``help`` says what the JSON is where it is more than the command's usual output."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def emit_json(obj: object) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, sort_keys=False))


def read_file(path: str, limit: int) -> bytes:
    """Read an input file into memory, refusing oversized files before reading them."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise FileTooLarge(f"The file is {size} bytes; the limit is {limit} bytes.")
        return p.read_bytes()
    except IsADirectoryError:
        raise UnreadableFile(f"{path} is a folder, not a file.") from None
    except PermissionError:
        raise UnreadableFile(f"{path} cannot be read: permission denied.") from None
    except FileNotFoundError:
        raise UnreadableFile(f"{path} does not exist.") from None


def show_progress(count: int) -> bool:
    """Progress bars go to stderr, and only when a person is watching and the work is long."""
    return count > 3 and sys.stderr.isatty()
