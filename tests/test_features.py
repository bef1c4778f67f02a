"""Every feature against values computed by hand on a tiny fixture, with the edge cases of the contract.

as_of is 2024-04-01 00:00. Day counts in comments are worked out by hand from the calendar (2024 is a leap year).
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureQuery
from features.catalog import FEATURES, FEATURES_BY_NAME, GROUPS, available_features
from features.contract import CONTRACTS

AS_OF = datetime(2024, 4, 1)
NAN = float("nan")


def _txn(rows):
    cols = ["transaction_id", "customer_id", "timestamp", "amount", "category", "channel", "quantity",
            "discount_amount", "product_id", "points_earned", "points_redeemed"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["is_return"] = frame["amount"] < 0
    return frame


TRANSACTIONS = _txn([
    # A: a year of history, a return, a purchase exactly at as_of and one after it (both ignored)
    ("t1", "A", "2023-03-01 10:00", 100.0, "grocery", "store", 2, 0.0, "P1", 100, 0),
    ("t2", "A", "2023-12-01 19:30", 50.0, "apparel", "online", 1, 5.0, "P2", 50, 0),   # Friday
    ("t3", "A", "2024-03-02 12:00", 30.0, "apparel", "app", 3, 0.0, "P3", 30, 20),     # Saturday
    ("t4", "A", "2024-03-25 08:00", 20.0, "grocery", "app", 1, 2.0, "P2", 20, 0),      # Monday
    ("t5", "A", "2024-03-28 09:00", -30.0, "apparel", "app", 3, 0.0, "P3", 0, 0),      # return of t3
    ("t6", "A", "2024-04-01 00:00", 999.0, "toys", "store", 1, 0.0, "P9", 999, 0),     # at as_of: excluded
    ("t7", "A", "2024-05-01 00:00", 999.0, "toys", "store", 1, 0.0, "P9", 999, 0),     # after as_of
    # B: a single purchase one hour before as_of
    ("t8", "B", "2024-03-31 23:00", 10.0, "books", "store", 1, 0.0, "P4", 10, 0),
    # C: returns only
    ("t9", "C", "2024-02-01 00:00", -15.0, "books", "store", 1, 0.0, "P4", 0, 0),
    # E: several purchases on one day, two at the same second
    ("t10", "E", "2024-03-10 10:00", 10.0, "toys", "web", 1, 0.0, "P5", 10, 0),
    ("t11", "E", "2024-03-10 10:00", 20.0, "toys", "web", 1, 0.0, "P5", 20, 0),
    ("t12", "E", "2024-03-10 15:00", 30.0, "beauty", "store", 1, 0.0, "P6", 30, 0),
])

EVENTS = pd.DataFrame(
    [
        ("e1", "A", "2024-03-20 09:00", "email_sent"),
        ("e2", "A", "2024-02-01 09:00", "email_sent"),   # 60 days before
        ("e3", "A", "2023-12-01 09:00", "email_sent"),   # 122 days before: outside 90
        ("e4", "A", "2024-03-20 12:00", "email_open"),
        ("e5", "A", "2024-03-20 12:05", "email_click"),
        ("e6", "A", "2024-03-31 00:00", "app_open"),     # 1 day
        ("e7", "A", "2024-02-15 00:00", "app_open"),     # 46 days
        ("e8", "A", "2024-01-10 00:00", "web_visit"),    # 82 days
        ("e9", "A", "2023-06-01 00:00", "reward_redeemed"),
        ("e10", "A", "2024-04-02 00:00", "survey_response"),  # after as_of
        ("e11", "D", "2024-03-01 00:00", "email_sent"),
        ("e12", "D", "2024-03-02 00:00", "tier_change"),  # a state change, not engagement
    ],
    columns=["event_id", "customer_id", "timestamp", "event_type"],
).assign(timestamp=lambda f: pd.to_datetime(f["timestamp"]))

CUSTOMERS = pd.DataFrame(
    [
        ("A", "2023-01-15", 1990, "north", "f", True, "2023-02-01", "Gold", 500.0, True),
        ("B", "2024-03-01", 2000, "south", "m", False, None, None, 0.0, False),
        ("C", "2023-06-01", None, None, None, False, None, None, None, None),
        ("D", "2024-01-01", 1980, "west", None, True, "2024-05-01", "Silver", 10.0, False),  # joins after as_of
        ("E", None, None, "east", None, False, None, None, None, True),  # sign-up date unknown
        ("F", "2024-06-01", 1995, "north", "f", False, None, None, None, True),  # signs up after as_of
    ],
    columns=["customer_id", "signup_date", "birth_year", "region", "gender", "loyalty_member",
             "loyalty_join_date", "loyalty_tier", "points_balance", "email_opt_in"],
).assign(signup_date=lambda f: pd.to_datetime(f["signup_date"]),
         loyalty_join_date=lambda f: pd.to_datetime(f["loyalty_join_date"]),
         birth_year=lambda f: f["birth_year"].astype("Int64"),
         email_opt_in=lambda f: f["email_opt_in"].astype("boolean"))

FRAMES = {"transactions": TRANSACTIONS, "events": EVENTS, "customers": CUSTOMERS}


def _columns(frames):
    return {name: [c for c in f.columns if c != "is_return"] for name, f in frames.items()}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return FeatureQuery(_columns(FRAMES)).run_frames(FRAMES, AS_OF).set_index("customer_id")


# Hand-computed ages (days before as_of) of A's purchases: t1 396 + 14/24, t2 121 + 4.5/24, t3 29.5, t4 6 + 16/24.
A_AGES = {"t1": 396 + 14 / 24, "t2": 121 + 4.5 / 24, "t3": 29.5, "t4": 6 + 16 / 24}
A_GAPS = [275 + 9.5 / 24, 91 + 16.5 / 24, 22 + 20 / 24]  # t1->t2, t2->t3, t3->t4
E_GAPS = [0.0, 5 / 24]

EXPECTED = {
    "A": {
        "days_since_last_order": 6, "days_since_first_order": 396, "days_since_last_return": 3,
        "orders_count_14d": 1, "orders_count_30d": 2, "orders_count_90d": 2, "orders_count_365d": 3,
        "orders_count_total": 4,
        "spend_sum_14d": 20.0, "spend_sum_30d": 50.0, "spend_sum_90d": 50.0, "spend_sum_365d": 100.0,
        "spend_sum_total": 200.0, "aov_365d": 100 / 3, "aov_total": 50.0, "max_order_value_365d": 50.0,
        "spend_per_month_total": 200 / (396 / 30.4375),
        "orders_count_prev_90d": 1, "spend_sum_prev_90d": 50.0, "orders_trend_90d": 1 / 3, "spend_trend_90d": 0.0,
        "spend_share_90d_of_365d": 0.5,
        "order_gap_mean_days": (A_AGES["t1"] - A_AGES["t4"]) / 3, "order_gap_std_days": float(np.std(A_GAPS, ddof=1)),
        "order_gap_last_days": A_GAPS[-1], "overdue_ratio": 6 / ((A_AGES["t1"] - A_AGES["t4"]) / 3),
        "distinct_categories_365d": 2, "top_category_365d": "apparel", "top_category_share_365d": 2 / 3,
        "distinct_products_365d": 2, "items_sum_365d": 5.0, "items_per_order_365d": 5 / 3,
        "online_share_365d": 1.0, "app_share_365d": 2 / 3, "store_share_365d": 0.0, "distinct_channels_365d": 2,
        "preferred_channel_365d": "app", "weekend_share_365d": 1 / 3, "evening_share_365d": 1 / 3,
        "morning_share_365d": 1 / 3,
        "returns_count_365d": 1, "returns_count_total": 1, "return_amount_365d": 30.0, "return_rate_365d": 1 / 3,
        "return_value_share_365d": 0.3, "discount_sum_365d": 7.0, "discounted_orders_share_365d": 2 / 3,
        "discount_rate_365d": 7 / 107,
        "email_sent_count_90d": 2, "email_open_count_30d": 1, "email_open_count_90d": 1,
        "email_click_count_30d": 1, "email_click_count_90d": 1, "push_open_count_90d": 0, "sms_click_count_90d": 0,
        "app_open_count_30d": 1, "app_open_count_90d": 2, "web_visit_count_30d": 0, "web_visit_count_90d": 1,
        "reward_redeemed_count_365d": 1, "review_count_365d": 0, "referral_count_365d": 0,
        "email_open_rate_90d": 0.5, "email_click_rate_90d": 0.5, "engagement_events_30d": 3,
        "engagement_events_90d": 5, "engagement_events_prev_30d": 1, "engagement_trend_30d": 0.5,
        "days_since_last_engagement": 1,
        "loyalty_member": True, "loyalty_tenure_days": 425, "loyalty_tier": "gold", "points_balance": 500.0,
        "points_earned_365d": 100.0, "points_redeemed_365d": 20.0, "points_redemption_rate_365d": 0.2,
        "email_opt_in": True, "customer_tenure_days": 442, "age_years": 34, "region": "north", "gender": "f",
    },
    "B": {  # one purchase an hour ago
        "days_since_last_order": 0, "days_since_first_order": 0, "orders_count_14d": 1, "orders_count_total": 1,
        "spend_sum_14d": 10.0, "aov_365d": 10.0, "order_gap_mean_days": NAN, "order_gap_std_days": NAN,
        "order_gap_last_days": NAN, "overdue_ratio": NAN, "spend_per_month_total": 10.0, "orders_trend_90d": 1.0,
        "days_since_last_return": NAN, "return_rate_365d": 0.0, "customer_tenure_days": 31,
        "loyalty_member": False, "loyalty_tier": None, "loyalty_tenure_days": NAN, "evening_share_365d": 1.0,
        "days_since_last_engagement": NAN, "engagement_events_90d": 0, "email_open_rate_90d": NAN,
    },
    "C": {  # returns only
        "orders_count_total": 0, "spend_sum_total": 0.0, "days_since_last_order": NAN, "aov_total": NAN,
        "returns_count_365d": 1, "returns_count_total": 1, "return_amount_365d": 15.0, "return_rate_365d": NAN,
        "days_since_last_return": 60, "top_category_365d": None, "distinct_categories_365d": 0,
        "online_share_365d": NAN, "age_years": NAN, "email_opt_in": None,
    },
    "D": {  # known from the customer table only; joins the programme after as_of
        "orders_count_total": 0, "spend_sum_365d": 0.0, "days_since_last_order": NAN, "loyalty_member": False,
        "loyalty_tier": None, "loyalty_tenure_days": NAN, "email_sent_count_90d": 1, "email_open_rate_90d": 0.0,
        "engagement_events_90d": 0, "days_since_last_engagement": NAN, "customer_tenure_days": 91, "age_years": 44,
    },
    "E": {  # three purchases on one day, two in the same second
        "orders_count_total": 3, "orders_count_14d": 0, "orders_count_30d": 3, "spend_sum_30d": 60.0,
        "order_gap_mean_days": (5 / 24) / 2, "order_gap_std_days": float(np.std(E_GAPS, ddof=1)),
        "order_gap_last_days": 5 / 24, "top_category_365d": "toys", "top_category_share_365d": 2 / 3,
        "preferred_channel_365d": "web", "online_share_365d": 2 / 3, "customer_tenure_days": NAN,
        "days_since_last_order": 21, "days_since_first_order": 21, "distinct_products_365d": 2,
    },
}


def _same(actual, expected) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return pd.isna(actual)
    if isinstance(expected, str | bool):
        return not pd.isna(actual) and actual == expected
    return not pd.isna(actual) and math.isclose(float(actual), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_every_feature_has_a_hand_computed_value():
    assert set(EXPECTED["A"]) == {f.name for f in FEATURES}


@pytest.mark.parametrize("customer", sorted(EXPECTED))
def test_features_match_hand_computed_values(table, customer):
    row = table.loc[customer]
    wrong = {name: (row[name], want) for name, want in EXPECTED[customer].items() if not _same(row[name], want)}
    assert not wrong, f"customer {customer}: (got, expected) {wrong}"


def test_one_row_per_customer_known_at_as_of(table):
    # F signs up after as_of and has no records before it; a purchase at as_of does not make a customer known
    assert sorted(table.index) == ["A", "B", "C", "D", "E"]


def test_dtypes_follow_the_catalog(table):
    for name in table.columns:
        assert str(table[name].dtype) == FEATURES_BY_NAME[name].dtype, name


def test_records_after_as_of_change_nothing(table):
    late = AS_OF  # a record exactly at as_of is already "after": windows are [as_of - N days, as_of)
    noisy = dict(FRAMES)
    extra = _txn([(f"late{i}", c, late + pd.Timedelta(days=i), 5.0 * (i + 1), "toys", "app", 1, 1.0, "P7", 5, 5)
                  for i, c in enumerate(["A", "B", "C", "D", "E", "F", "Z"])])
    noisy["transactions"] = pd.concat([TRANSACTIONS, extra], ignore_index=True)
    noisy["events"] = pd.concat([EVENTS, pd.DataFrame({"event_id": ["late_e"], "customer_id": ["Z"],
                                                       "timestamp": [late], "event_type": ["app_open"]})])
    again = FeatureQuery(_columns(noisy)).run_frames(noisy, AS_OF).set_index("customer_id")
    pd.testing.assert_frame_equal(again, table)


def test_features_do_not_depend_on_the_rows_order():
    """Sums are exact: in any row order, 0.1 + 0.2 + 0.3 spent is 0.6 (a float sum in file order gives
    0.6000000000000001 for some orders), and every feature, the gaps' deviation included, is the same to the bit."""
    spent = {"2023-06-01 09:00": 0.7, "2024-01-15 10:00": 0.1, "2024-02-03 11:00": 0.2, "2024-03-04 12:00": 0.3}
    rows = [(f"g{i}", "G", when, amount, "toys", "app", amount, amount, "P1", amount, 0.0)
            for i, (when, amount) in enumerate(spent.items())]
    orders = [_txn([rows[i] for i in order]) for order in itertools.permutations(range(len(rows)))]
    query = FeatureQuery(_columns({"transactions": orders[0]}))  # compiled once: ~0.7 s a compile
    first, *others = [query.run_frames({"transactions": t}, AS_OF) for t in orders]
    assert first["spend_sum_90d"].iloc[0] == 0.6 and first["spend_sum_total"].iloc[0] == 1.3
    assert first["items_sum_365d"].iloc[0] == 1.3 and first["points_earned_365d"].iloc[0] == 1.3
    for other in others:
        pd.testing.assert_frame_equal(other, first, check_exact=True)


