"""The audit log's hash chain: the one encoding of a record, its hash, the seal (the signed
head), and the check of a whole log, or of the records since a seal, against them.

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
    out of place (None when the log is intact, or when only the head anchor or the seal is at
    fault and no record can be named); ``reason`` says what was found.  ``signature_checked``
    is true when the seal's signature was verified against the tenant's public key.
    ``sealed_seq`` is the last record the seal covers (None: no seal); ``unsealed`` counts the
    records after it, the newest of them stamped ``newest_unsealed_ts``: the signer seals
    every ``seal_interval_s`` while the head runs, and until then whoever can write the file
    could remove them undetected.
    """

    ok: bool
    count: int
    first_bad_seq: int | None
    reason: str
    head_hash: str | None = None
    signature_checked: bool = False
    sealed_seq: int | None = None
    unsealed: int = 0
    newest_unsealed_ts: str | None = None


@dataclass(frozen=True)
class Seal:
    """The signer's signature of the head anchor at ``seq`` (``head_message``): every record up
    to ``seq`` is fixed by it.  ``sealed_at``: Unix seconds (None: a log from before seals,
    whose signed head is read as its seal)."""

    seq: int
    hash: str
    signature: str
    key_fingerprint: str | None = None
    sealed_at: float | None = None


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


def check_chain(
    tenant: str, rows: Sequence[tuple[Any, ...]], *, after: tuple[int, str] | None = None
) -> VerifyResult | None:
    """Check that ``rows`` (in ``seq`` order) chain on from ``after`` (a sealed record's seq and
    hash; None: from the genesis); return the first bad record's result, or None if intact."""
    first, prev = (1, GENESIS_HASH) if after is None else (after[0] + 1, after[1])
    chained = _check_records(tenant, rows, first=first, prev=prev)
    return chained if isinstance(chained, VerifyResult) else None


def check_log(
    tenant: str,
    rows: Sequence[tuple[Any, ...]],
    head: tuple[Any, ...] | None,
    seal: Seal | None,
    public_key_pem: bytes | None,
) -> VerifyResult:
    """Check a tenant's stored records (in ``seq`` order), head anchor and seal; name the first
    bad.

    ``public_key_pem``: when given, the log (unless empty) must carry a seal whose signature
    verifies against it; records after the seal are reported (``unsealed``), not failed.
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
    head_seq, head_hash = head[0], head[1]
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
    sealed = _check_seal(tenant, count, chained, seal, public_key_pem)
    if isinstance(sealed, VerifyResult):
        return sealed
    unsealed = count - (0 if seal is None else seal.seq)
    newest = str(rows[-1][1]) if unsealed and rows else None
    covered = (
        "no seal yet"
        if seal is None
        else f"sealed up to record {seal.seq}"
        + (f", {unsealed} after the seal" if unsealed else ", the seal covers the head")
    )
    return VerifyResult(
        ok=True,
        count=count,
        first_bad_seq=None,
        reason=f"{count} records intact, chain and head anchor match, {covered}",
        head_hash=head_hash,
        signature_checked=sealed,
        sealed_seq=None if seal is None else seal.seq,
        unsealed=unsealed,
        newest_unsealed_ts=newest,
    )


def _check_seal(
    tenant: str,
    count: int,
    chained: dict[int, str],
    seal: Seal | None,
    public_key_pem: bytes | None,
) -> bool | VerifyResult:
    """Check the seal against the chain (and the key, when given); return whether its
    signature was checked, or the failure."""
    if seal is None:
        if public_key_pem is not None and count:
            return _bad(
                count,
                None,
                "the log carries no seal (no signed head), but a public key was given: the "
                "signer never sealed it, or the seal was removed",
            )
        return False
    if seal.seq > count:
        return _bad(
            count,
            count + 1,
            f"record {count + 1} is missing: the log ends at record {count} but its seal covers "
            f"up to record {seal.seq} (sealed records were removed)",
        )
    if seal.seq < 1 or chained[seal.seq] != seal.hash:
        return _bad(
            count,
            seal.seq if seal.seq >= 1 else None,
            f"record {seal.seq}'s hash differs from the one its seal signed: records the seal "
            "covers were rewritten",
        )
    if public_key_pem is None:
        return False
    try:
        verify(public_key_pem, head_message(tenant, seal.seq, seal.hash), seal.signature)
    except ArtifactError as exc:
        return _bad(count, None, f"the seal's signature does not verify: {exc}")
    return True


def _check_records(
    tenant: str,
    rows: Sequence[tuple[Any, ...]],
    *,
    first: int = 1,
    prev: str = GENESIS_HASH,
) -> dict[int, str] | VerifyResult:
    """Walk the chain from record ``first`` (whose ``prev_hash`` must be ``prev``); return
    each record's hash by ``seq``, or the first bad record's result."""
    count = len(rows)
    hashes: dict[int, str] = {}
    for expected, row in enumerate(rows, start=first):
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
