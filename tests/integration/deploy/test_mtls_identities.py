"""The production broker config with certificates from ``continuum certs``: a node acts only as
itself, a certificate is signed only for its own identity, revocation and renewal work.

A mosquitto starts from ``deploy/mosquitto/mosquitto.conf`` (its port and file paths
rewritten, ``crlfile`` turned on) with the tenant registry's generated ACL. Node
certificates are made as in production: the key and request by ``continuum certs request``,
the signature and enrolment by ``continuum certs sign`` with the tenant's credential; the
cloud services' by ``continuum certs service``, from which ``CloudSettings.service_broker``
connects them. The clients connect with ``continuum.wire.mqtt`` (the agent's own TLS setup).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.reasoncodes import ReasonCode

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.settings import CloudSettings
from cloud_head.store import SampleStore
from cloud_head.tenants import TenantRegistry, service_credentials_dir
from continuum import pki
from continuum.cli import EXIT_OK, EXIT_REFUSED, main
from continuum.embedded._process import free_port
from continuum.embedded.broker import find_mosquitto
from continuum.errors import NotReadyError
from continuum.wire import codec, identities, mqtt, topics
from continuum.wire.messages import StoredReceipt
from edge_agent.link import MqttLink
from tests.integration.cloud_head.test_ingest_mqtt import make_batch, make_spec
from tests.integration.deploy.test_mosquitto_configs import DEPLOY, render_dev_config
from tests.tools import require_tool

pytestmark = pytest.mark.integration

WAIT_S = 5.0
#: How long a probe listens for a message that must not arrive, after a control saw one.
GRACE_S = 0.3
TENANT = "acme"


@dataclass
class Pki:
    """The clients CA, the server's CA and certificate, and where node files go."""

    clients_ca: Path
    server_ca: Path
    server: tuple[Path, Path]
    nodes: Path


def _self_signed(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    cn: str,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for the broker (127.0.0.1) or a client with ``cn``, by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return key, builder.sign(issuer[0], hashes.SHA256())


def _write(pair: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], folder: Path, name: str
           ) -> tuple[Path, Path]:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    pki.write_key(pair[0], folder / f"{name}.key")
    pki.write_certificate(pair[1], folder / f"{name}.crt", replace=False)
    return folder / f"{name}.crt", folder / f"{name}.key"


class Broker:
    """mosquitto on the production config; restartable on its port with its persistence."""

    def __init__(self, conf: Path, port: int, log: Path) -> None:
        self.conf, self.port, self.log = conf, port, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"mosquitto rejected the production config:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not listen on {self.port}:\n{self.log.read_text()}")
                time.sleep(0.02)

    def reload(self) -> None:
        """SIGHUP, and wait until mosquitto logged that it reloaded."""
        before = self.log.read_text().count("Reloading config")
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_S
        while self.log.read_text().count("Reloading config") == before:
            assert time.monotonic() < deadline, "mosquitto did not reload"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT_S)
            self.process = None


