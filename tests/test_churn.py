"""Churn model: quality against the generator's oracle and the baselines, behaviour, calibration, persistence.

Model tests run on the session's generated programme (4000 customers x 24 months to 2026-07-01). The evaluation
snapshot is as of 2026-04-01 with a 90-day horizon, so its outcome window ends inside the data; training snapshots
come from `snapshot_dates` (2025-10-03 .. 2026-01-01, one every 30 days).
"""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from features.build import FeatureQuery
from features.catalog import FEATURES_BY_NAME
from features.errors import InsufficientDataError
from features.synthetic.generator import PLANTED_CHURN_DRIVERS, oracle_churn_probability
from training.estimators.baselines import rfm_summary
from training.estimators.churn import (
    ChurnConfig,
    ChurnModel,
    apply_calibration,
    customer_folds,
    evaluate_churn,
    fit_calibration,
    snapshot_dates,
)
from training.evaluation import expected_calibration_error, lift_at
from training.labels import Snapshot, make_snapshot

EVAL_AS_OF = datetime(2026, 4, 1)
HORIZON = 90
ORACLE_MARGIN = 0.03  # the model's ROC-AUC may trail the Bayes oracle by at most this
ECE_BOUND = 0.05


@pytest.fixture(scope="module")
def snapshots(generated_validation):
    """(training snapshots oldest first, evaluation snapshot)."""
    query = FeatureQuery(generated_validation.columns)
    config = ChurnConfig()
    dates = snapshot_dates(EVAL_AS_OF, HORIZON, config.n_snapshots, config.step_days)
    train = [make_snapshot(generated_validation, d, HORIZON, query) for d in dates]
    return train, make_snapshot(generated_validation, EVAL_AS_OF, HORIZON, query)


@pytest.fixture(scope="module")
def model(snapshots):
    return ChurnModel().fit(snapshots[0])


@pytest.fixture(scope="module")
def evaluation(model, snapshots, generated_validation):
    return evaluate_churn(model, snapshots[1], snapshots[0], generated_validation)


@pytest.fixture(scope="module")
def eligible(snapshots):
    """Features and churn label of the evaluation snapshot's eligible customers."""
    return snapshots[1].churn_frame()


# ---------------------------------------------------------------------------------------------------------------
# Quality: oracle and baselines


def test_roc_auc_is_within_margin_of_the_oracle(model, eligible, generated):
    x, y = eligible
    data, _ = generated
    oracle = oracle_churn_probability(data.ground_truth, data.transactions, EVAL_AS_OF, HORIZON)
    oracle = oracle.reindex(x["customer_id"].astype(str)).to_numpy()
    assert not np.isnan(oracle).any()  # same customers, same label
    oracle_auc = roc_auc_score(y, oracle)
    model_auc = roc_auc_score(y, model.predict_proba(x))
    assert model_auc >= oracle_auc - ORACLE_MARGIN, f"model {model_auc:.4f} vs oracle {oracle_auc:.4f}"
    assert model_auc <= oracle_auc + 0.005  # more than the Bayes ceiling would mean leakage


def test_model_beats_recency_and_bgnbd_baselines(evaluation):
    m, base = evaluation.metrics, evaluation.baselines
    assert m["roc_auc"] > base["recency"]["roc_auc"] + 0.03
    assert m["roc_auc"] > base["bgnbd"]["roc_auc"]
    assert m["pr_auc"] > base["bgnbd"]["pr_auc"]
    assert m["brier"] < base["bgnbd"]["brier"]
    assert m["log_loss"] < base["bgnbd"]["log_loss"]


def test_planted_drivers_lead_the_explanations(model, eligible):
    """Exact TreeSHAP (LightGBM pred_contrib), rolled up to the catalog's business attributes as explanations are."""
    x, _ = eligible
    contributions = pd.DataFrame(model.booster_.predict(model.encoder_.transform(x), pred_contrib=True)[:, :-1],
                                 columns=model.encoder_.feature_names_)
    by_feature = contributions.abs().mean().sort_values(ascending=False)
    by_attribute = (contributions.T.groupby(lambda name: FEATURES_BY_NAME[name].group).sum().T
                    .abs().mean().sort_values(ascending=False))
    planted_attributes = {FEATURES_BY_NAME[name].group for name in PLANTED_CHURN_DRIVERS}
    assert "days_since_last_order" in by_feature.index[:3]
    assert len(planted_attributes & set(by_attribute.index[:3])) >= 2, by_attribute.head(5)
    assert not {"profile", "assortment", "channel"} & set(by_attribute.index[:3])  # no spurious driver on top


