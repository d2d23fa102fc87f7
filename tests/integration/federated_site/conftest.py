"""Fixtures of the site data plane's tests (``_plane``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.federated_site._plane import Plane, make_plane


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    """Two hospitals' bridged brokers and the central broker, started; stopped after."""
    yield from make_plane(tmp_path)
