"""The cloud head's public surface: ``cloud_head.__all__``, loaded on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import cloud_head


class TestPublicSurface:
    def test_every_public_name_is_the_object_of_its_home_module(self) -> None:
        for name in cloud_head.__all__:
            value = getattr(cloud_head, name)
            home = importlib.import_module(cloud_head._HOMES[name])
            assert value is getattr(home, name), name
        assert set(cloud_head._HOMES) == set(cloud_head.__all__)

    def test_an_internal_name_is_not_reachable_from_the_package(self) -> None:
        with pytest.raises(AttributeError, match="no attribute 'check_deploy'"):
            cloud_head.check_deploy  # noqa: B018 - the attribute access is the test

    def test_importing_the_package_and_its_settings_loads_no_heavy_library(self) -> None:
        code = (
            "import sys, cloud_head\n"
            "cloud_head.CloudSettings()\n"
            "heavy = ('ray', 'torch', 'pyarrow', 'onnxruntime')\n"
            "print(sorted(m for m in heavy if m in sys.modules))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert done.stdout.strip() == "[]"
