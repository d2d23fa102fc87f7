"""The operator commands take no demo default: tenant and state directory come from the flags,
else from ``CloudSettings`` (``CONTINUUM_CLOUD_TENANT``, ``CONTINUUM_CLOUD_ROOT``), else the
command stops naming both; a quota refusal exits ``EXIT_REFUSED``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cloud_head.cli._common import operator_command
from cloud_head.registry import ModelRegistry
from cloud_head.tenants import QuotaExceededError
from continuum.cli import EXIT_INVALID, EXIT_REFUSED, main

PIPELINE = ["--pipeline", "digits-inspection"]


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment that names no tenant and no state directory."""
    monkeypatch.delenv("CONTINUUM_CLOUD_TENANT", raising=False)
    monkeypatch.delenv("CONTINUUM_CLOUD_ROOT", raising=False)


def registered(root: Path, tenant: str) -> Path:
    """Register v1 of ``tenant``'s digits-inspection under ``root``; return ``root``."""
    registry = ModelRegistry(root / "registry")
    artifact = root / "model.onnx"
    artifact.write_bytes(b"model bytes")
    registry.register(
        tenant,
        "digits-inspection",
        "digits-cnn",
        artifact,
        sign=lambda model, version, digest: "ab" * 64,
        parent=None,
        code_version="test",
        metrics={},
        gate={},
        lineage={},
    )
    registry.close()
    return root


class TestMissingTenantOrRoot:
    def test_no_tenant_names_the_flag_and_the_variable(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = registered(tmp_path, "acme")
        assert main(["models", "list", *PIPELINE, "--root", str(root)]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert "--tenant" in err and "CONTINUUM_CLOUD_TENANT" in err

    def test_no_root_names_the_flag_and_the_variable(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for argv in (
            ["models", "list", "--tenant", "acme", *PIPELINE],
            ["fleet", "--tenant", "acme"],
            ["label", "list", "--tenant", "acme", *PIPELINE],
            ["audit", "verify", "--tenant", "acme"],
            ["tenant", "list"],
        ):
            assert main(argv) == EXIT_INVALID, argv
            err = capsys.readouterr().err
            assert "--root" in err and "CONTINUUM_CLOUD_ROOT" in err, argv

    def test_the_demos_state_in_the_working_directory_is_not_read(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        registered(tmp_path / "continuum-demo" / "cloud", "acme")
        monkeypatch.chdir(tmp_path)
        assert main(["models", "list", "--tenant", "acme", *PIPELINE]) == EXIT_INVALID
        assert "v1" not in capsys.readouterr().out

    def test_a_pipeline_is_always_named(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["models", "list", "--tenant", "acme", "--root", "/r"]) == EXIT_INVALID
        assert "--pipeline" in capsys.readouterr().err


class TestSettingsFromTheEnvironment:
    def test_the_variables_name_tenant_and_root(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "acme")
        monkeypatch.setenv("CONTINUUM_CLOUD_ROOT", str(registered(tmp_path, "acme")))
        assert main(["models", "list", *PIPELINE]) == 0
        assert "v1       registered" in capsys.readouterr().out

    def test_a_flag_wins_over_its_variable(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root = registered(tmp_path, "acme")
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "globex")
        monkeypatch.setenv("CONTINUUM_CLOUD_ROOT", str(tmp_path / "elsewhere"))
        assert main(["models", "list", *PIPELINE, "--tenant", "acme", "--root", str(root)]) == 0
        assert "v1       registered" in capsys.readouterr().out

    def test_options_given_before_an_action_are_settled_too(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_ROOT", "/r")
        argv = ["fleet", "--tenant", "medica", "remove", "cam-a", "--address", "127.0.0.1:1"]
        assert main(argv) == EXIT_INVALID  # refused for want of --yes, after settling
        assert "node 'cam-a' of tenant 'medica'" in capsys.readouterr().err


class TestRefusals:
    def test_a_quota_refusal_exits_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        @operator_command
        def run(args: argparse.Namespace) -> int:
            raise QuotaExceededError(
                "acme", "training_gpu_hours", limit=1.0, current=1.0, requested=0.5
            )

        assert run(argparse.Namespace(tenant="acme", root=Path("/r"))) == EXIT_REFUSED
        err = capsys.readouterr().err
        assert err.startswith("error: QuotaExceededError: ") and "training_gpu_hours" in err