def test_single_customer_row_equals_batch_row(table):
    query = FeatureQuery(_columns(FRAMES))
    for customer in table.index:
        own = {name: f[f["customer_id"] == customer] for name, f in FRAMES.items()}
        row = query.run_frames(own, AS_OF).set_index("customer_id")
        pd.testing.assert_frame_equal(row, table.loc[[customer]])


def test_features_of_a_missing_table_are_absent():
    only = {"transactions": TRANSACTIONS}
    result = FeatureQuery(_columns(only)).run_frames(only, AS_OF)
    groups = {FEATURES_BY_NAME[c].group for c in result.columns if c != "customer_id"}
    assert "engagement" not in groups and "profile" not in groups
    assert "email_open_count_90d" not in result.columns and "loyalty_member" not in result.columns
    assert sorted(result["customer_id"]) == ["A", "B", "C", "E"]


def test_features_of_a_missing_column_are_absent():
    core = TRANSACTIONS[["transaction_id", "customer_id", "timestamp", "amount", "is_return"]]
    result = FeatureQuery(_columns({"transactions": core})).run_frames({"transactions": core}, AS_OF)
    assert "top_category_365d" not in result.columns and "online_share_365d" not in result.columns
    assert {"days_since_last_order", "orders_count_90d", "spend_sum_365d", "aov_365d"} <= set(result.columns)


