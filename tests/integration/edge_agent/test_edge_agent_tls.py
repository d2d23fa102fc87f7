"""The edge agent over mutual TLS: a mosquitto that takes only clients with a certificate of
the tenant's CA, throwaway certificates made by ``openssl`` for this test alone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from continuum.embedded import BrokerTLS, EmbeddedBroker
from continuum.errors import NotReadyError
from continuum.wire import mqtt, topics
from continuum.wire.codec import decode_samples
from continuum.wire.messages import NodeStatus
from tests.edge_agent_kit import AgentRig, CloudStandIn, pattern_source, wait_for
from tests.tools import require_tool

pytestmark = pytest.mark.integration

TENANT, PIPELINE, NODE = "acme", "inspect", "edge-tls"


@dataclass(frozen=True)
class Pki:
    """A CA, the broker's certificate for 127.0.0.1, and two client certificates."""

    ca: Path
    server: tuple[Path, Path]
    edge: tuple[Path, Path]
    cloud: tuple[Path, Path]


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


def make_pki(folder: Path) -> Pki:
    """Issue EC P-256 certificates valid for a day; the broker's names 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=continuum test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    issued: dict[str, tuple[Path, Path]] = {}
    for serial, (name, usage, names) in enumerate(
        (
            ("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
            ("edge", "clientAuth", ""),
            ("cloud", "clientAuth", ""),
        ),
        start=1,
    ):
        (folder / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            + names
        )
        _openssl(
            "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}",
            cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "1", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt",
            cwd=folder,
        )  # fmt: skip
        issued[name] = (folder / f"{name}.crt", folder / f"{name}.key")
    return Pki(folder / "ca.crt", issued["server"], issued["edge"], issued["cloud"])


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, Pki]]:
    require_tool("openssl", "apt-get install openssl")  # issues throwaway certificates
    pki = make_pki(tmp_path / "pki")
    tls = BrokerTLS(cafile=pki.ca, certfile=pki.server[0], keyfile=pki.server[1])
    broker = EmbeddedBroker(tmp_path / "broker", tls=tls)
    broker.start()
    try:
        yield broker, pki
    finally:
        broker.stop()


def _settings(
    broker: EmbeddedBroker, pki: Pki, cert: tuple[Path, Path] | None
) -> dict[str, object]:
    return {
        "host": broker.host,
        "port": broker.port,
        "tls_ca": str(pki.ca),
        "tls_cert": str(cert[0]) if cert else None,
        "tls_key": str(cert[1]) if cert else None,
        "connect_timeout_s": 3.0,
    }


class TestMutualTls:
    def test_the_agent_publishes_with_its_certificate_and_a_client_without_one_is_refused(
        self, tmp_path: Path, tls_broker: tuple[EmbeddedBroker, Pki]
    ) -> None:
        broker, pki = tls_broker
        cloud = CloudStandIn(
            broker.host,
            broker.port,
            TENANT,
            settings=mqtt.BrokerSettings.model_validate(_settings(broker, pki, pki.cloud)),
        )
        rig = AgentRig(
            tmp_path,
            node=NODE,
            tenant=TENANT,
            pipeline=PIPELINE,
            broker={**_settings(broker, pki, pki.edge), "reconnect_max_s": 1.0},
            cloud=cloud,
        )
        agent = rig.agent(source=pattern_source([0.0], count=-1, fps=100.0))
        try:
            cloud.subscribe(topics.tenant_filter(TENANT))
            agent.start()
            assert agent.link.wait_connected(10.0)
            rig.roll_out()
            samples = wait_for(lambda: cloud.messages(f"/samples/{NODE}"))
            assert decode_samples(samples[0][1]).model_version == "v1"
            status = cloud.messages(topics.node_status(TENANT, NODE))
            assert NodeStatus.from_payload(status[-1][1]).online

            anonymous = mqtt.BrokerSettings.model_validate(_settings(broker, pki, None))
            client = mqtt.make_client("no-certificate", anonymous)
            with pytest.raises((NotReadyError, OSError)):
                mqtt.connect(client, anonymous)
            client.loop_stop()
            # Refused for the missing certificate (TLS 1.3 tells the client only afterwards).
            assert "peer did not return a certificate" in broker.log_path.read_text()
        finally:
            agent.stop(timeout_s=5.0)
            for topic in cloud.retained_topics.copy():
                cloud.publish(topic, b"", retain=True)
            cloud.close()
        assert agent.link.connects == 1  # one session from start to stop, no refusals
