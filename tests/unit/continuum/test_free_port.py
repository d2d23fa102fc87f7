"""``free_port`` never hands out one port twice, even when the kernel offers it again."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from continuum.embedded import _process


class _KernelRepeatingPorts:
    """A socket whose ``bind(0)`` gets the ports of a fixed sequence, as a kernel may."""

    offered: list[int] = []

    def __init__(self, *args: Any) -> None:
        self._port = 0

    def __enter__(self) -> _KernelRepeatingPorts:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self._port = self.offered.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)


def test_a_port_offered_again_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CI failure this guards: a Ray node got the GCS port again as its agent's port.
    monkeypatch.setattr(_process, "_handed_out", type(_process._handed_out)(maxlen=16))
    _KernelRepeatingPorts.offered = [55751, 55751, 55751, 40379]
    monkeypatch.setattr(_process.socket, "socket", _KernelRepeatingPorts)
    assert _process.free_port() == 55751
    assert _process.free_port() == 40379


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [_process.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_no_port_left_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_process, "_handed_out", type(_process._handed_out)([7], maxlen=16))
    _KernelRepeatingPorts.offered = [7] * _process._PICK_ATTEMPTS
    monkeypatch.setattr(_process.socket, "socket", _KernelRepeatingPorts)
    with pytest.raises(OSError, match="no free TCP port"):
        _process.free_port()