def test_evaluation_reports_metrics_baselines_slices_and_figures(evaluation, eligible):
    assert evaluation.n_customers == len(eligible[0])
    assert evaluation.as_of == EVAL_AS_OF
    assert set(evaluation.metrics) >= {"roc_auc", "pr_auc", "brier", "log_loss", "lift_top_decile", "ece"}
    assert set(evaluation.baselines) == {"recency", "bgnbd", "pnbd"}
    comparison = evaluation.tables["baseline_comparison"].set_index("baseline")
    assert set(comparison.index) == {"recency", "bgnbd", "pnbd"}
    assert (comparison["ci_low"] <= comparison["margin"]).all() and (comparison["margin"] <= comparison["ci_high"]).all()
    best = comparison["value"].idxmax()
    assert evaluation.metrics["margin_vs_best_baseline"] == pytest.approx(comparison.loc[best, "margin"])
    assert evaluation.metrics["roc_auc"] - evaluation.baselines[best]["roc_auc"] == pytest.approx(
        evaluation.metrics["margin_vs_best_baseline"])
    assert evaluation.metrics["lift_top_decile"] > 3.0  # top decile churns at > 3x the base rate
    slices = evaluation.tables["slices"]
    assert set(slices["slice"]) == {"loyalty", "tenure", "frequency"}
    assert (slices.groupby("slice")["n"].sum() == evaluation.n_customers).all()
    window = evaluation.tables["data_window"]
    assert list(window["role"]) == ["train", "train", "train", "train", "evaluation"]
    for name, figure in evaluation.figures.items():
        ax = figure.axes[0]
        assert ax.get_title(loc="left") and ax.get_xlabel() and ax.get_ylabel(), name
        assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), f"{name}: axis labels carry units"
    assert set(evaluation.figures) == {"calibration", "lift", "gains", "shap_summary"}
    importance = evaluation.tables["shap_importance"]
    assert importance["mean_abs_shap"].is_monotonic_decreasing and importance["feature"].iloc[0] in {
        "days_since_last_order", "overdue_ratio", "order_gap_mean_days"}  # recency/rhythm drive planted churn


def test_evaluation_refuses_a_training_snapshot_that_is_not_out_of_time(model, snapshots):
    train, _ = snapshots
    with pytest.raises(ValueError, match="not be out of time"):
        evaluate_churn(model, train[-2], train)


# ---------------------------------------------------------------------------------------------------------------
# Behaviour: monotone in recency and frequency


def _sample(eligible, n=300):
    x, _ = eligible
    return x.sample(n=n, random_state=0).reset_index(drop=True)


def _probability_grid(model, x, variants) -> np.ndarray:
    """Churn probability of every row of `x` (rows) under each variant of its features (columns), in one call."""
    stacked = pd.concat([variant(x) for variant in variants], ignore_index=True)
    return model.predict(stacked)["churn_probability"].to_numpy().reshape(len(variants), len(x)).T


@pytest.mark.parametrize("which", ["model", "blended"])
def test_a_later_last_purchase_never_lowers_churn_probability(which, eligible, request):
    """The trees are constrained; the textbook term (the blended model) keeps the property by itself."""
    model = request.getfixturevalue(which)
    x = _sample(eligible)
    # A fine grid: an unconstrained model trained on the same data breaks this at hundreds of points.
    days = np.arange(0, 365, 3, dtype=float)
    grid = _probability_grid(model, x, [lambda f, d=d: f.assign(days_since_last_order=d) for d in days])
    assert (np.diff(grid, axis=1) >= 0).all()
    assert (grid[:, -1] > grid[:, 0]).mean() > 0.9  # and recency is actually used