def test_catalog_declarations_are_complete_and_consistent():
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names)) and len(names) >= 60
    for f in FEATURES:
        assert f.label and f.description.endswith(".") and f.group in GROUPS
        assert f.dtype in {"int64", "float64", "string", "boolean"}
        for requirement in f.requires:
            table, column = requirement.split(".")
            assert column in CONTRACTS[table].columns, f"{f.name} needs unknown column {requirement}"
        if f.window_days:
            assert f.name.endswith(f"_{f.window_days}d") or f.source == "derived" or "prev" in f.name


def test_full_contract_gives_more_than_60_features():
    everything = {name: list(c.columns) for name, c in CONTRACTS.items()}
    assert len(available_features(everything)) == len(FEATURES) >= 60


def test_compiled_sql_is_reused_only_by_the_same_code_and_columns(tmp_path, monkeypatch):
    """The feature SQL one command compiled is read back by the next (the same text); another dialect, set of
    columns or version of the code compiles anew; a cache that cannot be written, or is off, only means compiling."""
    from features import build

    monkeypatch.setenv(build.SQL_CACHE_ENV, str(tmp_path / "cache"))
    columns = _columns(FRAMES)
    first = FeatureQuery(columns).sql
    assert first == build._compiled(FeatureQuery(columns).expr, "duckdb")
    assert len(list((tmp_path / "cache").glob("*.sql"))) == 1
    compiled = []
    monkeypatch.setattr(build, "_compiled", lambda expr, dialect: compiled.append(dialect) or f"-- {dialect}")
    assert FeatureQuery(columns).sql == first and compiled == []
    assert FeatureQuery(columns).sqlite_sql == "-- sqlite" and compiled == ["sqlite"]
    assert FeatureQuery({"transactions": columns["transactions"]}).sql == "-- duckdb"
    monkeypatch.setattr(build, "_code_version", lambda: "edited")
    assert FeatureQuery(columns).sql == "-- duckdb" and len(compiled) == 3
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for setting in (str(blocked / "cache"), "off"):
        monkeypatch.setenv(build.SQL_CACHE_ENV, setting)
        assert FeatureQuery(columns).sql == "-- duckdb"
    assert len(compiled) == 5 and not list((tmp_path / "cache").glob("*.tmp"))


