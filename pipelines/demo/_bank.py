"""The fraud scenario's residency evidence: no raw customer identifier reached the store.

The bank's terminals send each transaction with the customer's IBAN (confidential: hashed
with the tenant's salt before it leaves Luxembourg) and name (restricted: dropped at the
branch).  The store is in Frankfurt, so this reads every Parquet file the fraud pipeline
wrote there and checks what the policy promises: no name column, every IBAN a pseudonym,
and no raw IBAN or customer name in any text or field column of any row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["bank_store_evidence"]


def bank_store_evidence(store_root: Path, tenant: str, pipeline: str) -> dict[str, Any]:
    """Return what the fraud pipeline's store files hold, and whether the policy ``held``."""
    from pipelines.demo._tenants import scan_store
    from pipelines.fraud.transactions import make_bank

    bank = make_bank()
    raw = set(bank.ibans) | set(bank.names)
    scan = scan_store(store_root, tenant, pipeline)
    found = {value for _, value in scan.values if value in raw}
    ibans = scan.of("field_iban")
    hashed = bool(ibans) and all(v.startswith("hmac-sha256:") for v in ibans)
    columns = scan.columns
    return {
        "files": scan.files,
        "rows": scan.rows,
        "field_columns": sorted(c for c in columns if c.startswith("field_")),
        "name_column": "field_customer_name" in columns,
        "raw_values_found": sorted(found)[:10],
        "iban_pseudonymised": hashed,
        "held": scan.rows > 0 and "field_customer_name" not in columns and not found and hashed,
    }
