"""``AgentHost``: several tenants' edge agents in one process, on a box the tenants share.

Each tenant keeps what is its own in its own ``EdgeAgent``: config, broker credential and
MQTT session, state dir (outbox and models), trusted key and residency policy.  The host
only supervises: it restarts an agent that stopped on an error, with capped exponential
backoff, while the other tenants keep running; it stops them all in parallel on request;
and it serves one merged ``/metrics`` for tenants that set the same metrics port.

The tenants share the process and its user, so a shared box suits tenants who trust its
operator: the isolation is the broker's (one credential and ACL per tenant) and the data's
(one state dir per tenant), not a sandbox around the code each tenant's sources run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from continuum._retry import Backoff
from continuum.errors import ConfigError, ContinuumError
from edge_agent.agent import EdgeAgent
from edge_agent.config import ENV_PREFIX, AgentSettings
from edge_agent.metrics import MetricsEndpoint, TenantMetrics

__all__ = ["AgentHost", "load_configs"]

log = logging.getLogger(__name__)

#: First delay before an agent that stopped on an error is restarted; doubles per failure.
RESTART_MIN_S = 1.0
#: Cap of the restart delay; an agent that ran this long before failing starts over at the min.
RESTART_MAX_S = 60.0
#: Time on top of the longest shutdown_timeout_s for the supervisors to finish at stop.
_STOP_MARGIN_S = 5.0


def load_configs(paths: Sequence[str | os.PathLike[str]]) -> list[AgentSettings]:
    """Load every agent config and check that they can share one process.

    Raises:
        ConfigError: the problems of every file (one line each), then those between them.
    """
    loaded: list[tuple[str, AgentSettings]] = []
    problems: list[str] = []
    for path in paths:
        try:
            loaded.append((str(path), AgentSettings.load(path)))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    check_shared_box(loaded)
    if len(loaded) > 1:
        overrides = sorted(name for name in os.environ if name.startswith(ENV_PREFIX))
        if overrides:
            log.warning(
                "%s apply to every config of this process (%s); put what differs per tenant "
                "(credentials above all) in each tenant's own file",
                ", ".join(overrides),
                ", ".join(settings.tenant for _, settings in loaded),
            )
    return [settings for _, settings in loaded]


def check_shared_box(configs: Sequence[tuple[str, AgentSettings]]) -> None:
    """Check that the configs, each named by where it came from, can share one process.

    Tenants must be distinct; so must their state dirs, neither inside another (each
    outbox and model store belongs to one tenant) and their broker identities (each
    tenant logs in with its own credential).  Tenants that share a metrics port must
    share its address too: the port is served once.  Node ids may repeat.

    Raises:
        ConfigError: one line per problem.
    """
    problems: list[str] = []
    by_tenant: dict[str, list[str]] = {}
    for where, settings in configs:
        by_tenant.setdefault(settings.tenant, []).append(where)
    for tenant, places in by_tenant.items():
        if len(places) > 1:
            problems.append(
                f"tenant {tenant!r} is configured more than once ({', '.join(places)}); "
                "one process runs one agent per tenant"
            )
    for i, (where_a, a) in enumerate(configs):
        for where_b, b in configs[i + 1 :]:
            problems.extend(_pair_problems(where_a, a, where_b, b))
    if problems:
        raise ConfigError(
            "the edge agent configs cannot share one process:\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )


def _pair_problems(where_a: str, a: AgentSettings, where_b: str, b: AgentSettings) -> list[str]:
    problems = []
    dir_a, dir_b = a.state_dir.resolve(), b.state_dir.resolve()
    if dir_a == dir_b:
        problems.append(
            f"{where_a} and {where_b} use the same state_dir {dir_a}; each tenant needs its own"
        )
    elif dir_a.is_relative_to(dir_b) or dir_b.is_relative_to(dir_a):
        inner, outer = (dir_a, dir_b) if dir_a.is_relative_to(dir_b) else (dir_b, dir_a)
        problems.append(
            f"state_dir {inner} is inside state_dir {outer} ({where_a}, {where_b}); "
            "give each tenant a folder of its own, side by side"
        )
    same_broker = (a.broker.host, a.broker.port) == (b.broker.host, b.broker.port)
    if same_broker and a.broker.username is not None and a.broker.username == b.broker.username:
        problems.append(
            f"{where_a} and {where_b} log in to {a.broker.host}:{a.broker.port} as the same "
            f"MQTT user {a.broker.username!r}; each tenant needs its own credential"
        )
    if same_broker and a.broker.tls_cert is not None and a.broker.tls_cert == b.broker.tls_cert:
        problems.append(
            f"{where_a} and {where_b} use the same client certificate {a.broker.tls_cert}; "
            "each tenant needs its own credential"
        )
    if a.metrics_port and a.metrics_port == b.metrics_port and a.metrics_host != b.metrics_host:
        problems.append(
            f"{where_a} and {where_b} share metrics_port {a.metrics_port} on different "
            f"metrics_host ({a.metrics_host}, {b.metrics_host}); a shared port is served once, "
            "on one address"
        )
    return problems


@dataclass(eq=False)
class _Tenant:
    """One tenant's slot in the host: its settings and the agent running for it now."""

    name: str
    settings: AgentSettings
    agent: EdgeAgent | None
    shared_port: int | None = None  # the metrics port the host serves for it, if any
    failures: int = 0
    thread: threading.Thread | None = None


