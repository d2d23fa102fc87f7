"""Thousands of simulated edge agents on a few processes, for the fleet registry's tests and
its scale benchmark (``benchmarks/fleet_scale.py``).

Each agent speaks the MQTT 5 of ``continuum.wire.mqtt`` as the real agent does: CONNECT with
``clean_start=False``, a session expiry and the last will "offline" (QoS 1, retained) on its
status topic; then the retained ``NodeStatus`` (QoS 1), re-published every heartbeat period
with a fresh ``ts``; PINGREQ when nothing else went out for a keepalive. An agent is an
``asyncio.Protocol`` on one socket, driven by one heartbeat scheduler per process: no thread
and no task per agent, so one process carries thousands (a paho client per agent needs a
thread each and does not scale). ``SimulatorProcess`` runs such a fleet in a child process
and is driven over a pipe.

It lives at the root of ``tests/`` (like ``edge_agent_kit``) so the integration test imports
it as ``tests.fleet_simulator`` and the benchmark imports it with the repository root on its
path, without tests importing benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import multiprocessing as mp
import resource
import struct
import time
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from continuum.wire import topics
from continuum.wire.messages import NodeStatus

__all__ = ["SimulatorProcess", "raise_fd_limit", "sim_status"]

_CONNECT_CONCURRENCY = 100  # handshakes in flight per process: stays far below listen backlogs
_SESSION_EXPIRY_S = 3600  # as BrokerSettings.session_expiry_s
_PINGREQ = b"\xc0\x00"


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def sim_status(
    tenant: str, node: str, *, online: bool, index: int = 0, heartbeat_s: float | None = None
) -> NodeStatus:
    """Return the status a simulated agent publishes (the model the real agent sends)."""
    return NodeStatus(
        node=node,
        tenant=tenant,
        online=online,
        labels={"continuum.io/tier": "edge", "continuum.io/site": f"sim-{index % 16}"},
        backends=["onnxruntime"],
        gpu=None,
        tensorrt_version=None,
        agent_version="0.1.0",
        pipelines=["digits"],
        heartbeat_s=heartbeat_s,
        ts=time.time(),
    )


# -- MQTT 5 packets -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _utf8(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _connect_packet(client_id: str, keepalive_s: int, will_topic: str, will: bytes) -> bytes:
    flags = 0x04 | (1 << 3) | 0x20  # will flag, will QoS 1, will retain; clean_start=False
    properties = b"\x11" + struct.pack("!I", _SESSION_EXPIRY_S)
    variable = b"\x00\x04MQTT\x05" + bytes([flags]) + struct.pack("!H", keepalive_s)
    variable += _varint(len(properties)) + properties
    payload = _utf8(client_id) + b"\x00" + _utf8(will_topic) + _utf8(will)
    body = variable + payload
    return b"\x10" + _varint(len(body)) + body


def _publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    body = topic + struct.pack("!H", packet_id) + b"\x00" + payload  # QoS 1, no properties
    return b"\x33" + _varint(len(body)) + body  # PUBLISH, QoS 1, retain


# -- one process's fleet --------------------------------------------------------------------


class _Agent(asyncio.Protocol):
    """One simulated agent: its socket, its status and what it sent."""

    def __init__(self, fleet: _Fleet, node: str, index: int) -> None:
        self.fleet = fleet
        self.node = node
        self.status = sim_status(
            fleet.tenant, node, online=True, index=index, heartbeat_s=max(1.0, fleet.period_s)
        )
        self.topic = _utf8(topics.node_status(fleet.tenant, node))
        full = self.status.to_payload()
        self.prefix = full[: full.rindex(b'"ts":') + len(b'"ts":')]
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = fleet.loop.create_future()
        self.buffer = bytearray()
        self.packet_id = 0
        self.last_sent = 0.0
        self.silent = False
        self.killed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        will = self.status.model_copy(update={"online": False}).to_payload()
        will_topic = topics.node_status(self.fleet.tenant, self.node)
        transport.write(_connect_packet(self.node, self.fleet.keepalive_s, will_topic, will))
        self.last_sent = self.fleet.loop.time()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            length, shift, pos = 0, 0, 1
            while True:
                if pos >= len(buffer):
                    return  # the length itself is incomplete
                byte = buffer[pos]
                length |= (byte & 0x7F) << shift
                shift += 7
                pos += 1
                if not byte & 0x80:
                    break
            if len(buffer) < pos + length:
                return
            kind = buffer[0] >> 4
            if kind == 2 and not self.connack.done():  # CONNACK: flags, reason code
                self.connack.set_result(buffer[pos + 1] if length >= 2 else 0)
            elif kind == 4:  # PUBACK
                self.fleet.acked += 1
            del buffer[: pos + length]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"{self.node}: connection lost: {exc}"))
        if not self.killed:
            self.fleet.dropped += 1

    # heartbeats
    def publish_status(self) -> None:
        if self.transport is None or self.silent:
            return
        # The status as pydantic writes it, but for ``ts``: formatting only the time keeps the
        # simulators' CPU per heartbeat far below the registry's (the benchmark measures it).
        payload = self.prefix + repr(time.time()).encode() + b"}"
        self.packet_id = self.packet_id % 65535 + 1
        self.transport.write(_publish_packet(self.topic, payload, self.packet_id))
        self.last_sent = self.fleet.loop.time()
        self.fleet.sent += 1


class _Fleet:
    """The agents of one process and their heartbeat scheduler."""

    def __init__(
        self, host: str, port: int, tenant: str, period_s: float, keepalive_s: int
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.tenant = host, port, tenant
        self.period_s, self.keepalive_s = period_s, keepalive_s
        self.agents: dict[str, _Agent] = {}
        self._due: list[tuple[float, int, _Agent]] = []
        self._seq = itertools.count()
        self.sent = self.acked = self.dropped = 0
        self._scheduler = asyncio.ensure_future(self._beat())
        self._pinger = asyncio.ensure_future(self._ping())

    async def add(self, names: Sequence[str], first_index: int) -> list[float]:
        """Connect ``names``; return each one's seconds from connect to CONNACK."""
        gate = asyncio.Semaphore(_CONNECT_CONCURRENCY)

        async def one(node: str, index: int) -> float:
            async with gate:
                agent = _Agent(self, node, index)
                started = time.perf_counter()
                await self.loop.create_connection(lambda: agent, self.host, self.port)
                code = await asyncio.wait_for(agent.connack, 30.0)
                took = time.perf_counter() - started
            if code != 0:
                raise ConnectionError(f"the broker refused {node}: reason code {code:#x}")
            self.agents[node] = agent
            agent.publish_status()  # the agent publishes its status first thing after CONNACK
            heapq.heappush(self._due, (self.loop.time() + self.period_s, next(self._seq), agent))
            return took

        return list(await asyncio.gather(*(one(n, first_index + i) for i, n in enumerate(names))))

    def kill(self, names: Iterable[str]) -> dict[str, float]:
        """Close the sockets of ``names`` without DISCONNECT (the broker fires their wills)."""
        killed = {}
        for node in names:
            agent = self.agents[node]
            agent.killed = True
            if agent.transport is not None:
                agent.transport.abort()
            killed[node] = time.time()
        return killed

    def silence(self, names: Iterable[str]) -> dict[str, float]:
        """Stop the heartbeats and pings of ``names`` but keep their sockets (half-open)."""
        silenced = {}
        for node in names:
            self.agents[node].silent = True
            silenced[node] = time.time()
        return silenced

    def counts(self) -> dict[str, int]:
        """Return how many agents are connected and what they sent and got acknowledged."""
        alive = sum(1 for a in self.agents.values() if a.transport is not None)
        return {"agents": alive, "sent": self.sent, "acked": self.acked, "dropped": self.dropped}

    def close(self) -> None:
        """Abort every socket (the broker fires every will)."""
        self._scheduler.cancel()
        self._pinger.cancel()
        self.kill(self.agents)

    async def _beat(self) -> None:
        due = self._due
        while True:
            now = self.loop.time()
            while due and due[0][0] <= now:
                at, seq, agent = heapq.heappop(due)
                if agent.transport is None:
                    continue
                agent.publish_status()
                # From the due time, so a late tick does not shift the phase; a beat missed
                # by more than a period is skipped, as an agent's pump would skip it.
                at += self.period_s
                heapq.heappush(due, (at if at > now else now + self.period_s, seq, agent))
            wait = due[0][0] - self.loop.time() if due else 0.05
            await asyncio.sleep(min(max(wait, 0.001), 0.05))

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s / 4)
            idle_before = self.loop.time() - self.keepalive_s / 2
            for agent in self.agents.values():
                idle = agent.transport is not None and agent.last_sent < idle_before
                if idle and not agent.silent and agent.transport is not None:
                    agent.transport.write(_PINGREQ)
                    agent.last_sent = self.loop.time()


