"""What the operator commands share: where the cloud head's state is, and reaching its actors.

Read-only commands read the cloud head's stores directly (``--root``, by default the demo's
``./continuum-demo/cloud``, and ``--registry-url`` for the model registry's database);
commands that change something call the running services,
which are named Ray actors in the tenant's namespace, so every change goes through the
one controller that owns the pipeline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuum.errors import AccessDeniedError, ConfigError, NotReadyError

if TYPE_CHECKING:
    from cloud_head.paths import HeadPaths
    from cloud_head.registry import ModelRegistry

DEFAULT_ROOT = Path("continuum-demo") / "cloud"
DEFAULT_TOKEN = Path("continuum-demo") / "ray" / "ray_auth_token"
#: Environment variable holding the tenant's password for the read commands.
PASSWORD_ENV = "CONTINUUM_TENANT_PASSWORD"


def add_root(parser: argparse.ArgumentParser, *, registry: bool = False) -> None:
    """Add ``--root``: the cloud head's state directory; with ``registry``, ``--registry-url``."""
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"the cloud head's state directory (default ./{DEFAULT_ROOT}, the demo's)",
    )
    if registry:
        from cloud_head.paths import REGISTRY_URL_ENV

        parser.add_argument(
            "--registry-url",
            default=None,
            metavar="URL",
            help=f"the model registry's database, as the cloud head was given it: "
            f"postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH (default: "
            f"${REGISTRY_URL_ENV}, else SQLite under --root); its artifacts stay under --root",
        )


def add_tenant(parser: argparse.ArgumentParser, *, pipeline: bool = True) -> None:
    """Add ``--tenant`` (and ``--pipeline``) and the tenant's credential."""
    parser.add_argument("--tenant", default="acme", help="tenant name (default acme)")
    add_credential(parser)
    if pipeline:
        parser.add_argument(
            "--pipeline", default="digits-inspection", help="pipeline (default digits-inspection)"
        )


def add_credential(parser: argparse.ArgumentParser) -> None:
    """Add ``--password-file``: the tenant's credential, needed where tenants share a head."""
    parser.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help=f"file holding the tenant's MQTT password, the credential that reads its data on "
        f"a cloud head shared by tenants (or set {PASSWORD_ENV}); a demo writes them to "
        "<workdir>/credentials/",
    )


def authorize(args: argparse.Namespace) -> None:
    """Refuse to read ``args.tenant``'s data without its credential, where tenants share a head.

    A head whose state has a tenant registry (``<root>/tenants``) serves several tenants:
    every command that reads one tenant's samples, labels, models, fleet or audit records
    must present that tenant's MQTT password, checked against the broker's password file.
    A head without a registry is a single-tenant development setup and is not checked.

    Raises:
        AccessDeniedError: no credential, or it is another tenant's (or a wrong one).
        NotFoundError: the registry has no such tenant.
    """
    from cloud_head.tenants import TenantRegistry, registry_exists

    root = Path(args.root) / "tenants"
    if not registry_exists(root):
        return
    password = os.environ.get(PASSWORD_ENV)
    path = getattr(args, "password_file", None)
    if path is not None:
        try:
            password = Path(path).read_text().strip()
        except OSError as error:
            raise ConfigError(f"--password-file {path}: {error.strerror}") from None
    if not password:
        raise AccessDeniedError(
            f"the cloud head at {args.root} serves several tenants: give the credential of "
            f"tenant {args.tenant!r} with --password-file FILE or {PASSWORD_ENV}"
        )
    TenantRegistry(root).authenticate(args.tenant, password)


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
        default=DEFAULT_TOKEN,
        help=f"Ray auth token file (default ./{DEFAULT_TOKEN}); 'none' for a cluster without "
        "token auth",
    )


def state_dir(root: Path, name: str) -> Path:
    """Return ``root/name``, or raise ConfigError saying how to point at the right root."""
    path = root / name
    if not path.exists():
        raise ConfigError(
            f"no cloud head state at {path}; pass --root with the cloud head's state directory "
            "(for a demo run: <workdir>/cloud)"
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


def controller(args: argparse.Namespace) -> Any:
    """Connect to the cluster and return the pipeline's controller actor."""
    import_ray_with_auth(args.ray_token)
    import ray

    ray.init(address=args.address, namespace=args.tenant, log_to_driver=False)
    name = f"controller-{args.pipeline}"
    try:
        return ray.get_actor(name, namespace=args.tenant)
    except ValueError as error:
        raise NotReadyError(
            f"no running controller {name!r} in namespace {args.tenant!r} at {args.address}: "
            "is the cloud head deployed (e.g. `continuum demo` running)?"
        ) from error


def import_ray_with_auth(token: Path) -> None:
    """Set Ray's auth environment before ray is imported (it reads it once, at import)."""
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
