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
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.fraud.transactions import make_bank

    bank = make_bank()
    raw = set(bank.ibans) | set(bank.names)
    files = sorted((store_root / f"tenant={tenant}" / f"pipeline={pipeline}").rglob("*.parquet"))
    columns: set[str] = set()
    rows = 0
    ibans: list[str] = []
    found: set[str] = set()
    for path in files:
        table = pq.read_table(path)
        columns |= set(table.column_names)
        rows += table.num_rows
        for name in table.column_names:
            kind = table.schema.field(name).type
            text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
            if not (text or name.startswith("field_")):
                continue  # the tensor, the numbers
            for value in table.column(name).to_pylist():
                if value is None:
                    continue
                shown = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                if name == "field_iban":
                    ibans.append(shown)
                if shown in raw:
                    found.add(shown)
    hashed = bool(ibans) and all(v.startswith("hmac-sha256:") for v in ibans)
    return {
        "files": len(files),
        "rows": rows,
        "field_columns": sorted(c for c in columns if c.startswith("field_")),
        "name_column": "field_customer_name" in columns,
        "raw_values_found": sorted(found)[:10],
        "iban_pseudonymised": hashed,
        "held": rows > 0 and "field_customer_name" not in columns and not found and hashed,
    }
