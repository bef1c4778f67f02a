"""Campaign lift against the holdout (exact on a hand-built programme) and the backtest of rule segments (planted
behaviour of the generated programme)."""

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.segments import in_holdout, load_segments, parse_segments
from serving.segments.lift import BACKTEST_METRICS, TABLE_COLUMNS, backtest, compare, measure

START, END = datetime(2026, 6, 1), datetime(2026, 7, 1)
PROMO = parse_segments("holdout_percent: 50\nsegments:\n  promo: {when: orders_count_90d >= 0}\n")["promo"]
# in_holdout(..., "promo", 50) puts c1 and c4 in the holdout and c2, c3, c7, c8 outside (checked in a test below).
TARGETED, HELD = ["c2", "c3", "c7", "c8"], ["c1", "c4"]
MEMBERS = pd.DataFrame({"customer_id": TARGETED + HELD})
Z = 1.959963984540054


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Purchases in [2026-06-01, 2026-07-01): targeted c2 2 orders (40), c3 1 order (50; its return is neither an
    order nor spend), c7 none (its purchases fall just outside), c8 1 order (20, exactly at the start); held out c1
    1 order (10), c4 none; c5 buys but is not a member."""
    from features.pipeline import load_validated

    ids = [f"c{i}" for i in range(1, 9)]
    customers = pd.DataFrame({"customer_id": ids, "signup_date": "2025-01-01"})
    rows = [("c2", "2026-06-03", 10.0), ("c2", "2026-06-20", 30.0), ("c3", "2026-06-05", 50.0),
            ("c3", "2026-06-10", -20.0), ("c7", "2026-05-31 23:59:59", 99.0), ("c7", "2026-07-01 00:00:00", 99.0),
            ("c8", "2026-06-01 00:00:00", 20.0), ("c1", "2026-06-15", 10.0), ("c4", "2026-04-01", 70.0),
            ("c5", "2026-06-15", 500.0)]
    transactions = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])
    transactions.insert(0, "transaction_id", [f"t{i}" for i in range(len(rows))])
    folder = tmp_path_factory.mktemp("tiny")
    customers.to_csv(folder / "customers.csv", index=False)
    transactions.to_csv(folder / "transactions.csv", index=False)
    return load_validated(folder, run_time=datetime(2026, 7, 2))


def test_the_hand_built_members_split_as_assumed():
    assert in_holdout(TARGETED, "promo", 50).tolist() == [False] * 4
    assert in_holdout(HELD, "promo", 50).tolist() == [True] * 2


def _wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson's score interval, written out: the roots in p of (x/n - p)^2 = z^2 p (1 - p) / n."""
    a, b, c = 1 + Z * Z / n, -(2 * x / n + Z * Z / n), (x / n) ** 2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def _fisher_two_sided(x_t: int, n_t: int, x_h: int, n_h: int) -> float:
    """Fisher's exact test by enumeration: every table with the observed margins at most as likely as the observed."""
    converted = x_t + x_h

    def probability(k: int) -> float:
        return math.comb(n_t, k) * math.comb(n_h, converted - k) / math.comb(n_t + n_h, converted)

    observed = probability(x_t)
    tables = range(max(0, converted - n_h), min(n_t, converted) + 1)
    return sum(probability(k) for k in tables if probability(k) <= observed * (1 + 1e-7))


def test_measure_is_exact_on_known_orders(tiny):
    from scipy.stats import t as student_t

    result = measure(MEMBERS, PROMO, tiny, START, END)
    assert (result.targeted_customers, result.holdout_customers) == (4, 2)
    table = result.table().set_index("metric")
    assert list(result.table().columns) == TABLE_COLUMNS
    assert table.loc["customers", ["targeted", "holdout"]].tolist() == [4, 2]
    assert result.warnings and "only 2 customers in the holdout" in result.warnings[0]
    # converted: targeted 3 of 4, holdout 1 of 2: Newcombe's hybrid score interval and Fisher's exact test
    row = table.loc["conversion_rate"]
    (low_t, high_t), (low_h, high_h) = _wilson(3, 4), _wilson(1, 2)
    assert (row["targeted"], row["holdout"], row["difference"], row["lift"]) == pytest.approx((0.75, 0.5, 0.25, 0.5))
    assert row["ci_low"] == pytest.approx(0.25 - math.sqrt((0.75 - low_t) ** 2 + (high_h - 0.5) ** 2))
    assert row["ci_high"] == pytest.approx(0.25 + math.sqrt((high_t - 0.75) ** 2 + (0.5 - low_h) ** 2))
    assert row["p_value"] == pytest.approx(_fisher_two_sided(3, 4, 1, 2)) and row["p_value"] == pytest.approx(1.0)
    # orders [2, 1, 0, 1] vs [1, 0]; spend [40, 50, 0, 20] vs [10, 0]: Welch's t with Welch-Satterthwaite df
    expected = {"mean_orders": (1.0, 0.5, (2 / 3) / 4, 0.5 / 2, 1.0),
                "mean_spend": (27.5, 5.0, (1475 / 3) / 4, 50 / 2, 4.5)}  # sample variances 1475/3 and 50
    for metric, (targeted, held, a, b, lift) in expected.items():
        row = table.loc[metric]
        difference, se = targeted - held, math.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / 3 + b * b / 1)
        q = student_t.ppf(0.975, df)
        assert (row["targeted"], row["holdout"], row["difference"], row["lift"]) == pytest.approx(
            (targeted, held, difference, lift))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((difference - q * se, difference + q * se))
        assert row["p_value"] == pytest.approx(2 * student_t.sf(difference / se, df))
        assert row["relative_ci_low"] < row["lift"] < row["relative_ci_high"]


