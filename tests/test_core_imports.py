"""The core depends on nothing above it: no module of ``platform/core`` imports the ``index``,
``serve`` or ``train`` subpackages, at module level or inside a function, absolute or relative."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "platform" / "core"
PACKAGE = "facenet_platform"
UPPER = ("index", "serve", "train")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import anywhere in a core module's tree (a
    relative import resolved against ``facenet_platform.core``; ``from X import name`` also
    yields ``X.name``, since ``name`` may be a submodule)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = f"{PACKAGE}.core".split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "id", getattr(node.func, "attr", None))
              in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def _violations(source: str) -> list[tuple[int, str]]:
    bad = tuple(f"{PACKAGE}.{name}" for name in UPPER)
    return [(line, module) for line, module in _imported_modules(ast.parse(source))
            if module in bad or module.startswith(tuple(b + "." for b in bad))]


def test_the_check_sees_every_form_of_import():
    source = '''
import facenet_platform.train.export
from facenet_platform.index import gallery
from facenet_platform import serve
from .. import train
from ..index.build import build_index

def later():
    from facenet_platform.train.export import load_exported
    import importlib
    importlib.import_module("facenet_platform.serve.api")

from . import weights
from .model_io import load_exported
import facenet_platform.core.weights
'''
    found = {line for line, _ in _violations(source)}
    assert found == {2, 3, 4, 5, 6, 9, 11}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_above_core(path):
    assert _violations(path.read_text()) == [], (
        f"{path.name} imports {sorted(m for _, m in _violations(path.read_text()))}: the core "
        "must not depend on index, serve or train")
