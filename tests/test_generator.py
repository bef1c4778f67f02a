"""Tests of the synthetic loyalty-data generator: determinism, the data contract, persona behaviour, the churn
model and its oracle. Sizes are small (1,500 customers x 12 months) so the module runs in seconds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features import contract
from features.synthetic.generator import (
    CATEGORIES,
    CHANNELS,
    ENGAGEMENT_CHURN_COEF,
    LOYALTY_CHURN_COEF,
    PERSONAS,
    PLANTED_CHURN_DRIVERS,
    TIERS,
    GeneratedData,
    generate_tables,
    oracle_churn_probability,
    write_tables,
)

N_CUSTOMERS, MONTHS, SEED = 1500, 12, 7
END = pd.Timestamp("2026-07-01")
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def data() -> GeneratedData:
    return generate_tables(N_CUSTOMERS, MONTHS, seed=SEED, end="2026-07-01")


@pytest.fixture(scope="module")
def per_customer(data: GeneratedData) -> pd.DataFrame:
    """One row per customer: persona, orders, returns, spend, discounted orders, events, signup."""
    tx, truth = data.transactions, data.ground_truth.set_index("customer_id")
    purchases, returns = tx[~tx["is_return"]], tx[tx["is_return"]]
    frame = pd.DataFrame({
        "orders": purchases.groupby("customer_id").size(),
        "spend": purchases.groupby("customer_id")["amount"].sum(),
        "discounted": (purchases["discount_amount"] > 0).groupby(purchases["customer_id"]).sum(),
        "returns": returns.groupby("customer_id").size(),
        "events": data.events.groupby("customer_id").size(),
    }).reindex(truth.index).fillna(0.0)
    frame["persona"] = truth["persona"]
    frame["signup_date"] = data.customers.set_index("customer_id")["signup_date"]
    return frame


def _persona_sums(per_customer: pd.DataFrame) -> pd.DataFrame:
    return per_customer.drop(columns="signup_date").groupby("persona").sum()


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_frames_and_another_seed_differs():
    first, second = generate_tables(300, 6, seed=3), generate_tables(300, 6, seed=3)
    for name, frame in first.tables().items():
        pd.testing.assert_frame_equal(frame, second.tables()[name], check_exact=True)
    other = generate_tables(300, 6, seed=4)
    assert not other.transactions["timestamp"].equals(first.transactions["timestamp"])
    assert not other.ground_truth["purchase_rate_per_day"].equals(first.ground_truth["purchase_rate_per_day"])


def test_period_is_the_months_before_end(data):
    assert data.end == END
    assert data.start == pd.Timestamp("2025-07-01")


def test_progress_is_reported_up_to_all_customers():
    seen: list[int] = []
    generate_tables(250, 3, seed=1, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 250


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_customers"):
        generate_tables(0, 12)


# --- contract ----------------------------------------------------------------------------------------------------

_DTYPE_CHECKS = {
    contract.STRING: pd.api.types.is_string_dtype,
    contract.TIMESTAMP: lambda dtype: pd.api.types.is_datetime64_dtype(dtype) and getattr(dtype, "tz", None) is None,
    contract.DOUBLE: pd.api.types.is_float_dtype,
    contract.BIGINT: pd.api.types.is_integer_dtype,
    contract.BOOLEAN: pd.api.types.is_bool_dtype,
}


@pytest.mark.parametrize("table", ["customers", "transactions", "events"])
def test_tables_have_every_contract_column_with_its_canonical_type(data, table):
    frame, spec = data.tables()[table], contract.CONTRACTS[table]
    assert list(frame.columns) == list(spec.columns)
    for column, canonical in spec.columns.items():
        assert _DTYPE_CHECKS[canonical](frame[column].dtype), (table, column, frame[column].dtype)
    assert frame[spec.id_column].is_unique
    assert frame[list(spec.required)].notna().all().all()


@pytest.mark.parametrize(("table", "pattern"), [
    ("customers", r"C\d{6}"), ("transactions", r"T\d{8}"), ("events", r"E\d{8}"),
])
def test_ids_are_prefixed_zero_padded_strings(data, table, pattern):
    frame = data.tables()[table]
    ids = frame[contract.CONTRACTS[table].id_column]
    assert ids.str.fullmatch(pattern).all()
    assert ids.iloc[0] == pattern[0] + "0" * (len(ids.iloc[0]) - 2) + "1"


def test_rows_belong_to_known_customers(data):
    known = set(data.customers["customer_id"])
    assert set(data.transactions["customer_id"]) <= known
    assert set(data.events["customer_id"]) <= known
    assert list(data.ground_truth["customer_id"]) == list(data.customers["customer_id"])


@pytest.mark.parametrize("table", ["transactions", "events"])
def test_no_activity_before_signup_or_at_or_after_end(data, table):
    frame = data.tables()[table].merge(data.customers[["customer_id", "signup_date"]], on="customer_id")
    assert (frame["timestamp"] >= frame["signup_date"]).all()
    assert (frame["timestamp"] >= data.start).all()
    assert (frame["timestamp"] < data.end).all()
    assert frame["timestamp"].is_monotonic_increasing  # ids are issued in time order


def test_returns_have_negative_amount_positive_quantity_and_flag(data):
    tx = data.transactions
    returns, purchases = tx[tx["is_return"]], tx[~tx["is_return"]]
    assert len(returns) > 0
    assert (returns["amount"] < 0).all() and (returns["quantity"] > 0).all()
    assert (purchases["amount"] > 0).all() and (purchases["quantity"] >= 1).all()
    assert (tx["quantity"] >= 0).all() and (tx["discount_amount"] >= 0).all()
    assert (returns["points_earned"] == 0).all()


def test_transaction_attributes_use_their_vocabularies(data):
    tx = data.transactions
    assert set(tx["category"]) == set(CATEGORIES)
    assert set(tx["channel"]) == set(CHANNELS)
    assert (tx["store_id"].isna() == (tx["channel"] != "store")).all()
    assert tx["store_id"].dropna().str.fullmatch(r"S\d{3}").all()
    assert (tx["currency"] == "USD").all()
    assert (tx[["points_earned", "points_redeemed"]] >= 0).all().all()
    members = set(data.customers.loc[data.customers["loyalty_member"], "customer_id"])
    assert set(tx.loc[tx["points_earned"] > 0, "customer_id"]) <= members


def test_events_use_known_types_campaigns_and_json_properties(data):
    ev = data.events
    assert set(ev["event_type"]) == set(contract.KNOWN_EVENT_TYPES)
    is_email = ev["event_type"].isin(["email_sent", "email_open", "email_click", "campaign_holdout"])
    assert (ev["campaign_id"].notna() == is_email).all()
    assert (ev.loc[is_email, "channel"] == "email").all()
    assert set(ev.loc[ev["event_type"] == "campaign_holdout", "campaign_id"].str[:3]) == {"OFR"}  # offers only
    properties = ev["properties"].dropna()
    assert len(properties) > 0
    assert all(isinstance(json.loads(text), dict) for text in properties.unique())
    opted_out = set(data.customers.loc[~data.customers["email_opt_in"], "customer_id"])
    assert not opted_out & set(ev.loc[ev["event_type"] == "email_sent", "customer_id"])


def test_customer_loyalty_columns_are_consistent(data):
    cu = data.customers
    members = cu["loyalty_member"]
    assert (cu["loyalty_join_date"].isna() == ~members).all()
    assert (cu["loyalty_tier"].isna() == ~members).all()
    assert set(cu["loyalty_tier"].dropna()) <= set(TIERS)
    assert (cu.loc[members, "loyalty_join_date"] >= cu.loc[members, "signup_date"]).all()
    assert (cu["loyalty_join_date"].dropna() < data.end).all()
    assert (cu["points_balance"] >= 0).all() and (cu.loc[~members, "points_balance"] == 0).all()
    assert (cu["signup_date"] == cu["signup_date"].dt.normalize()).all()
    assert cu["signup_date"].is_monotonic_increasing
    tags = cu["tags"].dropna().str.split(";").explode()
    assert len(tags) > 0 and set(tags) <= {"newsletter", "family", "pet_owner", "eco", "student"}
    assert cu["birth_year"].between(1930, 2010).all()


# --- personas ----------------------------------------------------------------------------------------------------


def test_every_persona_is_present_in_its_share(data):
    counts = data.ground_truth["persona"].value_counts()
    assert set(counts.index) == set(PERSONAS)
    assert counts.min() >= 0.05 * N_CUSTOMERS


def test_vip_orders_often_and_spends_more_per_order_than_occasional(per_customer):
    sums = _persona_sums(per_customer)
    aov = sums["spend"] / sums["orders"]
    assert aov["vip"] > 1.5 * aov["occasional"]
    assert aov["vip"] == aov.max()
    orders_per_month = per_customer.groupby("persona")["orders"].mean() / MONTHS
    assert 1.5 < orders_per_month["vip"] < 5
    assert orders_per_month["occasional"] < 1


def test_bargain_hunters_have_the_highest_discount_share_and_smallest_baskets(per_customer):
    sums = _persona_sums(per_customer)
    discount_share = sums["discounted"] / sums["orders"]
    assert discount_share["bargain_hunter"] > 0.7
    assert discount_share.drop("bargain_hunter").max() < 0.5
    aov = (sums["spend"] / sums["orders"]).drop("engaged_non_buyer")
    assert aov.idxmin() == "bargain_hunter"
    orders = per_customer.groupby("persona")["orders"].mean()
    assert orders.idxmax() == "bargain_hunter"


def test_bargain_hunters_prefer_the_app_and_occasional_customers_the_store(data):
    tx = data.transactions.merge(data.ground_truth[["customer_id", "persona"]], on="customer_id")
    shares = pd.crosstab(tx["persona"], tx["channel"], normalize="index")
    assert shares.loc["bargain_hunter", "app"] > 0.5
    assert shares.loc["occasional", "store"] > 0.5


def test_serial_returners_return_30_to_50_percent_of_orders(per_customer):
    sums = _persona_sums(per_customer)
    return_rate = sums["returns"] / sums["orders"]
    assert 0.25 < return_rate["serial_returner"] < 0.55
    assert return_rate.drop("serial_returner").max() < 0.1


def test_serial_returners_buy_mostly_apparel(data):
    tx = data.transactions.merge(data.ground_truth[["customer_id", "persona"]], on="customer_id")
    apparel_share = (tx["category"] == "apparel").groupby(tx["persona"]).mean()
    assert apparel_share["serial_returner"] > 0.5 and apparel_share.idxmax() == "serial_returner"


def test_engaged_non_buyers_barely_buy_but_engage_most(per_customer):
    means = per_customer.groupby("persona")[["orders", "events"]].mean()
    assert means.loc["engaged_non_buyer", "orders"] < 0.5
    assert means.loc["engaged_non_buyer", "events"] > 3 * means.loc["occasional", "events"]


def test_new_customers_signed_up_within_100_days_of_end(per_customer, data):
    new = per_customer[per_customer["persona"] == "new"]
    others = per_customer[per_customer["persona"] != "new"]
    assert (new["signup_date"] >= data.end - 100 * DAY).all()
    assert (others["signup_date"] < data.end - 100 * DAY).all()
    assert 0.5 < new["orders"].mean() < 6


def test_lapsing_customers_mostly_churn_within_the_period(data):
    truth = data.ground_truth
    churned = truth["churn_time"].notna().groupby(truth["persona"]).mean()
    assert churned["lapsing"] > 0.6
    assert churned.drop("lapsing").max() < 0.3


def test_volume_peaks_in_winter_and_dips_in_summer():
    # Common seasonality, visible on a population without churn-driven decline.
    tx = generate_tables(3000, 24, seed=11).transactions
    purchases = tx[~tx["is_return"]]
    per_month = purchases.groupby(purchases["timestamp"].dt.month).size()
    assert per_month[[11, 12]].mean() > 1.15 * per_month[[5, 6, 7]].mean()


def test_store_orders_happen_in_opening_hours_and_lean_to_weekends(data):
    tx = data.transactions
    store = tx[(tx["channel"] == "store") & ~tx["is_return"]]
    assert store["timestamp"].dt.hour.between(8, 21).mean() > 0.97
    weekend = store["timestamp"].dt.dayofweek >= 5
    assert weekend.mean() > 2 / 7 + 0.03


def test_personas_are_recoverable_by_kmeans_on_behavioural_features():
    """KMeans on simple RFM / discount / return / engagement / tenure features matches personas (ARI >= 0.6)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    data = generate_tables(4000, 24, seed=0)
    features = _behavioural_features(data, data.end)
    scaled = StandardScaler().fit_transform(features)
    labels = KMeans(n_clusters=len(PERSONAS), n_init=10, random_state=0).fit_predict(scaled)
    assert adjusted_rand_score(data.ground_truth["persona"], labels) >= 0.6