@pytest.mark.parametrize("windows", [["orders_count_90d"], ["orders_count_365d"], ["orders_count_total"],
                                     ["orders_count_14d", "orders_count_30d", "orders_count_90d",
                                      "orders_count_365d", "orders_count_total"]])
def test_more_purchases_never_raise_churn_probability(model, eligible, windows):
    x = _sample(eligible)
    grid = _probability_grid(model, x, [lambda f, k=k: f.assign(**{w: f[w] + k for w in windows})
                                        for k in range(0, 41, 2)])
    assert (np.diff(grid, axis=1) <= 0).all()


# ---------------------------------------------------------------------------------------------------------------
# Calibration


def test_calibrated_probabilities_are_calibrated_out_of_time(evaluation, model):
    assert evaluation.metrics["ece"] < ECE_BOUND
    assert evaluation.metrics["ece"] < evaluation.metrics["ece_uncalibrated"]
    assert model.calibration_method_ in ("isotonic", "sigmoid")
    assert set(model.calibration_scores_) == {"isotonic", "sigmoid"}
    assert model.calibration_scores_[model.calibration_method_] == min(model.calibration_scores_.values())


def test_isotonic_calibration_matches_sklearn_and_stays_inside_zero_one():
    rng = np.random.default_rng(0)
    margin = rng.normal(size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-2 * margin))).astype(int)
    calibration = fit_calibration("isotonic", margin, y)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(margin, y)
    grid = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(apply_calibration(calibration, grid), np.clip(reference.predict(grid), 1e-4, 1 - 1e-4))
    sigmoid = fit_calibration("sigmoid", margin, y)
    reference = LogisticRegression(C=1e9, tol=1e-10).fit(margin[:, None], y)  # unpenalised maximum likelihood
    assert sigmoid["a"] == pytest.approx(reference.coef_[0, 0], rel=1e-3)
    assert sigmoid["b"] == pytest.approx(reference.intercept_[0], abs=1e-3)


def test_ece_and_lift_on_hand_computed_examples():
    # bin [0.1, 0.2): two customers predicted 0.1 and 0.1, one churned -> gap 0.4; bin [0.9, 1]: 0.9 vs 1 -> 0.1
    y, p = np.array([0, 1, 1]), np.array([0.1, 0.1, 0.9])
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.4 + 1 * 0.1) / 3)
    # 10 customers, 2 churners; the top 10% (1 customer) is a churner: rate 1.0 vs 0.2 -> lift 5
    assert lift_at(np.r_[1, 1, np.zeros(8)], np.arange(10, 0, -1)) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------------------------
# Persistence and determinism


def test_save_load_round_trip_scores_identically_without_pickles(model, eligible, tmp_path):
    x, _ = eligible
    model.save(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"booster.txt", "encoder.json", "calibration.json", "model.json"}
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
        path.read_text()  # every file is text
    loaded = ChurnModel.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.margin(x), model.margin(x))
    assert loaded.config == model.config
    assert loaded.fit_as_of_ == model.fit_as_of_


def test_same_seed_gives_identical_metrics(evaluation, snapshots, generated_validation):
    train, test = snapshots
    again = evaluate_churn(ChurnModel(ChurnConfig(seed=0)).fit(train), test, train, generated_validation)
    assert again.metrics == evaluation.metrics
    assert again.baselines == evaluation.baselines


def test_too_few_churners_raises_a_clear_error(snapshots):
    train, _ = snapshots

    def tiny(snapshot: Snapshot) -> Snapshot:
        keep = snapshot.features["customer_id"].isin(snapshot.features["customer_id"].iloc[:60])
        return Snapshot(snapshot.as_of, snapshot.horizon_days, snapshot.features[keep], snapshot.outcomes[keep])

    with pytest.raises(InsufficientDataError, match=r"only \d+ (non-)?churners in the training snapshots .*"
                                                    r"minimum 50\).*--as-of"):
        ChurnModel().fit([tiny(s) for s in train])


