"""The ``continuum`` CLI: validate and show pipelines, errors as one line with exit status 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from continuum.cli import SUBCOMMANDS, build_parser, main
from continuum.spec import PipelineSpec, load_pipeline

EXAMPLE = Path(__file__).parent / "fixtures" / "line_7_inspection.py"


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
