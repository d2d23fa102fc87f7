"""``continuum audit verify|export``: check a tenant's audit log, export a model's lineage.

A hash chain alone cannot show that its last records were removed and the head anchor moved
back with them; only the seal (the head signed by the tenant's signer) can. So ``verify``
checks it by default, against the tenant's public key pinned in the tenant registry
(``--root``/tenants), or the one given with ``--public-key``. With neither it says NOT
VERIFIED and fails, unless the operator asks for a check of the chain alone with
``--unsigned-ok``.  Records appended after the last seal (the signer seals every
``seal_interval_s`` while the head runs) are reported, not failed, unless ``--sealed``.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from cloud_head.cli._common import (
    add_credential,
    add_json,
    add_root,
    authorize,
    open_registry,
    operator_command,
    print_json,
    state_dir,
    wants_json,
)
from continuum.cli import EXIT_FAILED, EXIT_OK

#: Exit status when the audit log failed verification: a check that did not pass.
EXIT_TAMPERED = EXIT_FAILED
#: Exit status when the head's signature could not be checked (no key): not a pass either.
EXIT_NOT_VERIFIED = EXIT_FAILED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "audit",
        help="verify a tenant's audit log or export a model's lineage and card",
        description="Check that a tenant's hash-chained audit log has no edited, removed or "
        "reordered record, or write one model version's lineage (JSON) and model card "
        "(Markdown) from the registry and the audit log.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    check = actions.add_parser(
        "verify",
        help="check the tenant's audit log and its seal; exit 1 naming the first bad "
        "record, or NOT VERIFIED without the tenant's public key",
        description="Check the tenant's hash-chained audit log, its head anchor and its seal "
        "(the head as the tenant's signer last signed it), whose signature must verify "
        "against the tenant's public key: the one pinned in the tenant registry under --root, "
        "or --public-key. Exit 1 naming the first bad record (removed sealed records show as "
        "a bad seal); exit 1 with NOT VERIFIED when no key is available, unless --unsigned-ok. "
        "Records after the last seal are reported (the signer seals every seal_interval_s, "
        "default 1 s, while the head runs); --sealed fails on them. --json prints one "
        'document: {"tenant", "ok", "records", "first_bad_seq", "reason", '
        '"signature_checked", "key_source", "sealed_seq", "unsealed_records", '
        '"newest_unsealed_age_s"}; "ok" is true exactly when the exit status is 0.',
    )
    _add_tenant(check)
    add_root(check)
    _add_public_key(check)
    check.add_argument(
        "--unsigned-ok",
        action="store_true",
        help="where no public key is available (no tenant registry under --root, no "
        "--public-key), check the chain and head anchor alone and exit 0 if they hold; such "
        "a check cannot detect that the last records were removed with the head moved back",
    )
    check.add_argument(
        "--sealed",
        action="store_true",
        help="also require the seal to cover the head (no record after the last seal): for a "
        "stopped head, or after waiting one seal interval",
    )
    add_json(check)
    check.set_defaults(run=run_verify)

    export = actions.add_parser(
        "export", help="write one model version's lineage JSON and Markdown model card"
    )
    _add_tenant(export)
    export.add_argument("--pipeline", required=True, help="the model's pipeline")
    export.add_argument("--model", required=True, metavar="VERSION", help="version, e.g. v3")
    export.add_argument(
        "--out", type=Path, default=Path("."), help="directory to write into (default .)"
    )
    export.add_argument(
        "--intended-use", default=None, help="the model's intended use, for the card"
    )
    add_root(export, registry=True)
    _add_public_key(export)
    export.set_defaults(run=run_export)


def _add_tenant(parser: argparse.ArgumentParser) -> None:
    # Required, no default: an audit command never guesses whose records to read.
    parser.add_argument("--tenant", required=True, type=_tenant, help="tenant whose log to read")
    add_credential(parser)


def _tenant(value: str) -> str:
    from continuum.errors import ProtocolError
    from continuum.wire.topics import check_name

    try:
        return check_name(value, "tenant")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_public_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="the tenant's Ed25519 public key (PEM) the log's head anchor must carry a valid "
        "signature by (default: the key pinned in the tenant registry under --root); give it "
        "from a copy the cloud head's operator cannot rewrite for the strongest check",
    )


def _public_key(args: argparse.Namespace) -> tuple[bytes | None, str | None]:
    """Return the key the head must be signed by and where it came from, or (None, None).

    ``--public-key`` first; else the key the tenant registry under ``--root`` pins.

    Raises:
        ConfigError: ``--public-key`` cannot be read, or the registry's key is unusable.
        NotFoundError: the registry does not know the tenant.
    """
    from cloud_head.tenants import TenantRegistry, registry_exists
    from continuum.errors import ConfigError

    path = getattr(args, "public_key", None)
    if path is not None:
        try:
            data: bytes = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --public-key {path}: {exc}") from exc
        return data, f"--public-key {path}"
    tenants = Path(args.root) / "tenants"
    if not registry_exists(tenants):
        return None, None
    return TenantRegistry(tenants).public_key(args.tenant), f"tenant registry {tenants}"


@operator_command
def run_verify(args: argparse.Namespace) -> int:
    """Verify the tenant's log and its seal; print the outcome; 0 only if both hold."""
    from cloud_head.audit import AuditLog

    authorize(args)
    key, key_source = _public_key(args)
    with AuditLog(state_dir(args.root, "audit")) as log:
        result = log.verify(args.tenant, public_key_pem=key)
    unsigned_ok = bool(getattr(args, "unsigned_ok", False))
    not_verified = result.ok and key is None and not unsigned_ok
    tail_refused = result.ok and result.unsealed > 0 and bool(getattr(args, "sealed", False))
    ok = result.ok and not not_verified and not tail_refused
    age = _age_s(result.newest_unsealed_ts)
    tail = _unsealed_note(result.unsealed, age)
    reason = result.reason
    if not_verified:
        reason = (
            f"NOT VERIFIED: {result.reason}, but the seal's signature was not checked: "
            f"no public key for tenant {args.tenant!r} (no tenant registry under {args.root}, "
            "no --public-key), so removed last records cannot be ruled out; give --public-key "
            "FILE, or --unsigned-ok to accept a check of the chain alone"
        )
    elif tail_refused:
        reason = f"{tail}; --sealed requires the seal to cover the head"
    if wants_json(args):
        print_json(
            {
                "tenant": args.tenant,
                "ok": ok,
                "records": result.count,
                "first_bad_seq": result.first_bad_seq,
                "reason": reason,
                "signature_checked": result.signature_checked,
                "key_source": key_source,
                "sealed_seq": result.sealed_seq,
                "unsealed_records": result.unsealed,
                "newest_unsealed_age_s": age,
            }
        )
    elif not_verified or tail_refused:
        print(f"audit log of tenant {args.tenant!r}: FAILED: {reason}")
    elif ok:
        if result.signature_checked:
            signed = f"head signature verified: the seal (key from {key_source})"
        elif key is None:
            signed = "head signature NOT VERIFIED (--unsigned-ok: no key to check it with)"
        else:
            signed = "no records to seal yet"
        print(f"audit log of tenant {args.tenant!r}: OK, {reason}; {signed}")
        if tail:
            print(f"  {tail}")
    else:
        where = (
            f"at record {result.first_bad_seq}"
            if result.first_bad_seq is not None
            else "at its head"
        )
        checked = f" (key from {key_source})" if key_source else ""
        print(
            f"audit log of tenant {args.tenant!r}: FAILED {where} "
            f"({result.count} records read){checked}: {reason}"
        )
    if ok:
        return EXIT_OK
    return EXIT_NOT_VERIFIED if not_verified else EXIT_TAMPERED


