"""Run the CLI as ``python -m continuum.cli``."""

from __future__ import annotations

from continuum.cli import main

raise SystemExit(main())
