"""One way for a service to call another service's actor and get continuum's errors back.

A controller calls the fleet actor (to publish) and the signer actor (to sign); each call
may time out, find the actor gone (Ray restarts it) or fail inside it. The caller wants
those as ``OperationTimeoutError``, ``NotReadyError`` or the service's own ``ContinuumError``
so its tick logs them once and tries again, not as Ray's exception types.
"""

from __future__ import annotations

from typing import Any

from continuum.errors import ContinuumError, NotReadyError, OperationTimeoutError


def call_actor(actor: Any, method: str, *args: Any, timeout_s: float, who: str, role: str) -> Any:
    """Return ``actor.method(*args)`` within ``timeout_s``.

    ``who`` names the service ("the signer"), ``role`` what it does for the caller ("signs
    for the controller"); both go into the error messages.

    Raises:
        OperationTimeoutError: no answer within ``timeout_s``.
        NotReadyError: the actor is not running, or failed with other than a ContinuumError.
        ContinuumError: the service's own refusal, as it raised it.
    """
    import ray

    try:
        return ray.get(getattr(actor, method).remote(*args), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as error:
        raise OperationTimeoutError(
            f"{who} did not answer {method} within {timeout_s:g} s; check it in the Ray "
            "dashboard; the controller tries again at its next tick"
        ) from error
    except ray.exceptions.RayActorError as error:
        raise NotReadyError(
            f"{who}, which {role}, is not running: {error}; Ray restarts it, the controller "
            "tries again at its next tick"
        ) from error
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ContinuumError):
            raise error.cause from error
        raise NotReadyError(f"{who} could not {method}: {error}") from error