def _behavioural_features(data: GeneratedData, as_of: pd.Timestamp) -> pd.DataFrame:
    """Log recency, 365-day orders and AOV, discount share, return rate, 90-day engagement and tenure."""
    ids = pd.Index(data.customers["customer_id"])
    tx, ev = data.transactions, data.events
    year = tx[tx["timestamp"] >= as_of - 365 * DAY]
    purchases = year[~year["is_return"]]
    orders = purchases.groupby("customer_id").size().reindex(ids, fill_value=0)
    tenure = (as_of - data.customers.set_index("customer_id")["signup_date"]).dt.days
    last = tx[~tx["is_return"]].groupby("customer_id")["timestamp"].max().reindex(ids)
    recency = (as_of - last).dt.days.fillna(tenure).clip(upper=tenure)
    recent_events = ev[(ev["timestamp"] >= as_of - 90 * DAY)
                       & ev["event_type"].isin(["app_open", "web_visit", "email_open", "email_click"])]
    return pd.DataFrame({
        "recency": np.log1p(recency),
        "orders": np.log1p(orders),
        "aov": np.log1p(purchases.groupby("customer_id")["amount"].mean().reindex(ids).fillna(0.0)),
        "discount_share": ((purchases["discount_amount"] > 0).groupby(purchases["customer_id"]).mean()
                           .reindex(ids).fillna(0.0)),
        "return_rate": (year["is_return"].groupby(year["customer_id"]).sum().reindex(ids, fill_value=0)
                        / orders.clip(lower=1)).clip(upper=1.0),
        "engagement": np.log1p(recent_events.groupby("customer_id").size().reindex(ids, fill_value=0)),
        "tenure": np.log1p(tenure),
    })