def test_ranges_of_customers_give_the_table_of_one_run(generated_validation):
    """A programme larger than one run's memory is run in ranges of customer ids: the same rows in the same order,
    equal to the bit, with or without a customers table and in a database the connection switched to; the ranges'
    views vanish with them."""
    from features.build import FeatureQuery, customer_parts

    as_of, con = datetime(2026, 3, 1), generated_validation.con
    transactions_only = {"transactions": generated_validation.columns["transactions"]}
    for columns in (generated_validation.columns, transactions_only):
        query = FeatureQuery(columns)
        whole = query.run_duckdb(con, as_of)
        assert len(customer_parts(con, list(query.columns), 10**9)) == 1
        assert len(customer_parts(con, list(query.columns), 700)) >= 4 < len(whole) / 700 + 2
        parted = list(query.run_batches(con, as_of, rows=500, part_customers=700))
        pd.testing.assert_frame_equal(pd.concat(parted, ignore_index=True), whole)
        assert len(parted) > len(whole) / 500  # several ranges, each in batches
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in generated_validation.columns}
    con.execute("ATTACH ':memory:' AS elsewhere")
    try:
        for table in generated_validation.columns:
            con.execute(f"CREATE TABLE elsewhere.{table} AS SELECT * FROM {table} WHERE customer_id < 'C002'")
        cursor = con.cursor()
        cursor.execute("USE elsewhere")
        query = FeatureQuery(generated_validation.columns)
        whole = query.run_duckdb(cursor, as_of)
        parted = pd.concat(query.run_batches(cursor, as_of, rows=500, part_customers=300), ignore_index=True)
        assert 1500 < len(whole) < len(query.run_duckdb(con, as_of))
        pd.testing.assert_frame_equal(parted, whole)
    finally:
        con.execute("DETACH elsewhere")
    assert rows == {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in generated_validation.columns}


