"""``continuum hpc up|status|down``: Ray workers on a Slurm allocation, labelled ``tier=hpc``.

``up`` submits ``deploy/slurm/continuum-ray.sbatch`` with ``sbatch --parsable``, prints the job
id, and waits until every node of the allocation runs a Ray node (each writes a ready file to
the state directory, which must be on a filesystem the login node shares). Without ``--join``
the allocation runs a Ray cluster of its own, head on its first node, for sites whose compute
nodes accept no inbound connections; with ``--join HOST:PORT`` its nodes join that cluster.
``status`` lists the allocations (``squeue``) with the Ray nodes each runs and their labels;
``down`` cancels one (``scancel``), and the script stops the Ray processes it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_head._training_pool import ENDS_AT_LABEL, SLURM_JOB_LABEL
from cloud_head.cli._common import add_json, print_json, wants_json
from continuum.errors import ConfigError, NotReadyError, OperationTimeoutError
from continuum.labels import ACCELERATOR, COUNTRY, JURISDICTION, SITE, TIER

#: The job name of our allocations: ``status`` lists these, ``down`` cancels only these.
JOB_NAME = "continuum-ray"
#: Where the address and ready files go when ``--state-dir`` is left out.
STATE_DIR_ENV = "CONTINUUM_HPC_STATE_DIR"
#: The sbatch script in a source checkout (``--script`` names another).
DEFAULT_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "continuum-ray.sbatch"

_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:(\d{1,5})$")
_JOB_ID = re.compile(r"^\d+$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL"}
_ENDED |= {"OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"}
_SLURM_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``hpc`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "hpc",
        help="run Ray workers labelled tier=hpc on a Slurm allocation",
        description="Start Ray on a Slurm allocation (sbatch), list the allocations and their "
        "Ray nodes, cancel one. Run it on the site's login node, with Slurm's commands on PATH.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="submit an allocation that runs Ray, print its job id, wait until Ray is up",
        description="Submit deploy/slurm/continuum-ray.sbatch for NODES nodes. Each node runs "
        "a Ray node labelled continuum.io/tier=hpc plus the site, country, jurisdiction (and "
        "accelerator) given here, and hpc.continuum/slurm-job=JOB. Without --join the "
        "allocation runs its own Ray cluster (head on its first node); its address and auth "
        "token are written to the state directory.",
    )
    up.add_argument("--partition", help="Slurm partition (default: the site's default one)")
    up.add_argument("--account", help="Slurm account to charge (where the site asks for one)")
    up.add_argument("--nodes", type=_node_count, required=True, help="how many nodes (1-4096)")
    up.add_argument(
        "--time", type=_time_limit, required=True, help="time limit, HH:MM:SS or D-HH:MM:SS"
    )
    up.add_argument("--site", required=True, help="continuum.io/site of the nodes, e.g. lux-hpc")
    up.add_argument("--country", required=True, help="continuum.io/country (ISO code), e.g. LU")
    up.add_argument(
        "--jurisdiction", required=True, help="continuum.io/jurisdiction of the site, e.g. LU"
    )
    up.add_argument("--accelerator", help="continuum.io/accelerator of the nodes, e.g. h100")
    up.add_argument(
        "--join",
        type=_address,
        metavar="HOST:PORT",
        help="join the Ray cluster whose GCS is HOST:PORT (its compute nodes must reach it; "
        "RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH of this shell pass on) instead of starting one",
    )
    up.add_argument("--cpus-per-node", type=_node_count, help="CPUs Ray offers on each node")
    up.add_argument(
        "--interface",
        type=_interface,
        help="network interface whose IPv4 address each Ray node uses (e.g. ib0; default: "
        "the one Ray picks)",
    )
    up.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch option, e.g. --sbatch-arg=--gres=gpu:4 (repeatable)",
    )
    up.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="how long to wait for the Ray nodes, queueing included (default 600)",
    )
    up.add_argument("--script", type=Path, default=None, help="the sbatch script to submit")
    up.add_argument(
        "--ray-cli",
        default=None,
        metavar="PATH",
        help="the ray executable as the compute nodes see it (default: this environment's, "
        "which must then be on a filesystem they share)",
    )
    _add_state_dir(up)
    add_json(up)
    up.set_defaults(run=run_up)

    status = actions.add_parser(
        "status",
        help="list the allocations running Ray, and the Ray nodes of each with their labels",
        description='--json prints {"allocations": [{"job_id", "state", "partition", "nodes", '
        '"elapsed", "time_limit", "reason", "layout", "address", "ready_hosts", "ray_nodes": '
        '[{"name", "alive", "labels"}] or null, "ray_error"}]}.',
    )
    _add_state_dir(status)
    add_json(status)
    status.set_defaults(run=run_status)

    down = actions.add_parser("down", help="cancel an allocation (scancel); its Ray nodes stop")
    down.add_argument("job_id", metavar="JOB", type=_job_id, help="the job id `hpc up` printed")
    down.add_argument(
        "--timeout-s", type=float, default=60.0, help="how long to wait for the job to end"
    )
    _add_state_dir(down)
    down.set_defaults(run=run_down)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"folder for address and ready files, on a filesystem the compute nodes share "
        f"(default ${STATE_DIR_ENV}, else ~/.continuum/hpc)",
    )


# -- argument checks: each names the fix ----------------------------------------------------


def _node_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: give a whole number 1-4096")
    return int(text)


def _time_limit(text: str) -> str:
    match = _TIME.match(text)
    if match is None or int(match[3]) > 59 or int(match[4]) > 59 or text.strip("-:0") == "":
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time limit: write HH:MM:SS or D-HH:MM:SS, e.g. 02:00:00"
        )
    return text


def _address(text: str) -> str:
    match = _ADDRESS.match(text)
    if match is None or not 1 <= int(match[1]) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Ray address: write the head's GCS as HOST:PORT, e.g. 10.0.0.5:6379"
        )
    return text


def _interface(text: str) -> str:
    if not _INTERFACE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a network interface name: give one as `ip addr` lists it, e.g. ib0"
        )
    return text


def _job_id(text: str) -> str:
    if not _JOB_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Slurm job id: give the number")
    return text


def node_labels(args: argparse.Namespace) -> dict[str, str]:
    """Return the continuum labels ``up`` gives each node; raise ``ConfigError`` naming the fix."""
    from continuum.embedded.ray_cluster import check_labels

    labels = {TIER: "hpc", SITE: args.site, COUNTRY: args.country, JURISDICTION: args.jurisdiction}
    if args.accelerator is not None:
        labels[ACCELERATOR] = args.accelerator
    if not _COUNTRY.match(args.country):
        raise ConfigError(
            f"--country {args.country!r} is not a country code: give the ISO 3166 two-letter "
            "code in capitals, e.g. LU"
        )
    return check_labels(labels, "hpc up")


# -- up ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """Where one allocation's files are: ``ray-JOB.json`` (the head), ``ray-JOB/`` (nodes)."""

    state_dir: Path
    job_id: str

    @property
    def info_path(self) -> Path:
        return self.state_dir / f"ray-{self.job_id}.json"

    @property
    def output_path(self) -> Path:
        return self.state_dir / f"ray-{self.job_id}.out"

    def info(self) -> dict[str, Any] | None:
        """Return what the script wrote about the head, or None before it did."""
        try:
            loaded: dict[str, Any] = json.loads(self.info_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not yet, or half written
            return None
        return loaded

    def ready_hosts(self) -> list[str]:
        """Return the hosts whose Ray node runs."""
        return sorted(p.stem for p in (self.state_dir / f"ray-{self.job_id}").glob("*.ready"))

    def output_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.output_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output yet)"


