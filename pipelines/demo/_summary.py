"""The demo's printed summary: the figures a user checks first, and each target met or missed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["print_summary"]


def _print_account(console: Any, account: dict[str, Any]) -> None:
    """Print where every selected sample ended, per node."""
    if not account:
        return
    from rich.table import Table

    table = Table(title="sample account: every sample the edge selected, and where it ended")
    for column in (
        "node",
        "selected",
        "stored once",
        "duplicates",
        "refused (final)",
        "in outbox",
        "lost",
    ):
        table.add_column(column, justify="left" if column == "node" else "right")
    for node, a in sorted(account["nodes"].items()):
        table.add_row(
            node,
            str(a["selected"]),
            str(a["stored"]),
            str(a["duplicates"]),
            str(a["refused"]),
            str(a["waiting"]),
            str(a["lost"]),
        )
    totals = account["totals"]
    table.add_row(
        "all",
        *(
            str(totals.get(k, 0))
            for k in ("selected", "stored", "duplicates", "refused", "waiting", "lost")
        ),
    )
    console.print(table)
    for node, a in sorted(account["nodes"].items()):
        if a["refused_ids"]:
            console.print(f"  {node} refused for good: {', '.join(a['refused_ids'])}")
        if a["waiting_ids"]:
            console.print(f"  {node} still in its outbox: {', '.join(a['waiting_ids'])}")
        if a["dropped"]:
            console.print(f"  [red]{node} dropped by its outbox's bounds: {a['dropped']}[/]")


def _print_policy(console: Any, policy: dict[str, Any]) -> None:
    """Print the residency and tenancy decisions the run took, and their evidence."""
    if not policy:
        return
    console.print(
        f"residency policy {policy.get('file')}; store labels {policy.get('store_labels')}"
    )
    refused = policy.get("refused_deploy") or {}
    if refused:
        verdict = "refused at deploy" if refused.get("refused") else "NOT refused"
        console.print(
            f"  {refused.get('tenant')}/{refused.get('pipeline')} "
            f"({refused.get('data_class', '?')}): {verdict}: {refused.get('message', '')}"
        )
    for node, plan in (policy.get("uplink_plans") or {}).items():
        console.print(f"  uplink plan of {node}: {plan}")
    for pipeline, store in (policy.get("store") or {}).items():
        if "iban_pseudonymised" in store:  # the fraud scenario's bank
            console.print(
                f"  store of {pipeline}: {store['rows']} rows in {store['files']} files; field "
                f"columns {store['field_columns']}; customer name stored: "
                f"{'yes' if store['name_column'] or store['raw_values_found'] else 'no'}; "
                f"IBAN pseudonymised: {'yes' if store['iban_pseudonymised'] else 'no'}"
            )
            continue
        console.print(
            f"  store of {pipeline}: {store['rows']} rows in {store['files']} files; field "
            f"columns {store['field_columns']}; patient id stored: "
            f"{'yes' if store['patient_id_column'] or store['raw_values_found'] else 'no'}; "
            f"technician pseudonymised: {'yes' if store['technician_pseudonymised'] else 'no'}"
        )
    isolation = policy.get("isolation") or {}
    if isolation.get("checked"):
        console.print(
            f"  tenant isolation at the broker: {isolation.get('intruder', 'medica')} "
            f"{'could' if isolation['other_tenant_read_ours'] else 'could not'} read acme's "
            f"topics and {'could' if isolation['other_tenant_wrote_ours'] else 'could not'} "
            "write them"
        )
    elif isolation:
        console.print(f"  tenant isolation not checked: {isolation.get('why')}")
    _print_node_isolation(console, policy.get("node_isolation") or {})
    for tenant, audit in (policy.get("audit") or {}).items():
        console.print(
            f"  audit log of {tenant}: {audit.get('records')} records, "
            f"{'verified' if audit.get('verified') else 'NOT verified'}"
            + (" (signed head checked)" if audit.get("signature_checked") else "")
            + f"; {audit.get('by_action', {})}"
        )


def _print_node_isolation(console: Any, within: dict[str, Any]) -> None:
    """Print the row "isolation within a tenant": what one node's identity tried as another."""
    if not within:
        return
    if not within.get("checked"):
        console.print(f"  isolation within a tenant not checked: {within.get('why')}")
        return
    attempts = within.get("attempts") or {}
    allowed = [name for name, refused in attempts.items() if not refused]
    verdict = (
        f"[red]the broker let through: {', '.join(allowed)}[/]"
        if allowed
        else f"every one refused ({', '.join(attempts)})"
    )
    console.print(
        f"  isolation within a tenant: {within.get('intruder')} acting as node "
        f"{within.get('target')}: {verdict}"
        + ("" if within.get("control_delivered") else "; [red]its own message did not arrive[/]")
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_live_and_reserved(console: Any, report: dict[str, Any]) -> None:
    """Print per agent the live accuracy beside the reserved-split one, and when drift was seen.

    Live accuracy is measured on the frames the camera showed; a model that memorised frames
    it was retrained on scores well there and not on the reserved split: the gap shows it.
    """
    from rich.table import Table

    metric = report.get("metric") or {"reserved": "accuracy", "live": "accuracy"}
    table = Table(
        title=f"live {metric['live']} ({report.get('records', 'frames')} the source showed) "
        f"beside reserved-split {metric['reserved']}"
    )
    for column in (
        "agent",
        "serving",
        "live (last 5 windows)",
        "reserved split",
        "gap",
        "drift seen",
    ):
        table.add_column(column)
    for node, agent in sorted(report["agents"].items()):
        live, reserved = agent.get("live_accuracy_at_end"), agent.get("reserved_accuracy_at_end")
        gap = None if live is None or reserved is None else live - reserved
        detection = agent.get("drift_detection") or {}
        seen = "-"
        if agent.get("drifted_camera"):
            by_signal = detection.get("by_signal") or {}
            seen = (
                "NOT seen"
                if detection.get("first_s") is None
                else f"after {detection['first_s']:.0f} s ("
                + ", ".join(
                    f"{k} {v:.0f} s" for k, v in sorted(by_signal.items(), key=lambda i: i[1])
                )
                + ")"
            )
        if detection.get("false_alarm_windows"):
            seen += f"; {detection['false_alarm_windows']} false alarm window(s)"
        table.add_row(
            node,
            str(agent.get("serving_at_end") or "-"),
            _fmt(live),
            _fmt(reserved),
            "n/a" if gap is None else f"{gap:+.3f}",
            seen,
        )
    console.print(table)


def print_summary(console: Any, report: dict[str, Any]) -> None:
    """Print the figures a user checks first, and whether each target was met."""
    from rich.table import Table

    metric = (report.get("metric") or {}).get("reserved", "accuracy")
    records = report.get("records", "frames")
    table = Table(title=f"{metric} on the reserved test split (never streamed or uplinked)")
    for column in (
        "site",
        "condition",
        "before drift",
        "right after drift",
        "after recovery",
        "s to recover",
    ):
        table.add_column(column)
    for name, site in sorted(report["sites"].items()):
        table.add_row(
            name,
            "drifted" if site["drifted_camera"] else "clean",
            _fmt(site.get("accuracy_before_drift")),
            _fmt(site.get("accuracy_after_drift")),
            _fmt(site.get("accuracy_after_recovery")),
            "-"
            if site.get("seconds_to_recovery") is None
            else f"{site['seconds_to_recovery']:.0f}",
        )
    console.print(table)
    if report["drift"].get("frames"):
        console.print(f"{records}: {report['drift']['frames']}")
    _print_live_and_reserved(console, report)
    share = report.get("uplink_share")
    console.print(
        f"{records} uplinked: {report['uplinked']} of {report['frames']} "
        f"({'n/a' if share is None else f'{share:.1%}'})"
    )
    for version, scores in report["versions"].items():
        console.print(
            f"  model {version}: {metric} clean {scores['clean']:.3f}, {report['drift']['kind']} "
            f"{scores['drifted']:.3f} ({scores['status']})"
        )
    for event in report["rollout"].get("history", []):
        console.print(f"  rollout: {event}")
    for tenant, info in report.get("tenants", {}).items():
        console.print(
            f"tenant {tenant} ({info['pipeline']}): {info['uplinked']} of {info['frames']} frames "
            "uplinked, side by side on the same broker, cluster and store"
        )
    _print_policy(console, report.get("policy") or {})
    for fault in report.get("faults", []):
        console.print(
            f"  fault at {fault['t']:.0f} s: {fault['kind']} on {fault['target']}"
            + ("" if fault.get("ok") else f" [red]NOT injected: {fault.get('error')}[/]")
        )
    for restart in report.get("restarts", []):
        console.print(
            f"  restarted at {restart['t']:.0f} s: {restart['service']} {restart['detail']}"
        )
    _print_account(console, report.get("account") or {})
    if report.get("interrupted"):
        console.print("  [yellow]the run was interrupted: targets are not judged[/]")
    else:
        for name, ok in report["targets"].items():
            console.print(f"  [{'green' if ok else 'red'}]{'ok ' if ok else 'MISS'}[/] {name}")
    console.print(f"Ray dashboard was at {report['dashboard']}")
    console.print(f"report: {Path(report['options']['workdir']) / 'report.json'} and report.png")