def test_feature_batches_are_the_feature_table_in_pieces(generated_validation, tmp_path):
    """Streamed in small batches and written batch by batch, the feature table reads back equal to the table built
    whole and written at once: same customers in the same order, values, dtypes and file metadata."""
    from features.pipeline import (
        build_feature_table,
        feature_batches,
        read_feature_table,
        read_frame_batches,
        write_feature_batches,
        write_feature_table,
    )

    as_of = datetime(2026, 3, 1)
    whole = build_feature_table(generated_validation, as_of)
    batches = list(feature_batches(generated_validation, as_of, rows=97))
    assert len(batches) == math.ceil(len(whole.table) / 97) > 2
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), whole.table)
    streamed, rows = write_feature_batches(iter(batches), as_of, tmp_path / "streamed.parquet")
    assert rows == len(whole.table)
    expected, expected_meta = read_feature_table(write_feature_table(whole, tmp_path / "whole.parquet"))
    actual, actual_meta = read_feature_table(streamed)
    pd.testing.assert_frame_equal(actual, expected)
    assert actual_meta == expected_meta == {"feature_set_version": expected_meta["feature_set_version"],
                                            "as_of": as_of.isoformat()}
    read_back = list(read_frame_batches(streamed, rows=200))  # how `score --serve-dir` reads its table
    full, rest = divmod(len(whole.table), 200)
    assert [len(b) for b in read_back] == [200] * full + ([rest] if rest else [])
    pd.testing.assert_frame_equal(pd.concat(read_back, ignore_index=True), whole.table)
    assert {b.attrs["feature_set_version"] for b in read_back} == {expected_meta["feature_set_version"]}


