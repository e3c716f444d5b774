"""How the command line is put together (issue 15, "a flat CLI").

The command modules define their commands standalone and ``cli.main`` wires them, so nothing
imports ``cli.main`` back; a RegistryError becomes "Error: <message>" and exit 1 in one place,
the top-level group, not in a decorator on every command; and loading the commands (for
``takedown --help``) loads none of the heavy libraries: the service, the hashing and the web
app are imported inside the commands that use them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import TakedownGroup, cli
from registry.domain import CaseNumber
from registry.errors import CaseNotFound, RegistryError

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cli"
HEAVY = ("sqlalchemy", "alembic", "flask", "numpy", "cv2", "PIL")


def cli_modules() -> list[Path]:
    return sorted(CLI.rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute, relative, ``from package import module``,
    inside functions, and ``importlib.import_module`` with a literal name)."""
    package = "cli"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = package + ("." + base if base else "")
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)):
            out.add(str(node.args[0].value))
    return out


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        out.append(path)
        if isinstance(command, click.Group):
            out.extend(command_paths(command, path))
    return out


# --- (a) no import circle -----------------------------------------------------------------
def test_no_module_under_cli_imports_cli_main():
    offenders = [p.relative_to(ROOT).as_posix() for p in cli_modules()
                 if p.name != "__main__.py" and "cli.main" in imported_names(p)]
    assert not offenders, f"{offenders} import cli.main: commands are wired by cli.main"


def test_the_import_checker_sees_every_way_of_importing_cli_main(tmp_path):
    for text in ("from cli.main import cli\n", "import cli.main\n", "from cli import main\n",
                 "from . import main\n", "from .main import Context\n",
                 "def f():\n    from cli.main import cli\n",
                 "import importlib\nimportlib.import_module('cli.main')\n"):
        planted = tmp_path / "planted.py"
        planted.write_text(text)
        assert "cli.main" in imported_names(planted), text


def test_every_command_module_defines_its_commands_standalone():
    # No `@cli.command` / `@cli.group`: cli.main attaches them with add_command.
    for path in cli_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for d in node.decorator_list:
                    target = d.func if isinstance(d, ast.Call) else d
                    assert not (isinstance(target, ast.Attribute)
                                and isinstance(target.value, ast.Name)
                                and target.value.id == "cli"), (
                        f"{path.name}:{node.lineno} attaches {node.name} to cli itself")


# --- (b) one error mapping ----------------------------------------------------------------
def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = []
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        names.append(ast.unparse(target))
    return names


def _module_options(tree: ast.Module) -> set[str]:
    """Module-level names bound to a click option or argument (``FILES = click.argument(...)``)."""
    out = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func) in ("click.option", "click.argument")):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def test_no_command_carries_its_own_error_decorator():
    commands = 0
    for path in cli_modules():
        tree = ast.parse(path.read_text())
        groups = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  and any(d.startswith("click.group") for d in _decorator_names(n))}
        allowed = _module_options(tree) | {"json_option"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            names = _decorator_names(node)
            if not any(n in ("click.command", "click.group") or n.endswith((".command", ".group"))
                       for n in names):
                continue
            commands += 1
            for name in names:
                ok = (name.startswith("click.") or name in allowed
                      or (name.split(".")[0] in groups
                          and name.split(".")[-1] in ("command", "group")))
                assert ok, f"{path.name}:{node.lineno} {node.name} is decorated with @{name}"
        assert "handle_errors" not in path.read_text(), path.name
    assert commands == 1 + len(command_paths(cli))  # `cli` itself, and each command and group


def test_the_top_level_group_maps_errors():
    assert isinstance(cli, TakedownGroup)
    for path in command_paths(cli):
        command = cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        assert not isinstance(command, TakedownGroup), " ".join(path)  # only the top


def test_a_registry_error_in_a_real_command_is_an_error_line_and_exit_1(tmp_path, monkeypatch):
    for var in ("TAKEDOWN_DATABASE_URL", "TAKEDOWN_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    number = str(CaseNumber.generate())
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "case", "show", number])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert CaseNotFound.__name__ not in result.stderr  # the message, not the class
    # A top-level command too, through the same group.
    missing = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "export", "--bank",
                                       "nosuch", "--format", "csv"])
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: ")


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_the_group_maps_an_error_from_a_command_at_any_depth(depth):
    @click.group(cls=TakedownGroup)
    def top() -> None:
        pass

    @click.command("fail")
    def fail() -> None:
        raise CaseNotFound("There is no such case.")

    parent: click.Group = top
    for level in range(depth):
        child = click.Group(f"g{level}")
        parent.add_command(child)
        parent = child
    parent.add_command(fail)
    args = [*(f"g{level}" for level in range(depth)), "fail"]
    result = CliRunner().invoke(top, args)
    assert result.exit_code == 1
    assert result.stderr == "Error: There is no such case.\n"


def test_the_group_leaves_a_commands_own_exit_status_and_other_exceptions_alone():
    @click.group(cls=TakedownGroup)
    def top() -> None:
        pass

    @top.command("two")
    def two() -> None:
        sys.exit(2)

    @top.command("boom")
    def boom() -> None:
        raise ValueError("not a registry error")

    assert CliRunner().invoke(top, ["two"]).exit_code == 2
    boomed = CliRunner().invoke(top, ["boom"])
    assert isinstance(boomed.exception, ValueError)
    assert issubclass(CaseNotFound, RegistryError)


# --- (c) --help loads nothing heavy -------------------------------------------------------
def test_importing_the_cli_and_every_help_page_loads_no_heavy_library():
    paths = [list(p) for p in [(), *command_paths(cli)]]
    script = textwrap.dedent(f"""
        import json, sys
        import cli.main
        after_import = [m for m in {HEAVY!r} if m in sys.modules]
        from click.testing import CliRunner
        codes = [CliRunner().invoke(cli.main.cli, [*p, "--help"]).exit_code for p in {paths!r}]
        after_help = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps({{"import": after_import, "help": after_help, "codes": codes}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["import"] == [], f"import cli.main loads {seen['import']}"
    assert seen["help"] == [], f"the --help pages load {seen['help']}"
    assert set(seen["codes"]) == {0}


def test_python_m_cli_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "cli", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = done.stdout.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == set(cli.commands), names ^ set(cli.commands)
    assert len(names) >= 15
