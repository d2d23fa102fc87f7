"""The MQTT client every continuum process makes (``continuum.wire.mqtt``), on a real broker."""

from __future__ import annotations

import socket

import pytest

from continuum.embedded import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings, connect, make_client

pytestmark = pytest.mark.integration


def test_the_client_sends_each_packet_at_once(mqtt_broker: EmbeddedBroker) -> None:
    # With Nagle's algorithm on (paho's default), a PUBLISH sent right after a PUBACK waited
    # for the broker's delayed TCP acknowledgement: 40 ms per sample once the edge agent
    # received ingest's receipts.
    settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    client = make_client("nodelay-probe", settings)
    connect(client, settings)
    try:
        sock = client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.disconnect()
        client.loop_stop()