@dataclass
class Head:
    """The registry, the operator's password file, the certificates and the running broker."""

    root: Path
    registry: TenantRegistry
    password_file: Path
    pki: Pki
    broker: Broker
    control: tuple[Path, Path]
    crl: Path

    def settings(self, cert: tuple[Path, Path], **extra: object) -> mqtt.BrokerSettings:
        return mqtt.BrokerSettings.model_validate(
            {
                "host": "127.0.0.1",
                "port": self.broker.port,
                "tls_ca": self.pki.server_ca,
                "tls_cert": cert[0],
                "tls_key": cert[1],
                "connect_timeout_s": 3.0,
                **extra,
            }
        )

    def sign(self, node: str, *extra: str, csr_tenant: str = TENANT) -> int:
        """Request on the box (once) and sign as acme's operator; return the exit status."""
        csr = self.pki.nodes / f"{node}.csr"
        if not csr.exists():
            code = main(
                [
                    *("certs", "request", "--tenant", csr_tenant, "--node", node),
                    *("--out", str(self.pki.nodes)),
                ]
            )
            assert code == EXIT_OK
        return main(
            [
                *("certs", "sign", "--ca", str(self.pki.clients_ca), "--csr", str(csr)),
                *("--tenant", TENANT, "--node", node, "--root", str(self.root)),
                *("--password-file", str(self.password_file), *extra),
            ]
        )

    def issue_service_certificates(self) -> None:
        """``continuum certs service`` as acme's operator: control and ingest.0-7."""
        code = main(
            [
                *("certs", "service", "--tenant", TENANT, "--ca", str(self.pki.clients_ca)),
                *("--root", str(self.root), "--password-file", str(self.password_file)),
            ]
        )
        assert code == EXIT_OK

    def cloud_settings(self) -> CloudSettings:
        """acme's cloud head on this broker: the registry says who each service is."""
        return CloudSettings.load(
            tenant=TENANT,
            tenants_root=self.registry.root,
            broker={
                "host": "127.0.0.1",
                "port": self.broker.port,
                "tls_ca": self.pki.server_ca,
                "connect_timeout_s": 3.0,
                "session_expiry_s": 600,
            },
        )

    def node(self, node: str) -> tuple[Path, Path]:
        return self.pki.nodes / f"{node}.crt", self.pki.nodes / f"{node}.key"

    def write_crl(self) -> None:
        code = main(
            [
                *("certs", "crl", "--ca", str(self.pki.clients_ca), "--root", str(self.root)),
                *("--out", str(self.crl)),
            ]
        )
        assert code == EXIT_OK


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """acme's registry, a clients CA, and mosquitto on the production config with its ACL."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")  # the registry hashes
    work = tmp_path_factory.mktemp("mtls")
    registry = TenantRegistry(work / "tenants")
    password_file = work / "acme.password"
    for tenant in (TENANT, "medica"):
        credentials = registry.create(tenant).credentials
        assert credentials is not None
        if tenant == TENANT:
            password_file.write_text(credentials.password + "\n")
    assert main(["certs", "ca", "--out", str(work / "ca"), "--deployment", "test"]) == EXIT_OK
    server_ca = _self_signed("test server CA")
    keys = Pki(
        clients_ca=work / "ca",
        server_ca=work / "server-ca.crt",
        server=_write(_leaf(server_ca, "broker", server=True), work, "server"),
        nodes=work / "nodes",
    )
    keys.server_ca.write_bytes(server_ca[1].public_bytes(serialization.Encoding.PEM))
    credentials = service_credentials_dir(registry.root, TENANT)
    control = (credentials / "control.crt", credentials / "control.key")
    crl = work / "clients.crl"
    data = work / "data"
    data.mkdir()
    port = free_port()
    conf = work / "mosquitto.conf"
    text = render_dev_config(
        (DEPLOY / "mosquitto.conf").read_text(),
        {
            "listener": f"{port} 127.0.0.1",
            "acl_file": str(registry.acl_file),
            "persistence_location": f"{data}/",
            "certfile": str(keys.server[0]),
            "keyfile": str(keys.server[1]),
            "cafile": str(keys.clients_ca / pki.CA_CERT),
        },
    )
    conf.write_text(text + f"crlfile {crl}\n")
    broker = Broker(conf, port, work / "mosquitto.log")
    built = Head(work, registry, password_file, keys, broker, control, crl)
    built.issue_service_certificates()
    for node in ("node-a", "node-b"):
        assert built.sign(node) == EXIT_OK
    built.write_crl()
    broker.start()
    try:
        yield built
    finally:
        broker.stop()


class Client:
    """One client made by ``continuum.wire.mqtt``: records messages and PUBACK reason codes."""

    def __init__(
        self, settings: mqtt.BrokerSettings, name: str, *, client_id: str | None = None
    ) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: set[int] = set()
        self.client = mqtt.make_client(client_id or f"{name}-{time.monotonic_ns()}", settings)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        mqtt.connect(self.client, settings)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        with self._cond:
            self.received.append((msg.topic, msg.payload))  # type: ignore[attr-defined]
            self._cond.notify_all()

    def _on_publish(self, client: object, userdata: object, mid: int, reason: ReasonCode,
                    props: object) -> None:  # fmt: skip
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, client: object, userdata: object, mid: int, reasons: object,
                      props: object) -> None:  # fmt: skip
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def subscribe(self, filter_: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        _, mid = self.client.subscribe(filter_, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._subacks, WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> ReasonCode | None:
        """Publish at QoS 1; return the PUBACK reason, or None when the connection dropped."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self._cond:
            self._cond.wait_for(lambda: mid in self._acks or self.disconnected.is_set(), WAIT_S)
            return self._acks.get(mid)

    def got(self, payload: bytes, timeout_s: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: any(p == payload for _, p in self.received), timeout_s
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def accepted(reason: ReasonCode | None) -> bool:
    """Whether the broker answered a publish with PUBACK success."""
    return reason is not None and not reason.is_failure


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


@pytest.fixture
def control(head: Head) -> Iterator[Client]:
    """acme's control plane, subscribed to every node's status."""
    client = Client(head.settings(head.control), "control")
    client.subscribe(topics.nodes_filter(TENANT, "status"))
    try:
        yield client
    finally:
        client.close()


class TestNodeCertificateActsOnlyAsItsNode:
    def test_node_publishes_its_own_status_and_is_refused_another_nodes(
        self, head: Head, control: Client
    ) -> None:
        node = Client(head.settings(head.node("node-a")), "node-a")
        try:
            own, forged = _unique("a-status"), _unique("forged-b-status")
            assert accepted(node.publish(topics.node_status(TENANT, "node-a"), own))
            assert control.got(own)
            refused = node.publish(topics.node_status(TENANT, "node-b"), forged)
            assert refused is not None and refused.getName() == "Not authorized"
            assert not control.got(forged, GRACE_S)
        finally:
            node.close()

    def test_node_reads_its_desired_state_and_not_another_nodes(
        self, head: Head, control: Client
    ) -> None:
        node = Client(head.settings(head.node("node-a")), "node-a")
        try:
            node.subscribe(topics.nodes_filter(TENANT, "desired"))
            mine, theirs = _unique("desired-a"), _unique("desired-b")
            assert accepted(control.publish(topics.node_desired(TENANT, "node-b"), theirs))
            assert accepted(control.publish(topics.node_desired(TENANT, "node-a"), mine))
            assert node.got(mine)
            assert not node.got(theirs, GRACE_S)
        finally:
            node.close()

    @pytest.mark.parametrize(
        "topic",
        [
            topics.node_desired(TENANT, "node-a"),
            topics.node_stored(TENANT, "node-a"),
            topics.node_reported(TENANT, "node-a"),
            topics.samples(TENANT, "inspect", "node-a"),
            topics.telemetry(TENANT, "inspect", "node-a"),
            topics.feedback(TENANT, "inspect", "node-a"),
            topics.artifact_manifest(TENANT, "cnn", "v9"),
        ],
        ids=["desired", "stored", "reported", "samples", "telemetry", "feedback", "model"],
    )
    def test_node_b_cannot_write_node_as_topics_nor_the_clouds(
        self, head: Head, topic: str
    ) -> None:
        node_b = Client(head.settings(head.node("node-b")), "node-b")
        try:
            refused = node_b.publish(topic, _unique("forged"))
            assert refused is not None and refused.getName() == "Not authorized"
        finally:
            node_b.close()


class TestClientIdIsTheCertificatesIdentity:
    def test_node_b_claiming_node_as_client_id_does_not_take_its_session(self, head: Head) -> None:
        # Node a's client id is its identity (the broker would make it so anyway).
        claimed = identities.node_identity(TENANT, "node-a")
        node_a = Client(head.settings(head.node("node-a")), "node-a", client_id=claimed)
        control = Client(head.settings(head.control), "control")
        intruder = None
        try:
            node_a.subscribe(topics.node_desired(TENANT, "node-a"))
            intruder = Client(head.settings(head.node("node-b")), "node-b", client_id=claimed)
            intruder.subscribe(topics.node_desired(TENANT, "node-a"))
            desired = _unique("desired-a")
            assert accepted(control.publish(topics.node_desired(TENANT, "node-a"), desired))
            assert node_a.got(desired)
            assert not node_a.disconnected.is_set()
            assert not intruder.got(desired, GRACE_S)
        finally:
            for client in (node_a, control, intruder):
                if client is not None:
                    client.close()


class TestSigningRefusesAnotherIdentity:
    def test_acmes_operator_cannot_sign_a_certificate_claiming_a_medica_node(
        self, head: Head, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The request says CN=edge.node-m@medica; acme's operator signs only acme's nodes.
        assert head.sign("node-m", csr_tenant="medica") == EXIT_REFUSED
        assert "not 'edge.node-m@acme'" in capsys.readouterr().err
        assert not head.node("node-m")[0].exists()
        code = main(
            [
                *("certs", "sign", "--ca", str(head.pki.clients_ca)),
                *("--csr", str(head.pki.nodes / "node-m.csr"), "--tenant", "medica"),
                *("--node", "node-m", "--root", str(head.root)),
                *("--password-file", str(head.password_file)),  # acme's, not medica's
            ]
        )
        assert code == EXIT_REFUSED
        assert not head.node("node-m")[0].exists()


class TestBrokerRefusesOtherCertificates:
    def test_certificate_of_another_ca_gets_no_session(self, head: Head, tmp_path: Path) -> None:
        pki.make_ca(tmp_path / "rogue", deployment="rogue")
        rogue = pki.load_ca(tmp_path / "rogue")
        key, pem = pki.make_request(TENANT, "node-a")
        cert = pki.sign_request(x509.load_pem_x509_csr(pem), rogue, TENANT, "node-a")
        files = _write((key, cert), tmp_path, "node-a")
        settings = head.settings(files)
        client = mqtt.make_client("rogue", settings)
        refusals = head.broker.log.read_text().count("certificate verify failed")
        with pytest.raises((NotReadyError, OSError)):
            mqtt.connect(client, settings)
        client.loop_stop()
        assert head.broker.log.read_text().count("certificate verify failed") > refusals

    def test_a_certificate_the_registry_never_enrolled_reaches_nothing(
        self, head: Head, control: Client, tmp_path: Path
    ) -> None:
        # Signed by the right CA for node-x, but never recorded: no ACL block.
        ca = pki.load_ca(head.pki.clients_ca)
        key, pem = pki.make_request(TENANT, "node-x")
        cert = pki.sign_request(x509.load_pem_x509_csr(pem), ca, TENANT, "node-x")
        stray = Client(head.settings(_write((key, cert), tmp_path, "node-x")), "node-x")
        try:
            payload = _unique("x-status")
            refused = stray.publish(topics.node_status(TENANT, "node-x"), payload)
            assert refused is not None and refused.is_failure
            assert not control.got(payload, GRACE_S)
        finally:
            stray.close()


class TestRevocation:
    def test_revoked_node_reaches_nothing_and_cannot_connect_again(
        self, head: Head, control: Client
    ) -> None:
        assert head.sign("node-r") == EXIT_OK
        head.broker.reload()  # its ACL block
        node = Client(head.settings(head.node("node-r")), "node-r")
        other = Client(head.settings(head.node("node-b")), "node-b")
        try:
            before = _unique("r-status")
            assert accepted(node.publish(topics.node_status(TENANT, "node-r"), before))
            assert control.got(before)

            head.registry.revoke_node(TENANT, "node-r")
            head.write_crl()
            head.broker.reload()
            after = _unique("r-after")
            reason = node.publish(topics.node_status(TENANT, "node-r"), after)
            assert reason is None or reason.is_failure
            assert not control.got(after, GRACE_S)
            still = _unique("b-still")  # the rest of the fleet is untouched
            assert accepted(other.publish(topics.node_status(TENANT, "node-b"), still))
            assert control.got(still)
        finally:
            node.close()
            other.close()
        settings = head.settings(head.node("node-r"))
        again = mqtt.make_client("node-r-again", settings)
        with pytest.raises((NotReadyError, OSError)):
            mqtt.connect(again, settings)  # the CRL, read again on SIGHUP
        again.loop_stop()


class TestRenewal:
    def test_agent_link_picks_up_a_renewed_certificate_at_its_next_connection(
        self, head: Head
    ) -> None:
        assert head.sign("node-n") == EXIT_OK
        head.broker.reload()
        old = head.node("node-n")[0].read_bytes()
        sessions: list[bool] = []
        got: list[bytes] = []
        link = MqttLink(
            client_id="node-n",
            broker=head.settings(head.node("node-n"), session_expiry_s=600),
            will=None,
            max_inflight=10,
            on_message=lambda topic, payload, retained: got.append(payload),
            on_connect=sessions.append,
        )
        link.start()
        try:
            assert link.wait_connected(WAIT_S)
            link.subscribe([topics.node_desired(TENANT, "node-n")])
            # Renewal: same identity, new serial, written in place; the old serial is revoked
            # and the CRL says so, so only the new certificate can connect after the restart.
            assert head.sign("node-n", "--renew") == EXIT_OK
            assert head.node("node-n")[0].read_bytes() != old
            head.write_crl()
            head.broker.stop()
            head.broker.start()
            deadline = time.monotonic() + 3 * WAIT_S
            # The link counts a connection before it calls back, so wait on the callback.
            while len(sessions) < 2:
                assert time.monotonic() < deadline, head.broker.log.read_text()[-2000:]
                time.sleep(0.05)
            assert sessions == [False, True]  # the broker kept its session: nothing lost
            control = Client(head.settings(head.control), "control")
            try:
                desired = _unique("desired-n")
                reason = control.publish(topics.node_desired(TENANT, "node-n"), desired)
                assert reason is not None and not reason.is_failure
            finally:
                control.close()
            deadline = time.monotonic() + WAIT_S
            while desired not in got:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            link.stop()


class TestCloudServicesConnectWithTheirCertificates:
    """The cloud side on the production config: certificates from ``certs service``."""

    def test_an_ingest_replica_stores_node_as_sample_and_sends_its_receipt(
        self, head: Head, tmp_path: Path
    ) -> None:
        broker, identity = head.cloud_settings().service_broker("ingest", 0)
        assert identity == identities.ingest_identity(TENANT, 0)
        assert broker.tls_cert is not None and broker.tls_cert.name == "ingest.0.crt"
        store, labels = SampleStore(tmp_path / "store"), LabelStore(tmp_path / "labels.db")
        service = IngestService(TENANT, [make_spec(TENANT)], store, labels, tmp_path / "seen.db")
        worker = IngestWorker(service, broker, client_id=identity)
        node = Client(head.settings(head.node("node-a")), "node-a")
        try:
            node.subscribe(topics.node_stored(TENANT, "node-a"))
            worker.start()
            _wait(lambda: worker.connected)
            batch = codec.encode_samples(make_batch(range(0, 5), node="node-a"))
            assert accepted(node.publish(topics.samples(TENANT, "digits", "node-a"), batch))
            _wait(lambda: store.count(TENANT, "digits") == 5)
            _wait(lambda: any(t.endswith("/stored") for t, _ in node.received))
            receipts = [
                StoredReceipt.from_payload(p) for t, p in node.received if t.endswith("/stored")
            ]
            assert [(0, 4)] in [[tuple(r) for r in receipt.seqs] for receipt in receipts]
        finally:
            node.close()
            worker.stop()
            service.close()
            labels.close()

    def test_after_rotation_the_old_control_certificate_gets_no_session(
        self, head: Head, tmp_path: Path
    ) -> None:
        # Kept aside: rotation revokes the service certificates and removes their files.
        old = (tmp_path / "control.crt", tmp_path / "control.key")
        for kept, path in zip(old, head.control, strict=True):
            kept.write_bytes(path.read_bytes())
            kept.chmod(0o600)
        Client(head.settings(old), "control-old").close()  # it worked before
        credentials = head.registry.rotate_credentials(TENANT)
        head.password_file.write_text(credentials.password + "\n")
        assert not head.control[0].exists()
        head.write_crl()
        head.broker.reload()
        settings = head.settings(old)
        client = mqtt.make_client("control-old-again", settings)
        with pytest.raises((NotReadyError, OSError)):
            mqtt.connect(client, settings)
        client.loop_stop()
        # The operator issues new ones, which connect.
        head.issue_service_certificates()
        broker, identity = head.cloud_settings().service_broker("control")
        assert broker.tls_cert == head.control[0]
        Client(broker, "control-new", client_id=identity).close()


def _wait(condition: Callable[[], bool], timeout_s: float = 3 * WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)
