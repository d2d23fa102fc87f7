"""A site's network link to the broker, as a TCP relay on loopback that can be cut.

An edge site reaches the central broker over one WAN or 5G link; when that link goes down,
every box of the site loses its connection at once while the boxes themselves keep running
(and keep selecting samples into their outboxes).  On one machine the demo and the tests put
a ``SiteLink`` between a site's agents and the broker: ``cut(seconds)`` resets every open
connection and refuses new ones until the link is back, as a dead uplink would.  It relays
bytes only, so TLS and MQTT pass through untouched.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time

from continuum.embedded._process import free_port

__all__ = ["SiteLink"]

_log = logging.getLogger(__name__)
_CHUNK = 64 * 1024


class SiteLink:
    """Relay ``listen_host:port`` to ``upstream_host:upstream_port`` until cut.

    Args:
        upstream_host, upstream_port: the broker.
        name: the site, for thread names and logs.
        listen_host: where the site's boxes connect (loopback).
        port: the relay's port (0: a free one at ``start()``).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        name: str = "site",
        listen_host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Prepare the relay; ``start()`` opens it."""
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.host = listen_host
        self.port = port
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut_until = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.refused = 0

    @property
    def is_cut(self) -> bool:
        """Whether the link is down now."""
        return time.monotonic() < self._cut_until

    def start(self) -> SiteLink:
        """Listen and relay; return self."""
        if self._server is not None:
            return self
        if self.port == 0:
            self.port = free_port(self.host)
        server = socket.create_server((self.host, self.port), reuse_port=False)
        server.settimeout(0.2)
        self._server = server
        self._stop.clear()
        thread = threading.Thread(target=self._accept, name=f"ctm-link-{self.name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def cut(self, seconds: float) -> int:
        """Take the link down for ``seconds``: reset open connections, refuse new ones.

        Returns:
            How many open connections were reset.
        """
        with self._lock:
            self._cut_until = time.monotonic() + seconds
            pairs = list(self._pairs)
        for pair in pairs:
            _close_pair(pair, reset=True)
        _log.warning(
            "link of site %s cut for %.0f s (%d connections reset)", self.name, seconds, len(pairs)
        )
        return len(pairs)

    def restore(self) -> None:
        """Bring the link back now."""
        with self._lock:
            self._cut_until = 0.0

    def stop(self) -> None:
        """Close the relay and every connection through it."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            _close_pair(pair)
        for thread in self._threads:
            thread.join(5.0)
        self._threads.clear()

    def __enter__(self) -> SiteLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        server = self._server
        assert server is not None
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            if self.is_cut:
                self.refused += 1
                _close_pair((client, client), reset=True)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                self.refused += 1
                _close_pair((client, client), reset=True)
                continue
            for sock in (client, upstream):
                sock.setblocking(True)
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            thread = threading.Thread(
                target=self._relay, args=(pair,), name=f"ctm-link-{self.name}-relay", daemon=True
            )
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _relay(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in pair:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    for key, _ in selector.select(timeout=0.5):
                        source = key.fileobj
                        assert isinstance(source, socket.socket)
                        data = source.recv(_CHUNK)
                        if not data:
                            return
                        peer[source].sendall(data)
            except (OSError, ValueError):
                return  # reset by cut(), or the other end went away
            finally:
                with self._lock:
                    self._pairs.discard(pair)
                _close_pair(pair)


def _close_pair(pair: tuple[socket.socket, socket.socket], *, reset: bool = False) -> None:
    for sock in pair:
        with contextlib.suppress(OSError):
            if reset:  # RST, not FIN: the peer sees the connection die as a cut link would do
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
