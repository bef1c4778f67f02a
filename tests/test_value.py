"""Value model (expected purchases and spend over the horizon): out-of-time ranking against baselines, behaviour,
persistence. Same generated programme and snapshot schedule as tests/test_churn.py."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.build import FeatureQuery
from features.errors import InsufficientDataError
from training.estimators.baselines import BGNBDBaseline, last_horizon_repeats, rfm_summary
from training.estimators.churn import snapshot_dates
from training.estimators.value import ValueConfig, ValueModel, evaluate_value, value_rows
from training.labels import Snapshot, make_snapshot

EVAL_AS_OF = datetime(2026, 4, 1)
HORIZON = 90


@pytest.fixture(scope="module")
def snapshots(generated_validation):
    """(training snapshots oldest first, evaluation snapshot)."""
    query = FeatureQuery(generated_validation.columns)
    config = ValueConfig()
    dates = snapshot_dates(EVAL_AS_OF, HORIZON, config.n_snapshots, config.step_days)
    train = [make_snapshot(generated_validation, d, HORIZON, query) for d in dates]
    return train, make_snapshot(generated_validation, EVAL_AS_OF, HORIZON, query)


@pytest.fixture(scope="module")
def model(snapshots):
    return ValueModel().fit(snapshots[0])


@pytest.fixture(scope="module")
def evaluation(model, snapshots, generated_validation):
    return evaluate_value(model, snapshots[1], snapshots[0], generated_validation)


def test_beats_baselines_on_spend_ranking_out_of_time(evaluation):
    spearman = evaluation.metrics["spearman_spend"]
    assert spearman > evaluation.baselines["bgnbd_gamma_gamma"]["spearman_spend"] + 0.01
    assert spearman > evaluation.baselines["last_horizon"]["spearman_spend"] + 0.01
    assert evaluation.metrics["spearman_purchases"] > evaluation.baselines["last_horizon"]["spearman_purchases"]


def test_evaluation_covers_every_customer_with_tables_and_figures(evaluation, snapshots):
    _, test = snapshots
    assert evaluation.n_customers == len(test.features)  # all customers, not only the churn-eligible
    assert set(evaluation.baselines) == {"bgnbd_gamma_gamma", "last_horizon"}
    assert {"mae_spend", "rmse_spend", "spearman_spend", "top_decile_capture_spend", "mae_purchases",
            "rmse_purchases", "spearman_purchases"} <= set(evaluation.metrics)
    assert evaluation.metrics["top_decile_capture_spend"] > 0.5  # the top 10% hold most of next quarter's spend
    assert set(evaluation.tables["slices"]["slice"]) == {"loyalty", "tenure", "frequency"}
    for name, figure in evaluation.figures.items():
        ax = figure.axes[0]
        assert ax.get_title(loc="left") and "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), name


def test_trains_on_all_customers_known_at_as_of(model, snapshots):
    train, _ = snapshots
    assert model.n_train_rows_ == sum(len(s.features) for s in train)
    assert model.n_train_rows_ > sum(int(s.outcomes["eligible"].sum()) for s in train)


def test_scores_are_positive_and_keep_the_index(model, snapshots):
    _, test = snapshots
    features = test.features.set_index(test.features.index + 1000)
    scores = model.predict(features)
    assert list(scores.columns) == ["expected_purchases", "expected_spend"]
    assert scores.index.equals(features.index)
    assert (scores > 0).all().all()
    assert spearmanr(scores["expected_purchases"], scores["expected_spend"]).statistic > 0.8


def _sample(snapshots, n=300):
    _, test = snapshots
    buyers = test.features[test.features["orders_count_total"] > 0]
    return buyers.sample(n=n, random_state=0).reset_index(drop=True)


def _score_grid(model, x, variants) -> dict[str, np.ndarray]:
    """Each output for every row of `x` (rows) under each variant of its features (columns), in one call."""
    scores = model.predict(pd.concat([variant(x) for variant in variants], ignore_index=True))
    return {c: scores[c].to_numpy().reshape(len(variants), len(x)).T for c in scores.columns}


def test_a_more_recent_purchase_never_lowers_expected_value(model, snapshots):
    x = _sample(snapshots)
    days = np.arange(364, -1, -3, dtype=float)  # more and more recent
    grids = _score_grid(model, x, [lambda f, d=d: f.assign(days_since_last_order=d) for d in days])
    for column, grid in grids.items():
        assert (np.diff(grid, axis=1) >= 0).all(), column
        assert (grid[:, -1] > grid[:, 0]).mean() > 0.5, column  # recency is actually used


def test_more_purchases_never_lower_expected_value(model, snapshots):
    x = _sample(snapshots)
    windows = ["orders_count_14d", "orders_count_30d", "orders_count_90d", "orders_count_365d", "orders_count_total"]
    for single in (["orders_count_90d"], windows):
        grids = _score_grid(model, x, [lambda f, k=k, ws=tuple(single): f.assign(**{w: f[w] + k for w in ws})
                                       for k in range(0, 41, 2)])
        for column, grid in grids.items():
            assert (np.diff(grid, axis=1) >= 0).all(), (column, single)


def test_save_load_round_trip_scores_identically_without_pickles(model, snapshots, tmp_path):
    _, test = snapshots
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"booster_purchases.txt", "booster_spend.txt", "encoder.json",
                                                    "model.json"}
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
        path.read_text()
    loaded = ValueModel.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.predict(test.features), model.predict(test.features))
    assert loaded.config == model.config


def test_same_seed_gives_identical_metrics(evaluation, snapshots, generated_validation):
    train, test = snapshots
    again = evaluate_value(ValueModel(ValueConfig(seed=0)).fit(train), test, train, generated_validation)
    assert again.metrics == evaluation.metrics


def test_too_few_buyers_raises_a_clear_error(snapshots):
    train, _ = snapshots

    def without_buyers(snapshot: Snapshot) -> Snapshot:  # keep 10 buyers and everyone who did not buy
        buyer = snapshot.outcomes["purchases_next"] > 0
        keep = ~buyer | snapshot.outcomes["customer_id"].isin(snapshot.outcomes.loc[buyer, "customer_id"][:10])
        return Snapshot(snapshot.as_of, snapshot.horizon_days, snapshot.features[keep], snapshot.outcomes[keep])

    with pytest.raises(InsufficientDataError, match=r"only \d+ customers with a purchase in the 90-day horizon in "
                                                    r"the training snapshots .*minimum 50\)"):
        ValueModel().fit([without_buyers(s) for s in train])


def test_baselines_on_the_evaluation_snapshot(generated_validation, snapshots):
    """BG/NBD x Gamma-Gamma and last-horizon baselines: sensible levels, no NaN, fitted in seconds."""
    _, test = snapshots
    rfm = rfm_summary(generated_validation, EVAL_AS_OF)
    baseline = BGNBDBaseline().fit(rfm)
    assert baseline.spend_method_ == "gamma_gamma"
    spend = baseline.expected_spend(rfm, HORIZON)
    assert np.isfinite(spend).all() and (spend >= 0).all()
    x, actual = value_rows([test])
    bought = x["customer_id"].isin(rfm["customer_id"])
    # level within a factor 2 of what happened (the next quarter is in the seasonal low)
    assert 0.5 < spend.sum() / actual.loc[bought.to_numpy(), "spend_next"].sum() < 2.0
    naive = last_horizon_repeats(x, HORIZON)
    np.testing.assert_array_equal(naive["expected_purchases"], x["orders_count_90d"].astype(float))


def test_the_backtest_chooses_between_the_boosters_and_the_textbook(model, snapshots):
    """Left open, the served candidate is whichever ranks next-horizon spend better on the backtest's evaluation
    snapshot; the table keeps both figures and the served one's margin with its interval."""
    from training.evaluation import spearman

    fitted = ValueModel().fit(snapshots[0])
    assert fitted.candidate_ == "lightgbm" and fitted.textbook_ is not None
    chosen = fitted.settings_from_backtest(snapshots[1])
    x, actual = value_rows([snapshots[1]])
    served = spearman(actual["spend_next"].to_numpy(), fitted.predict(x)["expected_spend"].to_numpy())
    table = fitted.candidates_.set_index("candidate")
    assert chosen == {"candidate": fitted.candidate_} and table.loc[fitted.candidate_, "served"]
    assert served == pytest.approx(table["value"].max(), abs=1e-6)
    assert (table["served_margin"] >= 0).all()
    assert ValueModel(candidate="lightgbm").fit(snapshots[0]).settings_from_backtest(snapshots[1]) == {}