# --- churn model -------------------------------------------------------------------------------------------------


def test_no_purchase_after_churn_time(data):
    tx = data.transactions.merge(data.ground_truth[["customer_id", "churn_time", "start"]], on="customer_id")
    purchases = tx[~tx["is_return"]]
    churned = purchases[purchases["churn_time"].notna()]
    assert len(churned) > 0
    assert (churned["timestamp"] < churned["churn_time"]).all()
    assert (purchases["timestamp"] >= purchases["start"]).all()


def test_churn_times_fall_inside_the_period(data):
    truth = data.ground_truth
    churn = truth["churn_time"].dropna()
    assert (churn < data.end).all()
    assert (churn > truth.loc[churn.index, "start"]).all()
    assert (truth["start"] == np.maximum(data.customers["signup_date"], data.start)).all()


def test_churn_hazard_follows_the_documented_log_linear_model(data):
    """log h = log h_persona - 0.8 z - 0.4 member, exactly: least squares recovers the coefficients."""
    truth = data.ground_truth
    member = data.customers["loyalty_member"].to_numpy(dtype=float)
    dummies = pd.get_dummies(truth["persona"], dtype=float).to_numpy()
    design = np.column_stack([dummies, truth["engagement_propensity"], member])
    coef, residual, *_ = np.linalg.lstsq(design, np.log(truth["churn_hazard_per_day"]), rcond=None)
    assert coef[-2] == pytest.approx(-ENGAGEMENT_CHURN_COEF, abs=1e-9)
    assert coef[-1] == pytest.approx(-LOYALTY_CHURN_COEF, abs=1e-9)
    assert residual[0] < 1e-12


