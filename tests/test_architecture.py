"""Which way imports point (ARCHITECTURE.md), checked on the source so the rules stay true."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# module prefix -> third-party packages and registry modules it may import (stdlib always ok)
ALLOWED: dict[str, set[str]] = {
    "registry.errors": set(),
    "registry.domain": {"registry.errors"},
    "registry.config": {"registry.errors", "registry.domain"},
    "registry.hashing": {"registry.errors", "registry.domain", "registry.config",
                         "registry.hashing", "numpy", "PIL", "imagehash", "pdqhash", "scipy",
                         "cv2", "simplejpeg"},
    "registry.index": {"registry.errors", "registry.domain", "registry.config", "registry.index",
                       "numpy", "faiss", "cv2", "xxhash", "pymilvus"},
    "registry.store": {"registry.errors", "registry.domain", "registry.store", "sqlalchemy",
                       "alembic", "psycopg"},  # psycopg: the LISTEN connection (store.notify)
    "registry.service": {"registry.errors", "registry.domain", "registry.config",
                         "registry.hashing", "registry.index", "registry.store",
                         "registry.service", "registry.interop", "numpy"},
    "registry.interop": {"registry.errors", "registry.domain", "registry.interop"},
}
EDGE_FORBIDDEN = ("registry.store", "registry.index", "sqlalchemy", "faiss")


def modules(package: str) -> list[tuple[str, Path]]:
    base = ROOT / package.replace(".", "/")
    out = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out.append((name, path))
    return out


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def allowed(name: str, rules: set[str]) -> bool:
    top = name.split(".")[0]
    if top in STDLIB and top != "registry":
        return True
    return any(name == r or name.startswith(r + ".") for r in rules)


@pytest.mark.parametrize("prefix", sorted(ALLOWED))
def test_core_imports_point_inwards(prefix):
    checked = 0
    for name, path in modules("registry"):
        if not (name == prefix or name.startswith(prefix + ".")):
            continue
        if name.startswith("registry.store.migrations"):
            continue  # alembic scripts import the models by design
        bad = {i for i in imports(path) if not allowed(i, ALLOWED[prefix])}
        assert not bad, f"{name} imports {sorted(bad)}"
        checked += 1
    assert checked, f"no modules found under {prefix}"


def test_service_never_touches_edges_or_environment():
    for name, path in modules("registry.service"):
        source = path.read_text()
        assert "os.environ" not in source and "getenv" not in source, name
        assert not {i for i in imports(path) if i.split(".")[0] in ("flask", "click", "werkzeug")}


@pytest.mark.parametrize("package", ["registry.web", "cli"])
def test_edges_go_through_the_service(package):
    for name, path in modules(package):
        bad = {i for i in imports(path) if i.startswith(EDGE_FORBIDDEN)}
        assert not bad, f"{name} imports {sorted(bad)}: edges use the service layer"


def test_only_bootstrap_builds_the_store_and_index():
    for name, path in modules("registry") + modules("cli"):
        if name.startswith(("registry.store", "registry.index", "registry.bootstrap",
                            "registry.service.indexing")):  # the keeper rebuilds its own
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("Store", "IndexSet", "FlatIndex"), (
                    f"{name} constructs {node.func.id}; only registry.bootstrap wires parts")
