"""Is the feature table the same on every run? Builds it several times from one validation of a data folder (DuckDB,
its default threads) and counts, per column, the customers whose value differs from the first run's in any bit.

Usage: python bench/determinism.py DATA_DIR [--as-of 2025-10-01] [--runs 3]
(e.g. DATA_DIR = bench/work/data_1000000x10, made by bench/scale.py or bench/make_data.py)
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.build import FeatureQuery
from features.pipeline import load_validated


def differing_customers(first: pd.DataFrame, other: pd.DataFrame) -> dict[str, int]:
    """Per column, the rows whose values differ (missing equals missing); columns with none are left out."""
    counts = {}
    for column in first.columns:
        same = (first[column] == other[column]) | (first[column].isna() & other[column].isna())
        if differing := int((~same).sum()):
            counts[column] = differing
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--as-of", default="2025-10-01")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    validation = load_validated(args.data)
    query = FeatureQuery(validation.columns)
    as_of = datetime.fromisoformat(args.as_of)
    first = query.run_duckdb(validation.con, as_of)
    for run in range(2, args.runs + 1):
        other = query.run_duckdb(validation.con, as_of)
        print(json.dumps({"run": run, "customers": len(first), "differing": differing_customers(first, other)}))


if __name__ == "__main__":
    main()