async def _serve(
    conn: Connection, host: str, port: int, tenant: str, period_s: float, keepalive_s: int
) -> None:
    fleet = _Fleet(host, port, tenant, period_s, keepalive_s)
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except EOFError:  # the parent went away
            loop.remove_reader(conn.fileno())
            commands.put_nowait(("close",))

    loop.add_reader(conn.fileno(), readable)
    while True:
        command, *args = await commands.get()
        try:
            if command == "add":
                result: Any = await fleet.add(*args)
            elif command == "kill":
                result = fleet.kill(*args)
            elif command == "silence":
                result = fleet.silence(*args)
            elif command == "counts":
                result = fleet.counts()
            elif command == "close":
                fleet.close()
                await asyncio.sleep(0.05)  # let the aborts reach the sockets
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown simulator command {command!r}")
        except Exception as exc:  # report to the parent, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", result))


def _main(
    conn: Connection, host: str, port: int, tenant: str, period_s: float, keepalive_s: int
) -> None:
    raise_fd_limit()
    asyncio.run(_serve(conn, host, port, tenant, period_s, keepalive_s))


class SimulatorProcess:
    """A child process with a fleet of simulated agents, driven over a pipe.

    Args:
        host, port: the broker.
        tenant: the tenant of every agent.
        period_s: the heartbeat period (the agent's ``heartbeat_interval_s``).
        keepalive_s: the MQTT keepalive (``BrokerSettings.keepalive_s``).
    """

    def __init__(
        self, host: str, port: int, tenant: str, *, period_s: float, keepalive_s: int = 30
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_main,
            args=(child, host, port, tenant, period_s, keepalive_s),
            name="ctm-fleet-sim",
            daemon=True,
        )
        self.process.start()
        child.close()
        self._next_index = 0

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process.pid is not None
        return self.process.pid

    def add(self, names: Sequence[str], timeout_s: float = 300.0) -> list[float]:
        """Connect agents ``names``; return each one's connect-to-CONNACK seconds."""
        first, self._next_index = self._next_index, self._next_index + len(names)
        result: list[float] = self._call(timeout_s, "add", list(names), first)
        return result

    def kill(self, names: Sequence[str]) -> dict[str, float]:
        """Drop agents abruptly (no DISCONNECT); return each one's wall time of the drop."""
        result: dict[str, float] = self._call(30.0, "kill", list(names))
        return result

    def silence(self, names: Sequence[str]) -> dict[str, float]:
        """Stop agents' heartbeats, keeping their sockets open; return when each went quiet."""
        result: dict[str, float] = self._call(30.0, "silence", list(names))
        return result

    def counts(self) -> dict[str, int]:
        """Return connected agents and the statuses sent and acknowledged so far."""
        result: dict[str, int] = self._call(30.0, "counts")
        return result

    def close(self) -> None:
        """Drop every agent and end the process."""
        if self.process.is_alive():
            with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                self._call(30.0, "close")
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self._conn.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, timeout_s: float, *command: Any) -> Any:
        try:
            self._conn.send(command)
            if not self._conn.poll(timeout_s):
                raise TimeoutError(
                    f"the fleet simulator did not answer {command[0]!r} in {timeout_s} s"
                )
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(
                f"the fleet simulator process died (exit code {self.process.exitcode}); "
                "its traceback is on stderr"
            ) from exc
        if status != "ok":
            raise RuntimeError(f"fleet simulator {command[0]!r} failed: {value}")
        return value
