"""Keep embedded processes running as production's service managers would.

In production systemd restarts a crashed edge agent (``Restart=on-failure`` in
``deploy/edge/``) and the broker's own service restarts mosquitto; on one machine the demo has
neither, so a SIGKILLed agent or broker would stay dead and the recovery the system is built
for would never show.  ``Supervisor`` watches named services by a liveness check and restarts
a dead one after a capped, jittered exponential backoff that resets once the service stayed
up for ``stable_after_s``, and reports each crash and restart to a callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from continuum._retry import Backoff

__all__ = ["Supervisor", "SupervisorEvent"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """One thing the supervisor saw or did: ``kind`` is "crashed", "restarted" or "failed"."""

    kind: str
    service: str
    detail: str = ""
    delay_s: float = 0.0


@dataclass(slots=True)
class _Service:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    describe_exit: Callable[[], str]
    backoff: Backoff
    down_since: float | None = None
    next_try: float = 0.0
    up_since: float = field(default_factory=time.monotonic)
    restarts: int = 0


class Supervisor:
    """Restart watched services that died, with backoff, on one named thread.

    Args:
        on_event: called (on the supervisor's thread) with every crash and restart.
        restart_min_s, restart_max_s: the backoff before a restart, doubling per crash in a
            row (systemd's ``RestartSec`` with ``RestartSteps``/``RestartMaxDelaySec``).
        stable_after_s: a service up this long has its backoff reset.
        poll_s: how often liveness is checked.
    """

    def __init__(
        self,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        *,
        restart_min_s: float = 1.0,
        restart_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        poll_s: float = 0.25,
    ) -> None:
        """Prepare a supervisor; ``start()`` begins watching."""
        self._on_event = on_event
        self._restart_min_s = restart_min_s
        self._restart_max_s = restart_max_s
        self._stable_after_s = stable_after_s
        self._poll_s = poll_s
        self._services: dict[str, _Service] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self,
        name: str,
        *,
        alive: Callable[[], bool],
        restart: Callable[[], None],
        describe_exit: Callable[[], str] = lambda: "exited",
    ) -> None:
        """Watch ``name``: when ``alive()`` turns false, call ``restart()`` after the backoff."""
        with self._lock:
            self._services[name] = _Service(
                name,
                alive,
                restart,
                describe_exit,
                Backoff(self._restart_min_s, self._restart_max_s),
            )

    def restarts(self) -> dict[str, int]:
        """Return how often each service was restarted."""
        with self._lock:
            return {name: s.restarts for name, s in self._services.items()}

    def start(self) -> Supervisor:
        """Start the watching thread; return self."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ctm-supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the services are stopped on purpose)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(30.0)

    def check_once(self) -> None:
        """Check every service once and restart those whose backoff is over."""
        with self._lock:
            services = list(self._services.values())
        for service in services:
            if self._stop.is_set():
                return
            self._check(service)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.check_once()

    def _check(self, service: _Service) -> None:
        now = time.monotonic()
        try:
            alive = service.alive()
        except Exception as exc:  # a broken check must not stop the watching of the others
            _log.warning("liveness check of %s failed: %r", service.name, exc)
            return
        if alive:
            if service.down_since is None and now - service.up_since >= self._stable_after_s:
                service.backoff.reset()
            return
        if service.down_since is None:
            delay = service.backoff.next_delay()
            service.down_since, service.next_try = now, now + delay
            detail = service.describe_exit()
            _log.warning("%s %s; restarting in %.1f s", service.name, detail, delay)
            self._emit(SupervisorEvent("crashed", service.name, detail, delay))
            return
        if now < service.next_try:
            return
        try:
            service.restart()
        except Exception as exc:
            delay = service.backoff.next_delay()
            service.next_try = time.monotonic() + delay
            _log.warning("restarting %s failed (%s); next try in %.1f s", service.name, exc, delay)
            self._emit(SupervisorEvent("failed", service.name, str(exc), delay))
            return
        down_s = time.monotonic() - service.down_since
        service.down_since, service.up_since = None, time.monotonic()
        service.restarts += 1
        _log.warning("restarted %s after %.1f s down", service.name, down_s)
        self._emit(SupervisorEvent("restarted", service.name, f"after {down_s:.1f} s down"))

    def _emit(self, event: SupervisorEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # a reporting bug must not stop the restarts
            _log.exception("supervisor event callback failed")
