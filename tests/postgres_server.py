"""A real PostgreSQL server on a free loopback port, for the tests of the PostgreSQL registry.

Like the embedded mosquitto (``continuum.embedded.broker``), the tests run the real server
rather than a stand-in: Debian's binaries (``apt-get install postgresql``), a throwaway
cluster made by ``initdb`` with trust authentication, listening on 127.0.0.1 only, with its
unix socket in its own directory so it never meets a system cluster. Durability is off
(``fsync=off``): a test server has nothing to lose and starts faster.

PostgreSQL refuses to run as root; under root the cluster belongs to the ``postgres`` user
and every command runs through ``runuser``. That is also why the server's directory is a
fresh one under the system's temporary directory: pytest's own (``/tmp/pytest-of-root``)
is closed to other users.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

from continuum.embedded._process import free_port, log_tail, port_accepts
from continuum.errors import NotReadyError

#: Where Debian's packages put the server's binaries, one folder per major version.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
#: The cluster's superuser, and the user in the URLs the server hands out.
USER = "continuum"
#: The account that owns the cluster when the tests run as root.
ROOT_RUNS_AS = "postgres"


def find_postgres_bin() -> Path | None:
    """Return the folder with ``initdb``, ``pg_ctl`` and ``postgres``: the newest found."""
    found = [Path(p) for p in glob.glob(DEBIAN_BINARIES) if (Path(p) / "initdb").is_file()]
    if found:
        return max(found, key=lambda p: _version_key(p.parent.name))
    initdb = shutil.which("initdb")  # other distributions put them on PATH
    return Path(initdb).parent if initdb else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (0,)


class PostgresServer:
    """Create, start, restart and stop one throwaway PostgreSQL cluster on ``127.0.0.1``.

    The port is chosen at the first ``start()`` and kept across ``restart()``, so clients
    reconnect to the same address. ``stop()`` also deletes the cluster's directory.
    """

    def __init__(self, bindir: Path, *, timeout_s: float = 60.0) -> None:
        self.bindir = bindir
        self.timeout_s = timeout_s
        self.host = "127.0.0.1"
        self.port = 0
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="ctm-postgres-"))

    @property
    def data_dir(self) -> Path:
        """The cluster (``initdb``'s output)."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """The server's log, appended across restarts."""
        return self.workdir / "postgres.log"

    @property
    def address(self) -> str:
        """``host:port`` of the listener."""
        return f"{self.host}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        """Return the URL of ``database`` on this server, as the registry takes it."""
        return f"postgresql://{USER}@{self.address}/{database}"

    def start(self) -> PostgresServer:
        """Create the cluster if needed, start it and wait until it accepts; return self.

        Raises:
            NotReadyError: initdb or the server failed (the message holds the log's tail).
        """
        if not self.data_dir.exists():
            self._initdb()
        self._pg_ctl("start", "-l", str(self.log_path))
        if not port_accepts(self.host, self.port, timeout_s=2.0):
            raise NotReadyError(
                f"PostgreSQL started but does not accept on {self.address}; log "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            )
        return self

    def restart(self) -> PostgresServer:
        """Restart the server (fast shutdown: open connections are dropped); return self."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_path))
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "fast")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def create_database(self) -> str:
        """Create an empty database with a fresh name; return its URL."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _initdb(self) -> None:
        self.port = free_port(self.host)
        if self._as_root:
            try:
                owner = pwd.getpwnam(ROOT_RUNS_AS)
            except KeyError:
                raise NotReadyError(
                    f"PostgreSQL refuses to run as root and there is no {ROOT_RUNS_AS!r} user "
                    "to run it as (Debian's postgresql package creates one)"
                ) from None
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.workdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Written by tests/postgres_server.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, action: str, *options: str) -> None:
        self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            f"{self.timeout_s:.0f}",
            *options,
        )

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_root:
            command = [_runuser(), "-u", ROOT_RUNS_AS, "--", *command]
        try:
            done = subprocess.run(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout_s + 10,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise NotReadyError(
                f"{program} {args[0]} did not finish within {self.timeout_s:g} s; log "
                f"{self.log_path}:\n{log_tail(self.log_path)}"
            ) from error
        if done.returncode != 0:
            raise NotReadyError(
                f"{program} {' '.join(args[:1])} failed with code {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}\nlog {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )


def _runuser() -> str:
    """Return util-linux's ``runuser``: on PATH, else where Debian puts it (``/usr/sbin``, which
    a non-login root shell may leave off PATH)."""
    return shutil.which("runuser") or "/usr/sbin/runuser"