def test_the_textbook_candidate_is_served_like_the_model(snapshots, tmp_path):
    """BG/NBD x Gamma-Gamma as a served value model: the baseline's own predictions from the feature table, the
    same outputs, reasons that add up to log expected spend (exact Shapley values on its four inputs), saved and
    loaded without boosters."""
    from training.estimators import textbook
    from training.estimators.baselines import rfm_summary_from_features

    train, evaluation = snapshots
    fitted = ValueModel(candidate="bgnbd_gamma_gamma").fit(train)
    assert fitted.boosters_ == {} and fitted.candidate_ == "bgnbd_gamma_gamma"
    x = evaluation.features
    scores = fitted.predict(x)
    baseline = BGNBDBaseline().fit(rfm_summary_from_features(train[-1].features))
    rfm = rfm_summary_from_features(x)
    bought = (x["orders_count_total"].fillna(0) > 0).to_numpy()
    np.testing.assert_allclose(scores["expected_spend"].to_numpy()[bought], baseline.expected_spend(rfm, HORIZON),
                               rtol=1e-6)
    assert (scores.loc[~bought, "expected_spend"] == 0).all()
    rows = x.head(200)
    contributions = fitted.contributions(rows)
    np.testing.assert_allclose(contributions.sum(axis=1), fitted.margin(rows), rtol=0, atol=1e-9)
    columns = [fitted.encoder_.feature_names_.index(c) for c in textbook.VALUE_INPUTS]
    moved = set(np.flatnonzero(np.abs(contributions.to_numpy()).max(axis=0) > 0))
    assert moved <= {*columns, contributions.shape[1] - 1}  # its four inputs and the base value
    fitted.save(tmp_path / "textbook")
    loaded = ValueModel.load(tmp_path / "textbook")
    pd.testing.assert_frame_equal(loaded.predict(x), scores)


def test_a_programme_too_small_for_the_boosters_falls_back_to_the_textbook(snapshots):
    with pytest.raises(InsufficientDataError):
        ValueModel(min_buyers=10**6).fit(snapshots[0])
    settings = ValueModel.fallback_settings(InsufficientDataError("few"))
    fitted = ValueModel(min_buyers=10**6, **settings).fit(snapshots[0])
    assert fitted.candidate_ == "bgnbd_gamma_gamma" and fitted.predict(snapshots[1].features).notna().all().all()
