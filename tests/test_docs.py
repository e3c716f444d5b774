"""The README, --help and the settings stay in step with the code."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.config import describe

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            out.extend(command_paths(command, path))
        else:
            out.append(path)
    return out


COMMANDS = command_paths(cli)


def test_readme_starts_with_the_two_commands():
    head = README[: README.index("## ")]
    assert "make run" in head and "make test" in head


@pytest.mark.parametrize("env, default, help_text", describe())
def test_every_setting_is_documented(env, default, help_text):
    assert f"`{env}`" in README, f"{env} is missing from the README configuration table"
    assert help_text


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_is_documented_and_has_help(path):
    assert f"`takedown {' '.join(path)}" in README, f"takedown {' '.join(path)} not in README"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_readme_documents_no_command_that_does_not_exist():
    import re

    documented = set(re.findall(r"`takedown ([a-z]+(?: [a-z][a-z-]*)?)", README))
    real = {" ".join(p) for p in COMMANDS} | {p[0] for p in COMMANDS}
    assert documented <= real, documented - real


def test_the_documented_case_number_is_a_valid_one():
    import re

    from registry.domain import CaseNumber

    (example,) = set(re.findall(r"`([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-.)`", README))
    assert str(CaseNumber.parse(example)) == example
