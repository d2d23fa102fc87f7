"""A site's own data plane: its broker, bridged to the central one for everything but the data
the residency policy keeps at the site (issue 17; ARCHITECTURE.md "The site data plane").

Where a pipeline's training is planned federated (its data class may not leave its site),
its samples and delayed labels must not cross the site's border, not even inside a broker's
queue.  So the site's agents connect to a broker *at the site* (``SiteBroker``: an embedded
mosquitto in the demo and tests, a mosquitto on the site's server in production), and that
broker is bridged to the central one (``SiteBridge``) with one ``topic`` line per node and
direction: the nodes' status, reported state and telemetry go out, and samples and feedback
only of pipelines the plan keeps central; their desired state, receipts and the tenant's
model artifacts come in.  The samples and feedback of a federated pipeline match no ``out``
line, so mosquitto never forwards them: the site ingest (``cloud_head.ingest.SiteIngestActor``)
reads them on the site broker and stores them at the site.

Identities stay per device (DESIGN.md §6): the site broker admits the site's nodes and the
tenant's ingest identities only, with the same ACL blocks as the central broker; the bridge
connects to the central broker as ``bridge.{site}@{tenant}``, whose ACL there lets it write
only its site's nodes' status, reported and telemetry (and the central pipelines' data) and
read only those nodes' desired state and receipts and the tenant's artifacts, so a
misconfigured or compromised site broker still cannot speak for another site's node.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud_head._tenant_broker import DEFAULT_MOSQUITTO_PASSWD, acl_blocks
from continuum._fs import atomic_write
from continuum.embedded.broker import EmbeddedBroker, find_mosquitto_tool
from continuum.errors import ConfigError, NotReadyError
from continuum.wire import identities, topics
from continuum.wire.mqtt import BrokerSettings

__all__ = ["SiteBridge", "SiteBroker", "bridge_identity", "enrol_bridges", "site_broker_files"]

_SUBPROCESS_TIMEOUT_S = 10.0


def bridge_identity(tenant: str, site: str) -> str:
    """Return the central broker identity of ``site``'s bridge for ``tenant``."""
    return f"bridge.{topics.check_name(site, 'site')}@{topics.check_name(tenant, 'tenant')}"


@dataclass(frozen=True)
class SiteBridge:
    """What crosses between one site's broker and the central broker, per node and direction.

    ``nodes`` are the site's edge nodes; ``central_pipelines`` the pipelines whose samples
    and feedback may leave the site (those the plan trains centrally).  Every other
    pipeline's samples and feedback match no line and stay at the site.
    """

    tenant: str
    site: str
    nodes: tuple[str, ...]
    central_pipelines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        topics.check_name(self.tenant, "tenant")
        topics.check_name(self.site, "site")
        if not self.nodes:
            raise ConfigError(f"site {self.site}: a bridge needs the site's nodes; none given")
        for node in self.nodes:
            topics.check_name(node, "node")
        for pipeline in self.central_pipelines:
            topics.check_name(pipeline, "pipeline")

    @property
    def identity(self) -> str:
        """The bridge's identity on the central broker."""
        return bridge_identity(self.tenant, self.site)

    def outgoing(self) -> list[str]:
        """Return the topics that leave the site (site broker -> central broker)."""
        out: list[str] = []
        for node in self.nodes:
            out += [
                topics.node_status(self.tenant, node),
                topics.node_reported(self.tenant, node),
                topics.pipeline_filter(self.tenant, "telemetry", node),
            ]
            for pipeline in self.central_pipelines:
                out += [
                    topics.samples(self.tenant, pipeline, node),
                    topics.feedback(self.tenant, pipeline, node),
                ]
        return out

    def incoming(self) -> list[str]:
        """Return the topics that come to the site (central broker -> site broker)."""
        into = [topics.models_filter(self.tenant)]
        for node in self.nodes:
            into += [topics.node_desired(self.tenant, node), topics.node_stored(self.tenant, node)]
        return into

    def config_lines(self, central: BrokerSettings) -> list[str]:
        """Return the mosquitto ``connection`` block of this bridge to ``central``.

        The session persists (``cleansession false``): QoS 1 messages queued while the link
        is down cross when it is back.  Notifications are off: the bridge's identity may not
        publish ``$SYS`` topics on the central broker.
        """
        if central.tls_ca is not None:
            raise ConfigError(
                "the embedded site bridge speaks plain MQTT on loopback; for TLS configure "
                "bridge_cafile/bridge_certfile/bridge_keyfile in the site's mosquitto.conf"
            )
        lines = [
            f"connection {self.site}-to-central",
            f"address {central.host}:{central.port}",
            f"remote_clientid {self.identity}",
            "cleansession false",
            "notifications false",
            # A private bridge: the central broker keeps each message's retain flag when it
            # forwards it (a plain client loses it on live delivery), so a desired state or an
            # artifact chunk published while the bridge is up is retained at the site too, for
            # an agent that subscribes later.
            "try_private true",
            "bridge_protocol_version mqttv311",
            "start_type automatic",
            "restart_timeout 1 10",
        ]
        if central.username is not None:
            lines.append(f"remote_username {central.username}")
        if central.password is not None:
            lines.append(f"remote_password {central.password}")
        lines += [f"topic {t} out 1" for t in self.outgoing()]
        lines += [f"topic {t} in 1" for t in self.incoming()]
        return lines

    def central_acl(self) -> list[str]:
        """Return the ACL lines of the bridge's identity on the central broker."""
        rules = [f"topic write {t}" for t in self.outgoing()]
        return rules + [f"topic read {t}" for t in self.incoming()]