def run_up(args: argparse.Namespace) -> int:
    """Submit the allocation, print its job id, wait for its Ray nodes and say where they are."""
    labels = node_labels(args)
    script = (args.script or DEFAULT_SCRIPT).resolve()
    if not script.is_file():
        raise ConfigError(
            f"the sbatch script {script} is missing: pass --script PATH to "
            "deploy/slurm/continuum-ray.sbatch of a continuum checkout"
        )
    if args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be positive, got {args.timeout_s:g}")
    _check_sbatch_args(args.sbatch_arg)
    state = _state_dir(args)
    state.mkdir(parents=True, exist_ok=True)
    from continuum.embedded import find_ray_cli

    command = [_slurm_tool("sbatch"), "--parsable", f"--job-name={JOB_NAME}"]
    command += [f"--nodes={args.nodes}", f"--time={args.time}", "--ntasks-per-node=1"]
    command += [f"--output={state}/ray-%j.out"]
    command += [f"--partition={args.partition}"] if args.partition else []
    command += [f"--account={args.account}"] if args.account else []
    ray_cli = args.ray_cli or find_ray_cli()
    command += [*args.sbatch_arg, str(script), "--state-dir", str(state), "--ray", ray_cli]
    command += ["--site", labels[SITE], "--country", labels[COUNTRY]]
    command += ["--jurisdiction", labels[JURISDICTION]]
    command += ["--accelerator", labels[ACCELERATOR]] if ACCELERATOR in labels else []
    command += ["--join", args.join] if args.join else []
    command += ["--cpus", str(args.cpus_per_node)] if args.cpus_per_node else []
    command += ["--interface", args.interface] if args.interface else []
    if args.join:
        _check_join_auth()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    out = _slurm(command, env=env)
    job_id = out.split(";")[0].strip()
    if not _JOB_ID.match(job_id):
        raise NotReadyError(f"sbatch printed {out!r}, not a job id")
    # The id alone on stdout (JOB=$(continuum hpc up ...)); the rest goes to stderr.
    print(
        f"submitted Slurm job {job_id}" if wants_json(args) else job_id,
        flush=True,
        file=sys.stderr if wants_json(args) else sys.stdout,
    )
    allocation = Allocation(state, job_id)
    info = _await_ray(allocation, args.nodes, args.timeout_s)
    if wants_json(args):
        print_json({**info, "ready_hosts": allocation.ready_hosts()})
        return 0
    print(
        f"Ray runs on {args.nodes} node(s) of Slurm job {job_id} ({info['layout']} cluster, "
        f"head {info['address']})",
        file=sys.stderr,
    )
    print(f"  labels  {','.join(f'{k}={v}' for k, v in info['labels'].items())}", file=sys.stderr)
    if info.get("auth_mode") == "token" and info.get("auth_token_path"):
        print(
            f"  connect RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={info['auth_token_path']} "
            f"ray.init(address={info['address']!r})",
            file=sys.stderr,
        )
    print(f"  cancel  continuum hpc down {job_id}", file=sys.stderr)
    return 0


