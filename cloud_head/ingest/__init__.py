"""Ingest: uplinked samples and feedback from MQTT into the sample and label stores.

``IngestService`` is the protocol logic: it checks each message against the tenant, the known
pipelines and their input schema, drops samples it has already stored (sample ids kept in
SQLite), writes the store durably and records labels; it counts every refusal by reason and
never raises. The seen-id database also lists the store files whose ids it holds; a file
written before a crash could record its ids is found and adopted before that pipeline's
next write, so a redelivered message is not stored twice. ``IngestWorker`` is the thin MQTT
runner around it: a persistent MQTT 5 session on a shared subscription, with each message
acknowledged only after its durable write.

Given a residency policy, ingest enforces it again (defence in depth, DESIGN.md §6): a batch
from a node the fleet registry does not know (``unknown_node``), or whose class the store may
not hold (``policy``), is refused, as is a batch carrying a field the edge should have
dropped or hashed (``policy_field``).  Final refusals and a summary of what each flush
stored go to the tenant's audit log; the ``samples_per_day`` quota holds back samples beyond
it (``quota``).

Final and temporary refusals.  The edge outbox keeps each sample until a receipt
(``ctm/{tenant}/nodes/{node}/stored``) names it, and sends it again when none came within
its ``resend_unconfirmed_s``; so a receipt is what ends a sample at the edge, and ingest
sends one only for what is done with for good:

- *stored* (or already stored): the receipt's ``seqs``.
- *refused for good* (``FINAL_REASONS``, outcome "rejected"): a resend would be refused the
  same way, whatever changes in the fleet, the quota or the store.  The batch is malformed
  (it does not decode, or names another node, pipeline or tenant than its topic), off the
  pipeline's declared schema (``schema_mismatch``) or class (``data_class_mismatch``), empty
  or with an impossible seq, or forbidden by the residency policy (``policy``: the node may
  not process, or the store may not hold, its class; ``policy_field``: it carries a field
  the edge must drop or hash).  A batch that decoded on its own node's topic gets a receipt
  naming its seqs under ``refused`` with the reason: the node removes them from its outbox,
  counts them (``continuum_edge_samples_refused_total``) and records their ids; ingest counts
  them (``refused_samples``) and writes every such refusal with the sample ids
  (``node:first-last``) to the audit log.  A batch that did not decode cannot be named and
  gets no receipt (the node sends it again until its outbox TTL).
- *refused for now* (``TEMPORARY_REASONS``, outcome "held"): it may pass later.  The node is
  not in the fleet registry (not yet, or forgotten: ``unknown_node``) or the registry cannot
  be read (``fleet_unavailable``); the pipeline is not deployed (``unknown_pipeline``: a
  cloud head starting up); the day's ``samples_per_day`` is spent (``quota``: tomorrow it
  fits); the store cannot take the batch (``unstorable``) or ingest's checks failed
  (``internal_error``): a fix can make either pass.  The message is acknowledged to the
  broker (a redelivery loop would only burn the broker and ingest) but gets no receipt, so
  the node keeps the samples and sends them again, bounded by its outbox bytes and TTL.
  Held batches are counted by reason and logged once per reason until that reason's
  batches are stored again.  A batch of a node not known yet is first *deferred* (parked
  unacknowledged in the broker session) for ``node_grace_s``, since an agent's first
  batches can overtake its status; past the grace, or past ``_MAX_PENDING_NODES`` unknown
  nodes or ``_MAX_PARKED`` parked messages, it is held, never refused for good.
- a write that *failed* (the store or the seen index unavailable) is not acknowledged at
  all; the worker retries the group with backoff and the broker redelivers after a restart.

The rooms: ``_validation`` (topic, payload, schema and class), ``_residency`` (the second
residency check and its bounded caches), ``_dedup`` (seen ids, adoption of unrecorded
files), ``_quota`` (the daily samples quota), ``_writes`` (the durable write of a group),
``_audit`` (the audit summary, final refusals with their ids), ``_refusals`` (final or
temporary), ``_outcome`` (what became of each message, counted), ``_service``
(``IngestService``), ``_worker`` (``IngestWorker``) and ``_site`` (``SiteIngest``: the same
ingest on a site's broker, writing the site's own stores, for a pipeline trained federated).
"""

from __future__ import annotations

from cloud_head.ingest._audit import MAX_AUDIT_RANGES
from cloud_head.ingest._outcome import Outcome, OutcomeKind
from cloud_head.ingest._refusals import (
    FINAL_REASONS,
    POLICY_REASONS,
    TEMPORARY_REASONS,
    is_final,
)
from cloud_head.ingest._residency import NODE_GRACE_S
from cloud_head.ingest._service import IngestService
from cloud_head.ingest._site import SiteIngest, SiteIngestActor
from cloud_head.ingest._worker import IngestWorker

__all__ = [
    "FINAL_REASONS",
    "MAX_AUDIT_RANGES",
    "NODE_GRACE_S",
    "POLICY_REASONS",
    "TEMPORARY_REASONS",
    "IngestService",
    "IngestWorker",
    "Outcome",
    "OutcomeKind",
    "SiteIngest",
    "SiteIngestActor",
    "is_final",
]
