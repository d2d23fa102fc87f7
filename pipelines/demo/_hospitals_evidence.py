"""The evidence that no restricted sample left its site: stores, brokers, files, Ray processes.

Checked by content, not by trusting names: every measurement row a hospital owns (its
reference, stream, recalibrated stream and reserved test rows, each as the 120 float32 bytes
that travel) is looked for

* in every sample store: the central one (must hold none of any site's rows) and each
  site's (must hold none of another site's), read through ``SampleStore``;
* in every broker's persistence file (retained messages and queued QoS 1 messages): the
  central broker's must hold none, each site broker's none of another site's;
* in every other file the central head wrote (registry, audit logs, the rounds' state,
  controller databases): none;
* and the Ray tasks and actors that read a site's data (each site's training and evaluation
  tasks and its ingest, on that site's node; Ray Data's tasks inside them, on a site's node)
  must never have run on the cloud head or another site's node.

``rows_by_site`` gives the rows; ``inspect_files`` the file checks; ``ray_placement`` the
process checks (call it while Ray runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inspect_files", "ray_placement", "rows_by_site"]


def rows_by_site(seed: int = 0) -> dict[str, set[bytes]]:
    """Return every row each hospital owns, as the bytes of its 30 float32 values."""
    from pipelines.hospitals.data import DRIFT_SITE, SITES, load_splits, recalibrated

    splits = load_splits(seed)
    out: dict[str, set[bytes]] = {}
    for site in SITES:
        arrays = [splits.reference[site].x, splits.stream[site].x, splits.test[site].x]
        if site == DRIFT_SITE:
            arrays += [recalibrated(a) for a in list(arrays)]
        out[site] = {np.ascontiguousarray(row, dtype="<f4").tobytes() for a in arrays for row in a}
    return out


def _store_rows(root: Path, tenant: str, pipeline: str) -> list[bytes]:
    from cloud_head.store import SampleStore

    if not root.exists():
        return []
    store = SampleStore(root)
    if not store.dates(tenant, pipeline):
        return []
    tensors = store.read(tenant, pipeline, columns=["tensor"]).column("tensor").to_pylist()
    return [
        bytes(t) if isinstance(t, bytes | bytearray) else np.asarray(t, "<f4").tobytes()
        for t in tensors
    ]


def _found(data: bytes, rows: Iterable[bytes]) -> int:
    return sum(1 for row in rows if row in data)


def inspect_files(
    workdir: Path,
    *,
    tenant: str,
    pipeline: str,
    site_dirs: Mapping[str, Path],
    site_brokers: Mapping[str, Path],
    central_broker: Path,
    rows: Mapping[str, set[bytes]],
) -> dict[str, Any]:
    """Look for every site's rows where they may not be; return what was found where.

    ``site_dirs`` are the sites' data roots, ``site_brokers`` and ``central_broker`` the
    brokers' persistence files.  ``leaks`` lists each place holding a row it may not hold
    (empty: the data stayed at its sites); ``stored_at_site`` counts each site's own rows in
    its own store (the loop did store them, where they belong).
    """
    every = set().union(*rows.values())
    leaks: list[dict[str, Any]] = []
    stored_at_site: dict[str, int] = {}
    central_rows = _store_rows(workdir / "cloud" / "store", tenant, pipeline)
    hits = sum(1 for r in central_rows if r in every)
    if hits:
        leaks.append({"where": "central sample store", "rows": hits})
    for site, root in site_dirs.items():
        held = _store_rows(root / "samples", tenant, pipeline)
        stored_at_site[site] = sum(1 for r in held if r in rows[site])
        foreign = sum(1 for r in held if r in every - rows[site])
        if foreign:
            leaks.append({"where": f"{site}'s store", "rows": foreign})
    brokers = {"central broker": (central_broker, every)}
    for site, path in site_brokers.items():
        brokers[f"{site}'s broker"] = (path, every - rows[site])
    scanned_brokers = {}
    for name, (path, forbidden) in brokers.items():
        data = path.read_bytes() if path.is_file() else b""
        scanned_brokers[name] = len(data)
        hits = _found(data, forbidden)
        if hits:
            leaks.append({"where": f"{name} persistence ({path.name})", "rows": hits})
    scanned_files = 0
    for path in sorted((workdir / "cloud").rglob("*")):
        if not path.is_file() or (workdir / "cloud" / "store") in path.parents:
            continue
        scanned_files += 1
        hits = _found(path.read_bytes(), every)
        if hits:
            leaks.append({"where": str(path.relative_to(workdir)), "rows": hits})
    return {
        "leaks": leaks,
        "stored_at_site": stored_at_site,
        "central_store_rows": len(central_rows),
        "broker_bytes_scanned": scanned_brokers,
        "head_files_scanned": scanned_files,
        "rows_looked_for": len(every),
    }


def ray_placement(site_nodes: Mapping[str, str], dashboard: str) -> dict[str, Any]:
    """Return where every Ray task and actor that touches a site's rows ran (state API).

    ``site_nodes`` maps each site to its Ray node id; ``dashboard`` is the cluster's
    dashboard URL (the state API's address).  A site's round tasks (``federated-train:SITE``,
    ``federated-gate:SITE``) and its ingest actor (``site-ingest-SITE``) must run on that
    site's node; every other plain task (Ray Data's block tasks inside a site's training)
    on some site's node: the central services are actors, they run no plain task.
    ``off_site`` lists what ran elsewhere: it must be empty.
    """
    from ray.util.state import list_actors, list_tasks

    sites_of = {node: site for site, node in site_nodes.items()}
    ran: dict[str, dict[str, int]] = {}
    off_site: list[dict[str, Any]] = []

    def note(kind: str, name: str, node: str | None, must_be: str | None) -> None:
        where = sites_of.get(node or "", "not a site's node")
        ran.setdefault(kind, {}).setdefault(where, 0)
        ran[kind][where] += 1
        if where != (must_be or where) or where == "not a site's node":
            off_site.append({"name": name, "node_id": node, "site": where, "expected": must_be})

    tasks = list_tasks(
        address=dashboard,
        filters=[("type", "=", "NORMAL_TASK")],
        limit=10_000,
        raise_on_missing_output=False,
    )
    for task in tasks:
        name = task.name or ""
        if task.node_id is None:  # never scheduled: it ran nowhere
            continue
        if name.startswith("federated-") and ":" in name:
            kind, site = name.split(":", 1)
            note(kind, name, task.node_id, site)
        else:
            note("other plain tasks (Ray Data)", name, task.node_id, None)
    actors = list_actors(
        address=dashboard,
        filters=[("class_name", "=", "SiteIngestActor")],
        limit=1_000,
        raise_on_missing_output=False,
    )
    for actor in actors:
        site = (actor.name or "").removeprefix("site-ingest-")
        note("site ingest", actor.name or "", actor.node_id, site)
    return {"ran": ran, "off_site": off_site, "site_nodes": dict(site_nodes)}
