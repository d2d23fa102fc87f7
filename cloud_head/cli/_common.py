"""What the operator commands share: whose state, where it is, and reaching the running actors.

Read-only commands read the cloud head's stores directly (``--root``, else
``CONTINUUM_CLOUD_ROOT``, and ``--registry-url`` for the model registry's database); commands
that change something call the running services, which are named Ray actors in the tenant's
namespace, so every change goes through the one controller that owns the pipeline. No
command falls back on a demo's tenant or directory: a value left out comes from
``CloudSettings`` or the command stops, naming the flag and the variable.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuum.cli import EXIT_REFUSED
from continuum.errors import AccessDeniedError, ConfigError, NotReadyError

if TYPE_CHECKING:
    from cloud_head.paths import HeadPaths
    from cloud_head.registry import ModelRegistry

#: Environment variable holding the tenant's password for the read commands.
PASSWORD_ENV = "CONTINUUM_TENANT_PASSWORD"
#: The variables the tenant and the state directory come from when their flag is left out.
TENANT_ENV = "CONTINUUM_CLOUD_TENANT"
ROOT_ENV = "CONTINUUM_CLOUD_ROOT"

Run = Callable[[argparse.Namespace], int]


def operator_command(run: Run) -> Run:
    """Wrap a command's ``run``: settle its tenant and root, and report a quota as refused.

    ``--tenant`` and ``--root`` left out are read from ``CloudSettings`` (``TENANT_ENV``,
    ``ROOT_ENV``); with neither, the command stops with a ``ConfigError`` naming both. A
    ``QuotaExceededError`` exits ``EXIT_REFUSED``, as a policy or a credential refusal does.
    """

    @functools.wraps(run)
    def settled(args: argparse.Namespace) -> int:
        _settle(args)
        from cloud_head.tenants import QuotaExceededError

        try:
            return run(args)
        except QuotaExceededError as error:
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
            return EXIT_REFUSED

    return settled


def _settle(args: argparse.Namespace) -> None:
    """Fill ``args.tenant`` and ``args.root`` left out from the settings, or raise naming both."""
    needs_tenant = hasattr(args, "tenant") and args.tenant is None
    needs_root = hasattr(args, "root") and args.root is None
    if not (needs_tenant or needs_root):
        return
    from cloud_head.settings import CloudSettings

    settings = CloudSettings.load()
    if needs_tenant:
        args.tenant = settings.require_tenant()
    if needs_root:
        args.root = settings.require_root()


def add_json(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: one machine-readable document on stdout instead of the table."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document with stable keys instead of the human-readable table",
    )


def wants_json(args: argparse.Namespace) -> bool:
    """Whether ``--json`` was given (a caller that builds its own Namespace may leave it out)."""
    return bool(getattr(args, "json", False))


def print_json(document: dict[str, Any]) -> None:
    """Print ``document`` as one JSON document (sorted keys, paths and times as text)."""
    print(json.dumps(document, indent=2, sort_keys=True, default=str))


def add_root(parser: argparse.ArgumentParser, *, registry: bool = False) -> None:
    """Add ``--root``: the cloud head's state directory; with ``registry``, ``--registry-url``."""
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"the cloud head's state directory (default ${ROOT_ENV}; for a demo run: "
        "<workdir>/cloud)",
    )
    if registry:
        from cloud_head.settings import ENV_PREFIX, REGISTRY_URL_ENV

        parser.add_argument(
            "--registry-url",
            default=None,
            metavar="URL",
            help=f"the model registry's database, as the cloud head was given it: "
            f"postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH (default: "
            f"${ENV_PREFIX}REGISTRY_URL or ${REGISTRY_URL_ENV}, else SQLite under --root); "
            "its artifacts stay under --root",
        )


def add_tenant(parser: argparse.ArgumentParser, *, pipeline: bool = True) -> None:
    """Add ``--tenant`` (and ``--pipeline``) and the tenant's credential."""
    parser.add_argument("--tenant", default=None, help=f"tenant name (default ${TENANT_ENV})")
    add_credential(parser)
    if pipeline:
        parser.add_argument("--pipeline", required=True, help="the tenant's pipeline")


def add_credential(parser: argparse.ArgumentParser) -> None:
    """Add ``--password-file``: the tenant's credential, needed where tenants share a head."""
    parser.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help=f"file holding the tenant's MQTT password, the credential every command that "
        f"reads or changes the tenant's state must give on a cloud head shared by tenants (or "
        f"set {PASSWORD_ENV}); a demo writes them to <workdir>/credentials/",
    )


