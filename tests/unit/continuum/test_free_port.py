"""``free_port`` hands out listening ports outside the kernel's ephemeral range, never twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from continuum.embedded import _process


class _FixedDraws:
    """Stands in for the port generator: draws a fixed sequence."""

    def __init__(self, draws: list[int]) -> None:
        self.draws = draws

    def randint(self, low: int, high: int) -> int:
        return self.draws.pop(0)


def test_a_port_handed_out_already_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CI failure this guards: a Ray node got the GCS port again as its agent's port.
    monkeypatch.setattr(_process, "_handed_out", type(_process._handed_out)(maxlen=16))
    first = _process.free_port()
    monkeypatch.setattr(_process, "_random", _FixedDraws([first, first, first + 1]))
    assert _process.free_port() == first + 1


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    # The demo failure this guards: an outgoing connection took a port picked by bind(0)
    # for an agent's metrics server before the agent bound it.
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [_process.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(_process._LISTEN_PORT_FLOOR <= port < ephemeral_low for port in ports), ports
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_listening_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", _process.free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(_process, "_handed_out", type(_process._handed_out)(maxlen=16))
        monkeypatch.setattr(_process, "_random", _FixedDraws([taken, taken + 1]))
        assert _process.free_port() == taken + 1


def test_no_port_left_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_process, "_handed_out", type(_process._handed_out)([20007], maxlen=16))
    monkeypatch.setattr(_process, "_random", _FixedDraws([20007] * _process._PICK_ATTEMPTS))
    with pytest.raises(OSError, match="no free TCP port"):
        _process.free_port()
