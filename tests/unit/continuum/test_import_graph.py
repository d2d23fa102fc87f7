"""The core's modules import each other in one direction only: no cycle, hidden or not."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import continuum

PACKAGE = Path(continuum.__file__).parent


def module_name(file: Path) -> str:
    """Return the dotted name ``file`` imports as (a package's ``__init__`` as the package)."""
    parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(file: Path, name: str) -> set[str]:
    """Return every dotted name an import statement anywhere in ``file`` may load.

    Imports inside functions and under ``TYPE_CHECKING`` count too: those are the
    workarounds that hid the cycles this test keeps out (a lazy ``from continuum.pipeline
    import Pipeline`` in ``spec``, a lazy codec in ``wire/__init__``).
    """
    found: set[str] = set()
    is_package = file.name == "__init__.py"
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Return, for each module of ``continuum``, the modules of ``continuum`` it loads.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those count as
    imported too, except the importer's own packages (already running when it runs).
    """
    files = {module_name(file): file for file in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        targets: set[str] = set()
        for imported in imported_names(file, name):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in files and not (name == target or name.startswith(f"{target}.")):
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one path per back edge found by a depth-first walk: each closes a cycle."""
    cycles: list[list[str]] = []
    on_path: list[str] = []
    done: set[str] = set()

    def walk(node: str) -> None:
        on_path.append(node)
        for target in sorted(graph[node]):
            if target in on_path:
                cycles.append([*on_path[on_path.index(target) :], target])
            elif target not in done:
                walk(target)
        on_path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            walk(node)
    return cycles


class TestImportGraph:
    def test_no_module_of_the_core_imports_one_that_imports_it_back(self) -> None:
        cycles = find_cycles(import_graph())
        assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)

    def test_the_walk_finds_a_cycle_when_there_is_one(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert find_cycles(graph) == [["a", "b", "c", "a"]]

    def test_the_graph_sees_lazy_and_type_checking_imports(self, tmp_path: Path) -> None:
        source = (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from continuum.wire.codec import SampleBatch\n"
            "def load() -> None:\n"
            "    from continuum.pipeline import Pipeline\n"
        )
        file = tmp_path / "probe.py"
        file.write_text(source, encoding="utf-8")
        assert {"continuum.wire.codec", "continuum.pipeline"} <= imported_names(file, "probe")

    def test_spec_and_pipeline_are_not_both_importing_each_other(self) -> None:
        graph = import_graph()
        assert "continuum.pipeline" in graph["continuum.spec"]  # load_pipeline finds a Pipeline
        assert "continuum.spec" not in graph["continuum.pipeline"]

    def test_the_data_class_both_import_is_a_leaf(self) -> None:
        graph = import_graph()
        assert graph["continuum._data_class"] == {"continuum.errors"}
        assert graph["continuum.errors"] == set()

    def test_the_codec_does_not_import_the_spec(self) -> None:
        graph = import_graph()
        assert "continuum.spec" not in graph["continuum.wire.codec"]


class TestImportFirst:
    @pytest.mark.parametrize(
        "module",
        ["continuum.spec", "continuum.pipeline", "continuum.wire.codec", "continuum.wire.topics"],
    )
    def test_each_module_imports_first_in_a_fresh_interpreter(self, module: str) -> None:
        code = (
            f"import {module}, sys\n"
            "assert 'continuum.wire.codec' in sys.modules, 'wire loads its codec eagerly'\n"
            "from continuum.spec import DataClass, load_pipeline\n"
            "from continuum.wire import SampleBatch, Telemetry\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