class AgentHost:
    """Run one ``EdgeAgent`` per tenant in this process, each kept running on its own.

    ``AgentHost(settings)`` checks the configs (``check_shared_box``) and builds every
    agent, raising ``ConfigError`` with every tenant's problems; ``run`` serves until
    ``request_stop``.  Tenants that set the same ``metrics_port`` get one endpoint on it
    (``TenantMetrics``); the others serve their own, as a lone agent does.

    Args:
        settings: one per tenant.
        restart_min_s, restart_max_s: the backoff before an agent that stopped on an error
            is built and started again.
    """

    def __init__(
        self,
        settings: Sequence[AgentSettings],
        *,
        restart_min_s: float = RESTART_MIN_S,
        restart_max_s: float = RESTART_MAX_S,
    ) -> None:
        check_shared_box([(f"tenant {s.tenant!r}", s) for s in settings])
        ports = Counter(s.metrics_port for s in settings if s.metrics_port)
        self._shared_ports = {
            port: next(s.metrics_host for s in settings if s.metrics_port == port)
            for port, count in ports.items()
            if count > 1
        }
        self._restart_min_s = restart_min_s
        self._restart_max_s = restart_max_s
        self._tenants: list[_Tenant] = []
        problems: list[str] = []
        for entry in settings:
            shared = entry.metrics_port if entry.metrics_port in self._shared_ports else None
            if shared is not None:
                entry = entry.model_copy(update={"metrics_port": 0})  # the host serves it
            try:
                self._tenants.append(_Tenant(entry.tenant, entry, EdgeAgent(entry), shared))
            except ConfigError as exc:
                problems.append(f"tenant {entry.tenant!r}: {exc}")
        if problems:
            for tenant in self._tenants:
                if tenant.agent is not None:
                    tenant.agent.stop()
            raise ConfigError("\n".join(problems))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._endpoints: list[MetricsEndpoint] = []
        self._started = False

    # -- introspection ---------------------------------------------------------------------

    @property
    def agents(self) -> dict[str, EdgeAgent | None]:
        """Each tenant's agent now (None while it waits to be restarted)."""
        with self._lock:
            return {t.name: t.agent for t in self._tenants}

    @property
    def failures(self) -> dict[str, int]:
        """How often each tenant's agent stopped on an error or could not be built again."""
        with self._lock:
            return {t.name: t.failures for t in self._tenants}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the shared metrics ports and start one supervisor thread per tenant.

        Raises:
            ConfigError: a shared metrics port cannot be bound.
        """
        if self._started:
            return
        self._started = True
        for port, host in self._shared_ports.items():
            registry = CollectorRegistry()
            registry.register(TenantMetrics(self._registries_on(port)))
            try:
                self._endpoints.append(MetricsEndpoint(registry, port, host))
            except OSError as exc:
                self.request_stop()
                self.stop()
                raise ConfigError(f"metrics_port: cannot listen on {host}:{port}: {exc}") from exc
            log.info("metrics of tenants sharing port %d on http://%s:%d/metrics", port, host, port)
        for tenant in self._tenants:
            tenant.thread = threading.Thread(
                target=self._supervise, args=(tenant,), name=f"ctm-host-{tenant.name}"
            )
            tenant.thread.start()

    def request_stop(self) -> None:
        """Ask every agent to stop (safe from signal handlers and other threads)."""
        self._stop.set()
        with self._lock:
            agents = [t.agent for t in self._tenants if t.agent is not None]
        for agent in agents:
            agent.request_stop()

    def run(self) -> None:
        """Start, serve until ``request_stop``, then stop every agent in parallel."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every agent, each within its own shutdown_timeout_s, all at once; then the
        shared metrics endpoints.
        """
        self.request_stop()
        bound = max(t.settings.shutdown_timeout_s for t in self._tenants) + _STOP_MARGIN_S
        deadline = time.monotonic() + bound
        for tenant in self._tenants:
            if tenant.thread is not None:
                tenant.thread.join(max(0.0, deadline - time.monotonic()))
                if tenant.thread.is_alive():
                    log.warning(
                        "tenant %s: the agent did not stop within %.0f s", tenant.name, bound
                    )
            elif tenant.agent is not None:  # built, never started
                tenant.agent.stop()
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()

    # -- supervision -----------------------------------------------------------------------

    def _registries_on(self, port: int) -> Callable[[], list[tuple[str, CollectorRegistry]]]:
        members = [t for t in self._tenants if t.shared_port == port]

        def registries() -> list[tuple[str, CollectorRegistry]]:
            # Only agents running now: one waiting to be restarted shows no stale numbers.
            with self._lock:
                return [(t.name, t.agent.metrics.registry) for t in members if t.agent is not None]

        return registries

    def _supervise(self, tenant: _Tenant) -> None:
        """Run the tenant's agent; after an error, build and start it again with backoff."""
        backoff = Backoff(self._restart_min_s, self._restart_max_s)
        agent = tenant.agent  # built by the constructor, not started
        try:
            while True:
                if agent is None:
                    if self._stop.is_set():
                        return
                    try:
                        agent = EdgeAgent(tenant.settings)
                    except Exception as exc:
                        with self._lock:
                            tenant.failures += 1
                        self._failed(tenant, "cannot be built", exc, backoff.next_delay())
                        continue
                with self._lock:
                    if self._stop.is_set():  # stop came first: the finally closes the agent
                        return
                    tenant.agent = agent  # from here on request_stop reaches it
                started = time.monotonic()
                try:
                    agent.run()  # returns only after request_stop; stops the agent either way
                except Exception as exc:
                    agent = None
                    with self._lock:
                        tenant.agent = None
                        tenant.failures += 1
                    if time.monotonic() - started >= self._restart_max_s:
                        backoff.reset()  # it ran well for a while: a new failure, not a loop
                    self._failed(tenant, "stopped on an error", exc, backoff.next_delay())
                    continue
                agent = None
                return
        finally:
            with self._lock:
                tenant.agent = None
            if agent is not None:
                agent.stop()

    def _failed(self, tenant: _Tenant, what: str, exc: Exception, delay_s: float) -> None:
        # A ContinuumError says what went wrong; anything else is a bug worth its traceback.
        log.error(
            "tenant %s: the agent %s: %s; trying again in %.1f s (the other tenants go on)",
            tenant.name,
            what,
            exc,
            delay_s,
            exc_info=None if isinstance(exc, ContinuumError) else exc,
        )
        self._stop.wait(delay_s)