def test_engaged_customers_churn_less(data):
    truth = data.ground_truth[data.ground_truth["persona"] != "lapsing"]
    churned = truth["churn_time"].notna()
    z = truth["engagement_propensity"]
    assert np.corrcoef(z, np.log(truth["churn_hazard_per_day"]))[0, 1] < -0.5
    assert z[churned].mean() < z[~churned].mean() - 0.2


def test_engagement_propensity_drives_observed_app_opens_and_email_clicks(data):
    truth = data.ground_truth.set_index("customer_id")
    ev = data.events
    for event_type in ("app_open", "email_click"):
        counts = ev[ev["event_type"] == event_type].groupby("customer_id").size().reindex(truth.index, fill_value=0)
        within_persona = counts.groupby(truth["persona"]).rank(pct=True)
        assert np.corrcoef(within_persona, truth["engagement_propensity"])[0, 1] > 0.2, event_type


def test_planted_drivers_are_catalog_feature_names():
    allowed = {"days_since_last_order", "app_open_count_30d", "app_open_count_90d", "email_click_count_90d",
               "email_open_count_90d", "web_visit_count_90d", "loyalty_member"}
    allowed |= {f"orders_count_{w}d" for w in (14, 30, 90, 365)}
    assert set(PLANTED_CHURN_DRIVERS) <= allowed
    assert {"days_since_last_order", "orders_count_90d"} <= set(PLANTED_CHURN_DRIVERS)


