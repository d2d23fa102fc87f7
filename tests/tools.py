"""The programs the suite runs besides Python: found, or the test fails naming the fix.

``scripts/bootstrap.sh test`` (what CI runs) installs every one of them, so a missing tool
is a broken setup: a test that skipped instead would pass while proving nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

#: Where bootstrap puts tools that are not on PATH when the venv's python runs directly.
_VENV_BIN = Path(sys.executable).parent


if TYPE_CHECKING:
    from cloud_head.registry import ModelRegistry


def require_tool(name: str, install: str) -> str:
    """Return the path of program ``name``, or fail the test saying how to ``install`` it.

    Looked up on PATH, then beside this venv's python (bootstrap copies promtool there),
    then in /usr/sbin and /usr/bin (Debian's mosquitto tools, when PATH lacks them).
    """
    for where in (None, str(_VENV_BIN), "/usr/sbin:/usr/bin"):
        found = shutil.which(name, path=where)
        if found is not None:
            return found
    pytest.fail(f"{name} is not installed: {install} (scripts/bootstrap.sh test does it)")


def promtool() -> str:
    """Return Prometheus' own linter, which judges metrics and rules as a scraper would."""
    return require_tool(
        "promtool", "take it from Debian's prometheus package (apt-get download prometheus)"
    )


def assert_promtool_accepts_metrics(text: str) -> None:
    """Fail unless ``promtool check metrics`` accepts the exposition ``text``."""
    lint = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def register_test_version(
    registry: ModelRegistry,
    tenant: str,
    pipeline: str,
    model: str,
    artifact: Path,
    *,
    private_pem: bytes | None = None,
) -> None:
    """Record ``artifact`` as the next version of ``model`` in a real registry.

    Signed with ``private_pem`` as the controller signs (the artifact's digest), or with a
    placeholder where the test reads nothing of the signature.
    """
    from continuum.signing import sign

    registry.register(
        tenant,
        pipeline,
        model,
        artifact,
        sign=lambda _model, _version, digest: (
            "00" if private_pem is None else sign(private_pem, digest.encode())
        ),
        parent=None,
        code_version="test",
        metrics={},
        gate={},
        lineage={},
    )
