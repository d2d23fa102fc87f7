"""``DataClass``, how sensitive a pipeline's data is: a leaf both the spec and the wire import.

It imports nothing of continuum but the errors, so ``continuum.spec`` (which checks names
with ``wire.topics``) and ``continuum.wire.codec`` (which puts a data class on the wire)
both depend on it without depending on each other.
"""

from __future__ import annotations

import sys
from typing import Annotated

from pydantic import BeforeValidator

from continuum.errors import SpecError

__all__ = ["DataClass", "DataClassField"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (JetPack 6): the edge install supports it, and enum.StrEnum is 3.11+.
    from enum import Enum

    class StrEnum(str, Enum):
        """``enum.StrEnum`` as 3.11 has it: ``str()`` and ``format()`` give the value."""

        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, format_spec: str) -> str:
            return str.__format__(self, format_spec)


class DataClass(StrEnum):
    """How sensitive a pipeline's data is: public < internal < confidential < restricted."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        """Return 0 for public up to 3 for restricted."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: object, *, field: str = "data_class") -> DataClass:
        """Return the class named ``value``; raise ``SpecError`` listing the valid names."""
        if isinstance(value, DataClass):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise SpecError(
            f"unknown data class {value!r}",
            field=field,
            fix=f"use one of {' < '.join(c.value for c in cls)}",
        )

    def __lt__(self, other: object) -> bool:
        return self.rank < DataClass.parse(other, field="other").rank

    def __le__(self, other: object) -> bool:
        return self.rank <= DataClass.parse(other, field="other").rank

    def __gt__(self, other: object) -> bool:
        return self.rank > DataClass.parse(other, field="other").rank

    def __ge__(self, other: object) -> bool:
        return self.rank >= DataClass.parse(other, field="other").rank


_RANKS = {c: i for i, c in enumerate(DataClass)}


def _data_class(value: object) -> DataClass:
    return DataClass.parse(value, field="")


#: A pydantic field of a ``DataClass`` that reads any spelling ``DataClass.parse`` reads.
DataClassField = Annotated[DataClass, BeforeValidator(_data_class)]
