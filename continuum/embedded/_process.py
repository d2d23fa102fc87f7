"""Small process, session and port helpers shared by the embedded broker and Ray cluster."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

_LOG_TAIL_LINES = 20
_PICK_ATTEMPTS = 100
_LISTEN_PORT_FLOOR = 20000
_MIN_LISTEN_PORTS = 2000
# Own generator: seeding the global one (tests, simulators) must not make processes agree.
_random = random.SystemRandom()
# Ports this process handed out recently; a bounded memory so long test sessions don't grow it.
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on and this process has not handed out.

    Ports come from below the kernel's ephemeral range (``_listen_port_range``), never from
    ``bind(0)``: a port picked now is bound later, by another process (a broker, an agent's
    metrics server, one of a Ray node's seven), and in between the kernel may give an
    ephemeral port to any outgoing connection.  Measured in a demo run: a client's
    connection to mosquitto took the port picked for an agent's metrics server and held it
    for the whole run, and the agent could not start.  Remembering the ports already handed
    out keeps one process from picking a port twice before anything binds it.
    """
    low, high = _listen_port_range()
    for _ in range(_PICK_ATTEMPTS):
        port = _random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    raise OSError(f"no free TCP port on {host} in {low}-{high} after {_PICK_ATTEMPTS} tries")


def _listen_port_range() -> tuple[int, int]:
    """Return the ports to pick listening ports from: below the kernel's ephemeral range.

    Linux hands outgoing connections ports from ``net.ipv4.ip_local_port_range`` (32768-60999
    by default); Ray's workers pick theirs there too (``--min-worker-port=0``) and its
    default worker range is 10002-19999, so listening ports come from 20000 up to the
    ephemeral range's start.  Where the ephemeral range leaves too little room below it,
    the ports above it are used instead.
    """
    try:
        fields = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        ephemeral_low, ephemeral_high = int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        ephemeral_low, ephemeral_high = 32768, 60999
    if ephemeral_low - _LISTEN_PORT_FLOOR >= _MIN_LISTEN_PORTS:
        return _LISTEN_PORT_FLOOR, ephemeral_low - 1
    if 65535 - ephemeral_high >= _MIN_LISTEN_PORTS:
        return ephemeral_high + 1, 65535
    return _LISTEN_PORT_FLOOR, 65535


def port_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return tail_lines(text, lines)


def tail_lines(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``text`` (a log, or one attempt's part of it)."""
    return "\n".join(text.splitlines()[-lines:])


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def session_members(session_ids: Sequence[int]) -> list[int]:
    """Return the pids of live processes whose session id is one of ``session_ids``."""
    wanted = set(session_ids)
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) in wanted:
            members.append(int(entry.name))
    return members


def kill_sessions(session_ids: Sequence[int], timeout_s: float) -> None:
    """SIGKILL every process of the sessions ``session_ids`` until none is left or time is up.

    A session outlives its leader: raylet children of a ``ray start`` that has exited still
    carry its session id, so they are found by it (Linux ``/proc``), never by name.
    """
    if not session_ids:
        return
    if not Path("/proc/self/stat").exists():  # not Linux: the process groups must do
        for sid in session_ids:
            signal_group(sid, signal.SIGKILL)
        return
    deadline = time.monotonic() + timeout_s
    while True:
        members = session_members(session_ids)
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
