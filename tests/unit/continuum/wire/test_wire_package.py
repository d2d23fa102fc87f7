"""The public surface of ``continuum.wire``: every exported name resolves, in any import order."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import continuum.wire as wire
from continuum.wire import topics


class TestPublicNames:
    def test_every_name_in_all_resolves_to_its_home_object(self) -> None:
        assert set(wire.__all__) == {*wire._HOMES, "topics"}
        assert wire.topics is topics
        for name, home in wire._HOMES.items():
            assert getattr(wire, name) is getattr(importlib.import_module(home), name), name

    def test_dir_lists_the_lazily_loaded_names(self) -> None:
        assert set(wire.__all__) <= set(dir(wire))

    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            _ = wire.Nope  # type: ignore[attr-defined]


class TestImportOrder:
    @pytest.mark.parametrize(
        "statements",
        [
            "import continuum.spec; import continuum.wire.codec",
            "import continuum.wire.codec; import continuum.spec",
            "from continuum.wire import SampleBatch, Telemetry; import continuum.spec",
        ],
    )
    def test_spec_and_codec_import_in_either_order(self, statements: str) -> None:
        result = subprocess.run(
            [sys.executable, "-c", statements], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
