"""The ``continuum`` CLI: validate and show pipelines, errors as one line with their exit
status, and the sides' commands assembled from entry points."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from continuum.cli import (
    COMMANDS_GROUP,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_REFUSED,
    SUBCOMMANDS,
    build_parser,
    main,
)
from continuum.cli._exit import exit_status
from continuum.errors import (
    AccessDeniedError,
    ConfigError,
    ContinuumError,
    NotFoundError,
    NotReadyError,
    PlacementError,
    SpecError,
)
from continuum.spec import PipelineSpec, load_pipeline

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "line_7_inspection.py"


class TestValidate:
    def test_valid_file_prints_a_summary_and_exits_zero(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["validate", str(EXAMPLE)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"valid: {EXAMPLE}\npipeline line-7-inspection (tenant acme")
        assert "low_confidence(0.6) | drift(psi(0.2)) | random(0.01), budget 256 kbit/s" in out
        assert "when 500 new samples or manual" in out
        assert "promote after 10 min" in out

    def test_invalid_file_prints_the_error_and_exits_two(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text(
            load_pipeline(EXAMPLE).to_yaml().replace("canary: 0.1", "canary: 1.5"),
            encoding="utf-8",
        )
        assert main(["validate", str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"error: {path}: rollout.canary: must be in (0, 1], got 1.5 "
            "(fix: use e.g. canary=0.1 (10% of nodes))\n"
        )

    def test_missing_file_exits_two(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["validate", str(tmp_path / "none.py")]) == 2
        assert "no such file" in capsys.readouterr().err

    def test_error_reaches_the_shell_without_a_traceback(self, tmp_path: Path) -> None:
        path = tmp_path / "bad_trigger.py"
        path.write_text(
            "from continuum import Pipeline\n"
            "pipe = Pipeline('p', tenant='t', data_class='public')\n"
            "pipe.retrain('pkg.mod:train', when='500 samples')\n",
            encoding="utf-8",
        )
        result = subprocess.run(
            [sys.executable, "-m", "continuum.cli", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: {path}:3: retrain.when: cannot read trigger")
        assert '"500 new samples"' in result.stderr


class TestShow:
    def test_prints_yaml_that_loads_back_to_the_same_spec(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["show", str(EXAMPLE)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("api_version: continuum.io/v1\n")
        assert PipelineSpec.from_yaml(out) == load_pipeline(EXAMPLE)

    def test_json_format_loads_back_to_the_same_spec(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["show", "--format", "json", str(EXAMPLE)]) == 0
        assert PipelineSpec.from_json(capsys.readouterr().out) == load_pipeline(EXAMPLE)

    def test_shown_yaml_validates_as_a_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        main(["show", str(EXAMPLE)])
        path = tmp_path / "line7.yaml"
        path.write_text(capsys.readouterr().out, encoding="utf-8")
        assert main(["validate", str(path)]) == 0


class TestCommandLine:
    def test_no_command_prints_help_and_exits_two(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main([]) == 2
        assert "validate" in capsys.readouterr().err

    def test_unknown_command_exits_two(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["deploy-everything"]) == 2
        assert "invalid choice" in capsys.readouterr().err

    def test_help_exits_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        assert "show" in capsys.readouterr().out

    def test_every_registered_module_adds_a_runnable_command(self) -> None:
        parser = build_parser()
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert set(actions[0].choices) >= {"validate", "show"}
        assert len(actions[0].choices) >= len(SUBCOMMANDS)

        def runnable(parser: argparse.ArgumentParser, path: str) -> None:
            nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not nested:  # a leaf: it must say what runs
                assert callable(parser.get_default("run")), path
                return
            for name, sub in nested[0].choices.items():
                runnable(sub, f"{path} {name}")

        for command, sub in actions[0].choices.items():
            runnable(sub, command)


def commands_listed(help_text: str) -> set[str]:
    """Return the command names ``--help`` lists (the rows under "commands:")."""
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return {
        line.split()[0]
        for line in section.splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    }


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``continuum`` in a process of its own, as a shell would."""
    return subprocess.run(
        [sys.executable, "-m", "continuum.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


class TestVersionAndExitStatuses:
    def test_version_names_the_installed_package(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"continuum {metadata.version('continuum')}\n"

    def test_help_documents_each_exit_status(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        epilog = out.split("\nexit status:\n", 1)[1]
        for status, meaning in (
            (EXIT_FAILED, "failed"),
            (EXIT_INVALID, "invalid input"),
            (EXIT_REFUSED, "refused"),
        ):
            assert f"  {status}  {meaning}" in epilog
        assert len({EXIT_FAILED, EXIT_INVALID, EXIT_REFUSED}) == 3

    @pytest.mark.parametrize(
        ("error", "status"),
        [
            (SpecError("bad field"), EXIT_INVALID),
            (ConfigError("bad config"), EXIT_INVALID),
            (AccessDeniedError("not yours"), EXIT_REFUSED),
            (PlacementError("policy says no"), EXIT_REFUSED),
            (NotReadyError("broker down"), EXIT_FAILED),
            (NotFoundError("no such version"), EXIT_FAILED),
        ],
    )
    def test_each_error_maps_to_its_status(self, error: ContinuumError, status: int) -> None:
        assert exit_status(error) == status


class TestCommandsFromEntryPoints:
    def test_the_sides_commands_are_assembled_from_entry_points(self) -> None:
        declared = {e.name for e in metadata.entry_points(group=COMMANDS_GROUP)}
        assert {"demo", "fleet", "models", "rollout", "retrain", "label", "audit"} <= declared
        assert {"tenant", "certs"} <= declared
        listed = commands_listed(build_parser().format_help())
        assert listed == declared | {"validate", "show", "policy"}

    def test_a_broken_plugin_is_reported_by_name_and_the_rest_work(self, tmp_path: Path) -> None:
        info = tmp_path / "brokenplugins-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugins\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[continuum.commands]\n"
            "explodes = explodes_plugin:register\n"
            "halfway = halfway_plugin:register\n"
            "greet = greet_plugin:register\n"
        )
        (tmp_path / "explodes_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
        (tmp_path / "halfway_plugin.py").write_text(
            "def register(subparsers):\n"
            "    subparsers.add_parser('halfway', help='never finished')\n"
            "    raise ValueError('register failed half-way')\n"
        )
        (tmp_path / "greet_plugin.py").write_text(
            "def register(subparsers):\n"
            "    parser = subparsers.add_parser('greet', help='say hello')\n"
            "    parser.set_defaults(run=lambda args: print('hello') or 0)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}

        shown = run_cli("--help", env=env)
        assert shown.returncode == 0, shown.stderr
        listed = commands_listed(shown.stdout)
        assert {"validate", "fleet", "demo", "greet"} <= listed
        assert not {"explodes", "halfway"} & listed
        assert "command 'explodes' (explodes_plugin:register) failed to load" in shown.stderr
        assert "RuntimeError: plugin bug" in shown.stderr
        assert "command 'halfway' (halfway_plugin:register) failed to load" in shown.stderr

        valid = run_cli("validate", str(EXAMPLE), env=env)
        assert valid.returncode == 0 and valid.stdout.startswith(f"valid: {EXAMPLE}")
        greet = run_cli("greet", env=env)
        assert (greet.returncode, greet.stdout) == (0, "hello\n")
        asked = run_cli("explodes", env=env)
        assert asked.returncode == EXIT_FAILED
        assert "command 'explodes'" in asked.stderr

    def test_without_the_cloud_only_what_can_run_is_listed(self) -> None:
        # An edge install lacks Ray, pyarrow and torch: make them unimportable here.
        blocked = "import sys; sys.modules.update(dict.fromkeys(['ray', 'pyarrow', 'torch']))"
        program = f"{blocked}; from continuum.cli import main; raise SystemExit(main())"

        def edge(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", program, *argv],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        shown = edge("--help")
        assert shown.returncode == 0 and shown.stderr == ""
        assert commands_listed(shown.stdout) == {"validate", "show", "policy", "certs"}
        assert "command 'fleet' is not available in this install" in shown.stdout
        assert "pip install 'continuum[cloud]'" in shown.stdout
        asked = edge("fleet", "--tenant", "acme")
        assert asked.returncode == EXIT_INVALID
        assert "command 'fleet' is not available in this install" in asked.stderr
        assert "ray" in asked.stderr
        assert edge("validate", str(EXAMPLE)).returncode == 0
