"""The audit log's hash chain: the one encoding of a record, its hash, the signed head, and the
check of a whole log against them.

Part of ``cloud_head.audit`` (which re-exports the public names): what makes the log
tamper-evident lives here, apart from how records are stored and appended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from continuum.errors import ArtifactError, SpecError
from continuum.signing import sha256_bytes, verify

#: The ``prev_hash`` of a tenant's first record.
GENESIS_HASH = "0" * 64

#: Tag and format version inside every hashed record and signed head.
RECORD_FORMAT = "continuum-audit-v1"
HEAD_TAG = "continuum-audit-head-v1"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one tenant's log.

    ``first_bad_seq`` is the sequence number of the first record that is missing, edited or
    out of place (None when the log is intact, or when only the head anchor is at fault and
    no record can be named); ``reason`` says what was found.  ``signature_checked`` is true
    when the head anchor's signature was verified against the tenant's public key.
    """

    ok: bool
    count: int
    first_bad_seq: int | None
    reason: str
    head_hash: str | None = None
    signature_checked: bool = False


def canonical_json(value: Any) -> str:
    """Return the one JSON text of ``value``: sorted keys, no spaces, no NaN.

    Raises:
        SpecError: ``value`` is not JSON (a NaN, a set, an object).
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise SpecError(f"audit details must be plain JSON: {exc}", field="details") from exc


def record_hash(
    *,
    seq: int,
    ts: str,
    tenant: str,
    actor: str,
    action: str,
    subject: str,
    details: str,
    prev_hash: str,
) -> str:
    """Return the sha256 of a record's canonical encoding; ``details`` is its stored JSON text.

    The details are hashed as stored, not re-parsed, so even a whitespace edit shows.
    """
    encoded = canonical_json(
        {
            "format": RECORD_FORMAT,
            "seq": seq,
            "ts": ts,
            "tenant": tenant,
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev_hash": prev_hash,
        }
    )
    return sha256_bytes(encoded.encode())


def head_message(tenant: str, seq: int, head_hash: str) -> bytes:
    """Return the bytes a head anchor's signature covers."""
    return f"{HEAD_TAG}\n{tenant}\n{seq}\n{head_hash}".encode()


def check_log(
    tenant: str,
    rows: Sequence[tuple[Any, ...]],
    head: tuple[Any, ...] | None,
    public_key_pem: bytes | None,
) -> VerifyResult:
    """Check a tenant's stored records (in ``seq`` order) and head anchor; name the first bad.

    ``public_key_pem``: when given, the head anchor must carry a valid signature by it.
    """
    count = len(rows)
    chained = _check_records(tenant, rows)
    if isinstance(chained, VerifyResult):
        return chained
    if head is None:
        if count:
            return _bad(
                count, None, "the head anchor is missing, so a removed tail cannot be ruled out"
            )
        return VerifyResult(ok=True, count=0, first_bad_seq=None, reason="empty log")
    head_seq, head_hash, signature = head
    if not isinstance(head_seq, int) or not isinstance(head_hash, str):
        return _bad(count, None, "the head anchor is malformed")
    if head_seq > count:
        return _bad(
            count,
            count + 1,
            f"record {count + 1} is missing: the log ends at record {count} but its head anchor "
            f"records {head_seq} (the tail was removed)",
        )
    if head_seq < count:
        return _bad(
            count,
            head_seq + 1,
            f"record {head_seq + 1} is not covered by the head anchor (which ends at "
            f"{head_seq}): it was added outside the audit log",
        )
    if head_seq and chained[head_seq] != head_hash:
        return _bad(count, head_seq, f"record {head_seq}'s hash differs from the head anchor's")
    checked = False
    if public_key_pem is not None:
        if signature is None:
            return _bad(count, None, "the head anchor is not signed, but a public key was given")
        try:
            verify(public_key_pem, head_message(tenant, head_seq, head_hash), signature)
        except ArtifactError as exc:
            return _bad(count, None, f"the head anchor's signature does not verify: {exc}")
        checked = True
    return VerifyResult(
        ok=True,
        count=count,
        first_bad_seq=None,
        reason=f"{count} records intact, chain and head anchor match",
        head_hash=head_hash,
        signature_checked=checked,
    )


def _check_records(tenant: str, rows: Sequence[tuple[Any, ...]]) -> dict[int, str] | VerifyResult:
    """Walk the chain; return each record's hash by ``seq``, or the first bad record's result."""
    count = len(rows)
    prev = GENESIS_HASH
    hashes: dict[int, str] = {}
    for expected, row in enumerate(rows, start=1):
        seq, ts, owner, actor, action, subject, details, prev_hash, stored = row
        if not isinstance(seq, int) or not all(
            isinstance(v, str) for v in (ts, owner, actor, action, subject, details, prev_hash)
        ):
            return _bad(
                count, expected, f"record {expected} is malformed (a field has the wrong type)"
            )
        if seq != expected:
            return _bad(
                count,
                expected,
                f"record {expected} is missing: the record after {expected - 1} is {seq} "
                "(removed, or the log was reordered)",
            )
        if owner != tenant:
            return _bad(count, seq, f"record {seq} belongs to tenant {owner!r}, not {tenant!r}")
        computed = record_hash(
            seq=seq,
            ts=ts,
            tenant=owner,
            actor=actor,
            action=action,
            subject=subject,
            details=details,
            prev_hash=prev_hash,
        )
        if computed != stored:
            return _bad(
                count,
                seq,
                f"record {seq} does not match its hash: a field was edited, or the record "
                "was moved from another position",
            )
        if prev_hash != prev:
            return _bad(
                count,
                seq,
                f"record {seq} does not chain onto record {seq - 1} (prev_hash differs): a "
                "record before it was removed, rewritten or reordered",
            )
        prev = stored
        hashes[seq] = stored
    return hashes


def _bad(count: int, seq: int | None, reason: str) -> VerifyResult:
    return VerifyResult(ok=False, count=count, first_bad_seq=seq, reason=reason)