def test_relative_lift_interval_by_hand(tiny):
    """Conversion 3/4 targeted against 1/2 held out: the ratio's MOVER-R interval (Donner & Zou 2012) from the two
    Wilson intervals, written out by hand."""
    row = measure(MEMBERS, PROMO, tiny, START, END).table().set_index("metric").loc["conversion_rate"]
    (l1, u1), (l2, u2) = _wilson(3, 4), _wilson(1, 2)
    p1, p2 = 0.75, 0.5
    low = (p1 * p2 - math.sqrt((p1 * p2) ** 2 - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2))) / (u2 * (2 * p2 - u2))
    high = (p1 * p2 + math.sqrt((p1 * p2) ** 2 - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2))) / (l2 * (2 * p2 - l2))
    assert row["relative_ci_low"] == pytest.approx(low - 1)
    assert row["relative_ci_high"] == pytest.approx(high - 1)
    assert row["relative_ci_low"] > -1  # a ratio of rates never falls below -100%


@pytest.mark.parametrize(("n_holdout", "rate"), [(11, 0.95), (11, 0.6), (25, 0.98), (40, 0.1)])
def test_the_difference_interval_holds_for_small_holdouts(n_holdout, rate):
    """Simulated campaigns with no effect, a small holdout and rates near 0 or 1 (1,500 draws): Newcombe's interval
    holds the true difference (0) at least 93% of the time; the Wald interval used before falls far short there
    (at 11 held out and 95%, a holdout that all bought has zero variance: the Wald interval shrinks to the
    targeted side's alone)."""
    from serving.segments.lift import compare_rates

    rng = np.random.default_rng(11)
    n_targeted, draws, newcombe, wald = 300, 1500, 0, 0
    for _ in range(draws):
        x_t, x_h = int(rng.binomial(n_targeted, rate)), int(rng.binomial(n_holdout, rate))
        result = compare_rates("m", x_t, n_targeted, x_h, n_holdout)
        newcombe += result.ci_low <= 0 <= result.ci_high
        p_t, p_h = x_t / n_targeted, x_h / n_holdout
        half = Z * math.sqrt(p_t * (1 - p_t) / n_targeted + p_h * (1 - p_h) / n_holdout)
        wald += abs(p_t - p_h) <= half
    assert newcombe / draws >= 0.93, newcombe / draws
    if n_holdout == 11 and rate == 0.95:
        assert wald / draws < 0.85, wald / draws  # the old interval: what this test guards against


def test_a_full_holdout_of_eleven_is_not_called_significant():
    """The issue's case: every one of 11 held-out customers bought, as did every targeted one: no evidence of
    anything (p = 1), and an interval that still has width."""
    from serving.segments.lift import compare_rates

    result = compare_rates("conversion_rate", 120, 120, 11, 11)
    assert result.p_value == pytest.approx(1.0)
    assert result.ci_low < 0 < result.ci_high and result.ci_high > 0.2  # 11 customers cannot rule out +20 points
    assert result.relative_ci_low < 0 < result.relative_ci_high and result.relative_ci_high > 0.3


