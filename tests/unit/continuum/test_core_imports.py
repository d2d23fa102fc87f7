"""The core knows no side: nothing under ``continuum/`` imports ``cloud_head``, ``edge_agent``
or ``pipelines`` (DESIGN §2), anywhere in a module, inside functions included.

The sides' commands reach the ``continuum`` command through entry points instead; a core that
imported a side would make an edge-only install carry (and fail on) the cloud's verbs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[3] / "continuum"
SIDES = frozenset({"cloud_head", "edge_agent", "pipelines"})
#: Functions that import the module named by their first argument.
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__", "find_spec"})


def side_imports(path: Path) -> list[str]:
    """Return ``line: module`` for each import of a side in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in DYNAMIC_IMPORTS and isinstance(first, ast.Constant):
                names = [str(first.value)]
        found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in SIDES]
    return found


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


class TestTheCoreImportsNoSide:
    def test_the_core_has_modules_to_check(self) -> None:
        paths = {p.relative_to(CORE).as_posix() for p in core_modules()}
        assert {"cli/__init__.py", "spec.py"} <= paths
        assert any(p.startswith("embedded/") for p in paths)

    @pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(CORE).as_posix())
    def test_module_imports_no_side(self, path: Path) -> None:
        assert side_imports(path) == [], f"{path.relative_to(CORE.parent)} imports a side"


class TestTheCheckFindsEveryKindOfImport:
    @pytest.mark.parametrize(
        "source",
        [
            "import cloud_head.fleet\n",
            "from edge_agent.outbox import read_ledger\n",
            "def f():\n    from pipelines.digits.data import load_splits\n",
            "class C:\n    def m(self):\n        import pipelines\n",
            "import importlib\nimportlib.import_module('pipelines.digits_inspection')\n",
        ],
    )
    def test_a_side_import_is_found(self, tmp_path: Path, source: str) -> None:
        path = tmp_path / "module.py"
        path.write_text(source, encoding="utf-8")
        assert len(side_imports(path)) == 1

    def test_core_and_relative_imports_are_not(self, tmp_path: Path) -> None:
        path = tmp_path / "module.py"
        path.write_text("from . import pipeline\nimport continuum.spec\nimport edge\n")
        assert side_imports(path) == []