def test_snapshots_end_their_outcomes_by_the_end_date_and_folds_keep_a_customer_together(snapshots):
    train, evaluation = snapshots
    assert [s.as_of for s in train] == [datetime(2025, 10, 3), datetime(2025, 11, 2), datetime(2025, 12, 2),
                                        datetime(2026, 1, 1)]
    assert all((evaluation.as_of - s.as_of).days >= HORIZON for s in train)  # out of time for the evaluation
    rows = pd.concat([s.churn_frame()[0] for s in train], ignore_index=True)
    assert rows["customer_id"].duplicated().any()  # the same customers recur across the overlapping snapshots
    folds = customer_folds(rows["customer_id"], 5, seed=0)
    held_out = np.concatenate([held for _, held in folds])
    assert sorted(held_out) == list(range(len(rows)))  # every row is held out exactly once
    for fit_rows, held in folds:
        shared = set(rows["customer_id"].iloc[fit_rows]) & set(rows["customer_id"].iloc[held])
        assert not shared  # no customer's label is seen by the rows that early-stop and calibrate


def test_bgnbd_summary_agrees_with_the_feature_table(generated_validation, snapshots):
    _, test = snapshots
    rfm = rfm_summary(generated_validation, EVAL_AS_OF).set_index("customer_id")
    features = test.features.set_index("customer_id")
    buyers = features[features["orders_count_total"] > 0]
    assert set(rfm.index) == set(buyers.index)
    rfm = rfm.loc[buyers.index]
    assert (rfm["orders"] == buyers["orders_count_total"]).all()
    assert (rfm["frequency"] <= rfm["orders"] - 1).all() and (rfm["recency"] < rfm["T"]).all()
    np.testing.assert_allclose(rfm["T"] - rfm["recency"], buyers["days_since_last_order"], atol=1.0)


# ---------------------------------------------------------------------------------------------------------------
# A textbook baseline never blocks the model (issue 11, item 6)


def test_a_baseline_that_does_not_fit_is_a_note_not_an_error(model, snapshots, monkeypatch):
    from training.estimators import churn as churn_module
    from training.estimators.baselines import BaselineFitError

    def refuse(self, rfm):
        raise BaselineFitError("BetaGeoFitter did not fit (planted)")

    monkeypatch.setattr(churn_module.BGNBDBaseline, "fit", refuse)
    train, evaluation_snapshot = snapshots
    evaluation = evaluate_churn(model, evaluation_snapshot, train)
    assert "bgnbd" not in evaluation.baselines and {"recency", "pnbd"} <= set(evaluation.baselines)
    assert evaluation.metrics["roc_auc"] > 0.5
    assert any("BG/NBD baseline left out" in note and "planted" in note for note in evaluation.notes)


def test_a_textbook_fit_is_retried_with_a_stronger_penalizer():
    from training.estimators.baselines import BaselineFitError, fit_purchase_model

    class FitsOnlyWhenPenalized:
        def __init__(self, penalizer_coef):
            self.penalizer_coef = penalizer_coef

        def fit(self, frequency, recency, T):
            if self.penalizer_coef < 0.01:
                raise ValueError("The model did not converge")
            self.params_ = pd.Series({"r": 0.5, "alpha": 2.0})
            return self

    rfm = pd.DataFrame({"frequency": [0, 1, 2], "recency": [0.0, 5.0, 9.0], "T": [10.0, 10.0, 10.0]})
    fitted, penalizer = fit_purchase_model(FitsOnlyWhenPenalized, rfm, (0.001, 0.01, 0.1))
    assert penalizer == 0.01 and fitted.penalizer_coef == 0.01
    with pytest.raises(BaselineFitError, match="penalizer 0.001: The model did not converge"):
        fit_purchase_model(FitsOnlyWhenPenalized, rfm, (0.001,))


def test_the_bootstraps_auc_is_sklearns_with_ties():
    from training.evaluation import roc_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    score = np.round(rng.normal(size=2000) + 0.7 * y, 1)  # rounded: many ties, which count half
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_the_counted_auc_of_a_resample_is_the_auc_of_its_rows():
    from training.evaluation import ResampledAUC, bootstrap_interval, roc_auc

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 3000).astype(float)
    score = np.round(rng.normal(size=3000) + 0.5 * y, 1)  # ties within and across classes
    counted = ResampledAUC(y, score)
    for _ in range(30):
        rows = rng.integers(0, len(y), len(y))
        assert counted(rows) == pytest.approx(roc_auc(y[rows], score[rows]), abs=1e-15)
    # The interval is the one ranking every resample gives (same draws; a metric without a counted form ranks)
    ranked = bootstrap_interval(lambda a, b: roc_auc(a, b), y, score, rounds=60)
    assert bootstrap_interval(roc_auc, y, score, rounds=60) == pytest.approx(ranked, abs=1e-15)


