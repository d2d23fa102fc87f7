"""Ask an allocation's own Ray cluster what runs there, as a driver of that cluster.

Run as a child process (the test process may be a driver of the session's other Ray cluster):
``python _ray_probe.py ADDRESS``, with ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH`` set. Prints
one JSON document: every node's name, liveness and labels, and the labels of the node on which a
task placed with ``label_selector={"continuum.io/tier": "hpc"}`` ran.
"""

from __future__ import annotations

import json
import sys

import ray


@ray.remote(num_cpus=1)
def _where() -> str:
    return ray.get_runtime_context().get_node_id()


def main(address: str) -> None:
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    nodes = {
        n["NodeID"]: {"name": n["NodeName"], "alive": n["Alive"], "labels": n.get("Labels", {})}
        for n in ray.nodes()
    }
    ran_on = ray.get(
        _where.options(label_selector={"continuum.io/tier": "hpc"}).remote(), timeout=60
    )
    print(json.dumps({"nodes": list(nodes.values()), "task_node": nodes[ran_on]}))


if __name__ == "__main__":
    main(sys.argv[1])
