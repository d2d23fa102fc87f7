"""The ``continuum`` command's exit statuses: what a script that runs it may act on.

Three kinds of trouble, three statuses: the input is wrong (fix it, do not retry), the request
was understood and refused (a residency policy, a quota or a credential said no: retrying the
same request will not help), or something failed on the way (a dependency down, a timeout, a
check that did not pass: look, then retry).
"""

from __future__ import annotations

from continuum.errors import (
    AccessDeniedError,
    ConfigError,
    ContinuumError,
    PlacementError,
    SpecError,
)

__all__ = ["EPILOG", "EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "EXIT_REFUSED", "exit_status"]

EXIT_OK = 0
#: Something failed on the way: a dependency down, a timeout, a check that did not pass.
EXIT_FAILED = 1
#: A bad command line, pipeline or config: fix the input, do not retry.
EXIT_INVALID = 2
#: Understood and refused: a residency policy, a quota or a credential said no.
EXIT_REFUSED = 3

#: The errors that mean "refused"; a side's command maps its own (a quota) to EXIT_REFUSED.
_REFUSALS: tuple[type[ContinuumError], ...] = (AccessDeniedError, PlacementError)

EPILOG = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_FAILED}  failed: a dependency down, a timeout, a check that did not pass
     (e.g. `audit verify` finding a tampered record); look, then retry
  {EXIT_INVALID}  invalid input: a bad command line, pipeline or config; fix it, do not retry
  {EXIT_REFUSED}  refused: a residency policy (`policy check`), a quota or a credential said
     no; retrying the same request will not help"""


def exit_status(error: ContinuumError) -> int:
    """Return the exit status for ``error``: invalid input, refused, or failed."""
    if isinstance(error, SpecError | ConfigError):
        return EXIT_INVALID
    if isinstance(error, _REFUSALS):
        return EXIT_REFUSED
    return EXIT_FAILED
