"""The public surface of ``continuum.wire``: every exported name is its home module's object."""

from __future__ import annotations

import pytest

import continuum.wire as wire
from continuum.wire import codec, messages, topics


class TestPublicNames:
    def test_every_name_in_all_is_the_object_of_its_home_module(self) -> None:
        homes = {"codec": codec, "messages": messages, "topics": topics}
        for name in wire.__all__:
            value = getattr(wire, name)
            if name in homes:
                assert value is homes[name], name
            else:
                assert any(getattr(home, name, None) is value for home in homes.values()), name

    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        with pytest.raises(AttributeError, match="Nope"):
            _ = wire.Nope  # type: ignore[attr-defined]
