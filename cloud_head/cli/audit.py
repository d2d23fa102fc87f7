"""``continuum audit verify|export``: check a tenant's audit log, export a model's lineage."""

from __future__ import annotations

import argparse
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
from continuum.cli import EXIT_FAILED

#: Exit status when the audit log failed verification: a check that did not pass.
EXIT_TAMPERED = EXIT_FAILED


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
        help="check the tenant's audit log; exit 1 naming the first bad record",
        description="Check the tenant's hash-chained audit log and its head anchor; exit 1 "
        "naming the first bad record. --json prints one document: "
        '{"tenant", "ok", "records", "first_bad_seq", "reason", "signature_checked"}.',
    )
    _add_tenant(check)
    add_root(check)
    _add_public_key(check)
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
        help="the tenant's Ed25519 public key (PEM, e.g. <demo>/keys/TENANT.pub): the log's "
        "head anchor must then carry its valid signature",
    )


def _public_key(args: argparse.Namespace) -> bytes | None:
    from continuum.errors import ConfigError

    if args.public_key is None:
        return None
    try:
        data: bytes = args.public_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --public-key {args.public_key}: {exc}") from exc
    return data


@operator_command
def run_verify(args: argparse.Namespace) -> int:
    """Verify the tenant's log; print the outcome; 0 if intact, 1 naming the first bad record."""
    from cloud_head.audit import AuditLog

    authorize(args)
    key = _public_key(args)
    with AuditLog(state_dir(args.root, "audit")) as log:
        result = log.verify(args.tenant, public_key_pem=key)
    if wants_json(args):
        print_json(
            {
                "tenant": args.tenant,
                "ok": result.ok,
                "records": result.count,
                "first_bad_seq": result.first_bad_seq,
                "reason": result.reason,
                "signature_checked": result.signature_checked,
            }
        )
        return 0 if result.ok else EXIT_TAMPERED
    if result.ok:
        signed = (
            "head signature verified"
            if result.signature_checked
            else "head signature not checked (pass --public-key)"
        )
        print(f"audit log of tenant {args.tenant!r}: OK, {result.reason}; {signed}")
        return 0
    where = (
        f"at record {result.first_bad_seq}" if result.first_bad_seq is not None else "at its head"
    )
    print(
        f"audit log of tenant {args.tenant!r}: FAILED {where} "
        f"({result.count} records read): {result.reason}"
    )
    return EXIT_TAMPERED


@operator_command
def run_export(args: argparse.Namespace) -> int:
    """Write the lineage JSON and the model card of one version; print where."""
    from cloud_head.audit import AuditLog
    from cloud_head.model_card import export_model

    authorize(args)
    key = _public_key(args)
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
