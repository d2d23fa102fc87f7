"""The cloud head's operator commands: ``fleet``, ``models``, ``rollout``, ``retrain``,
``label``, ``audit``, ``tenant``, ``node`` and ``hpc``.

The ``continuum`` command finds them through the ``continuum.commands`` entry points. Importing
this package checks, without importing them, that the cloud's own dependencies are installed:
where they are not (an edge-only install), ``continuum`` leaves these commands out and says why.
Each command resolves the tenant and the state directory from its flags, else from
``CloudSettings`` (``CONTINUUM_CLOUD_TENANT``, ``CONTINUUM_CLOUD_ROOT``), and never from a
demo's defaults.
"""

from __future__ import annotations

from continuum.cli import require_modules

#: What the cloud side installs (``continuum[cloud]``) that the edge does not.
CLOUD_MODULES = ("ray", "pyarrow")

require_modules(
    CLOUD_MODULES, needed_by="the cloud head's commands", install="pip install 'continuum[cloud]'"
)