def _age_s(ts: str | None) -> float | None:
    """Return how many seconds ago the record stamped ``ts`` (ISO 8601, UTC) was written."""
    if ts is None:
        return None
    try:
        written = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return round(max(0.0, time.time() - written), 3)


def _unsealed_note(unsealed: int, age_s: float | None) -> str:
    """Say plainly what records after the last seal mean ("" when there are none)."""
    if not unsealed:
        return ""
    from cloud_head.settings import CloudSettings

    interval = CloudSettings.model_fields["seal_interval_s"].default
    newest = "" if age_s is None else f", the newest {age_s:.0f} s old"
    return (
        f"{unsealed} records after the last seal{newest}; the signer seals every "
        f"{interval:g} s (seal_interval_s) while the head runs: until sealed, whoever can "
        "write the file could remove them undetected"
    )


@operator_command
def run_export(args: argparse.Namespace) -> int:
    """Write the lineage JSON and the model card of one version; print where."""
    from cloud_head.audit import AuditLog
    from cloud_head.model_card import export_model

    authorize(args)
    key, _ = _public_key(args)
    registry = open_registry(args)
    try:
        with AuditLog(args.root / "audit") as log:
            files = export_model(
                registry,
                log,
                args.tenant,
                args.pipeline,
                args.model,
                args.out,
                intended_use=args.intended_use,
                public_key_pem=key,
            )
    finally:
        registry.close()
    print(f"wrote {files.lineage_json}")
    print(f"wrote {files.model_card_md}")
    return 0
