"""``continuum demo``: the closed loop on one machine, beside the pipelines it demonstrates.

It runs every side at once (a broker, a Ray cluster, the cloud head, edge-agent processes),
so it needs the whole install. Importing this package checks, without importing them, that
those dependencies are there: where one is not, ``continuum`` leaves ``demo`` out and says
which to install.
"""

from __future__ import annotations

from continuum.cli import require_modules

#: What the demo runs on beyond the core: Ray and torch (the cloud), the agent's runtime
#: (paho, onnxruntime), and its console and plot.
DEMO_MODULES = ("ray", "torch", "pyarrow", "paho", "onnxruntime", "rich", "matplotlib")

require_modules(DEMO_MODULES, needed_by="the demo", install="pip install 'continuum[cloud]'")
