"""The cloud head's operator commands: ``fleet``, ``models``, ``rollout``, ``retrain``,
``label``, ``audit`` and ``tenant``.

The ``continuum`` command finds them through the ``continuum.commands`` entry points. Importing
this package checks, without importing them, that the cloud's own dependencies are installed:
where they are not (an edge-only install), ``continuum`` leaves these commands out and says why.
Each command resolves the tenant and the state directory from its flags, else from
``CloudSettings`` (``CONTINUUM_CLOUD_TENANT``, ``CONTINUUM_CLOUD_ROOT``), and never from a
demo's defaults.
"""

from __future__ import annotations

import importlib.util

#: What the cloud side installs (``continuum[cloud]``) that the edge does not.
CLOUD_MODULES = ("ray", "pyarrow")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None, or a finder that refuses it
        return False


def _require_cloud() -> None:
    missing = [name for name in CLOUD_MODULES if not _installed(name)]
    if missing:
        raise ModuleNotFoundError(
            f"the cloud head's commands need {', '.join(missing)}, which this install lacks: "
            "pip install 'continuum[cloud]'",
            name=missing[0],
        )


_require_cloud()
