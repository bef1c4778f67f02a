"""The feature table's schema comes from the catalog and catches a feature that breaks its declared range."""

from __future__ import annotations

import numpy as np
import pytest
from test_features import AS_OF, FRAMES, _columns

from features.build import FeatureQuery
from features.schema import FeatureTableError, check_feature_table


@pytest.fixture(scope="module")
def table():
    return FeatureQuery(_columns(FRAMES)).run_frames(FRAMES, AS_OF)


def test_built_table_fits_the_catalog_schema(table):
    assert check_feature_table(table) is table
    assert table["age_years"].isna().any() or table["top_category_365d"].isna().any()  # missing values are allowed


def test_out_of_range_values_and_duplicates_are_named(table):
    broken = table.copy()
    broken.loc[0, "weekend_share_365d"] = 1.5
    broken.loc[1, "orders_count_90d"] = -1
    broken.loc[2, "customer_id"] = broken.loc[0, "customer_id"]
    with pytest.raises(FeatureTableError) as failure:
        check_feature_table(broken)
    failures = failure.value.failures
    assert len(failures) == 3
    assert f"weekend_share_365d: 1 outside [0, 1], e.g. 1.5 (customer {broken.loc[0, 'customer_id']})" in failures
    assert f"orders_count_90d: 1 outside [0, None], e.g. -1 (customer {broken.loc[1, 'customer_id']})" in failures
    assert f"customer_id: 1 repeated, e.g. {broken.loc[0, 'customer_id']!r}" in failures


def test_wrong_dtype_missing_ids_and_unknown_columns_are_caught(table):
    broken = table.assign(orders_count_total=table["orders_count_total"].astype("float64"), not_a_feature=1)
    broken.loc[3, "customer_id"] = None
    with pytest.raises(FeatureTableError) as failure:
        check_feature_table(broken)
    assert failure.value.failures == ["customer_id: 1 missing", "orders_count_total: dtype float64, expected int64",
                                      "not_a_feature: not a feature of the catalog"]
    with pytest.raises(FeatureTableError, match="customer_id: the column is missing"):
        check_feature_table(table.drop(columns="customer_id"))


def test_a_nan_passes_a_bounded_column_and_an_infinity_does_not(table):
    unbounded = table.assign(weekend_share_365d=np.where(np.arange(len(table)) == 0, np.nan,
                                                         table["weekend_share_365d"]))
    assert check_feature_table(unbounded) is unbounded
    infinite = unbounded.copy()
    infinite.loc[0, "weekend_share_365d"] = np.inf
    with pytest.raises(FeatureTableError, match=r"weekend_share_365d: 1 outside \[0, 1\], e.g. inf \(customer"):
        check_feature_table(infinite)
