"""Behavioural clusters on the generated loyalty programme: seven planted personas should come back as clusters.

The default configuration is used throughout (KMeans, k chosen by silhouette over 3..10 on a fixed sample); the
model tests check the personas are recovered, the contract tests check fitted-state scoring, names, the surrogate,
save/load in native formats and determinism.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from features.errors import InsufficientDataError
from training.estimators.clusters import (
    DEFAULT_CLUSTER_FEATURES,
    ClusterConfig,
    ClusterModel,
    evaluate_clusters,
)
from training.labels import make_snapshot

AS_OF = datetime(2026, 7, 1)
QUICK = ClusterConfig(k_range=(7, 7), bootstrap_rounds=2, surrogate_num_boost_round=20)


@pytest.fixture(scope="module")
def features(generated_validation) -> pd.DataFrame:
    return make_snapshot(generated_validation, AS_OF, with_outcomes=False).features


@pytest.fixture(scope="module")
def personas(generated, features) -> pd.Series:
    """Ground-truth persona of each customer in the feature table (all customers known at as_of), row-aligned."""
    truth = generated[0].ground_truth.set_index("customer_id")["persona"]
    return truth.reindex(features["customer_id"].astype(str)).reset_index(drop=True)


@pytest.fixture(scope="module")
def model(features) -> ClusterModel:
    return ClusterModel(ClusterConfig()).fit(features)


@pytest.fixture(scope="module")
def evaluation(model, features):
    return evaluate_clusters(model.config, features, as_of=AS_OF, model=model)


# ---------------------------------------------------------------------------------------------------------------
# Quality


def test_clusters_recover_the_planted_personas(model, features, personas):
    assert personas.notna().all()
    assignments = model.predict(features)["cluster_id"]
    ari = adjusted_rand_score(personas, assignments)
    print(f"\nk chosen by {model.criterion_}: {model.k_}\n{model.k_scores_.to_string()}\nARI vs personas: {ari:.3f}")
    assert ari >= 0.6


def test_k_is_chosen_by_the_stated_criterion(model):
    scores = model.k_scores_
    assert model.criterion_ == "silhouette"
    assert list(scores["k"]) == list(range(3, 11))
    assert model.k_ == int(scores.loc[scores["silhouette"].idxmax(), "k"])
    assert scores["inertia"].is_monotonic_decreasing  # more clusters never fit worse: the scores are real fits


def test_stability_is_reported_and_high(model, evaluation):
    assert 0.0 <= model.stability_ari_ <= 1.0
    assert evaluation.metrics["stability_ari"] == model.stability_ari_
    assert model.stability_ari_ >= 0.7  # seven well-separated personas should survive resampling


def test_surrogate_is_faithful(model, evaluation):
    assert model.surrogate_fidelity_ >= 0.9
    assert model.surrogate_fidelity_ > evaluation.baselines["majority_cluster"]["surrogate_fidelity"]


def test_surrogate_shap_explains_the_own_cluster(model, features):
    rows = features.head(10)
    contributions = model.surrogate_contributions(rows)
    raw = model.booster_.predict(model.encoder_.transform(rows), raw_score=True)
    own = raw[np.arange(len(rows)), model.assign(rows)]
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), own, rtol=1e-6, atol=1e-6)


def test_own_cluster_contributions_from_that_clusters_trees_equal_the_whole_models(model, features):
    """The service explains each row's own cluster from that cluster's trees alone (`Explanation.contributions`
    with `classes`): the very values of the multiclass TreeSHAP's own-class slice, not an approximation."""
    rows = features.head(300)
    X, own = model.encoder_.matrix(rows), model.assign(rows)
    assert len(set(own)) >= 3  # rows of several clusters, each from its own single-class booster
    explanation = model.explanation()
    whole = explanation.contributions(X).reshape(len(X), model.k_, -1)[np.arange(len(X)), own]
    np.testing.assert_array_equal(explanation.contributions(X, classes=own), whole)
    np.testing.assert_allclose(whole, model.surrogate_contributions(rows).to_numpy(), rtol=0, atol=0)


