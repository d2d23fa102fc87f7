"""``edge-agent --version``: which continuum a box runs, for the operator and the fleet view."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from edge_agent.cli import main


class TestVersion:
    def test_version_names_the_installed_package(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"edge-agent {metadata.version('continuum')}\n"

    def test_the_command_prints_it_and_exits_zero(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == (
            0,
            f"edge-agent {metadata.version('continuum')}\n",
        )