@pytest.fixture(scope="module")
def blended(snapshots):
    """A churn model with the textbook term at a fixed weight (the training protocol chooses it out of time)."""
    return ChurnModel(textbook_weight=0.5).fit(snapshots[0])


def test_the_textbook_term_is_in_the_margin_and_its_explanation_adds_up(blended, eligible, tmp_path):
    """margin = trees + weight x (-log Pareto/NBD expected purchases); contributions (TreeSHAP of the trees plus the
    term's exact Shapley values on its three inputs) add up to it, in the model, the shap plots and after load."""
    from training.estimators import textbook
    from training.plots import shap_explanation

    x = eligible[0].head(300)
    assert blended.textbook_ is not None and blended.textbook_weight_ == 0.5
    X = blended.encoder_.matrix(x)
    trees = blended.booster_.predict(X, raw_score=True)
    columns = [blended.encoder_.feature_names_.index(c) for c in textbook.INPUTS]
    term = textbook.term(blended.textbook_, X[:, columns], HORIZON)
    np.testing.assert_allclose(blended.margin(x), trees + 0.5 * term, rtol=0, atol=1e-9)
    contributions = blended.contributions(x)
    np.testing.assert_allclose(contributions.sum(axis=1), blended.margin(x), rtol=0, atol=1e-9)
    pure_trees = blended.booster_.predict(X, pred_contrib=True)
    moved = np.flatnonzero(np.abs(contributions.to_numpy() - pure_trees).max(axis=0) > 0)
    assert set(moved) <= {*columns, X.shape[1]}  # only the term's inputs and the base value change
    explanation, _ = shap_explanation(blended, x, sample=300)
    np.testing.assert_allclose(explanation.values.sum(axis=1) + explanation.base_values,
                               blended.margin(explanation_rows(x, 300)), rtol=0, atol=1e-9)
    blended.save(tmp_path / "blended")
    loaded = ChurnModel.load(tmp_path / "blended")
    pd.testing.assert_frame_equal(loaded.predict(x), blended.predict(x))
    pd.testing.assert_frame_equal(loaded.contributions(x), contributions)


@pytest.mark.parametrize("n", [1, 3, 4])
def test_exact_shapley_equals_the_average_over_every_order_of_the_inputs(n):
    """The textbook terms' reasons: Shapley values by their definition (each input's marginal value averaged over
    every order in which the inputs join, the others at the reference), on a function with interactions."""
    from itertools import permutations

    from training.estimators.textbook import exact_shapley

    rng = np.random.default_rng(n)
    values, reference = rng.normal(size=(5, n)), rng.normal(size=n).tolist()

    def function(rows):  # products and a nonlinearity: every input interacts with the others
        return np.sin(rows.sum(axis=1)) + rows.prod(axis=1) + rows[:, 0] ** 2

    expected = np.zeros((len(values), n))
    orders = list(permutations(range(n)))
    for order in orders:
        current = np.tile(reference, (len(values), 1))
        for i in order:
            before = function(current)
            current[:, i] = values[:, i]
            expected[:, i] += (function(current) - before) / len(orders)
    found, base = exact_shapley(function, values, reference)
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-12)
    assert base == pytest.approx(function(np.array([reference]))[0], abs=1e-15)
    np.testing.assert_allclose(found.sum(axis=1) + base, function(values), rtol=0, atol=1e-12)


def explanation_rows(x: pd.DataFrame, sample: int) -> pd.DataFrame:
    """The rows `shap_explanation` explains (its seeded sample)."""
    return x.sample(n=min(sample, len(x)), random_state=0) if len(x) > sample else x


