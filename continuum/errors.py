"""The one error hierarchy of continuum.

Every error raised on purpose is a ``ContinuumError``; each subclass also
inherits the builtin it means, so callers that only know Python's builtins
still catch it.  The class tells a supervisor what to do: fix the input
(``SpecError``, ``ConfigError``), retry with backoff (``NotReadyError``),
reject and count (``ProtocolError``, ``ArtifactError``).
"""

from __future__ import annotations


class ContinuumError(Exception):
    """Root of every error continuum raises on purpose."""


class SpecError(ContinuumError, ValueError):
    """A pipeline, policy or other spec is invalid; the message names the field and the fix.

    Stop and fix the declaration: retrying cannot help.
    """

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None) -> None:
        self.field = field
        self.fix = fix
        text = message
        if field and not message.startswith(field):
            text = f"{field}: {message}"
        if fix and "fix:" not in text.lower():
            text = f"{text} (fix: {fix})"
        super().__init__(text)


class ConfigError(ContinuumError, ValueError):
    """A component's configuration is invalid; stop, fix the config and start again."""


class PlacementError(ContinuumError, ValueError):
    """Work or data would go where its selector or the residency policy forbids.

    Carries the rule that refused it and the offending label, for the audit log.
    """

    def __init__(self, message: str, *, rule: str | None = None, label: str | None = None) -> None:
        self.rule = rule
        self.label = label
        super().__init__(message)


class ProtocolError(ContinuumError, ValueError):
    """A wire payload or topic is malformed; reject it, count it by ``reason`` and go on."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        self.reason = reason
        super().__init__(message)


class InputMismatchError(ContinuumError, ValueError):
    """A tensor handed to a model has the wrong shape or dtype; names expected and got."""

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        self.problem = message
        self.expected = expected
        self.got = got
        super().__init__(f"{message}: expected {expected}, got {got}")


class BackendError(ContinuumError, RuntimeError):
    """An inference backend failed to load or run a model."""


class BackendUnavailableError(BackendError):
    """The requested backend cannot run on this machine (missing package, no GPU)."""


class ArtifactError(ContinuumError, ValueError):
    """A model artifact failed its digest or signature check, or is incomplete; never run it."""


class NotReadyError(ContinuumError, RuntimeError):
    """A dependency (broker, cluster, model) is not reachable yet; retry with backoff."""


class OperationTimeoutError(ContinuumError, TimeoutError):
    """A bounded wait ran out; the message says what was waited for."""


class NotFoundError(ContinuumError, LookupError):
    """A named thing (model version, pipeline, node, tenant) does not exist; says which."""


class AccessDeniedError(ContinuumError, PermissionError):
    """The caller's credential does not grant what it asked for; the message says whose it is."""