#: sbatch options ``up`` sets itself, with the flag of ours that sets each.
_OWN_OPTIONS = {
    "--job-name": "none: `status` and `down` find allocations by it",
    "-J": "none: `status` and `down` find allocations by it",
    "--output": "--state-dir",
    "-o": "--state-dir",
    "--nodes": "--nodes",
    "-N": "--nodes",
    "--time": "--time",
    "-t": "--time",
    "--partition": "--partition",
    "-p": "--partition",
    "--parsable": "none: `up` reads the job id with it",
}


def _check_join_auth() -> None:
    """Refuse ``--join`` without the cluster's auth settings, which the nodes inherit.

    Left implicit, a node joining a token cluster fails after ~20 s with InvalidAuthToken.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode not in ("token", "disabled"):
        raise ConfigError(
            f"--join needs RAY_AUTH_MODE set to the joined cluster's mode (token or disabled), "
            f"got {mode!r}: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<its token file "
            "on the shared filesystem>"
        )
    token = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if mode == "token" and not (token and Path(token).is_file()):
        raise ConfigError(
            f"--join with RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN_PATH naming the cluster's "
            f"token file, readable from the compute nodes (got {token!r})"
        )


def _check_sbatch_args(extra: list[str]) -> None:
    """Refuse an ``--sbatch-arg`` that is no option or that overrides one ``up`` sets."""
    for arg in extra:
        name = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            raise ConfigError(
                f"--sbatch-arg {arg!r} is not an sbatch option: write it whole, with its value "
                "after '=', e.g. --sbatch-arg=--gres=gpu:4"
            )
        if name in _OWN_OPTIONS or (name[:2] in _OWN_OPTIONS and not name.startswith("--")):
            own = _OWN_OPTIONS.get(name, _OWN_OPTIONS.get(name[:2], ""))
            raise ConfigError(
                f"--sbatch-arg {arg!r} sets what `continuum hpc up` sets itself; use its flag "
                f"instead ({own})"
            )


def _await_ray(allocation: Allocation, nodes: int, timeout_s: float) -> dict[str, Any]:
    """Wait until the head is written and ``nodes`` nodes are ready; raise on the job's end."""
    deadline = time.monotonic() + timeout_s
    state, reason = "PENDING", ""
    while time.monotonic() < deadline:
        info = allocation.info()
        if info is not None and len(allocation.ready_hosts()) >= nodes:
            return info
        job = _squeue(allocation.job_id)
        state, reason = (job["state"], job["reason"]) if job else ("gone from the queue", "")
        if job is None or state in _ENDED:
            raise NotReadyError(
                f"Slurm job {allocation.job_id} ended ({state}) before its Ray nodes ran; "
                f"{allocation.output_path} ends:\n{allocation.output_tail()}"
            )
        time.sleep(0.5)
    ready = len(allocation.ready_hosts())
    raise OperationTimeoutError(
        f"after {timeout_s:g} s Slurm job {allocation.job_id} is {state}"
        f"{f' ({reason})' if reason and reason != 'None' else ''} with {ready} of {nodes} Ray "
        f"nodes up; it stays submitted: wait longer (`continuum hpc status`) or cancel it "
        f"(`continuum hpc down {allocation.job_id}`); its output: {allocation.output_path}"
    )