@pytest.mark.parametrize("rate", [True, False])
def test_relative_lift_interval_covers_the_true_lift_95_percent_of_the_time(rate):
    """Simulated campaigns with a known lift of +100% and a small holdout (its rate is as uncertain as the
    targeted one's, so an interval that ignores it would cover far less than 95% of the time): the interval
    holds the true lift in 95% of the draws (1,500 draws: +-1.1 points of sampling error)."""
    rng = np.random.default_rng(7)
    n_targeted, n_holdout, draws, covered = 4000, 400, 1500, 0
    for _ in range(draws):
        if rate:  # conversion 20% held out, 40% targeted
            targeted, holdout = rng.random(n_targeted) < 0.4, rng.random(n_holdout) < 0.2
        else:  # orders per customer: Poisson 0.5 held out, 1.0 targeted
            targeted, holdout = rng.poisson(1.0, n_targeted), rng.poisson(0.5, n_holdout)
        result = compare("m", targeted.astype(float), holdout.astype(float), rate)
        covered += result.relative_ci_low <= 1.0 <= result.relative_ci_high
    assert 0.93 <= covered / draws <= 0.97


def test_measure_to_dict_is_json_ready(tiny):
    out = measure(MEMBERS, PROMO, tiny, START, END).to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["customers"] == {"targeted": 4, "holdout": 2}
    assert out["start"] == "2026-06-01T00:00:00" and out["holdout_percent"] == 50.0
    assert [m["metric"] for m in out["metrics"]] == ["conversion_rate", "mean_orders", "mean_spend"]


def test_a_zero_holdout_figure_has_no_lift(tiny):
    """Holdout c4 alone never buys: lift is undefined; both conversion rates are constant (1 and 0), so there is no
    standard error and no p-value; a holdout of one has no sample variance, so no interval for the means."""
    members = pd.DataFrame({"customer_id": ["c2", "c3", "c4"]})
    table = measure(members, PROMO, tiny, START, END).table().set_index("metric")
    assert table.loc["customers", "holdout"] == 1 and table.loc["conversion_rate", "holdout"] == 0
    assert math.isnan(table.loc["conversion_rate", "lift"]) and math.isnan(table.loc["mean_spend", "lift"])
    assert table.loc[["conversion_rate", "mean_spend"], ["relative_ci_low", "relative_ci_high"]].isna().all().all()
    assert table.loc["conversion_rate", "difference"] == 1.0
    assert table.loc["conversion_rate", "p_value"] == pytest.approx(_fisher_two_sided(2, 2, 0, 1))  # exact: 1/3
    assert math.isnan(table.loc["mean_orders", "ci_low"])            # a group of one has no sample variance


def test_holdout_split_is_deterministic_and_is_in_holdout(generated_validation):
    ids = generated_validation.con.execute("SELECT customer_id FROM customers ORDER BY customer_id LIMIT 600").df()
    segment = load_segments()["loyal"]
    first = measure(ids, segment, generated_validation, datetime(2026, 3, 1), datetime(2026, 6, 1))
    shuffled = pd.concat([ids.sample(frac=1, random_state=3), ids.head(50)])  # reordered, with duplicates
    second = measure(shuffled, segment, generated_validation, datetime(2026, 3, 1), datetime(2026, 6, 1))
    held = in_holdout(ids["customer_id"], "loyal", segment.holdout_percent).sum()
    assert (first.targeted_customers, first.holdout_customers) == (600 - held, held)
    assert 0 < held < 600
    pd.testing.assert_frame_equal(first.table(), second.table())


def test_members_measured_a_chunk_at_a_time_give_the_whole_measurement(generated_validation):
    """Issue 14: a report counts a segment's outcomes a chunk of members at a time, keeping only their numbers; the
    lift equals `measure` on all members at once."""
    from serving.segments.lift import group_outcomes, measure_groups

    ids = generated_validation.con.execute("SELECT customer_id FROM customers ORDER BY customer_id LIMIT 900").df()
    segment, start, end = load_segments()["inactive"], datetime(2026, 3, 1), datetime(2026, 6, 1)
    chunks = [ids["customer_id"].to_numpy()[i : i + 97] for i in range(0, len(ids), 97)]
    targeted, holdout = group_outcomes(segment, chunks, generated_validation, start, end)
    assert len(targeted) + len(holdout) == 900 and len(holdout) == in_holdout(ids["customer_id"], "inactive", 10).sum()
    whole = measure(ids, segment, generated_validation, start, end).table()
    pd.testing.assert_frame_equal(measure_groups(segment, start, end, targeted, holdout).table(), whole,
                                  check_exact=False, rtol=1e-12)
    assert whole.loc[whole["metric"] == "mean_spend", "targeted"].iloc[0] > 0


