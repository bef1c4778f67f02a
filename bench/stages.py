"""One benchmark stage, run in its own process so that its peak memory is its own (see bench/run.py).

Usage: python bench/stages.py STAGE DATA_DIR AS_OF  -> prints one JSON line {seconds, rows, columns}.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from features.build import FeatureQuery
from features.catalog import FEATURES_BY_NAME
from features.pipeline import load_validated

CORE = ["days_since_last_order", "days_since_first_order", *[f"orders_count_{w}" for w in ("14d", "30d", "90d", "365d",
        "total")], *[f"spend_sum_{w}" for w in ("14d", "30d", "90d", "365d", "total")], "aov_365d"]


def clean_tables_connection(data: Path) -> tuple[duckdb.DuckDBPyConnection, dict[str, list[str]]]:
    """Already-clean Parquet files loaded as in-memory tables named like the contract tables: the state that
    validation leaves the connection in, without the validation work (timed separately)."""
    con = duckdb.connect()
    columns = {}
    for path in sorted(data.glob("[a-z]*.parquet")):
        con.execute(f"CREATE TABLE {path.stem} AS SELECT * FROM read_parquet('{path}')")
        columns[path.stem] = [c for c in con.table(path.stem).columns if c != "is_return"]
    return con, columns


def ours(data: Path, as_of: datetime, names: list[str] | None) -> pd.DataFrame:
    con, columns = clean_tables_connection(data)
    query = FeatureQuery(columns, [FEATURES_BY_NAME[n] for n in names] if names else None)
    _ = query.sql  # compile outside the timed part: the service compiles once per process too
    start = time.perf_counter()
    table = query.run_arrow(con, as_of)
    return table, time.perf_counter() - start


def pandas_core(data: Path, as_of: datetime) -> tuple[pd.DataFrame, float]:
    """The core features as a data scientist would write them with pandas (the reference)."""
    t = pd.read_parquet(data / "transactions.parquet", columns=["customer_id", "timestamp", "amount", "is_return"])
    start = time.perf_counter()
    t = t[t["timestamp"] < as_of]
    orders = t[~t["is_return"]].copy()
    age_days = (pd.Timestamp(as_of) - orders["timestamp"]).dt.total_seconds() / 86400
    out = pd.DataFrame(index=pd.Index(t["customer_id"].unique(), name="customer_id"))
    g = orders.assign(age=age_days).groupby("customer_id")
    out["days_since_last_order"] = np.floor(g["age"].min())
    out["days_since_first_order"] = np.floor(g["age"].max())
    for w in (14, 30, 90, 365, None):
        recent = orders[age_days <= w] if w else orders
        agg = recent.groupby("customer_id")["amount"].agg(["size", "sum"])
        suffix = f"{w}d" if w else "total"
        out[f"orders_count_{suffix}"] = agg["size"].reindex(out.index).fillna(0).astype("int64")
        out[f"spend_sum_{suffix}"] = agg["sum"].reindex(out.index).fillna(0.0)
    out["aov_365d"] = out["spend_sum_365d"] / out["orders_count_365d"].replace(0, np.nan)
    out = out.reset_index().sort_values("customer_id")
    return out, time.perf_counter() - start


def validate_stage(data: Path) -> tuple[object, float]:
    start = time.perf_counter()
    result = load_validated(data, run_time=datetime(2030, 1, 1))
    rows = sum(result.rows_clean.values())
    return rows, time.perf_counter() - start


def pipeline_stage(data: Path, as_of: datetime) -> tuple[object, float]:
    """What `segments features` does: read and validate the files, then build the full table."""
    start = time.perf_counter()
    result = load_validated(data, run_time=datetime(2030, 1, 1))
    table = FeatureQuery(result.columns).run_arrow(result.con, as_of)
    return table, time.perf_counter() - start


def main(stage: str, data: Path, as_of: datetime) -> dict:
    if stage == "features_full":
        table, seconds = ours(data, as_of, None)
        return {"seconds": seconds, "rows": table.num_rows, "columns": table.num_columns - 1}
    if stage == "features_core":
        table, seconds = ours(data, as_of, CORE)
        table.to_pandas().to_parquet(data / "_ours_core.parquet")
        return {"seconds": seconds, "rows": table.num_rows, "columns": table.num_columns - 1}
    if stage == "pandas_core":
        frame, seconds = pandas_core(data, as_of)
        frame.to_parquet(data / "_pandas_core.parquet")
        return {"seconds": seconds, "rows": len(frame), "columns": frame.shape[1] - 1}
    if stage == "pipeline":
        table, seconds = pipeline_stage(data, as_of)
        return {"seconds": seconds, "rows": table.num_rows, "columns": table.num_columns - 1}
    if stage == "validate":
        rows, seconds = validate_stage(data)
        return {"seconds": seconds, "rows": rows, "columns": None}
    raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), datetime.fromisoformat(sys.argv[3]))))
