"""Uplift (issue 15, item 4): the generator's planted campaign effect, the campaign rows, the Qini figures by hand,
and the product's `segments train uplift` with its defaults recovering who is moved and beating "target the likeliest
buyers" out of time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.synthetic.generator import OFFER_WINDOW_DAYS, PLANTED_OFFER_RESPONSE, generate_tables
from training.estimators.uplift import campaign_audiences, qini, qini_curve, uplift_at

AS_OF = datetime(2026, 7, 1)
SEGMENTS = shutil.which("segments", path=str(Path(sys.executable).parent)) or "segments"


def test_qini_curve_and_coefficient_by_hand():
    # Rows in score order: treated buyer, held-out non-buyer, treated non-buyer, held-out buyer.
    treated = np.array([True, False, True, False])
    converted = np.array([True, False, False, True])
    best_first = np.array([4.0, 3.0, 2.0, 1.0])
    # Q(k) = Y_t(k) - Y_c(k) N_t(k) / N_c(k), per audience member: 1, 1, 1, 1 - 1 * 2 / 2 = 0 -> / 4.
    np.testing.assert_allclose(qini_curve(converted, treated, best_first), [0.25, 0.25, 0.25, 0.0])
    assert qini(converted, treated, best_first) == pytest.approx(1.0)  # this is the perfect order
    # Reversed: Q = 0, 0 - 1, 0 - 1 * 1 / 2, 1 - 1 = 0 -> mean -0.09375 against the perfect 0.1875.
    assert qini(converted, treated, -best_first) == pytest.approx(-0.5)
    assert uplift_at(converted, treated, best_first, 50) == pytest.approx(1.0)  # top 2: 1 bought of 1 treated, 0 of 1
    assert np.isnan(uplift_at(converted, treated, best_first, 25))  # the top 1 has no held-out customer


def test_generator_plants_the_offer_effect_by_persona_and_leaves_other_draws_alone():
    with_offers = generate_tables(3000, 24, seed=3, end=AS_OF)
    without = generate_tables(3000, 24, seed=3, end=AS_OF, offer_campaigns=0)
    pd.testing.assert_frame_equal(with_offers.ground_truth.drop(columns="offer_response"),
                                  without.ground_truth.drop(columns="offer_response"))
    organic = with_offers.transactions.drop(columns="transaction_id")
    pd.testing.assert_frame_equal(  # every purchase of the run without offers is in the run with them
        without.transactions.drop(columns="transaction_id").merge(organic, how="left", indicator=True)[["_merge"]],
        pd.DataFrame({"_merge": pd.Categorical(["both"] * len(without.transactions),
                                               categories=["left_only", "right_only", "both"])}))
    assert (with_offers.ground_truth["offer_response"]
            == with_offers.ground_truth["persona"].map(PLANTED_OFFER_RESPONSE)).all()

    audience = with_offers.events[with_offers.events["campaign_id"].str.startswith("OFR", na=False)]
    assert set(audience["event_type"]) == {"email_sent", "campaign_holdout"}
    assert (audience["event_type"] == "campaign_holdout").mean() == pytest.approx(0.3, abs=0.03)
    start = audience.groupby("campaign_id")["timestamp"].transform("min")
    buys = with_offers.transactions.loc[~with_offers.transactions["is_return"], ["customer_id", "timestamp"]]
    rows = audience.assign(start=start).merge(buys, on="customer_id", how="left", suffixes=("", "_buy"))
    rows["bought"] = rows["timestamp_buy"].ge(rows["start"]) & rows["timestamp_buy"].lt(
        rows["start"] + pd.Timedelta(days=OFFER_WINDOW_DAYS))
    per_member = rows.groupby(["campaign_id", "customer_id", "event_type"])["bought"].any().reset_index()
    per_member["persona"] = per_member["customer_id"].map(with_offers.ground_truth.set_index("customer_id")["persona"])
    rate = per_member.pivot_table(index="persona", columns="event_type", values="bought")
    effect = rate["email_sent"] - rate["campaign_holdout"]
    assert effect["occasional"] > 0.12  # planted 0.3 x P(no organic purchase in 2 weeks ~ 0.8)
    assert abs(effect["vip"]) < 0.06 and abs(effect["serial_returner"]) < 0.08  # planted 0


def test_campaign_audiences_need_a_holdout_and_an_observed_window():
    con = duckdb.connect()
    con.execute("CREATE TABLE events (event_id VARCHAR, customer_id VARCHAR, timestamp TIMESTAMP, "
                "event_type VARCHAR, campaign_id VARCHAR)")
    rows = [("A", "c1", "2026-05-01 10:00", "email_sent"), ("A", "c1", "2026-05-01 12:00", "email_open"),
            ("A", "c2", "2026-05-01 10:05", "campaign_holdout"), ("A", "c3", "2026-05-01 10:01", "email_sent"),
            ("A", "c3", "2026-05-01 10:02", "campaign_holdout"),  # both: left out, counted
            ("B", "c1", "2026-05-10 10:00", "email_sent"),  # no holdout: nothing to learn from
            ("C", "c1", "2026-06-25 10:00", "email_sent"), ("C", "c2", "2026-06-25 10:00", "campaign_holdout"),
            ("D", "c1", "2025-01-01 10:00", "email_sent"), ("D", "c2", "2025-01-01 10:00", "campaign_holdout")]
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    [(f"E{i}", c, t, kind, campaign) for i, (campaign, c, t, kind) in enumerate(rows)])
    audience, conflicting = campaign_audiences(con, AS_OF, window_days=14, lookback_days=365)
    # C's window ends after as_of, D started more than a year before it.
    assert audience.to_dict("records") == [
        {"campaign_id": "A", "start": pd.Timestamp("2026-05-01 10:00"), "customer_id": "c1", "treated": True},
        {"campaign_id": "A", "start": pd.Timestamp("2026-05-01 10:00"), "customer_id": "c2", "treated": False}]
    assert conflicting == 1


def test_train_uplift_with_its_defaults_recovers_the_planted_effect_and_beats_likeliest_buyers(
        generated, tmp_path):
    """The product's command with its defaults on the session's generated programme (4,000 customers, 8 offers):
    out of time (the two latest offers held out), the Qini of the uplift model is above the likeliest-buyers
    heuristic's with the paired-bootstrap interval of the margin above 0; the served scores rank the planted
    persuadables first and follow the planted per-customer effect."""
    import mlflow

    from serving.scorer import ModelExplainer
    from training.tracking import load_model

    data, folder = generated
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}
    result = subprocess.run([SEGMENTS, "train", "uplift", "--data", str(folder), "--as-of", "2026-07-01"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "segments-uplift" in result.stdout and "likeliest_buyers" in result.stdout

    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("segments-uplift").experiment_id])[0]
    metrics = run.data.metrics
    assert metrics["qini"] > metrics["baseline.likeliest_buyers.qini"]
    assert metrics["margin_ci_low"] > 0, metrics  # over the best baseline, resampling customers
    assert metrics["uplift_at_20"] > metrics["average_uplift"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        model, _ = load_model("segments-uplift")
        from features.build import FeatureQuery
        from features.pipeline import load_validated

        validation = load_validated(folder)
        features = FeatureQuery(validation.columns).run_duckdb(validation.con, AS_OF)
    score = model.predict(features)["uplift_score"].to_numpy()
    truth = data.ground_truth.set_index("customer_id").loc[features["customer_id"]]
    by_persona = pd.Series(score).groupby(truth["persona"].to_numpy()).mean()
    assert by_persona.idxmax() == "occasional"
    for persona in ("vip", "serial_returner", "bargain_hunter", "engaged_non_buyer"):
        assert by_persona["occasional"] - by_persona[persona] > 0.08, by_persona
    # The planted effect on buying within the window, for a customer alive at as_of: response x P(no organic buy).
    alive = truth["churn_time"].isna().to_numpy()
    planted = truth["offer_response"].to_numpy() * np.exp(-truth["purchase_rate_per_day"].to_numpy()
                                                          * OFFER_WINDOW_DAYS)
    correlation = spearmanr(score[alive], planted[alive]).statistic
    assert correlation > 0.4, correlation

    explainer = ModelExplainer("segments-uplift", model)  # reasons in probability points add up to the score
    contributions, base = explainer.contributions(features.head(50))
    np.testing.assert_allclose(contributions.sum(axis=1) + base, score[:50], atol=1e-9)


def test_without_campaigns_train_uplift_says_why_and_train_all_skips_it(tmp_path):
    from features.errors import NothingToLearnError
    from features.pipeline import load_validated
    from features.synthetic.generator import write_tables
    from serving.cli.model_commands import _train
    from training.train import TrainingData, train_uplift

    write_tables(generate_tables(300, 12, seed=1, end=AS_OF, offer_campaigns=0), tmp_path)
    data = TrainingData(load_validated(tmp_path), AS_OF, str(tmp_path))
    with pytest.raises(NothingToLearnError, match=r"no campaign with a holdout .*\(campaign_holdout events\)"):
        train_uplift(data, {})
    assert _train(data, "uplift", {}, 90, None, optional=True) == (None, True)


def test_a_row_budget_keeps_every_campaign_and_arm_share():
    from training.estimators.uplift import sample_audience

    rng = np.random.default_rng(0)
    audience = pd.DataFrame({"campaign_id": rng.choice(["A", "B", "C"], 30_000, p=[0.5, 0.3, 0.2]),
                             "treated": rng.random(30_000) < 0.7})
    sampled = sample_audience(audience, 6_000, seed=1)
    assert abs(len(sampled) - 6_000) < 300  # ~6,000 (binomial), never all
    pd.testing.assert_series_equal(sampled.value_counts(normalize=True).sort_index(),
                                   audience.value_counts(normalize=True).sort_index(), atol=0.02)
    assert sample_audience(audience, 50_000, seed=1) is audience  # under the budget: every row
