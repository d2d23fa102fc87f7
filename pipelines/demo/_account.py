"""The demo's sample account: every sample an edge selected, and where it ended.

Read after the run from durable state only, the edge's and the cloud's, never from live
counters that a restart resets: each agent's outbox keeps a ledger of the samples it took
(selected) and of those that a final refusal ended, and still holds those waiting for a
receipt; the Parquet store holds what was stored, every write of it.  A sample is then

- stored: its id is in the store (a second row of the same id is a duplicate),
- refused: a final refusal ended it at the edge (listed, with the reason),
- waiting: still in the outbox at the end, not yet in the store (listed),
- lost: none of these, which a correct run never shows.

``selected = stored + refused + waiting + lost``; the target is ``lost == 0`` and no
duplicate.  The outbox's own bounds (full, age) would show as lost, named by
``dropped``: a run that meets its targets dropped nothing either.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["sample_account", "store_rows"]

#: Ids listed per node and kind; the counts are always whole.
_LISTED = 20


def store_rows(store_root: Path, tenant: str, pipeline: str) -> dict[str, Counter[int]]:
    """Return, per node, how many rows of each sample seq the store's files hold."""
    from cloud_head.store import SampleStore

    store = SampleStore(store_root)
    rows: dict[str, Counter[int]] = {}
    for path in store.files(tenant, pipeline):
        for (_, node), seqs in store.file_seqs(path).items():
            rows.setdefault(node, Counter()).update(seqs.tolist())
    return rows


def sample_account(store_root: Path, agents: list[tuple[str, str, str, Path]]) -> dict[str, Any]:
    """Account for the samples of each agent: (node, tenant, pipeline, outbox path).

    Returns:
        ``nodes`` (node -> its account), ``totals`` and ``balanced`` (no sample lost or
        stored twice anywhere).
    """
    from edge_agent.outbox import read_ledger

    stores: dict[tuple[str, str], dict[str, Counter[int]]] = {}
    nodes: dict[str, Any] = {}
    totals: Counter[str] = Counter()
    for node, tenant, pipeline, outbox in agents:
        if (tenant, pipeline) not in stores:
            stores[(tenant, pipeline)] = store_rows(store_root, tenant, pipeline)
        rows = stores[(tenant, pipeline)].get(node, Counter())
        ledger = read_ledger(outbox)
        selected = ledger.selected.get(pipeline, 0)
        stored = set(rows)
        refused = ledger.refused.get(pipeline, {})
        waiting = sorted(set(ledger.waiting.get(pipeline, ())) - stored)
        duplicates = sum(count - 1 for count in rows.values())
        lost = selected - len(stored) - len(set(refused) - stored) - len(waiting)
        account: dict[str, Any] = {
            "tenant": tenant,
            "pipeline": pipeline,
            "selected": selected,
            "stored": len(stored),
            "duplicates": duplicates,
            "refused": len(refused),
            "refused_by_reason": dict(Counter(refused.values())),
            "refused_ids": [f"{node}:{s} ({r})" for s, r in sorted(refused.items())[:_LISTED]],
            "waiting": len(waiting),
            "waiting_ids": [f"{node}:{s}" for s in waiting[:_LISTED]],
            "receipt_pending": len(set(ledger.waiting.get(pipeline, ())) & stored),
            "dropped": dict(ledger.dropped.get(pipeline, {})),
            "lost": lost,
        }
        nodes[node] = account
        for key in ("selected", "stored", "duplicates", "refused", "waiting", "lost"):
            totals[key] += account[key]
    balanced = all(a["lost"] == 0 and a["duplicates"] == 0 for a in nodes.values())
    return {"nodes": nodes, "totals": dict(totals), "balanced": balanced}
