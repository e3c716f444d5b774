"""Which way imports point, and that nothing is built at import time (ARCHITECTURE.md).

The checker resolves every import of every module under ``registry/`` and ``cli/`` (absolute,
relative, ``from package import module``, inside functions, and ``importlib.import_module`` /
``__import__`` with a literal name) to the module it names, and holds it against the allow-list
of the importing module's layer. A second check looks at what each module does when imported:
statically (no call at module level that builds an engine, app, index, registry, limiter or
thread) and for real (importing every module in a fresh interpreter opens no database, starts
no thread and builds no app). The planted-violation tests at the end show each rule failing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "cli")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

CORE = {"registry.errors", "registry.domain", "registry.config"}
EDGE = CORE | {"registry.service", "registry.bootstrap", "registry.hashing", "registry.interop"}

# Layer (a module prefix; the longest that matches applies) -> what it may import besides the
# standard library and itself. Third-party packages are named by their top-level module.
ALLOWED: dict[str, set[str]] = {
    "registry": set(),  # the package's own __init__: a docstring and a version
    "registry.errors": set(),
    "registry.domain": {"registry.errors"},
    "registry.config": {"registry.errors", "registry.domain"},
    "registry.hashing": CORE | {"numpy", "PIL", "imagehash", "pdqhash", "scipy", "cv2",
                                "simplejpeg", "pillow_heif", "av"},
    "registry.index": CORE | {"numpy", "faiss", "cv2", "xxhash", "pymilvus"},
    "registry.store": {"registry.errors", "registry.domain", "sqlalchemy", "alembic",
                       "psycopg"},  # psycopg: the LISTEN connection (store.notify)
    "registry.interop": {"registry.errors", "registry.domain"},
    "registry.service": CORE | {"registry.hashing", "registry.index", "registry.store",
                                "registry.interop", "numpy"},
    "registry.bootstrap": CORE | {"registry.store", "registry.index", "registry.service"},
    # The edges: the service, never the store, the index or their libraries.
    "registry.web": EDGE | {"flask", "apiflask", "werkzeug", "marshmallow", "flask_limiter",
                            "limits", "prometheus_client", "babel", "itsdangerous", "jinja2",
                            "markupsafe"},
    "cli": EDGE | {"registry.web", "click", "werkzeug"},
}
SKIPPED = ("registry.store.migrations",)  # alembic scripts import the models by design

# Called at module level, these build something (a database engine, an app, an index, the
# registry, a limiter, a thread): only a function may, when it is called (ARCHITECTURE rule 2).
BUILDERS = {"create_engine", "sessionmaker", "Store", "IndexSet", "FlatIndex", "MultiIndex",
            "SampledIndex", "LocalIndex", "MilvusIndex", "Flask", "APIFlask", "Limiter",
            "build_registry", "create_app", "Registry", "Thread", "from_env", "connect",
            "IndexKeeper", "Follower"}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def modules(root: Path) -> list[Module]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            out.append(Module(name, path, path.name == "__init__.py"))
    return out


def resolve(module: Module, known: set[str]) -> set[str]:
    """The modules (or third-party top-level names) ``module`` imports."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 > len(parts):
                    found.add("<beyond the top package>")
                    continue
                base = parts[: len(parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports that module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                found.add(arg.value if isinstance(arg, ast.Constant) and isinstance(
                    arg.value, str) else "<a dynamic import of a computed name>")
    return found


def layer_of(name: str) -> str:
    matches = [p for p in ALLOWED if name == p or name.startswith(p + ".")]
    return max(matches, key=len)


def permitted(target: str, layer: str) -> bool:
    top = target.split(".")[0]
    if top in STDLIB:
        return True
    if target == layer or target.startswith(layer + "."):
        return True  # inside its own layer
    return any(target == r or target.startswith(r + ".") for r in ALLOWED[layer])


def import_violations(root: Path) -> list[str]:
    found = modules(root)
    known = {m.name for m in found}
    out = []
    for m in found:
        if m.name.startswith(SKIPPED):
            continue
        layer = layer_of(m.name)
        for target in sorted(resolve(m, known)):
            if not permitted(target, layer):
                out.append(f"{m.name} ({layer}) imports {target}")
    return out


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run at import: the body, into if/try/with blocks, not into functions
    or classes' methods (class bodies run too)."""
    out: list[ast.stmt] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # decorators and defaults run at import
            out += [ast.Expr(d) for d in node.decorator_list]
            out += [ast.Expr(d) for d in node.args.defaults + node.args.kw_defaults if d]
            continue
        if isinstance(node, ast.ClassDef):
            todo += node.body
            continue
        nested: list[ast.stmt] = []
        for field in ("body", "orelse", "finalbody"):
            nested += [s for s in getattr(node, field, []) if isinstance(s, ast.stmt)]
        for handler in getattr(node, "handlers", []):
            nested += handler.body
        if nested:  # a compound statement: its test or items, then its blocks
            out.append(_head_of(node))
            todo += nested
        else:
            out.append(node)
    return out


def _head_of(node: ast.stmt) -> ast.stmt:
    """A compound statement without its blocks (its condition, iterable or context)."""
    parts = [getattr(node, f) for f in ("test", "iter", "subject") if hasattr(node, f)]
    parts += [i.context_expr for i in getattr(node, "items", [])]
    return ast.Expr(ast.Tuple(elts=parts, ctx=ast.Load()))


def build_violations(root: Path) -> list[str]:
    out = []
    for m in modules(root):
        if m.name.startswith(SKIPPED):
            continue
        tree = ast.parse(m.path.read_text(), str(m.path))
        for stmt in _module_level(tree):
            for node in ast.walk(stmt):
                if isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if isinstance(node, ast.Call):
                    func = node.func
                    called = (func.attr if isinstance(func, ast.Attribute)
                              else getattr(func, "id", ""))
                    if called in BUILDERS and not _inside_lambda(stmt, node):
                        out.append(f"{m.name}:{node.lineno} calls {called} at import time")
    return out


def _inside_lambda(stmt: ast.AST, call: ast.Call) -> bool:
    for node in ast.walk(stmt):
        if isinstance(node, ast.Lambda) and any(n is call for n in ast.walk(node.body)):
            return True
    return False


# --- the rules hold on this tree ------------------------------------------------------------
def test_every_import_points_the_way_its_layer_allows():
    assert not import_violations(ROOT)


def test_every_module_belongs_to_a_layer():
    names = [m.name for m in modules(ROOT)]
    assert len(names) > 80
    assert {layer_of(n) for n in names} == set(ALLOWED)


def test_nothing_is_built_at_import_time():
    assert not build_violations(ROOT)


def test_importing_every_module_opens_nothing_and_starts_nothing():
    # For real: import every module of registry/ and cli/ in a fresh interpreter with the
    # builders replaced by tripwires.
    names = [m.name for m in modules(ROOT) if not m.name.startswith(SKIPPED)
             and not m.name.endswith(".__main__")]  # `python -m cli` runs the CLI
    script = textwrap.dedent(f"""
        import importlib, socket, sqlite3, threading
        import sqlalchemy, flask
        calls = []
        def trip(what):
            def wire(*a, **k):
                calls.append(what)
                raise RuntimeError(what + " at import time")
            return wire
        sqlalchemy.create_engine = trip("create_engine")
        sqlite3.connect = trip("sqlite3.connect")
        socket.socket.connect = trip("socket.connect")
        threading.Thread.start = trip("Thread.start")
        flask.Flask.__init__ = trip("Flask()")
        for name in {names!r}:
            importlib.import_module(name)
        assert not calls, calls
        print("imported", len({names!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"imported {len(names)}" in done.stdout


def test_only_bootstrap_builds_the_store_and_index():
    # One composition root: the parts are built in registry.bootstrap (the store and index
    # packages build their own internals; the keeper rebuilds its index set).
    for m in modules(ROOT):
        if m.name.startswith(("registry.store", "registry.index", "registry.bootstrap",
                              "registry.service.indexing")):
            continue
        for node in ast.walk(ast.parse(m.path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("Store", "IndexSet", "FlatIndex", "IndexKeeper"), (
                    f"{m.name} constructs {node.func.id}; only registry.bootstrap wires parts")


CONCRETE_INDEXES = ("FlatIndex", "MultiIndex", "SampledIndex", "MilvusIndex", "BruteForceIndex")


def test_the_service_knows_indexes_only_by_their_protocols():
    # IndexSet (registry.index.catalog) builds the concrete indexes; the service types them as
    # HashIndex / Foldable / Compactable (registry.index.base) and never asks for a class.
    for m in modules(ROOT):
        if not m.name.startswith("registry.service"):
            continue
        tree = ast.parse(m.path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in CONCRETE_INDEXES:
                raise AssertionError(f"{m.name}:{node.lineno} names {node.id}")
        for target in resolve(m, {x.name for x in modules(ROOT)}):
            assert target not in {f"registry.index.{x}" for x in ("flat", "multi", "sampled",
                                                                "milvus", "brute")}, (m.name,
                                                                                     target)


def test_the_service_never_reads_the_environment_or_an_edge():
    for m in modules(ROOT):
        if m.name.startswith("registry.service"):
            source = m.path.read_text()
            assert "os.environ" not in source and "getenv" not in source, m.name


def test_edges_reach_the_registry_through_its_verbs():
    # Registry keeps its store and index keeper to itself: the edges use its methods.
    for m in modules(ROOT):
        if layer_of(m.name) in ("registry.web", "cli"):
            tree = ast.parse(m.path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("_store", "_keeper",
                                                                     "store", "keeper"):
                    raise AssertionError(f"{m.name}:{node.lineno} reaches .{node.attr}")


# --- planted violations: each rule fails when broken ----------------------------------------
def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if str(parent) != "." and not (tmp_path / parent / "__init__.py").exists():
                (tmp_path / parent / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    # a relative import from the domain into the store
    ({"registry/domain.py": "from .store import Store\n", "registry/store/__init__.py":
      "class Store: ...\n"}, "registry.domain (registry.domain) imports registry.store"),
    # the web edge reaching the ORM, absolutely and through `from package import module`
    ({"registry/web/pages.py": "from registry.store.models import SignalRow\n",
      "registry/store/models.py": ""},
     "registry.web.pages (registry.web) imports registry.store.models"),
    ({"registry/web/pages.py": "from registry.store import models\n",
      "registry/store/models.py": ""},
     "registry.web.pages (registry.web) imports registry.store.models"),
    # a relative import two levels up, from inside a function
    ({"registry/web/api.py": "def f():\n    from ..index import flat\n",
      "registry/index/flat.py": ""},
     "registry.web.api (registry.web) imports registry.index.flat"),
    # a dynamic import, and one of a computed name
    ({"cli/main.py": "import importlib\nimportlib.import_module('registry.store.uow')\n",
      "registry/store/uow.py": ""}, "cli.main (cli) imports registry.store.uow"),
    ({"cli/main.py": "import importlib\nname = 'x'\nimportlib.import_module(name)\n"},
     "cli.main (cli) imports <a dynamic import of a computed name>"),
    # the core importing a third-party edge library
    ({"registry/hashing/pdq.py": "import flask\n"},
     "registry.hashing.pdq (registry.hashing) imports flask"),
])
def test_planted_import_violations_are_caught(tmp_path, files, expected):
    assert expected in import_violations(_plant(tmp_path, files))


@pytest.mark.parametrize("source", [
    "from sqlalchemy import create_engine\nengine = create_engine('sqlite://')\n",
    "import sqlalchemy\nif True:\n    engine = sqlalchemy.create_engine('sqlite://')\n",
    "from registry.web import create_app\nclass Holder:\n    app = create_app(None)\n",
    "import threading\nthreading.Thread(target=print).start()\n",
    "from registry.config import Settings\nSETTINGS = Settings.from_env()\n",
])
def test_planted_import_time_builders_are_caught(tmp_path, source):
    root = _plant(tmp_path, {"registry/store/engine.py": source})
    assert any(v.startswith("registry.store.engine:") for v in build_violations(root))


def test_builders_inside_functions_and_lambdas_are_fine(tmp_path):
    root = _plant(tmp_path, {"registry/store/engine.py": """
        from sqlalchemy import create_engine
        def engine(url):
            return create_engine(url)
        LATER = lambda: create_engine('sqlite://')
    """})
    assert build_violations(root) == []
    assert import_violations(root) == []
