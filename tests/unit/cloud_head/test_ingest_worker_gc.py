"""IngestWorker's start freezes the garbage collector's view of the objects alive then."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum.embedded._process import free_port
from continuum.errors import NotReadyError
from continuum.wire.mqtt import BrokerSettings


class _Cycle:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def service(tmp_path: Path) -> Iterator[IngestService]:
    labels = LabelStore(tmp_path / "labels.db")
    svc = IngestService("acme", [], SampleStore(tmp_path / "store"), labels, tmp_path / "seen.db")
    try:
        yield svc
    finally:
        svc.close()
        labels.close()
        gc.unfreeze()  # the rest of the test process collects as usual


def test_start_moves_the_objects_alive_then_out_of_later_collections(
    service: IngestService,
) -> None:
    gc.unfreeze()
    before = _Cycle()
    alive = weakref.ref(before)
    worker = IngestWorker(service, BrokerSettings(host="127.0.0.1", port=free_port()))
    with pytest.raises(NotReadyError):  # nothing listens there; the freeze came first
        worker.start()
    assert gc.get_freeze_count() > 0
    after = _Cycle()
    collected = weakref.ref(after)
    del before, after
    gc.collect()
    assert alive() is not None, "a cycle alive at start is frozen: no collection walks it"
    assert collected() is None, "objects made after the start are collected as usual"
