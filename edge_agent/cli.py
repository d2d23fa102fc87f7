"""The ``edge-agent`` command: ``run`` the daemon or ``check`` a node's config and environment.

``--config`` may be repeated: on a box several tenants share, one process then runs one
agent per config (``edge_agent.host``); ``check`` checks each config in turn.

Exit codes: 0 success, 1 a probe failed (``check``) or the agent stopped on an error,
2 bad arguments or configuration (the message says what to fix; no traceback).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from types import FrameType
from typing import TextIO

from continuum import signing
from continuum.backends import select_backend
from continuum.errors import ConfigError, ContinuumError, NotReadyError, SpecError
from continuum.spec import resolve_ref
from continuum.wire import mqtt
from edge_agent import capabilities
from edge_agent._instance import lock_holder
from edge_agent.config import AgentSettings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so ``main`` returns the code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}\n{self.format_usage().strip()}")


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="edge-agent",
        description="The continuum edge agent: real-time inference, selective uplink, "
        "signed model updates.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity (default INFO)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_ArgumentParser
    )
    run = commands.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="FILE",
        help="agent config YAML; repeat it to run several tenants' agents in one process",
    )
    check = commands.add_parser(
        "check", help="validate the config and probe broker, backends, GPU and TensorRT"
    )
    check.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="FILE",
        help="agent config YAML; repeat it to check each tenant's config of a shared box",
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="bound on each probe (default 5)"
    )
    return parser


def _version() -> str:
    """The installed continuum's version (the agent ships in it)."""
    try:
        return metadata.version("continuum")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edge-agent`` command line and return its exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("edge-agent: error: choose a command: run or check", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    from edge_agent.host import load_configs  # imports the agent: only past the arguments

    try:
        configs = load_configs(args.config)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "run":
        return _run(configs)
    if len(configs) == 1:
        return _check(configs[0], args.timeout, sys.stdout)
    codes = [_check(c, args.timeout, sys.stdout, prefix=f"{c.tenant}: ") for c in configs]
    return EXIT_FAILED if EXIT_FAILED in codes else EXIT_OK


def _run(configs: list[AgentSettings]) -> int:
    """Run one agent, or on a shared box one per config under an ``AgentHost``."""
    from edge_agent.agent import EdgeAgent  # heavy imports (backends) only when running
    from edge_agent.host import AgentHost

    try:
        daemon = EdgeAgent(configs[0]) if len(configs) == 1 else AgentHost(configs)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _stop_on_signals(daemon.request_stop)
    try:
        daemon.run()
    except ContinuumError as exc:
        print(f"edge-agent: stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _stop_on_signals(request_stop: Callable[[], None]) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("edge_agent").info("received %s; stopping", signal.Signals(signum).name)
        request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def _check(settings: AgentSettings, timeout_s: float, out: TextIO, prefix: str = "") -> int:
    from edge_agent.agent import load_pipelines, read_public_key

    failed = False

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal failed
        failed = failed or not ok
        print(f"{prefix}[{'ok' if ok else 'FAIL'}] {what}: {detail}", file=out)

    report(True, "config", f"node {settings.node_id!r} of tenant {settings.tenant!r}")
    try:
        pem = read_public_key(settings.trusted_public_key)
        report(True, "trusted key", f"Ed25519, fingerprint {signing.key_fingerprint(pem)[:16]}")
    except ConfigError as exc:
        report(False, "trusted key", str(exc))
    try:
        specs = load_pipelines(settings)
    except ConfigError as exc:
        report(False, "pipelines", str(exc))
        specs = []
    caps = capabilities.probe(timeout_s)
    report(bool(caps.backends), "backends", ", ".join(caps.backends) or "none usable")
    report(True, "gpu", caps.gpu or "none")
    report(True, "tensorrt", caps.tensorrt_version or "not installed")
    for index, entry in enumerate(settings.pipelines):
        try:
            resolve_ref(entry.source.ref, field=f"pipelines.{index}.source.ref")
            report(True, f"source {index}", f"{entry.source.ref} imports")
        except SpecError as exc:
            report(False, f"source {index}", str(exc))
    for spec in specs:
        try:
            kind = select_backend(spec.edge.backend)
            report(True, f"pipeline {spec.name}", f"model {spec.edge.model!r} runs on {kind}")
        except ContinuumError as exc:
            report(False, f"pipeline {spec.name}", str(exc))
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.state_dir / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
        report(True, "state dir", f"{settings.state_dir} writable")
    except OSError as exc:
        report(False, "state dir", f"{settings.state_dir}: {exc}")
    report(*_probe_broker(settings, timeout_s))
    return EXIT_FAILED if failed else EXIT_OK


def _probe_broker(settings: AgentSettings, timeout_s: float) -> tuple[bool, str, str]:
    broker = settings.broker
    where = f"{broker.host}:{broker.port}"
    running = lock_holder(settings.state_dir)
    if running is not None:
        # The broker binds the client id to the identity: a probe logging in as this node
        # would take the running agent's session over. Ask the agent instead.
        return _running_agent_link(settings, where, running)
    # No session of its own: it connects with a clean start and no expiry, and the broker
    # gives it the node's client id (the identity), so it would end the node's session;
    # it only runs while no agent runs with this state directory.
    probe_settings = mqtt.BrokerSettings(
        **{
            **broker.model_dump(include=set(mqtt.BrokerSettings.model_fields)),
            "session_expiry_s": 0,
            "connect_timeout_s": timeout_s,
        }
    )
    client = mqtt.make_client(
        f"ctm-edge-check-{settings.tenant}-{settings.node_id}", probe_settings
    )
    try:
        mqtt.connect(client, probe_settings)
    except (NotReadyError, OSError) as exc:
        return False, "broker", f"{where}: {exc}"
    client.disconnect()
    client.loop_stop()
    return True, "broker", f"{where} reachable, MQTT 5 session accepted"


def _running_agent_link(settings: AgentSettings, where: str, pid: int) -> tuple[bool, str, str]:
    """Report the broker link of the agent running with this config, from its ``/metrics``."""
    who = f"the agent (pid {pid})" if pid else "an agent"
    note = (
        f"not probed: {who} runs with this state_dir and holds the node's one connection "
        "(a probe would take its session)"
    )
    if not settings.metrics_port:
        return True, "broker", f"{where}: {note}; set metrics_port to see its link state here"
    import urllib.request

    wildcard = settings.metrics_host in ("", "0.0.0.0", "::")
    host = "127.0.0.1" if wildcard else settings.metrics_host
    url = f"http://{host}:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode(errors="replace")
    except OSError as exc:
        return False, "broker", f"{where}: {note}; its metrics at {url} did not answer: {exc}"
    for line in text.splitlines():
        if line.startswith("continuum_edge_broker_connected"):
            connected = line.rsplit(" ", 1)[-1].strip() in ("1", "1.0")
            state = "connected" if connected else "NOT connected"
            return connected, "broker", f"{where}: {note}; it reports {state}"
    return False, "broker", f"{where}: {note}; its metrics at {url} lack the link gauge"