def test_the_backtest_chooses_the_served_candidate_out_of_time(snapshots):
    """Left open, the served candidate is the best on the backtest's evaluation snapshot of the trees with the term
    at each grid weight and each textbook family alone; its figure is the best of them all."""
    from training.estimators import textbook
    from training.evaluation import roc_auc

    model = ChurnModel().fit(snapshots[0])
    assert model.textbook_weight_ == 0.0 and model.candidate_ == "lightgbm"
    assert set(model.textbooks_) == {"pnbd", "bgnbd"}
    chosen = model.settings_from_backtest(snapshots[1])
    x, y = snapshots[1].churn_frame()
    X, labels = model.encoder_.matrix(x), y.to_numpy()
    trees = model.booster_.predict(X, raw_score=True)
    blends = [roc_auc(labels, trees + w * model._term(X, model.textbooks_["pnbd"])) for w in textbook.WEIGHTS]
    alone = [roc_auc(labels, model._term(X, fitted)) for fitted in model.textbooks_.values()]
    assert roc_auc(labels, model.margin(x)) == pytest.approx(max(blends + alone), abs=1e-6)
    assert chosen["candidate"] == model.candidate_
    if model.candidate_ == "lightgbm":
        assert chosen["textbook_weight"] in textbook.WEIGHTS and model.textbook_weight_ == chosen["textbook_weight"]
    table = model.candidates_
    assert list(table["candidate"]) == ["lightgbm", "pnbd", "bgnbd"] and table["served"].sum() == 1
    assert (table["served_margin"] >= 0).all()  # the served one is the best of every candidate
    assert table.loc[table["served"], "value"].iloc[0] == pytest.approx(max(blends + alone), abs=1e-6)
    assert ChurnModel(textbook_weight=0.5, candidate="lightgbm").fit(snapshots[0]).settings_from_backtest(
        snapshots[1]) == {}


@pytest.mark.parametrize("family", ["pnbd", "bgnbd"])
def test_a_textbook_candidate_is_served_like_the_model(family, snapshots, eligible, tmp_path):
    """The textbook alone as a served model: no trees, the same outputs and bands, calibrated, its ranking the
    textbook's own, reasons that add up to its margin (exact Shapley values on its three inputs), saved and
    loaded like the others."""
    from training.estimators import textbook
    from training.evaluation import roc_auc
    from training.plots import shap_explanation

    model = ChurnModel(candidate=family).fit(snapshots[0])
    assert model.booster_ is None and model.candidate_ == family and set(model.textbooks_) == {family}
    x, y = eligible
    X = model.encoder_.matrix(x)
    columns = [model.encoder_.feature_names_.index(c) for c in textbook.INPUTS]
    term = textbook.term(model.textbook_, X[:, columns], HORIZON)
    np.testing.assert_allclose(model.margin(x), term, rtol=0, atol=1e-12)
    scores = model.predict(x)
    assert set(scores["churn_band"].unique()) <= {"low", "medium", "high"}
    assert roc_auc(y.to_numpy(), scores["churn_probability"].to_numpy()) > 0.7
    assert abs(scores["churn_probability"].mean() - y.mean()) < 0.1  # calibrated on the training labels
    contributions = model.contributions(x.head(200))
    np.testing.assert_allclose(contributions.sum(axis=1), model.margin(x.head(200)), rtol=0, atol=1e-9)
    moved = np.flatnonzero(np.abs(contributions.to_numpy()).max(axis=0) > 0)
    assert set(moved) <= {*columns, X.shape[1]}
    explanation, _ = shap_explanation(model, x, sample=100)
    np.testing.assert_allclose(explanation.values.sum(axis=1) + explanation.base_values,
                               model.margin(explanation_rows(x, 100)), rtol=0, atol=1e-9)
    model.save(tmp_path / family)
    assert not (tmp_path / family / "booster.txt").exists()
    loaded = ChurnModel.load(tmp_path / family)
    pd.testing.assert_frame_equal(loaded.predict(x), scores)


