"""Several processes append to one tenant's audit log at once, as the cloud head's actors do.

The ingest replicas, the controller and the CLI each open the same ``audit.sqlite3``; the
log's ``BEGIN IMMEDIATE`` append must serialise them across processes, so the chain never
forks and every record lands exactly once.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cloud_head.audit import AuditLog

TENANT = "acme"
PER_PROCESS = 150

_WRITER = textwrap.dedent(
    """
    import sys, time
    from cloud_head.audit import AuditLog

    root, name, count, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with AuditLog(root) as log:
        while time.time() < start_at:  # both writers start appending at the same moment
            time.sleep(0.001)
        for i in range(count):
            log.append("acme", "uplink_batch", f"{name}/{i}", {"i": i}, f"service:{name}")
            time.sleep(0.002)  # actors append between other work, not in a tight loop
    """
)


class TestConcurrentProcesses:
    def test_two_processes_appending_at_once_keep_one_verified_chain(self, tmp_path: Path) -> None:
        start_at = time.time() + 1.5  # past both interpreters' start-up
        writers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WRITER,
                    str(tmp_path),
                    name,
                    str(PER_PROCESS),
                    f"{start_at}",
                ]
            )
            for name in ("ingest-0", "controller-x")
        ]
        for writer in writers:
            assert writer.wait(timeout=120) == 0

        with AuditLog(tmp_path) as log:
            result = log.verify(TENANT)
            records = log.records(TENANT)
        assert result.ok, result.reason
        assert result.count == 2 * PER_PROCESS
        assert [r.seq for r in records] == list(range(1, 2 * PER_PROCESS + 1))
        for name in ("ingest-0", "controller-x"):
            mine = [r.details["i"] for r in records if r.actor == f"service:{name}"]
            assert mine == list(range(PER_PROCESS)), f"{name}'s records lost or reordered"
        # The writers really overlapped: neither ran all its appends before the other began.
        actors = [r.actor for r in records]
        switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
        assert switches > 1, "the two writers never interleaved; the test proved nothing"
