"""The edge install runs on Python 3.10 (JetPack 6): a static check keeps 3.11-only code out.

JetPack 6 is Ubuntu 22.04 with Python 3.10, and TensorRT's Python bindings on a Jetson are
built for that interpreter, so ``continuum/`` (the core) and ``edge_agent/`` must not use
what only 3.11+ has (``typing.Self``, ``enum.StrEnum``, ``datetime.UTC``, ``tomllib``...).
mypy with ``--python-version 3.10`` reads typeshed's per-version stubs, so it fails on any
such import or attribute without running 3.10. ``scripts/bootstrap.sh test`` also runs the
core and edge unit tests on a real 3.10 where the machine has one; this check runs everywhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The packages an edge install imports: the agent and the core.
EDGE_PACKAGES = ("continuum", "edge_agent")

#: ``no-any-return`` is off for this run only: the installed numpy's stubs target 3.11+, and
#: read as 3.10 some of their return types degrade to Any. That says nothing about 3.10
#: compatibility (the 3.11 run of mypy keeps the check); the version errors are others.
_MYPY_310 = (
    "-m",
    "mypy",
    "--config-file",
    str(REPO / "pyproject.toml"),
    "--python-version",
    "3.10",
    "--disable-error-code",
    "no-any-return",
    "--no-error-summary",
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install -e '.[dev]' brings it)",
)


def _mypy_310(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *_MYPY_310, *targets],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


@pytest.mark.timeout(300)
def test_core_and_edge_agent_type_check_as_python_310() -> None:
    done = _mypy_310(*EDGE_PACKAGES)
    assert done.returncode == 0, (
        "continuum/ or edge_agent/ uses something Python 3.10 lacks (the edge install "
        "supports 3.10 for JetPack 6); fix: import it from typing_extensions, or use the "
        "3.10 spelling (dt.timezone.utc for dt.UTC), or guard it with "
        "`if sys.version_info >= (3, 11):`\n" + done.stdout + done.stderr
    )


@pytest.mark.timeout(300)
def test_the_check_fails_on_3_11_only_constructs(tmp_path: Path) -> None:
    module = tmp_path / "uses_311.py"
    module.write_text(
        "import datetime as dt\n"
        "from enum import StrEnum\n"
        "from typing import Self\n"
        "\n"
        "\n"
        "class Colour(StrEnum):\n"
        '    RED = "red"\n'
        "\n"
        "    def same(self) -> Self:\n"
        "        return self\n"
        "\n"
        "\n"
        "NOW = dt.datetime.now(dt.UTC)\n"
    )
    done = _mypy_310(str(module))
    assert done.returncode != 0, done.stdout + done.stderr
    for line, what in ((2, "StrEnum"), (3, "Self"), (13, "UTC")):
        assert f"uses_311.py:{line}: error:" in done.stdout, (what, done.stdout)
        assert what in done.stdout
