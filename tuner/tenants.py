"""Per-tenant scorecard: what each tenant of a multi-tenant workload got from a policy.

The trial scorecard (``tuner.scorecard.Scorecard``) summarises fairness in three numbers (service
ratio, VTC's max service gap, Jain's index). A user deciding between two policies also wants to see
WHO pays: one row per tenant with its share of the service (the fixed yardstick, 1 × prompt +
2 × output tokens, ``SERVICE_WEIGHTS``), its latencies and its SLO attainment. ``servetune tune``
logs this table (``tenants.csv``) with the records of its best trials, and ``servetune report``
shows it for the best policy against the defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tuner.scorecard import latencies_ms, request_service, slo_met

TENANT_COLUMNS = ("tenant", "requests", "completed", "rejected", "service_share", "ttft_p50_ms", "ttft_p99_ms",
                  "tpot_p50_ms", "tpot_p99_ms", "slo_attainment")
"""Columns of :func:`tenant_table`: counts; the tenant's fraction of all weighted service delivered
(0-1); TTFT / TPOT percentiles of its completed requests (ms, NaN when none); the fraction of its
requests served within both SLOs (0-1)."""


def _pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else float("nan")


def tenant_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per tenant (sorted by name), columns ``TENANT_COLUMNS``."""
    ttft, tpot, _ = latencies_ms(records)
    done = np.isfinite(records["finish_s"].to_numpy(float)) & ~records["failed"].to_numpy(bool)
    rejected = records["rejected"].to_numpy(bool)
    met = slo_met(records)
    service = request_service(records)
    total = float(service.sum())
    tenants = records["tenant"].to_numpy(object)
    rows = []
    for name in sorted(set(tenants.tolist())):
        m = tenants == name
        rows.append((name, int(m.sum()), int((m & done).sum()), int((m & rejected).sum()),
                     float(service[m].sum()) / total if total > 0 else 0.0,
                     _pct(ttft[m & done], 50), _pct(ttft[m & done], 99),
                     _pct(tpot[m & done], 50), _pct(tpot[m & done], 99), float(met[m].mean())))
    return pd.DataFrame(rows, columns=list(TENANT_COLUMNS))


def write_tenant_csv(records: pd.DataFrame, path: Path) -> bool:
    """Write ``tenant_table`` to ``path`` (CSV) when the run has several tenants; whether it did."""
    if n_tenants(records) < 2:
        return False
    tenant_table(records).to_csv(path, index=False, float_format="%.6g")
    return True


def n_tenants(records: pd.DataFrame) -> int:
    """Distinct tenants in ``records``."""
    return int(records["tenant"].nunique())


__all__ = ["TENANT_COLUMNS", "n_tenants", "tenant_table", "write_tenant_csv"]