def test_bgnbd_with_too_few_labels_serves_its_own_probability(snapshots, eligible):
    """The small-programme fallback: BG/NBD needs no labels to fit; with too few churners to calibrate, the served
    probability is BG/NBD's P(no purchase in the horizon), computed as the baseline computes it."""
    from lifetimes import BetaGeoFitter

    from training.estimators.baselines import bgnbd_churn_probability, rfm_summary_from_features

    newest = snapshots[0][-1]
    outcomes = newest.outcomes.copy()
    labelled = outcomes[outcomes["eligible"]]
    keep = set(labelled.loc[labelled["churned"] == 1, "customer_id"].head(3)) | set(
        labelled.loc[labelled["churned"] == 0, "customer_id"].head(40))
    outcomes["eligible"] = outcomes["customer_id"].isin(keep)
    small = Snapshot(newest.as_of, newest.horizon_days, newest.features, outcomes)
    with pytest.raises(InsufficientDataError, match="churners"):
        ChurnModel().fit([small])
    assert ChurnModel.fallback_settings(InsufficientDataError("few")) == {"candidate": "bgnbd"}
    model = ChurnModel(candidate="bgnbd").fit([small])
    assert model.calibration_method_ == "identity" and model.booster_ is None
    x = eligible[0]
    bought = x.loc[x["orders_count_total"] > 0]
    rfm = rfm_summary_from_features(bought)
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(model.textbook_["params"])
    expected = bgnbd_churn_probability(fitter, rfm["frequency"].to_numpy(float), rfm["recency"].to_numpy(float),
                                       rfm["T"].to_numpy(float), HORIZON)
    np.testing.assert_allclose(model.predict_proba(bought), np.clip(expected, 1e-4, 1 - 1e-4), rtol=0, atol=1e-6)


def test_bgnbd_expected_purchases_stay_finite_when_the_dropout_shapes_vanish():
    """A fit with a, b -> 0 (data without dropout) made the closed form inf for one-repeat customers (the value
    evaluation then failed drawing its chart); there the expectation is its limit P(alive) t (r + x) / (alpha + T)."""
    from lifetimes import BetaGeoFitter

    from training.estimators.baselines import BGNBDBaseline

    rfm = pd.DataFrame({"frequency": [0.0, 1.0, 1.0, 3.0], "recency": [0.0, 462.0, 149.0, 300.0],
                        "T": [620.0, 620.5, 564.5, 400.0]})
    baseline = BGNBDBaseline()
    for a, b in ((5.3e-24, 1.7e-15), (0.5, 2.0)):
        baseline.bgnbd_ = BetaGeoFitter()
        baseline.bgnbd_.params_ = pd.Series({"r": 7.0, "alpha": 810.0, "a": a, "b": b})
        with np.errstate(all="ignore"):
            closed = np.asarray(baseline.bgnbd_.conditional_expected_number_of_purchases_up_to_time(
                90, *(rfm[c].to_numpy() for c in ("frequency", "recency", "T"))))
        expected = baseline.expected_purchases(rfm, 90)
        assert np.isfinite(expected).all()
        finite = np.isfinite(closed)
        np.testing.assert_allclose(expected[finite], closed[finite], rtol=1e-12)  # unchanged where it computes
        if a < 1e-10:
            assert not finite[1:3].any()
            alive = baseline.bgnbd_.conditional_probability_alive(1.0, rfm["recency"][1:3], rfm["T"][1:3])
            np.testing.assert_allclose(expected[1:3], alive * 90 * 8.0 / (810.0 + rfm["T"][1:3]), rtol=1e-12)


def test_the_counted_spearman_of_a_resample_is_spearmans():
    from training.estimators.value import ValueModel
    from training.evaluation import ResampledSpearman, spearman

    rng = np.random.default_rng(5)
    spend = np.where(rng.random(2000) < 0.6, 0.0, np.round(rng.gamma(2, 50, 2000)))  # many zeros: ties
    predicted = np.round(rng.random(2000) + spend / 300, 2)
    counted = ResampledSpearman(spend, predicted)
    for _ in range(30):
        rows = rng.integers(0, len(spend), len(spend))
        assert counted(rows) == pytest.approx(spearman(spend[rows], predicted[rows]), abs=1e-12)
    assert np.isnan(counted(np.zeros(50, dtype=int)))  # one customer drawn 50 times: constant, undefined
    assert ValueModel.metric is spearman  # what the value bootstraps are given, so they count