# --- oracle ------------------------------------------------------------------------------------------------------


def test_oracle_matches_the_pareto_nbd_formula_by_hand():
    truth = pd.DataFrame({
        "customer_id": ["A", "B", "C"],
        "start": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-06-01"]),
        "purchase_rate_per_day": [0.1, 0.1, 0.1],
        "churn_hazard_per_day": [0.01, 0.01, 0.01],
    })
    tx = pd.DataFrame({
        "customer_id": ["A", "A", "B", "B"],
        "timestamp": pd.to_datetime(["2026-02-01", "2026-03-02", "2026-03-01", "2026-03-31"]),
        "amount": [10.0, -10.0, 10.0, 10.0],
        "is_return": [False, True, False, False],
    })
    result = oracle_churn_probability(truth, tx, "2026-04-01", horizon_days=30)
    assert list(result.index) == ["A", "B"]  # C starts after as_of

    lam, h, horizon = 0.1, 0.01, 30

    def expected(gap_days: float) -> float:
        p_alive = 1 / (1 + h / (lam + h) * (np.exp((lam + h) * gap_days) - 1))
        quiet = np.exp(-(lam + h) * horizon) + h / (lam + h) * (1 - np.exp(-(lam + h) * horizon))
        return 1 - p_alive + p_alive * quiet

    assert result["A"] == pytest.approx(expected(59.0))  # the return on 2 March is not a purchase
    assert result["B"] == pytest.approx(expected(1.0))
    assert result["A"] > result["B"]


def test_oracle_without_is_return_uses_negative_amounts():
    truth = pd.DataFrame({"customer_id": ["A"], "start": pd.to_datetime(["2026-01-01"]),
                          "purchase_rate_per_day": [0.1], "churn_hazard_per_day": [0.01]})
    tx = pd.DataFrame({"customer_id": ["A", "A"], "amount": [10.0, -10.0],
                       "timestamp": pd.to_datetime(["2026-02-01", "2026-03-30"])})
    with_flag = oracle_churn_probability(truth, tx.assign(is_return=[False, True]), "2026-04-01")
    assert oracle_churn_probability(truth, tx, "2026-04-01")["A"] == pytest.approx(with_flag["A"])


def test_oracle_probabilities_separate_churned_from_alive_and_predict_the_label(data):
    from sklearn.metrics import roc_auc_score

    as_of = data.end - 90 * DAY
    prob = oracle_churn_probability(data.ground_truth, data.transactions, as_of)
    truth = data.ground_truth.set_index("customer_id").loc[prob.index]
    assert prob.between(0, 1).all() and prob.notna().all()
    assert (truth["start"] < as_of).all() and len(prob) == (data.ground_truth["start"] < as_of).sum()

    churned = (truth["churn_time"] < as_of).to_numpy()
    assert prob[churned].mean() > prob[~churned].mean() + 0.3

    tx = data.transactions
    future = tx[~tx["is_return"] & (tx["timestamp"] > as_of) & (tx["timestamp"] <= as_of + 90 * DAY)]
    no_purchase = ~prob.index.isin(future["customer_id"])
    assert roc_auc_score(no_purchase, prob) > 0.9
    assert abs(prob.mean() - no_purchase.mean()) < 0.08  # calibrated up to the seasonal approximation


# --- writing -----------------------------------------------------------------------------------------------------


def test_write_tables_parquet_round_trips(tmp_path):
    data = generate_tables(200, 3, seed=2)
    paths = write_tables(data, tmp_path / "out")
    assert set(paths) == {"customers", "transactions", "events", "ground_truth"}
    for name, path in paths.items():
        assert path == tmp_path / "out" / f"{name}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(path), data.tables()[name], check_dtype=False)


def test_write_tables_csv_and_rejects_unknown_formats(tmp_path):
    data = generate_tables(200, 3, seed=2)
    paths = write_tables(data, tmp_path, fmt="csv")
    assert paths["transactions"].suffix == ".csv"
    back = pd.read_csv(paths["transactions"])
    assert list(back.columns) == list(data.transactions.columns) and len(back) == len(data.transactions)
    with pytest.raises(ValueError, match="parquet"):
        write_tables(data, tmp_path, fmt="xlsx")
