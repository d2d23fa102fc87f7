"""A local S3-compatible server on a free loopback port, for the sample store on object storage.

MinIO is neither on PyPI nor in Debian, so the tests run moto's S3 server (``moto[server]``,
a dev dependency): a separate process that speaks the S3 REST API over HTTP on 127.0.0.1. The store
reaches it through pyarrow's own S3 client (``S3FileSystem`` with ``endpoint_override``), the
same code path as on AWS or MinIO. The server holds everything in memory; its bucket is
gone when it stops. Fixed test credentials travel in every URI, and the server runs with no
AWS settings of the environment, so nothing here can reach a real account.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

from continuum.embedded._process import free_port, log_tail, port_accepts
from continuum.errors import NotReadyError

#: The bucket the server is started with; tests write under a prefix of their own in it.
BUCKET = "continuum-test"
#: Test credentials: moto accepts any, but pyarrow must not look for real ones.
ACCESS_KEY = "continuum-test"
SECRET_KEY = "continuum-test-secret"
REGION = "us-east-1"
#: Environment variables that would point an AWS client at a real account or endpoint.
_AWS_PREFIXES = ("AWS_", "BOTO_", "MOTO_")


def moto_missing() -> str | None:
    """Return why moto's S3 server cannot run here, or None when it can."""
    missing = [name for name in ("moto", "flask", "flask_cors") if not _installed(name)]
    if not missing:
        return None
    return f"needs moto's S3 server (missing {', '.join(missing)}): pip install 'moto[server]'"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def aws_free_environ() -> dict[str, str]:
    """Return this process's environment without AWS settings, instance metadata turned off.

    ``AWS_EC2_METADATA_DISABLED`` keeps the AWS SDK from asking 169.254.169.254 for a region
    or credentials, which off EC2 waits for a timeout.
    """
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(_AWS_PREFIXES)}
    clean["AWS_EC2_METADATA_DISABLED"] = "true"
    return clean


def child_uri(uri: str, *names: str) -> str:
    """Return ``uri`` with ``names`` appended to its path; its query (options) is kept."""
    parts = urlsplit(uri)
    path = "/".join([parts.path.rstrip("/"), *(n.strip("/") for n in names)])
    return urlunsplit(parts._replace(path=path))


class S3Server:
    """Start and stop one moto S3 server on ``127.0.0.1`` holding the bucket ``BUCKET``.

    ``workdir`` receives the server's log; the data lives in the server's memory only.
    """

    def __init__(self, workdir: Path, *, timeout_s: float = 30.0) -> None:
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The server's output."""
        return self.workdir / "moto.log"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the listener, as pyarrow's ``endpoint_override`` takes it."""
        return f"{self.host}:{self.port}"

    def uri(self, prefix: str = "") -> str:
        """Return the URI of ``prefix`` in the bucket, as ``SampleStore`` and pyarrow take it.

        pyarrow reads the credentials from the URI's user info, the rest from its query.
        """
        path = "/".join(p for p in (BUCKET, prefix.strip("/")) if p)
        return (
            f"s3://{quote(ACCESS_KEY, safe='')}:{quote(SECRET_KEY, safe='')}@{path}"
            f"?endpoint_override={self.endpoint}&scheme=http&region={REGION}"
        )

    def start(self) -> S3Server:
        """Start the server, wait until it accepts and create the bucket; return self.

        Raises:
            NotReadyError: the server exited or did not accept within ``timeout_s``.
        """
        self.port = free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=aws_free_environ(),
            )
        deadline = time.monotonic() + self.timeout_s
        while not port_accepts(self.host, self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.returncode
                self.stop()
                raise NotReadyError(
                    f"moto's S3 server did not accept on {self.endpoint} within "
                    f"{self.timeout_s:g} s (exit code {code}); log "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)
        self._create_bucket()
        return self

    def stop(self) -> None:
        """Stop the server; its buckets, held in its memory, go with it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _create_bucket(self) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=self.endpoint,
            scheme="http",
            allow_bucket_creation=True,
            connect_timeout=5,
            request_timeout=10,
        )
        fs.create_dir(BUCKET)