def test_shap_plots_explain_the_own_cluster_with_the_shap_library(model, features):
    from training.plots import shap_explanation, shap_figures

    explanation, _ = shap_explanation(model, features, sample=40)
    rows = features.loc[features.sample(n=40, random_state=0).index]
    expected = model.surrogate_contributions(rows)
    np.testing.assert_allclose(explanation.values, expected.drop(columns="bias").to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(explanation.base_values, expected["bias"].to_numpy(), rtol=0, atol=1e-6)
    figures = shap_figures(model, features)
    assert set(figures) == {"shap_beeswarm", "shap_dependence", "shap_waterfall"}
    assert all(figure.axes for figure in figures.values())


# ---------------------------------------------------------------------------------------------------------------
# Names and profiles


def test_names_are_unique_readable_and_follow_the_profile(model):
    names = model.names_
    assert len(names) == model.k_ and len(set(names)) == len(names)
    assert all(name.strip() and len(name.split()) >= 2 for name in names)
    diffs = model.profiles_.set_index("cluster_id")
    returns = diffs["return_rate_365d__std_diff"].idxmax()
    assert "high-return" in names[returns]
    new = diffs["days_since_first_order__std_diff"].idxmin()
    assert "new" in names[new].split()


def test_profiles_cover_everyone_and_compare_with_the_population(model, features):
    profiles = model.profiles_
    assert profiles["size"].sum() == len(features) and profiles["share"].sum() == pytest.approx(1.0)
    assert list(profiles["size"]) == sorted(profiles["size"], reverse=True)  # cluster 0 is the largest
    for feature in DEFAULT_CLUSTER_FEATURES:
        for suffix in ("median", "mean", "std_diff"):
            assert f"{feature}__{suffix}" in profiles
    # Standardized differences are weighted around the population: their size-weighted mean is zero.
    weighted = (profiles["orders_count_365d__std_diff"] * profiles["size"]).sum() / profiles["size"].sum()
    assert weighted == pytest.approx(0.0, abs=1e-9)
    assert set(model.population_["feature"]) == set(DEFAULT_CLUSTER_FEATURES)


def test_default_features_are_behavioural():
    from features.catalog import FEATURES_BY_NAME

    groups = {FEATURES_BY_NAME[f].group for f in DEFAULT_CLUSTER_FEATURES}
    assert "profile" not in groups
    assert {"recency", "frequency", "monetary", "trend", "rhythm", "returns", "engagement", "channel"} <= groups


def test_evaluation_reports_metrics_tables_and_figures(evaluation, model):
    assert set(evaluation.metrics) >= {"k", "silhouette", "stability_ari", "surrogate_fidelity"}
    assert evaluation.metrics["k"] == model.k_
    assert set(evaluation.tables) >= {"profiles", "k_scores"}
    assert evaluation.tables["std_diff"]["cluster_name"].tolist() == model.names_
    for name in ("profile_heatmap", "cluster_sizes", "k_selection"):
        ax = evaluation.figures[name].axes[0]
        assert ax.get_title(loc="left") and ax.get_xlabel() and ax.get_ylabel(), name
    heatmap = evaluation.figures["profile_heatmap"].axes[0]
    assert [t.get_text().split(" (n=")[0] for t in heatmap.get_yticklabels()] == model.names_


# ---------------------------------------------------------------------------------------------------------------
# Contract: fitted-state scoring, persistence, determinism, minimum


def test_single_customer_gets_the_same_cluster_as_in_the_batch(model, features):
    batch = model.predict(features)
    for position in (0, 5, 123, 2024, len(features) - 1):
        alone = model.predict(features.iloc[[position]])
        assert alone.equals(batch.iloc[[position]])


def test_scoring_does_not_refit_on_the_batch(model, features):
    batch = model.predict(features)
    one_cluster = batch.index[batch["cluster_id"] == 2]
    assert (model.predict(features.loc[one_cluster])["cluster_id"] == 2).all()


def test_save_load_round_trip_is_identical_and_pickle_free(model, features, tmp_path):
    model.save(tmp_path / "clusters")
    files = sorted(p.name for p in (tmp_path / "clusters").iterdir())
    assert files == ["clusters.json", "pipeline.json", "surrogate_encoder.json", "surrogate_model.txt"]
    for path in (tmp_path / "clusters").iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # pickle protocol 2+ header
    state = json.loads((tmp_path / "clusters" / "pipeline.json").read_text())
    assert np.asarray(state["centres"]).shape == (model.k_, len(DEFAULT_CLUSTER_FEATURES))
    assert state["fill_with_max"] == ["days_since_last_order", "days_since_last_engagement"]
    loaded = ClusterModel.load(tmp_path / "clusters")
    pd.testing.assert_frame_equal(loaded.predict(features), model.predict(features), check_exact=True)
    assert loaded.names_ == model.names_ and loaded.stability_ari_ == model.stability_ari_
    pd.testing.assert_frame_equal(loaded.surrogate_contributions(features.head(5)),
                                  model.surrogate_contributions(features.head(5)), check_exact=True)


def test_same_seed_same_result(features):
    first, second = ClusterModel(QUICK).fit(features), ClusterModel(QUICK).fit(features)
    pd.testing.assert_frame_equal(first.predict(features), second.predict(features), check_exact=True)
    assert first.names_ == second.names_ and first.stability_ari_ == second.stability_ari_


def test_gaussian_mixture_option_round_trips(features, tmp_path):
    gmm = ClusterModel(ClusterConfig(method="gmm", k_range=(6, 7), bootstrap_rounds=2,
                                     surrogate_num_boost_round=20)).fit(features)
    assert gmm.criterion_ == "bic" and gmm.k_ == int(gmm.k_scores_.loc[gmm.k_scores_["bic"].idxmin(), "k"])
    gmm.save(tmp_path / "gmm")
    pd.testing.assert_frame_equal(ClusterModel.load(tmp_path / "gmm").predict(features), gmm.predict(features),
                                  check_exact=True)


def test_too_few_customers_raise_insufficient_data(features):
    with pytest.raises(InsufficientDataError, match="59 customers are too few for 3 clusters"):
        ClusterModel(ClusterConfig(k_range=(3, 10))).fit(features.head(59))


def test_k_range_is_capped_by_the_data_minimum(features):
    model = ClusterModel(ClusterConfig(k_range=(3, 10), bootstrap_rounds=1,
                                       surrogate_num_boost_round=5)).fit(features.head(100))
    assert model.k_scores_["k"].max() == 5  # 100 customers / 20 per cluster


def test_missing_cluster_feature_is_named(features):
    with pytest.raises(ValueError, match="lacks the cluster features aov_total"):
        ClusterModel(QUICK).fit(features.drop(columns="aov_total"))


def test_registered_as_the_clusters_kind():
    from training.estimators import model_class

    assert model_class("clusters") is ClusterModel and ClusterModel.kind == "clusters"