class SiteBroker(EmbeddedBroker):
    """An ``EmbeddedBroker`` at one site, bridged to the central broker by ``bridge``.

    ``central`` carries the central broker's address and the bridge's credentials
    (``enrol_bridges``).  The password and ACL files (``site_broker_files``) admit the site's
    nodes and the tenant's ingest identities only.
    """

    def __init__(
        self,
        workdir: Path | str,
        bridge: SiteBridge,
        central: BrokerSettings,
        **kwargs: object,
    ) -> None:
        super().__init__(workdir, **kwargs)  # type: ignore[arg-type]
        self.bridge = bridge
        self.central = central

    def _config_text(self) -> str:
        lines = self.bridge.config_lines(self.central)
        return super()._config_text() + "\n".join(lines) + "\n"


def _passwd_tool() -> str:
    return find_mosquitto_tool("mosquitto_passwd", DEFAULT_MOSQUITTO_PASSWD)


def _run_passwd(args: Sequence[str]) -> None:
    try:
        done = subprocess.run(
            [_passwd_tool(), *args],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NotReadyError(f"mosquitto_passwd did not run: {exc}") from exc
    if done.returncode != 0:
        raise NotReadyError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout}")


def enrol_bridges(
    password_file: Path,
    acl_file: Path,
    bridges: Iterable[SiteBridge],
    out_dir: Path,
) -> tuple[Path, Path, dict[str, str]]:
    """Write the central broker's password and ACL files with each bridge's identity added.

    Copies of ``password_file`` and ``acl_file`` (the tenant registry's) go to ``out_dir``
    with one fresh password and one ACL block (``SiteBridge.central_acl``) per bridge;
    the registry's own files are left alone.  Start (or reload) the central broker on the
    copies.  Returns both paths and each bridge identity's password.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    passwords = out_dir / "central.passwd"
    acl = out_dir / "central.acl"
    shutil.copyfile(password_file, passwords)
    passwords.chmod(0o600)
    secret: dict[str, str] = {}
    blocks: list[str] = [Path(acl_file).read_text()]
    for bridge in bridges:
        secret[bridge.identity] = secrets.token_urlsafe(24)
        _run_passwd(["-b", str(passwords), bridge.identity, secret[bridge.identity]])
        blocks += ["", f"user {bridge.identity}", *bridge.central_acl()]
    atomic_write(acl, ("\n".join(blocks) + "\n").encode(), mode=0o640)
    return passwords, acl, secret


def site_broker_files(
    password_file: Path, tenant: str, nodes: Sequence[str], out_dir: Path
) -> tuple[Path, Path]:
    """Write a site broker's password and ACL files: the site's nodes and the tenant's ingest
    identities, with their hashes from ``password_file`` and the central ACL's blocks.

    Raises:
        ConfigError: a node of the site is not in ``password_file`` (enrol it first).
    """
    users = {identities.node_identity(tenant, node) for node in nodes}
    users |= {identities.ingest_identity(tenant, r) for r in range(identities.MAX_INGEST_REPLICAS)}
    hashes: Mapping[str, str] = dict(
        line.split(":", 1) for line in Path(password_file).read_text().splitlines() if ":" in line
    )
    missing = sorted(u for u in users if u.startswith("edge.") and u not in hashes)
    if missing:
        raise ConfigError(
            f"site broker: {', '.join(missing)} not in {password_file}; enrol the site's nodes "
            "in the tenant registry first"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    passwords, acl = out_dir / "site.passwd", out_dir / "site.acl"
    atomic_write(
        passwords,
        "".join(f"{u}:{hashes[u]}\n" for u in sorted(users) if u in hashes).encode(),
        mode=0o600,
    )
    lines: list[str] = []
    for user, rules in acl_blocks(tenant, nodes).items():
        if user in users:
            lines += ["", f"user {user}", *rules]
    atomic_write(acl, ("\n".join(lines) + "\n").encode(), mode=0o640)
    return passwords, acl
