"""Small process, session and port helpers shared by the embedded broker and Ray cluster."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

_LOG_TAIL_LINES = 20
_PICK_ATTEMPTS = 100
# Ports this process handed out recently; a bounded memory so long test sessions don't grow it.
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on and this process has not handed out.

    The kernel may hand the same ephemeral port to two ``bind(0)`` calls in a row once the
    first socket is closed, so a process that picks several ports before anything binds
    them (a Ray node needs seven) could get one twice; Ray then refuses to start ("port
    ... is used by other components").  Remembering the ports already handed out rules
    that out within the process.
    """
    for _ in range(_PICK_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.append(port)
            return port
    raise OSError(f"no free TCP port on {host} in {_PICK_ATTEMPTS} tries")


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