def authorize(args: argparse.Namespace) -> str:
    """Refuse ``args.tenant``'s state without its credential; return who acts, for the audit log.

    A head whose state has a tenant registry (``<root>/tenants``) serves several tenants:
    every command that reads or changes one tenant's samples, labels, models, rollouts,
    fleet or audit records must present that tenant's operator password, checked against the
    broker's password file, before it touches anything. The identity it returns is what the
    audit log records as the actor of an action, so the record names the credential that was
    checked, not a name the caller chose. A head without a registry is a single-tenant
    development setup: nothing is checked and the actor is the login, ``user@host``.

    This check is the CLI's; the services check the credential again themselves
    (``operator_credential`` hands it to them), since a ``--root`` at an empty folder skips
    this one and the Ray token reaches the services without the CLI.

    Returns:
        ``tenant:NAME via user@host`` after a checked credential, else ``user@host``.

    Raises:
        AccessDeniedError: no credential, or it is another tenant's (or a wrong one).
        NotFoundError: the registry has no such tenant.
        ConfigError: ``--password-file`` cannot be read.
    """
    from cloud_head.audit import default_actor
    from cloud_head.tenants import TenantRegistry, registry_exists

    root = Path(args.root) / "tenants"
    if not registry_exists(root):
        return default_actor()
    password = operator_credential(args)
    if not password:
        raise AccessDeniedError(
            f"the cloud head at {args.root} serves several tenants: give the credential of "
            f"tenant {args.tenant!r} with --password-file FILE or {PASSWORD_ENV}"
        )
    record = TenantRegistry(root).authenticate(args.tenant, password)
    return tenant_actor(record.name)


def operator_credential(args: argparse.Namespace) -> str | None:
    """Return the tenant's operator credential given (``--password-file``, else the variable).

    Raises:
        ConfigError: ``--password-file`` cannot be read.
    """
    password = os.environ.get(PASSWORD_ENV)
    path = getattr(args, "password_file", None)
    if path is not None:
        try:
            password = Path(path).read_text().strip()
        except OSError as error:
            raise ConfigError(f"--password-file {path}: {error.strerror}") from None
    return password or None


def tenant_actor(tenant: str) -> str:
    """Return the audit actor of a person who gave ``tenant``'s credential from this login."""
    from cloud_head.audit import default_actor

    return f"tenant:{tenant} via {default_actor()}"


def add_cluster(parser: argparse.ArgumentParser) -> None:
    """Add ``--address`` and ``--ray-token`` for commands that talk to the running services."""
    parser.add_argument(
        "--address",
        required=True,
        help="Ray cluster address (host:port of the GCS), as `continuum demo` prints it",
    )
    parser.add_argument(
        "--ray-token",
        type=Path,
        default=None,
        help="Ray auth token file, or 'none' for a cluster without token auth (default: "
        "Ray's own RAY_AUTH_* environment); a demo writes it to <workdir>/ray/ray_auth_token",
    )


def state_dir(root: Path, name: str) -> Path:
    """Return ``root/name``, or raise ConfigError saying how to point at the right root."""
    path = root / name
    if not path.exists():
        raise ConfigError(
            f"no cloud head state at {path}; pass --root with the cloud head's state directory "
            f"(or set {ROOT_ENV}; for a demo run: <workdir>/cloud)"
        )
    return path


def head_paths(args: argparse.Namespace) -> HeadPaths:
    """Return the cloud head's paths from ``--root`` and ``--registry-url`` (or its variable)."""
    from cloud_head.paths import HeadPaths

    url = getattr(args, "registry_url", None)
    return HeadPaths(Path(args.root)) if url is None else HeadPaths(Path(args.root), url)


def open_registry(args: argparse.Namespace) -> ModelRegistry:
    """Open the model registry the running cloud head uses; close it when done.

    Raises:
        ConfigError: no registry under ``--root`` (when it is SQLite there) or a bad URL.
        NotReadyError: its PostgreSQL cannot be reached.
    """
    paths = head_paths(args)
    if paths.registry_url is None:
        state_dir(paths.root, "registry")  # a wrong --root must not get an empty registry
    return paths.open_registry()


def connect_ray(args: argparse.Namespace) -> None:
    """Connect this process to the cluster at ``--address``, in the tenant's namespace.

    Raises:
        ConfigError: the ``--ray-token`` file is missing.
        NotReadyError: the cluster cannot be reached (or refuses the token).
    """
    import_ray_with_auth(args.ray_token)
    import ray

    try:
        ray.init(address=args.address, namespace=args.tenant, log_to_driver=False)
    except (ConnectionError, RuntimeError) as error:
        raise NotReadyError(
            f"cannot connect to the Ray cluster at {args.address}: {error}; check --address "
            "and, on a cluster with token auth, --ray-token"
        ) from error


def controller(args: argparse.Namespace) -> Any:
    """Connect to the cluster and return the pipeline's controller actor."""
    name = f"controller-{args.pipeline}"
    return named_actor(args, name, what=f"controller {name!r}")


def named_actor(args: argparse.Namespace, name: str, *, what: str) -> Any:
    """Connect to the cluster and return the tenant's running actor ``name`` (``what`` it is)."""
    connect_ray(args)
    import ray

    try:
        return ray.get_actor(name, namespace=args.tenant)
    except ValueError as error:
        raise NotReadyError(
            f"no running {what} in namespace {args.tenant!r} at {args.address}: "
            "is the cloud head deployed (e.g. `continuum demo` running)?"
        ) from error


def import_ray_with_auth(token: Path | None) -> None:
    """Set Ray's auth environment before ray is imported (it reads it once, at import).

    ``None`` leaves Ray's own ``RAY_AUTH_*`` environment as it is.
    """
    if token is None:
        return
    if str(token).lower() == "none":
        os.environ["RAY_AUTH_MODE"] = "disabled"
        return
    if not token.is_file():
        raise ConfigError(
            f"Ray auth token {token} not found; pass --ray-token with the cluster's token file "
            "(a demo writes it to <workdir>/ray/ray_auth_token) or 'none'"
        )
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token.resolve())