# -- status -----------------------------------------------------------------------------------

_SQUEUE_FIELDS = ("job_id", "state", "partition", "nodes", "elapsed", "time_limit", "reason")
_SQUEUE_FORMAT = "%i|%T|%P|%D|%M|%l|%r"


def _squeue(job_id: str | None = None) -> dict[str, str] | None:
    """Return squeue's row of ``job_id`` (or None once Slurm forgot it)."""
    rows = _squeue_rows(job_id)
    return rows[0] if rows else None


def _squeue_rows(job_id: str | None = None) -> list[dict[str, str]]:
    command = [_slurm_tool("squeue"), "--noheader", f"--name={JOB_NAME}", f"-o{_SQUEUE_FORMAT}"]
    if job_id is not None:
        command.append(f"--jobs={job_id}")
    try:
        out = _slurm(command)
    except NotReadyError:
        if job_id is not None:  # squeue refuses a job id it no longer knows
            return []
        raise
    return [dict(zip(_SQUEUE_FIELDS, line.split("|"), strict=False)) for line in out.splitlines()]


def run_status(args: argparse.Namespace) -> int:
    """Print each allocation, its Ray head and the Ray nodes it runs with their labels."""
    state = _state_dir(args)
    allocations: list[dict[str, Any]] = []
    for row in _squeue_rows():
        allocation = Allocation(state, row["job_id"])
        info = allocation.info() or {}
        document: dict[str, Any] = {**row, "layout": info.get("layout")}
        document["address"] = info.get("address")
        # What the nodes themselves reported, for when the head cannot be asked from here.
        document["ready_hosts"] = allocation.ready_hosts()
        document["ray_nodes"], document["ray_error"] = None, None
        if info:
            try:
                document["ray_nodes"] = ray_nodes_of(info)
            except NotReadyError as error:
                document["ray_error"] = str(error)
        allocations.append(document)
    if wants_json(args):
        print_json({"allocations": allocations})
        return 0
    if not allocations:
        print(f"no {JOB_NAME} allocations in Slurm's queue (`continuum hpc up` submits one)")
        return 0
    for a in allocations:
        print(
            f"job {a['job_id']}  {a['state']}  partition {a['partition']}  {a['nodes']} node(s)"
            f"  {a['elapsed']} of {a['time_limit']}  ray {a['layout'] or '-'} {a['address'] or ''}"
        )
        if a["ray_error"]:
            print(f"  ray: {a['ray_error']}")
            print(f"  nodes that reported Ray running: {', '.join(a['ready_hosts']) or 'none'}")
        for node in a["ray_nodes"] or []:
            shown = ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items()))
            print(f"  {node['name']}  {'alive' if node['alive'] else 'dead'}  {shown}")
        stops = {n["labels"].get(ENDS_AT_LABEL) for n in a["ray_nodes"] or []} - {None}
        if len(stops) == 1 and str(next(iter(stops))).isdigit():
            at = int(next(iter(stops)))
            print(
                f"  Ray stops at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} (in "
                f"{max(0, at - int(time.time())) // 60} min, ahead of the time limit): a "
                "training run expected to take longer goes elsewhere or is refused"
            )
    return 0


