"""Every operator verb that reads or changes a tenant's state authorises that tenant first.

On a cloud head shared by tenants (a tenant registry under ``--root``), each verb checks the
tenant's MQTT password against the broker's password file before it reads a store or calls a
running service: none or another tenant's is refused with exit 3, naming the tenant and how
to give its credential; the right one lets the verb go on. What the audit log records as the
actor of an action is the identity that check established, not a name the caller chose.

The verbs that act through the running services stop, after the check, at the Ray token: a
token file that does not exist ends them with exit 2 before any cluster is reached, which
shows the check let them through without starting Ray here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from cloud_head.audit import AuditLog, default_actor
from cloud_head.cli._common import PASSWORD_ENV, authorize
from cloud_head.registry import ModelRegistry
from cloud_head.tenants import TenantRegistry
from continuum.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, main
from continuum.errors import AccessDeniedError
from tests.tools import require_tool

PIPELINE = ["--pipeline", "digits-inspection"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant registry hashes with mosquitto's tool; no credential comes from outside."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A head shared by acme and globex: acme has v1 and an audit log; their password files."""
    passwords = {}
    with AuditLog(tmp_path / "audit") as log:
        registry = TenantRegistry(tmp_path / "tenants", audit=log)
        for name in ("acme", "globex"):
            credentials = registry.create(name).credentials
            assert credentials is not None
            passwords[name] = tmp_path / f"{name}.password"
            passwords[name].write_text(credentials.password + "\n")
    models = ModelRegistry(tmp_path / "registry")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"model bytes")
    models.register(
        "acme",
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
    models.close()
    for folder in ("store", "state"):
        (tmp_path / folder).mkdir()
    return tmp_path, passwords


def cluster(root: Path) -> list[str]:
    """The cluster flags, with a token file that does not exist: the verb stops there."""
    return ["--address", "127.0.0.1:1", "--ray-token", str(root / "no-such-token")]


#: Each verb, what it prints once authorised (exit status and a phrase), given the head above.
LOCAL_VERBS: dict[str, tuple[list[str], int, str]] = {
    "models list": (["models", "list", *PIPELINE], EXIT_OK, "v1       registered"),
    "models show": (["models", "show", "v1", *PIPELINE], EXIT_OK, '"version": "v1"'),
    "fleet": (["fleet"], EXIT_OK, "no matching nodes"),
    "label list": (["label", "list", *PIPELINE], EXIT_OK, "await review"),
    "label show": (["label", "show", "s-1", *PIPELINE], EXIT_FAILED, "no stored sample 's-1'"),
    "label accept": (["label", "accept", "s-1", *PIPELINE], EXIT_FAILED, "not pending review"),
    "label fix": (["label", "fix", "s-1", "1", *PIPELINE], EXIT_FAILED, "no stored sample"),
    "audit verify": (["audit", "verify"], EXIT_OK, "head signature verified"),
    "audit export": (["audit", "export", "--model", "v1", *PIPELINE], EXIT_OK, "wrote "),
}
CLUSTER_VERBS: dict[str, list[str]] = {
    "models promote": ["models", "promote", "v1", *PIPELINE],
    "models rollback": ["models", "rollback", "v1", *PIPELINE],
    "retrain": ["retrain", *PIPELINE],
    "rollout status": ["rollout", "status", *PIPELINE],
    "fleet remove": ["fleet", "remove", "cam-a", "--yes"],
}
ALL_VERBS = sorted([*LOCAL_VERBS, *CLUSTER_VERBS])


def argv(verb: str, root: Path, *credential: str) -> list[str]:
    """The command line of ``verb`` for tenant acme on ``root``, with ``credential`` flags."""
    if verb in LOCAL_VERBS:
        words = LOCAL_VERBS[verb][0]
        if verb == "audit export":
            words = [*words, "--out", str(root / "export")]
    else:
        words = [*CLUSTER_VERBS[verb], *cluster(root)]
    return [*words, "--tenant", "acme", "--root", str(root), *credential]


@pytest.mark.parametrize("verb", ALL_VERBS)
class TestEveryVerb:
    def test_without_a_credential_it_is_refused_naming_the_tenant_and_the_fix(
        self, verb: str, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, _ = head
        assert main(argv(verb, root)) == EXIT_REFUSED
        err = capsys.readouterr().err
        assert "AccessDeniedError" in err and "tenant 'acme'" in err
        assert "--password-file" in err and PASSWORD_ENV in err

    def test_another_tenants_credential_is_refused(
        self, verb: str, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        code = main(argv(verb, root, "--password-file", str(passwords["globex"])))
        assert code == EXIT_REFUSED
        assert "not that of tenant 'acme'" in capsys.readouterr().err

    def test_the_tenants_own_credential_lets_it_go_on(
        self, verb: str, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        code = main(argv(verb, root, "--password-file", str(passwords["acme"])))
        out, err = capsys.readouterr()
        assert "AccessDeniedError" not in err
        if verb in LOCAL_VERBS:
            _, status, phrase = LOCAL_VERBS[verb]
            assert code == status, err
            assert phrase in out + err
        else:  # authorised, then stopped before the cluster by the missing token file
            assert code == EXIT_INVALID, err
            assert "Ray auth token" in err and "no-such-token" in err


class TestTheAuditActor:
    def test_is_the_tenant_whose_credential_was_checked_and_the_login(
        self, head: tuple[Path, dict[str, Path]]
    ) -> None:
        root, passwords = head
        args = argparse.Namespace(tenant="acme", root=root, password_file=passwords["acme"])
        assert authorize(args) == f"tenant:acme via {default_actor()}"

    def test_a_credential_in_the_environment_gives_the_same_identity(
        self, head: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root, passwords = head
        monkeypatch.setenv(PASSWORD_ENV, passwords["globex"].read_text().strip())
        args = argparse.Namespace(tenant="globex", root=root, password_file=None)
        assert authorize(args) == f"tenant:globex via {default_actor()}"
        with pytest.raises(AccessDeniedError, match="not that of tenant 'acme'"):
            authorize(argparse.Namespace(tenant="acme", root=root, password_file=None))

    def test_a_single_tenant_head_checks_nothing_and_names_the_login(self, tmp_path: Path) -> None:
        args = argparse.Namespace(tenant="acme", root=tmp_path, password_file=None)
        assert authorize(args) == default_actor()
        assert os.listdir(tmp_path) == []
