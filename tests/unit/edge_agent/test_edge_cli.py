"""`edge-agent` arguments and config errors: a clear message and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main


class TestBadArguments:
    def test_no_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main([]) == 2
        assert "choose a command" in capsys.readouterr().err

    def test_a_missing_config_option_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["run"]) == 2
        err = capsys.readouterr().err
        assert "--config" in err and "Traceback" not in err

    def test_an_unknown_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["fly"]) == 2
        assert "invalid choice" in capsys.readouterr().err

    def test_help_exits_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        assert "run" in capsys.readouterr().out


class TestBadConfig:
    @pytest.mark.parametrize("command", ["run", "check"])
    def test_a_missing_file_exits_2_with_the_reason(
        self, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([command, "--config", str(tmp_path / "absent.yaml")]) == 2
        err = capsys.readouterr().err
        assert "cannot read edge agent config" in err and "Traceback" not in err

    def test_an_invalid_file_lists_the_problems(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "agent.yaml"
        config.write_text("node_id: Edge_1\nbroker: {port: 0}\n", encoding="utf-8")
        assert main(["run", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert "node_id:" in err and "broker.port:" in err and "tenant:" in err
