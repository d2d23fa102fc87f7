"""Which samples ingest already stored, and the adoption of files a crash left unrecorded.

The seen index (``cloud_head.seen``) holds the seqs of every stored sample and the store
files that hold them.  A file written before a crash could record its ids is *adopted* (its
seqs read back from the file) before that pipeline's next write, so a redelivered or resent
sample is still found: at-least-once delivery becomes exactly-once storage.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from cloud_head.seen import NodeKey, SeenIndex, ascending
from cloud_head.store import SampleStore

_log = logging.getLogger("cloud_head.ingest")

#: Per (pipeline, node) of a group, the seqs found stored (or repeated in the group), which
#: grows as the group's samples are written; None: none is, so every sample is new.
Taken = dict[NodeKey, set[int] | None]


class Dedup:
    """Find the stored samples of a group, and record what a write stored."""

    def __init__(self, tenant: str, seen: SeenIndex, store: SampleStore) -> None:
        self._tenant = tenant
        self._seen = seen
        self._store = store
        self._adopted: set[str] = set()  # pipelines whose unrecorded files were adopted

    def taken(
        self, by_node: Mapping[NodeKey, Sequence[npt.NDArray[np.int64]]], now_ns: int
    ) -> Taken:
        """Return, per (pipeline, node), the seqs of its messages already stored.

        One look-up per node for the whole group (adopting its pipeline's unrecorded files
        first); None for a node with no seq stored or repeated in the group (the usual
        case), so none of its samples needs a look-up of its own.
        """
        taken: Taken = {}
        for key, parts in by_node.items():
            if key[0] not in self._adopted:
                self.adopt_unrecorded_files(key[0], now_ns)
                self._adopted.add(key[0])
            seqs = parts[0] if len(parts) == 1 else np.concatenate(parts)
            found = self._seen.stored(self._tenant, key, seqs)
            # An edge batch's seqs ascend, so repeats are rare: skip sorting when they do.
            repeated = not ascending(seqs) and len(np.unique(seqs)) != len(seqs)
            taken[key] = set(seqs[found].tolist()) if found.any() or repeated else None
        return taken

    def record(
        self, seqs: Mapping[NodeKey, npt.NDArray[np.int64]], now_ns: int, paths: Sequence[str]
    ) -> None:
        """Record the seqs a write stored in the durable ``paths``; never raises.

        The samples are durable, so acknowledging them is safe even if this fails: the next
        write adopts the unrecorded files before it de-duplicates.
        """
        try:
            self._seen.record(self._tenant, seqs, now_ns, paths)
        except sqlite3.Error as exc:
            self._adopted.clear()
            _log.error("recording stored sample ids failed: %r", exc)

    def adopt_unrecorded_files(self, pipeline: str, now_ns: int) -> int:
        """Record the seqs of store files no seen-index commit covers (a crash came between).

        Returns the number of files adopted.
        """
        paths = self._store.files(self._tenant, pipeline)
        known = self._seen.recorded_files()
        unrecorded = [p for p in paths if p not in known]
        self._adopt(unrecorded, now_ns)
        if unrecorded:
            _log.warning(
                "adopted %d store file(s) of %s written before a crash recorded their ids",
                len(unrecorded),
                pipeline,
            )
        return len(unrecorded)

    def adopt_failed_write(self, now_ns: int) -> None:
        """Record the files a failed write had already made durable; never raises.

        Nothing of the write is acknowledged, so the broker redelivers it; the files it
        wrote must be known by then, or the redelivery would store their samples again.
        """
        try:
            self._adopt(self._store.flush(), now_ns)
        except Exception as exc:  # the next write adopts them (see _adopted) or reads dedup
            self._adopted.clear()
            _log.error("recording the files of a failed write failed: %r", exc)

    def _adopt(self, paths: Sequence[str], now_ns: int) -> None:
        seqs: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
        for path in paths:
            for key, values in self._store.file_seqs(path).items():
                seqs.setdefault(key, []).append(values)
        self._seen.record(
            self._tenant,
            {key: np.concatenate(v) for key, v in seqs.items()},
            now_ns,
            paths,
            known_new=False,
        )


def fresh_rows(seqs: npt.NDArray[np.int64], taken: set[int] | None) -> list[int] | range:
    """Return the rows of ``seqs`` not in ``taken``, adding their seqs to it (so a seq
    repeated later in the group counts as stored)."""
    if taken is None:
        return range(len(seqs))
    fresh: list[int] = []
    for row, seq in enumerate(seqs.tolist()):
        if seq not in taken:
            taken.add(seq)
            fresh.append(row)
    return fresh
