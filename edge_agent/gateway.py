"""Sensor windows for the agent: ``SensorGatewaySource`` reads a local sensor gateway's MQTT
topics and cuts the readings into model windows.

The common factory setup: a gateway on the line (Greengrass, Azure IoT Edge, Node-RED, a PLC's
MQTT bridge) publishes readings to a broker on the site's network.  That broker is not
continuum's, so this source holds its own paho-mqtt connection with its own settings (host,
port, credentials, TLS CA, client id, keepalive).  Named in the agent config as::

    {"ref": "edge_agent.gateway:SensorGatewaySource",
     "args": {"host": "gateway.line-1.local", "port": 1883,
              "topics": {"vibration": "factory/line-1/press-7/vibration",
                         "temperature": "factory/line-1/press-7/temperature",
                         "current": "factory/line-1/press-7/current"},
              "channels": ["vibration", "temperature", "current"],
              "window": 1024, "stride": 512}}

One topic per channel; ``channels`` gives the tensor's row order, the clock channel (the
high-rate one) first, and the others are held at their last reading
(``edge_agent._sensor_windows`` documents the payload forms and why hold-last).  Each frame
is a tensor ``(channels, window)`` float32, cut every ``stride`` clock samples; the
pipeline's ``edge.input.shape`` must be exactly that (``check_input_shape``, called by the
agent at start).  A reading may carry the maintenance
record the plant will know later (``label``, ``label_delay_s``): it becomes the frame's
delayed label, as a camera's ground truth does.

The MQTT loop runs on the source's own thread into a bounded queue that drops the oldest
window when the consumer falls behind; a lost connection is opened again with capped
exponential backoff.  Malformed payloads are counted and skipped, never fatal.  ``counts()``
gives windows made, drops, connection failures, reconnects and malformed payloads; the agent
exports them on ``/metrics`` (``continuum_edge_source_*``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from continuum._retry import Backoff, FailureLog
from continuum.errors import ConfigError
from continuum.sources import Frame
from edge_agent._sensor_windows import MalformedReadingError, Window, Windower, parse_reading
from edge_agent._source_counts import SourceCounts

__all__ = ["SensorGatewaySource"]

log = logging.getLogger(__name__)

#: How long one network wait (a socket read, a queue wait) blocks before checking for stop.
_POLL_S = 0.25


class SensorGatewaySource:
    """Yield windows of a sensor gateway's MQTT topics as frames (see the module docstring).

    Args:
        topics: channel name -> MQTT topic.
        channels: the tensor's row order, clock channel first; required with more than one
            channel, because YAML and JSON tools may reorder a mapping's keys (PyYAML's
            ``safe_dump`` sorts them) and a silently swapped row is a wrong input.
        window: clock samples per window (the tensor's second axis).
        stride: clock samples between window starts (default: ``window``, no overlap).
        host, port: the gateway's broker.
        username, password: credentials, if the broker wants them.
        tls_ca: a CA file; setting it turns TLS on.
        client_id: the MQTT client id (default: a random one).
        keepalive_s: MQTT keepalive; a silent broker is given up after 1.5 times this.
        connect_timeout_s: how long to wait for the TCP and MQTT connection.
        qos: subscription QoS (0: a missed reading is gone anyway once the window passed).
        queue_frames: windows held for a slow consumer before the oldest is dropped.
        max_stale_s: a clock sample makes no row while another channel's last reading is
            older than this (None: hold forever).
        reconnect_min_s, reconnect_max_s: the backoff between connection attempts.
    """

    def __init__(
        self,
        topics: Mapping[str, str],
        window: int,
        channels: Sequence[str] | None = None,
        stride: int | None = None,
        host: str = "127.0.0.1",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        qos: int = 0,
        queue_frames: int = 64,
        max_stale_s: float | None = 60.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(topics, Mapping) or not topics:
            raise ConfigError(
                "topics must map each channel to its MQTT topic, e.g. "
                '{"vibration": "factory/line-1/press-7/vibration"}'
            )
        for channel, topic in topics.items():
            if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
                raise ConfigError(
                    f"topics.{channel}: {topic!r} is not one concrete topic; give each "
                    "channel its own topic without wildcards"
                )
        if len(set(topics.values())) != len(topics):
            raise ConfigError("topics: two channels share a topic; give each its own")
        stride = window if stride is None else stride
        for name, value in (("window", window), ("stride", stride), ("queue_frames", queue_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if qos not in (0, 1):
            raise ConfigError(f"qos must be 0 or 1, got {qos!r}")
        if not 1 <= port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {port}")
        if password is not None and username is None:
            raise ConfigError("password given without username")
        if tls_ca is not None and not Path(tls_ca).is_file():
            raise ConfigError(f"tls_ca {tls_ca!r} is not a file")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ConfigError(
                f"need 0 < reconnect_min_s <= reconnect_max_s, got {reconnect_min_s}, "
                f"{reconnect_max_s}"
            )
        if keepalive_s < 1 or connect_timeout_s <= 0:
            raise ConfigError("keepalive_s must be >= 1 and connect_timeout_s > 0")
        if max_stale_s is not None and max_stale_s <= 0:
            raise ConfigError(f"max_stale_s must be > 0 or null, got {max_stale_s}")
        if channels is None and len(topics) > 1:
            raise ConfigError(
                f"channels: give the tensor's row order, clock (high-rate) channel first, e.g. "
                f"channels: {list(topics)}; a mapping's key order does not survive every "
                "YAML/JSON tool"
            )
        order = tuple(topics) if channels is None else tuple(channels)
        if sorted(order) != sorted(topics) or len(set(order)) != len(order):
            raise ConfigError(
                f"channels {list(order)} must name each channel of topics ({', '.join(topics)}) "
                "once"
            )
        self.topics = dict(topics)
        self.channels = order
        self.window = window
        self.stride = stride
        self.host, self.port = host, port
        self._username, self._password, self._tls_ca = username, password, tls_ca
        self._client_id = client_id or ""
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.qos = qos
        self.max_stale_s = max_stale_s
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._clock = clock
        self._by_topic = {topic: channel for channel, topic in self.topics.items()}
        self._queue: collections.deque[Frame] = collections.deque(maxlen=queue_frames)
        self._cond = threading.Condition()
        self._windows = 0
        self._dropped = 0
        self._malformed = 0
        self._failures = 0
        self._connections = 0
        self._closed = threading.Event()
        self._subscribed = threading.Event()

    def ready(self, timeout_s: float) -> bool:
        """Wait until an iteration is connected and subscribed to every topic; return whether
        it is (readings published before that are not seen: the gateway's broker keeps none)."""
        return self._subscribed.wait(timeout_s)

    def close(self) -> None:
        """End the iteration (and its connection) within a poll interval."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of every frame's tensor: (channels, window)."""
        return (len(self.channels), self.window)

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Refuse a pipeline whose declared input shape is not this source's (channels, window).

        Raises:
            ConfigError: naming both shapes and the fix.
        """
        if tuple(shape) != self.shape:
            raise ConfigError(
                f"the pipeline's edge input shape is {list(shape)} but the sensor gateway "
                f"source makes windows of {list(self.shape)} ({len(self.channels)} channels "
                f"{', '.join(self.channels)} x window {self.window}); declare shape="
                f"{self.shape} in the pipeline or change the source's topics/window"
            )

    def counts(self) -> SourceCounts:
        """Return what the source counted: windows made, windows dropped (the oldest, when
        the consumer fell behind), connection failures, reconnects and malformed payloads."""
        with self._cond:
            return SourceCounts(
                decoded=self._windows,
                dropped={"backpressure": self._dropped},
                failures=self._failures,
                reconnects=max(0, self._connections - 1),
                malformed=self._malformed,
            )

    def __iter__(self) -> Iterator[Frame]:
        """Connect, and yield windows as the readings complete them, until ``close``."""
        stop = threading.Event()
        windower = Windower(self.channels, self.window, self.stride, self.max_stale_s)
        thread = threading.Thread(
            target=self._run, args=(windower, stop), name="ctm-sensor-gateway", daemon=True
        )
        thread.start()
        try:
            while not self._closed.is_set():
                with self._cond:
                    if not self._queue:
                        self._cond.wait(_POLL_S)
                        continue
                    frame = self._queue.popleft()
                yield frame
        finally:
            stop.set()
            thread.join(timeout=self.connect_timeout_s + 2 * _POLL_S)

    # The network thread: connect, subscribe, read until lost, back off, again.

    def _client(self, windower: Windower) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv311,
        )
        client.connect_timeout = self.connect_timeout_s
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls_ca is not None:
            client.tls_set(ca_certs=self._tls_ca)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.on_message = lambda _c, _u, message: self._on_message(windower, message)
        return client

    def _run(self, windower: Windower, stop: threading.Event) -> None:
        failure = FailureLog(f"sensor gateway {self.host}:{self.port}", log)
        while not stop.is_set():
            client = self._client(windower)
            try:
                self._session(client, stop)
                failure.recovered()
            except (OSError, ConnectionError, ValueError) as exc:
                with self._cond:
                    self._failures += 1
                failure.failed(str(exc))
            finally:
                self._subscribed.clear()
                # DISCONNECT is written by the next loop call, and paho closes the socket
                # once it is; without a connection both are no-ops.
                client.disconnect()
                client.loop(timeout=0.01)
            if not stop.is_set():
                stop.wait(self._backoff.next_delay())

    def _session(self, client: mqtt.Client, stop: threading.Event) -> None:
        """Connect and read until ``stop`` or a loss (raised as OSError or ConnectionError)."""
        client.connect(self.host, self.port, keepalive=self.keepalive_s)
        deadline = time.monotonic() + self.connect_timeout_s
        while not stop.is_set():
            rc = client.loop(timeout=_POLL_S)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"connection lost ({mqtt.error_string(rc)})")
            if client.is_connected():
                deadline = float("inf")
                self._backoff.reset()
            elif time.monotonic() > deadline:
                raise ConnectionError(
                    f"no CONNACK within {self.connect_timeout_s} s (broker refused or silent)"
                )

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            # The broker refused us (credentials, client id): the loop sees the socket closed.
            log.warning(
                "sensor gateway %s:%d refused the connection: %s", self.host, self.port, reason
            )
            return
        with self._cond:
            self._connections += 1
        client.subscribe([(topic, self.qos) for topic in self.topics.values()])

    def _on_message(self, windower: Windower, message: mqtt.MQTTMessage) -> None:
        channel = self._by_topic.get(message.topic)
        if channel is None:
            return
        try:
            reading = parse_reading(message.payload, self._clock())
        except MalformedReadingError as exc:
            with self._cond:
                self._malformed += 1
            log.debug("sensor gateway: malformed payload on %s: %s", message.topic, exc)
            return
        for window in windower.feed(channel, reading):
            self._put(window)

    def _put(self, window: Window) -> None:
        frame = Frame(
            tensor=window.tensor,
            label=window.label,
            label_delay_s=window.label_delay_s,
            captured_at_ns=int(window.ts * 1e9),
        )
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self._dropped += 1  # the deque's maxlen drops the oldest on append
            self._queue.append(frame)
            self._windows += 1
            self._cond.notify()
