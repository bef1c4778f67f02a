"""Run the feature benchmarks and print (and save) their figures.

Usage: python bench/run.py [--transactions 10000000 --customers 1000000] [--as-of 2025-06-01]
Each stage runs in its own process; its peak memory is that process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_data import make

STAGES = ("features_full", "features_core", "pandas_core", "validate", "pipeline")


def run_stage(stage: str, data: Path, as_of: str) -> dict:
    proc = subprocess.Popen([sys.executable, str(HERE / "stages.py"), stage, str(data), as_of],
                            stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"stage {stage} failed (status {status})")
    return {"stage": stage, **json.loads(output.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def check_core_agrees(data: Path) -> float:
    """Largest absolute difference between our core features and the pandas reference (should be ~0)."""
    ours = pd.read_parquet(data / "_ours_core.parquet").set_index("customer_id").sort_index()
    ref = pd.read_parquet(data / "_pandas_core.parquet").set_index("customer_id").sort_index()
    ours = ours.loc[ref.index, ref.columns]
    return float((ours.astype("float64") - ref.astype("float64")).abs().max().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--as-of", default="2025-06-01")
    args = parser.parse_args()
    data = HERE / "data" / f"t{args.transactions}_c{args.customers}"
    if not (data / "transactions.parquet").exists():
        make(data, args.transactions, args.customers)
    results = [run_stage(stage, data, args.as_of) for stage in STAGES]
    by_stage = {r["stage"]: r for r in results}
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "transactions": args.transactions, "customers": args.customers, "as_of": args.as_of,
        "stages": results,
        "speedup_core_vs_pandas": by_stage["pandas_core"]["seconds"] / by_stage["features_core"]["seconds"],
        "speedup_full_vs_pandas_core": by_stage["pandas_core"]["seconds"] / by_stage["features_full"]["seconds"],
        "max_abs_diff_core_vs_pandas": check_core_agrees(data),
    }
    print(json.dumps(summary, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
