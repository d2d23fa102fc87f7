"""``continuum demo``: the closed loop on one machine, beside the pipelines it demonstrates.

It runs every side at once (a broker, a Ray cluster, the cloud head, edge-agent processes),
so it needs the whole install. Importing this package checks, without importing them, that
those dependencies are there: where one is not, ``continuum`` leaves ``demo`` out and says
which to install.
"""

from __future__ import annotations

import importlib.util

#: What the demo runs on beyond the core: Ray and torch (the cloud), the agent's runtime
#: (paho, onnxruntime), and its console and plot.
DEMO_MODULES = ("ray", "torch", "pyarrow", "paho", "onnxruntime", "rich", "matplotlib")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None, or a finder that refuses it
        return False


def _require_everything() -> None:
    missing = [name for name in DEMO_MODULES if not _installed(name)]
    if missing:
        raise ModuleNotFoundError(
            f"the demo needs {', '.join(missing)}, which this install lacks: "
            "pip install 'continuum[cloud]'",
            name=missing[0],
        )


_require_everything()
