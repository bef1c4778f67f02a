"""The feature table's schema, generated from the catalog: dtypes, valid ranges, one row per customer.

A violation here is a bug in a feature definition, not bad input (input is validated before features are built),
so it stops the run with every failing feature named.

The checks are a few vectorised comparisons per column. pandera did the same through its generic machinery in 0.2-0.25
s per 200,000 customers (1.1-1.25 s of every command at 1M, which checks each batch), these in ~0.02 s
(bench/README.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.build import FEATURE_DTYPES
from features.catalog import FEATURES_BY_NAME

EXAMPLES = 3  # failing values named per check


class FeatureTableError(ValueError):
    """A feature table that breaks its schema; `failures` holds one line per failing check."""

    def __init__(self, failures: list[str]):
        checks = "check" if len(failures) == 1 else "checks"
        super().__init__(f"The feature table breaks its schema ({len(failures)} failing {checks}; a feature definition "
                         "is wrong, not the input): " + "; ".join(failures))
        self.failures = failures


def check_feature_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table itself when it fits the schema the catalog declares for its columns: customer_id present, never
    missing and unique; every other column a catalog feature, in its catalog dtype and within its declared bounds
    (missing values allowed). Otherwise FeatureTableError naming every failure with a few examples."""
    failures = _customer_failures(table)
    for name in table.columns:
        if name != "customer_id":
            failures += _feature_failures(table, name)
    if failures:
        raise FeatureTableError(failures)
    return table


def _customer_failures(table: pd.DataFrame) -> list[str]:
    if "customer_id" not in table.columns:
        return ["customer_id: the column is missing"]
    ids = table["customer_id"]
    failures = [] if str(ids.dtype) == "string" else [f"customer_id: dtype {ids.dtype}, expected string"]
    if ids.isna().any():
        failures.append(f"customer_id: {int(ids.isna().sum()):,} missing")
    repeated = [] if ids.is_unique else ids[ids.duplicated() & ids.notna()]  # is_unique: half the time
    if len(repeated):
        failures.append(f"customer_id: {len(repeated):,} repeated, e.g. {_examples(repeated.unique())}")
    return failures


def _feature_failures(table: pd.DataFrame, name: str) -> list[str]:
    feature = FEATURES_BY_NAME.get(name)
    if feature is None:
        return [f"{name}: not a feature of the catalog"]
    column = table[name]
    expected = FEATURE_DTYPES[feature.dtype]
    if str(column.dtype) != expected:
        return [f"{name}: dtype {column.dtype}, expected {expected}"]
    low, high = feature.bounds
    if low is None and high is None:
        return []
    values = column.to_numpy()  # int64 or float64 here; NaN (missing) compares false, so it passes
    outside = np.zeros(len(values), dtype=bool)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    if not outside.any():
        return []
    ids = table["customer_id"] if "customer_id" in table.columns else None
    shown = ", ".join(f"{values[at].item()!r}" + (f" (customer {ids.iloc[at]})" if ids is not None else "")
                      for at in np.flatnonzero(outside)[:EXAMPLES])
    return [f"{name}: {int(outside.sum()):,} outside [{low}, {high}], e.g. {shown}"]


def _examples(values) -> str:
    return ", ".join(repr(v) for v in list(values)[:EXAMPLES])