def test_measure_errors(tiny):
    with pytest.raises(ValueError, match="window is empty: end 2026-06-01 00:00 is not after start 2026-06-01"):
        measure(MEMBERS, PROMO, tiny, START, START)
    with pytest.raises(ValueError, match="members needs a customer_id column; it has id"):
        measure(pd.DataFrame({"id": ["c1"]}), PROMO, tiny, START, END)
    with pytest.raises(ValueError, match=r"no holdout members: the segment 'promo' has 4 members and a holdout of "
                                         r"50%"):
        measure(pd.DataFrame({"customer_id": TARGETED}), PROMO, tiny, START, END)
    with pytest.raises(ValueError, match="no targeted members: all 2 members of the segment 'promo'"):
        measure(pd.DataFrame({"customer_id": HELD}), PROMO, tiny, START, END)
    no_holdout = replace(PROMO, holdout_percent=0.0)
    with pytest.raises(ValueError, match="6 members and a holdout of 0%: without a holdout"):
        measure(MEMBERS, no_holdout, tiny, START, END)


# ---------------------------------------------------------------------------------------------------------------
# Backtest on the generated programme (data ends 2026-07-01)

DATES = [datetime(2026, 1, 1), datetime(2026, 4, 1)]  # 2026-04-01 + 90 days = 2026-06-30: the latest full window


@pytest.fixture(scope="module")
def backtests(generated_validation):
    segments = load_segments()
    return {name: backtest(segments, name, generated_validation, DATES) for name in ("inactive", "loyal")}


def test_backtest_columns(backtests):
    frame = backtests["loyal"]
    metric_columns = [f"{m}_{side}" for m in BACKTEST_METRICS for side in ("members", "population", "ratio")]
    assert list(frame.columns) == ["as_of", "members", "population", "member_share", *metric_columns]
    assert frame["as_of"].tolist() == DATES
    np.testing.assert_allclose(frame["churn_rate_members"] + frame["conversion_rate_members"], 1.0)
    np.testing.assert_allclose(frame["member_share"], frame["members"] / frame["population"])


def test_backtest_finds_the_planted_behaviour(backtests):
    """No purchase in 90 days predicts churn; two purchases over 100 in two weeks predicts staying."""
    inactive, loyal = backtests["inactive"], backtests["loyal"]
    assert (inactive["churn_rate_members"] > inactive["churn_rate_population"] + 0.3).all()
    assert (inactive["churn_rate_ratio"] > 1.5).all()
    assert (loyal["churn_rate_members"] < loyal["churn_rate_population"] / 2).all()
    assert (loyal["churn_rate_ratio"] < 0.5).all()
    assert (loyal["mean_orders_ratio"] > 1.5).all() and (loyal["mean_spend_ratio"] > 1.5).all()


def test_backtest_sizes_and_rates_match_an_independent_count(backtests, generated_validation):
    from features.pipeline import build_feature_table

    as_of, row = DATES[0], backtests["loyal"].iloc[0]
    features = build_feature_table(generated_validation, as_of).table
    loyal = features.loc[(features["orders_count_14d"] >= 2) & (features["spend_sum_14d"] > 100), "customer_id"]
    population = features.loc[features["orders_count_365d"] > 0, "customer_id"]
    assert row["members"] == len(loyal) > 0 and row["population"] == len(population)
    assert backtests["inactive"].iloc[0]["members"] == (features["orders_count_90d"] == 0).sum()
    buyers = set(generated_validation.con.execute(
        "SELECT DISTINCT customer_id FROM transactions WHERE NOT is_return AND timestamp >= ? AND timestamp < ?",
        [as_of, as_of + timedelta(days=90)]).df()["customer_id"])
    assert row["churn_rate_members"] == pytest.approx(1 - loyal.isin(buyers).mean())
    assert row["churn_rate_population"] == pytest.approx(1 - population.isin(buyers).mean())


def test_backtest_refuses_incomplete_windows(generated_validation):
    with pytest.raises(ValueError, match=r"90-day outcome window after 2026-05-01 ends on 2026-07-30, after the last "
                                         r"transaction \(2026-06-30\).*up to 2026-04-02"):
        backtest(load_segments(), "loyal", generated_validation, [datetime(2026, 1, 1), datetime(2026, 5, 1)])


def test_backtest_refuses_model_outputs(generated_validation):
    with pytest.raises(ValueError, match="'likely_to_churn' is a predictive segment.*trained on later data.*leak"):
        backtest(load_segments(), "likely_to_churn", generated_validation, DATES)
    refers = parse_segments("segments:\n  risky: {kind: predictive, when: churn_band == high}\n"
                            "  risky_big: {when: {all: [segment risky, spend_sum_90d > 100]}}\n")
    with pytest.raises(ValueError, match="'risky_big': it reads model outputs through segment 'risky'"):
        backtest(refers, "risky_big", generated_validation, DATES)
    with pytest.raises(KeyError, match="no segment named 'loyall'"):
        backtest(load_segments(), "loyall", generated_validation, DATES)