_NODES_QUERY = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(json.dumps([{"name": n.get("NodeName"), "alive": bool(n.get("Alive")),
    "labels": {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}}
    for n in ray.nodes() if (n.get("Labels") or {}).get(sys.argv[2]) == sys.argv[3]]))
"""


def ray_nodes_of(info: dict[str, Any], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Return the Ray nodes of one allocation (``name``, ``alive``, ``labels``), asked of its GCS.

    A Ray driver in a child process, with the allocation's auth settings, so that each cluster's
    token stays its own. Raises ``NotReadyError`` when the head cannot be reached from here.
    """
    from continuum.embedded._process import port_accepts

    host, _, port = str(info["address"]).rpartition(":")
    if not port_accepts(host, int(port), timeout_s=2.0):
        raise NotReadyError(
            f"the Ray head at {info['address']} accepts no connection from here (on a site "
            "whose compute nodes take no inbound connections, ask from within the allocation)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = str(info.get("auth_mode") or "disabled")
    if info.get("auth_token_path"):
        env["RAY_AUTH_TOKEN_PATH"] = str(info["auth_token_path"])
    query = [sys.executable, "-c", _NODES_QUERY, str(info["address"]), SLURM_JOB_LABEL]
    try:
        done = subprocess.run(
            [*query, str(info["job_id"])],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise NotReadyError(
            f"the Ray head at {info['address']} did not answer in {timeout_s:g} s"
        ) from error
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotReadyError(f"asking the Ray head at {info['address']} failed: {last}")
    nodes: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return nodes


# -- down -------------------------------------------------------------------------------------


def run_down(args: argparse.Namespace) -> int:
    """Cancel one of our allocations and wait until Slurm has ended it."""
    job = _squeue(args.job_id)
    if job is None:
        command = [_slurm_tool("squeue"), "--noheader", f"--jobs={args.job_id}", "-o%j"]
        try:
            other = _slurm(command).strip()
        except NotReadyError:
            other = ""
        if other:
            raise ConfigError(
                f"Slurm job {args.job_id} is {other!r}, not a {JOB_NAME} allocation: "
                "cancel it with scancel yourself if you mean to"
            )
        raise ConfigError(
            f"Slurm job {args.job_id} is not queued or running: `continuum hpc status` lists "
            "the allocations there are"
        )
    _slurm([_slurm_tool("scancel"), args.job_id])
    allocation = Allocation(_state_dir(args), args.job_id)
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline:
        job = _squeue(args.job_id)
        if job is None or job["state"] in _ENDED:
            # A joining allocation has no head of its own to remove its head file on the way out.
            allocation.info_path.unlink(missing_ok=True)
            left = allocation.ready_hosts()
            if left:  # Slurm killed them before they could clean up after themselves
                print(
                    f"cancelled Slurm job {args.job_id}; Slurm ended its processes, but the "
                    f"Ray nodes on {', '.join(left)} did not report stopping "
                    f"({allocation.output_path})"
                )
            else:
                print(f"cancelled Slurm job {args.job_id}; its Ray nodes stopped")
            return 0
        time.sleep(0.5)
    raise OperationTimeoutError(
        f"Slurm job {args.job_id} is still {job['state'] if job else '?'} {args.timeout_s:g} s "
        "after scancel: its nodes may be slow to end; `continuum hpc status` shows it"
    )


# -- Slurm ------------------------------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    chosen = args.state_dir or os.environ.get(STATE_DIR_ENV) or Path.home() / ".continuum" / "hpc"
    return Path(chosen).expanduser().resolve()


def _slurm_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NotReadyError(
            f"Slurm's {name} is not on PATH: run `continuum hpc` on the site's login node "
            "(or load its Slurm module)"
        )
    return found


def _slurm(command: list[str], env: dict[str, str] | None = None) -> str:
    """Run one Slurm command and return its stdout; raise ``NotReadyError`` with its stderr."""
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=_SLURM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise NotReadyError(
            f"{Path(command[0]).name} did not answer in {_SLURM_TIMEOUT_S:g} s: is slurmctld up?"
        ) from error
    if done.returncode != 0:
        raise NotReadyError(
            f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout
