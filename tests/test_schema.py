"""The feature table's schema comes from the catalog and catches a feature that breaks its declared range."""

from __future__ import annotations

import pandera.errors
import pytest
from test_features import AS_OF, FRAMES, _columns

from features.build import FeatureQuery
from features.schema import check_feature_table, feature_schema


@pytest.fixture(scope="module")
def table():
    return FeatureQuery(_columns(FRAMES)).run_frames(FRAMES, AS_OF)


def test_built_table_fits_the_catalog_schema(table):
    assert check_feature_table(table) is not None
    assert set(feature_schema(list(table.columns[1:])).columns) == set(table.columns)


def test_out_of_range_values_and_duplicates_are_named(table):
    broken = table.copy()
    broken.loc[0, "weekend_share_365d"] = 1.5
    broken.loc[1, "orders_count_90d"] = -1
    broken.loc[2, "customer_id"] = broken.loc[0, "customer_id"]
    with pytest.raises(pandera.errors.SchemaErrors) as failure:
        check_feature_table(broken)
    message = str(failure.value)
    assert "weekend_share_365d" in message and "orders_count_90d" in message and "customer_id" in message


def test_wrong_dtype_is_caught(table):
    broken = table.assign(orders_count_total=table["orders_count_total"].astype("float64"))
    with pytest.raises(pandera.errors.SchemaErrors, match="orders_count_total"):
        check_feature_table(broken)