def test_feature_batches_of_no_customers_are_one_empty_batch(generated_validation, tmp_path):
    from features.pipeline import (
        feature_batches,
        read_feature_table,
        read_frame_batches,
        write_feature_batches,
    )

    before_everything = datetime(1990, 1, 1)
    batches = list(feature_batches(generated_validation, before_everything))
    assert [len(b) for b in batches] == [0]
    path, rows = write_feature_batches(batches, before_everything, tmp_path / "empty.parquet")
    table, _ = read_feature_table(path)
    assert rows == 0 and table.empty and list(table.columns) == list(batches[0].columns)
    read_back = list(read_frame_batches(path))
    assert [len(b) for b in read_back] == [0] and list(read_back[0].columns) == list(batches[0].columns)


def test_a_failed_batch_leaves_no_feature_file(generated_validation, tmp_path):
    """The file appears only when every batch is written: a failure midway (a batch that breaks the schema, a full
    disk) leaves neither the file nor a partial one beside it, and an earlier file of that name untouched."""
    from features.pipeline import feature_batches, write_feature_batches

    out = tmp_path / "features.parquet"
    out.write_bytes(b"the previous table")

    def failing():
        batches = feature_batches(generated_validation, datetime(2026, 3, 1), rows=50)
        yield next(batches)
        raise ValueError("feature 'age' out of range")

    with pytest.raises(ValueError, match="out of range"):
        write_feature_batches(failing(), datetime(2026, 3, 1), out)
    assert out.read_bytes() == b"the previous table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet"]


def test_feature_batches_refuse_a_customer_repeated_across_batches(generated_validation, monkeypatch):
    """Each batch is checked alone (one row per customer); across batches the ids must keep ascending, else the
    same customer could sit in two batches unnoticed."""
    from features.pipeline import feature_batches

    real = FeatureQuery.run_batches

    def repeated(self, con, as_of, rows):
        batches = list(real(self, con, as_of, rows))
        return [batches[0], batches[0].tail(1), *batches[1:]]

    monkeypatch.setattr(FeatureQuery, "run_batches", repeated)
    with pytest.raises(ValueError, match="not one row per customer in order"):
        list(feature_batches(generated_validation, datetime(2026, 3, 1), rows=50))
