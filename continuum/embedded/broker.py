"""A real mosquitto broker on a free loopback port, for the demo and the tests.

The broker owns its workdir: the generated ``mosquitto.conf``, the persistence
database (so retained messages and queued QoS 1 messages survive a restart) and
``mosquitto.log``.  Production runs its own broker (DESIGN.md §8, ``deploy/``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from continuum.embedded._process import free_port, log_tail, port_accepts
from continuum.errors import ConfigError, NotReadyError, OperationTimeoutError

#: Where Debian's package puts the broker; used when it is not on PATH (sbin often is not).
DEFAULT_EXECUTABLE = "/usr/sbin/mosquitto"
#: mosquitto logs "mosquitto version X running" once its listeners are bound.
_RUNNING_MARKER = re.compile(rb"mosquitto version \S+ running")


@dataclass(frozen=True, slots=True)
class BrokerTLS:
    """Serve the listener over TLS with the broker's certificate (``deploy/`` does the same).

    ``cafile`` holds the CA that signs client certificates; with ``require_certificate``
    a client without a certificate from it gets no connection at all.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True

    def config_lines(self) -> list[str]:
        """Return the mosquitto directives for a TLS listener (they follow its line)."""
        return [
            f"cafile {Path(self.cafile).resolve()}",
            f"certfile {Path(self.certfile).resolve()}",
            f"keyfile {Path(self.keyfile).resolve()}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            "tls_version tlsv1.2",
        ]


def _raise_fd_limit(pid: int) -> None:
    """Raise the broker's soft RLIMIT_NOFILE to the hard limit (mosquitto does not).

    The soft limit (often 1024) would otherwise cap the connections long before the hard one.
    """
    try:
        import resource  # POSIX only

        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, AttributeError, OSError, ValueError):  # not Linux, or it exited
        pass


def find_mosquitto(executable: str | None = None) -> str:
    """Return the path of the mosquitto binary, or raise ``NotReadyError`` naming the fix."""
    return find_mosquitto_tool("mosquitto", DEFAULT_EXECUTABLE, executable)


def find_mosquitto_tool(name: str, default_path: str, executable: str | None = None) -> str:
    """Return the path of one of mosquitto's programs (``mosquitto``, ``mosquitto_passwd``).

    ``executable`` (a name or path) is the only candidate when given; else ``name`` on PATH,
    then ``default_path``, where Debian's package puts it (sbin is often not on PATH).

    Raises:
        NotReadyError: not found; the message names the package to install.
    """
    candidates = [executable] if executable else [name, default_path]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise NotReadyError(
        f"{name} not found (looked for {', '.join(candidates)}): apt-get install mosquitto"
    )


class EmbeddedBroker:
    """Start, stop, kill and restart one mosquitto process listening on ``host:port``.

    ``port=0`` picks a free port at the first ``start()``; ``restart()`` keeps it,
    so clients reconnect to the same address.  ``password_file`` and ``acl_file``
    (mosquitto's own formats) switch off anonymous access, and a password file binds each
    client id to its username (``use_username_as_clientid``); the dev default is
    anonymous on loopback only.  ``tls`` makes the listener TLS-only (mutual TLS when it
    requires client certificates).
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        executable: str | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: BrokerTLS | None = None,
        max_queued_messages: int = 1_000_000,
        autosave_interval_s: int = 2,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"broker port must be 0 (free port) or 1-65535, got {port}")
        if max_queued_messages < 0:
            raise ConfigError(f"max_queued_messages must be >= 0, got {max_queued_messages}")
        if autosave_interval_s < 1:
            raise ConfigError(f"autosave_interval_s must be >= 1, got {autosave_interval_s}")
        if tls is not None:
            for name in ("cafile", "certfile", "keyfile"):
                if not Path(getattr(tls, name)).is_file():
                    raise ConfigError(f"tls.{name} {str(getattr(tls, name))!r} is not a file")
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ctm-mqtt-"))
        )
        self.host = host
        self.port = port
        self.executable = executable
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.max_queued_messages = max_queued_messages
        self.autosave_interval_s = autosave_interval_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's log (its stdout and stderr, appended across restarts)."""
        return self.workdir / "mosquitto.log"

    @property
    def data_dir(self) -> Path:
        """The persistence directory: retained messages and queued QoS 1 messages."""
        return self.workdir / "data"

    @property
    def address(self) -> str:
        """``host:port`` of the listener."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start mosquitto and wait until its port accepts connections; return self.

        Raises:
            NotReadyError: mosquitto is missing or exited during start-up (the log says why).
            OperationTimeoutError: the port did not accept within ``start_timeout_s``.
        """
        if self.running:
            return self
        binary = find_mosquitto(self.executable)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        elif port_accepts(self.host, self.port):
            raise NotReadyError(
                f"{self.address} is already in use by another process; "
                "pass port=0 for a free port or stop the other listener"
            )
        self.config_path.write_text(self._config_text())
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not kill it mid-test
            )
        _raise_fd_limit(self._process.pid)
        self._wait_until_accepting(log_offset)
        return self

    def stop(self) -> None:
        """Stop with SIGTERM (mosquitto saves its database); SIGKILL after ``stop_timeout_s``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout_s)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would: changes since the last autosave are lost."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=self.stop_timeout_s)

    def restart(self) -> EmbeddedBroker:
        """Stop the broker if it runs and start it again on the same port; return self."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({self.address}, {state}, workdir={str(self.workdir)!r})"

    def _config_text(self) -> str:
        lines = [
            "# Written by continuum.embedded.broker; regenerated at every start.",
            f"listener {self.port} {self.host}",
            *(self.tls.config_lines() if self.tls is not None else []),
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            # Seconds between saves; a SIGKILL loses at most this much, a SIGTERM nothing.
            f"autosave_interval {self.autosave_interval_s}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            # One descriptor per client: no broker-side cap, the process's RLIMIT_NOFILE (raised
            # to its hard limit at start) is what binds.
            "max_connections -1",
            # stderr goes to mosquitto.log, which also catches errors from before the
            # config is read.
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            *self._auth_lines(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root mosquitto would drop to user `mosquitto`, which cannot write this
            # workdir; stay root instead (dev and tests only: production runs deploy/).
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def _logged_running(self, log_offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            return _RUNNING_MARKER.search(log.read()) is not None

    def _auth_lines(self) -> list[str]:
        if self.password_file is None and self.acl_file is None:
            return ["allow_anonymous true"]
        lines = ["allow_anonymous false"]
        if self.password_file is not None:
            lines.append(f"password_file {Path(self.password_file).resolve()}")
            # The client id becomes the username: one identity is one session, so nobody
            # can take over another's session by claiming its client id (DESIGN.md §7.6).
            lines.append("use_username_as_clientid true")
        if self.acl_file is not None:
            lines.append(f"acl_file {Path(self.acl_file).resolve()}")
        return lines

    def _wait_until_accepting(self, log_offset: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise NotReadyError(
                    f"mosquitto exited with code {code} while starting on {self.address}; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            # The log line proves that *this* process bound the port (a port that
            # accepts could belong to someone else); the connect proves it listens.
            if self._logged_running(log_offset) and port_accepts(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise OperationTimeoutError(
            f"mosquitto did not accept connections on {self.address} within "
            f"{self.start_timeout_s:g} s; log {self.log_path}:\n{log_tail(self.log_path)}"
        )
