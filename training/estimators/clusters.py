"""Behavioural clusters: a scikit-learn pipeline over behavioural features, named from their profiles.

Pipeline (fitted once, then exported to JSON and applied from that state)
------------------------------------------------------------------------
1. Impute: a missing "days since last ..." means "never", so it gets the fitted maximum (the farthest seen); any
   other missing value (a share or an average without purchases) gets the fitted median, a neutral value.
2. log1p on non-negative, unbounded features (counts, amounts, days, ratios): the catalog declares them with
   bounds (0, None). Shares bounded by 1 stay linear.
3. RobustScaler centred on the median and scaled by the 5-95% range (not the default 25-75%): many behavioural
   features are zero for most customers (returns, discounts, app use), their interquartile range is tiny, and
   scaling by it would let them dominate every distance.
4. KMeans (n_init restarts) or a GaussianMixture.

k is chosen over `k_range` by a stated criterion, each candidate fitted on a fixed random sample of `sample_size`
customers: KMeans maximises the silhouette on that sample; a GMM minimises the BIC on it. All scores per k are kept
(`k_scores_`). Stability is the mean adjusted Rand index between the model's assignments of all customers and those
of the same pipeline refitted on `bootstrap_rounds` bootstrap resamples. Profiles compare each cluster with the
population: medians and means in the features' units, and the standardized difference (cluster mean minus population
mean of the model's transformed feature, over its population standard deviation). Names come from the one or two
most distinguishing features of different business groups, with their direction. A LightGBM multiclass surrogate
(raw features -> cluster) makes membership explainable with exact TreeSHAP; its fidelity is its accuracy on customers
it did not see.

Scoring never refits: `score` applies the stored imputation values, scaling and centres (or Gaussian parameters)
row by row, so a customer's cluster does not depend on the rest of the batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, RobustScaler
from threadpoolctl import threadpool_limits

from features.catalog import FEATURE_SET_VERSION, FEATURES_BY_NAME
from features.errors import InsufficientDataError
from training import plots
from training.encoding import FeatureEncoder, check_feature_set
from training.estimators.base import Estimator, Explanation, ReportPage
from training.evaluation import Evaluation
from training.runtime import fit_threads

# Recency, frequency, spend, trend, rhythm, returns and discounts, engagement, channel shares. No profile or identity
# features (age, region, gender, tenure since sign-up): clusters describe behaviour, not who people are.
DEFAULT_CLUSTER_FEATURES: tuple[str, ...] = (
    "days_since_last_order", "days_since_first_order",
    "orders_count_90d", "orders_count_365d", "orders_count_total",
    "spend_sum_365d", "aov_total",
    "orders_trend_90d", "spend_share_90d_of_365d",
    "order_gap_mean_days", "overdue_ratio",
    "return_rate_365d", "discounted_orders_share_365d",
    "engagement_events_90d", "email_open_rate_90d", "app_open_count_90d", "days_since_last_engagement",
    "online_share_365d", "app_share_365d", "store_share_365d",
)
# Words for a feature far above / below the population, written to stand before a noun ("frequent ... shoppers").
DESCRIPTORS: dict[str, tuple[str, str]] = {
    "days_since_last_order": ("lapsed", "recently active"),
    "days_since_first_order": ("long-standing", "new"),
    "orders_count_90d": ("busy-this-quarter", "quiet-this-quarter"),
    "orders_count_365d": ("frequent", "infrequent"),
    "orders_count_total": ("high-volume", "low-volume"),
    "spend_sum_365d": ("high-spending", "low-spending"),
    "aov_total": ("big-basket", "small-basket"),
    "orders_trend_90d": ("accelerating", "slowing"),
    "spend_share_90d_of_365d": ("stepping-up", "stepping-down"),
    "order_gap_mean_days": ("slow-cycle", "fast-cycle"),
    "overdue_ratio": ("overdue", "on-schedule"),
    "return_rate_365d": ("high-return", "low-return"),
    "discounted_orders_share_365d": ("discount", "full-price"),
    "engagement_events_90d": ("highly engaged", "disengaged"),
    "email_open_rate_90d": ("email-responsive", "email-unresponsive"),
    "app_open_count_90d": ("app-active", "app-inactive"),
    "days_since_last_engagement": ("disengaged", "recently engaged"),
    "online_share_365d": ("online", "offline"),
    "app_share_365d": ("app-first", "non-app"),
    "store_share_365d": ("in-store", "digital"),
}
_STATE_FILE, _SURROGATE_FILE, _ENCODER_FILE, _PROFILE_FILE = ("pipeline.json", "surrogate_model.txt",
                                                              "surrogate_encoder.json", "clusters.json")
_CHUNK_ROWS = 50_000  # bounds the memory of distance computations when scoring millions of rows


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of the cluster model; every field has a default.

    method: "kmeans" (k by silhouette) or "gmm" (k by BIC). k_range: smallest and largest k tried (inclusive).
    sample_size: customers in the fixed sample for k selection, and in each bootstrap resample.
    min_customers_per_cluster: the data minimum (k is capped at n / this; below 20 x k_min: InsufficientDataError).
    scale_quantile_range: the RobustScaler's range. name_min_difference: smallest |standardized difference| that
    may name a cluster. surrogate_*: the LightGBM surrogate and the share of customers held out for its fidelity.
    """

    method: str = "kmeans"
    k_range: tuple[int, int] = (3, 10)
    n_init: int = 10
    gmm_covariance_type: str = "diag"
    gmm_reg_covar: float = 1e-4
    gmm_n_init: int = 2
    bootstrap_rounds: int = 10
    sample_size: int = 5000
    features: tuple[str, ...] = DEFAULT_CLUSTER_FEATURES
    scale_quantile_range: tuple[float, float] = (5.0, 95.0)
    min_customers_per_cluster: int = 20
    name_min_difference: float = 0.25
    surrogate_holdout_share: float = 0.2
    surrogate_learning_rate: float = 0.1
    surrogate_num_boost_round: int = 100
    surrogate_num_leaves: int = 15
    surrogate_min_data_in_leaf: int = 20
    seed: int = 0
    num_threads: int = field(default_factory=fit_threads)  # SEGMENTS_THREADS, else 2

    def __post_init__(self):
        if self.method not in ("kmeans", "gmm"):
            raise ValueError(f"ClusterConfig.method must be 'kmeans' or 'gmm', got '{self.method}'")
        if self.gmm_covariance_type not in ("full", "diag"):
            raise ValueError(f"gmm_covariance_type must be 'full' or 'diag', got '{self.gmm_covariance_type}'")
        if not 2 <= self.k_range[0] <= self.k_range[1]:
            raise ValueError(f"k_range must be (low, high) with 2 <= low <= high, got {self.k_range}")



# ---------------------------------------------------------------------------------------------------------------
# Pipeline steps and their JSON state


class FittedFillImputer(TransformerMixin, BaseEstimator):
    """Fill missing values with fitted values: the maximum for `max_columns` (missing = never), else the median.

    A column that is entirely missing at fit time is filled with 0.
    """

    def __init__(self, max_columns: tuple[int, ...] = ()):
        self.max_columns = max_columns

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=float)
        with np.errstate(all="ignore"):
            fill = np.where(np.isin(np.arange(X.shape[1]), self.max_columns),
                            _nan_reduce(np.nanmax, X), _nan_reduce(np.nanmedian, X))
        self.fill_ = np.nan_to_num(fill, nan=0.0)
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        return np.where(np.isnan(X), self.fill_, X)


def _nan_reduce(reduce, X: np.ndarray) -> np.ndarray:
    """Column-wise nan-reduction that gives NaN (not a warning) for all-missing columns."""
    out = np.full(X.shape[1], np.nan)
    present = ~np.isnan(X).all(axis=0)
    out[present] = reduce(X[:, present], axis=0)
    return out


def _log1p_columns(X, columns: tuple[int, ...] = ()):
    """log1p of the given columns (clipped at 0: they are declared non-negative)."""
    X = np.array(X, dtype=float, copy=True)
    idx = list(columns)
    X[:, idx] = np.log1p(np.clip(X[:, idx], 0.0, None))
    return X


def transform_choices(features: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(columns imputed with the maximum, columns log1p-transformed) for a feature list, from the catalog."""
    max_columns = tuple(i for i, f in enumerate(features) if f.startswith("days_since_last"))
    log_columns = tuple(i for i, f in enumerate(features)
                        if FEATURES_BY_NAME[f].bounds == (0, None) and FEATURES_BY_NAME[f].dtype != "boolean")
    return max_columns, log_columns


def build_pipeline(config: ClusterConfig, k: int, random_state: int) -> Pipeline:
    """The unfitted pipeline: impute, log1p, robust scale, cluster."""
    max_columns, log_columns = transform_choices(config.features)
    if config.method == "kmeans":
        clusterer = KMeans(n_clusters=k, n_init=config.n_init, random_state=random_state)
    else:
        clusterer = GaussianMixture(n_components=k, covariance_type=config.gmm_covariance_type,
                                    reg_covar=config.gmm_reg_covar, n_init=config.gmm_n_init,
                                    random_state=random_state)
    return Pipeline([
        ("impute", FittedFillImputer(max_columns)),
        ("log1p", FunctionTransformer(_log1p_columns, kw_args={"columns": log_columns})),
        ("scale", RobustScaler(quantile_range=config.scale_quantile_range)),
        ("cluster", clusterer),
    ])


def export_state(pipeline: Pipeline, config: ClusterConfig, order: np.ndarray) -> dict:
    """JSON-ready state of a fitted pipeline, clusters renumbered so that new id i is old id order[i]."""
    max_columns, log_columns = transform_choices(config.features)
    scaler, clusterer = pipeline.named_steps["scale"], pipeline.named_steps["cluster"]
    state = {"method": config.method, "features": list(config.features),
             "fill": pipeline.named_steps["impute"].fill_.tolist(),
             "fill_with_max": [config.features[i] for i in max_columns],
             "log1p": [config.features[i] for i in log_columns],
             "scale_center": scaler.center_.tolist(), "scale_scale": scaler.scale_.tolist(),
             "scale_quantile_range": list(config.scale_quantile_range)}
    if config.method == "kmeans":
        state["centres"] = clusterer.cluster_centers_[order].tolist()
    else:
        state.update(covariance_type=clusterer.covariance_type, weights=clusterer.weights_[order].tolist(),
                     means=clusterer.means_[order].tolist(), covariances=clusterer.covariances_[order].tolist(),
                     precisions_cholesky=clusterer.precisions_cholesky_[order].tolist())
    return state


def transform(state: dict, X: np.ndarray) -> np.ndarray:
    """Raw feature matrix (columns = state["features"]) -> the model's scaled space, from the stored state."""
    X = np.where(np.isnan(X), np.asarray(state["fill"]), X)
    log_idx = [state["features"].index(f) for f in state["log1p"]]
    X[:, log_idx] = np.log1p(np.clip(X[:, log_idx], 0.0, None))
    return (X - np.asarray(state["scale_center"])) / np.asarray(state["scale_scale"])


def assign(state: dict, Z: np.ndarray) -> np.ndarray:
    """Cluster ids of transformed rows: nearest centre (KMeans) or most probable component (GMM).

    Computed row by row (broadcasting and einsum, no BLAS), so a row's result never depends on the batch.
    """
    out = np.empty(len(Z), dtype=np.int64)
    for start in range(0, len(Z), _CHUNK_ROWS):
        chunk = Z[start:start + _CHUNK_ROWS]
        out[start:start + _CHUNK_ROWS] = np.argmax(_cluster_scores(state, chunk), axis=1)
    return out


def _cluster_scores(state: dict, Z: np.ndarray) -> np.ndarray:
    """(n, k) scores, higher = closer: minus squared distance (KMeans) or weighted log-density (GMM)."""
    if state["method"] == "kmeans":
        centres = np.asarray(state["centres"])
        return -((Z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    means, prec = np.asarray(state["means"]), np.asarray(state["precisions_cholesky"])
    diff = Z[:, None, :] - means[None, :, :]
    if state["covariance_type"] == "full":
        y = np.einsum("nkd,kde->nke", diff, prec)
        log_det = np.log(np.diagonal(prec, axis1=1, axis2=2)).sum(axis=1)
    else:
        y = diff * prec[None, :, :]
        log_det = np.log(prec).sum(axis=1)
    d = Z.shape[1]
    return -0.5 * (d * np.log(2 * np.pi) + (y ** 2).sum(axis=2)) + log_det + np.log(np.asarray(state["weights"]))


# ---------------------------------------------------------------------------------------------------------------
# The model


class ClusterModel(Estimator):
    """Behavioural clusters with names, profiles and an explainable surrogate (module docstring).

    Fitted attributes: state_ (pipeline state, JSON-ready), k_, k_scores_ (DataFrame: k, silhouette, and bic for
    GMM or inertia for KMeans), criterion_, silhouette_, stability_ari_, stability_ari_std_, profiles_ (DataFrame),
    population_ (the profiles' reference), names_ (list, by cluster id), booster_ (surrogate), encoder_ (its
    FeatureEncoder), surrogate_fidelity_, n_customers_, feature_set_version_.
    """

    kind = "clusters"
    config_class = ClusterConfig
    fitted_attribute = "state_"
    primary_metric = "stability_ari"
    headline_metrics = ("k", "stability_ari", "surrogate_fidelity")
    report = ReportPage(title="Behavioural clusters", nav_label="Clusters", purpose="",
                        shown_metrics=("stability_ari", "silhouette", "surrogate_fidelity", "k"),
                        file="clusters.html", page="clusters")

    def fit(self, features: pd.DataFrame) -> ClusterModel:
        """Fit on a feature table (customer_id + at least config.features): choose k, cluster, name, explain."""
        # Small dense matrices gain nothing from BLAS threads, and on a busy 2-core machine OpenBLAS's spinning
        # threads made one GMM fit 40x slower (9 s instead of 0.2 s); KMeans' OpenMP threads follow num_threads.
        with threadpool_limits(limits=1, user_api="blas"), \
                threadpool_limits(limits=self.config.num_threads, user_api="openmp"):
            return self._fit(features)

    def _fit(self, features: pd.DataFrame) -> ClusterModel:
        X = feature_matrix(features, self.config.features)
        k_values = usable_k_values(len(X), self.config)
        rng = np.random.default_rng(self.config.seed)
        sample = np.sort(rng.choice(len(X), size=min(len(X), self.config.sample_size), replace=False))
        self.k_scores_, self.criterion_ = select_k(X, sample, k_values, self.config)
        self.k_ = int(_best_k(self.k_scores_, self.criterion_))
        pipeline = build_pipeline(self.config, self.k_, self.config.seed).fit(X)
        raw_labels = pipeline.predict(X)
        order = _size_order(raw_labels, self.k_)
        self.state_ = export_state(pipeline, self.config, order)
        Z = transform(self.state_, X)
        labels = assign(self.state_, Z)
        self.silhouette_ = float(silhouette_score(Z[sample], labels[sample])) if len(set(labels[sample])) > 1 \
            else float("nan")
        self.stability_ari_, self.stability_ari_std_ = stability(X, labels, self.k_, self.config)
        self.profiles_ = cluster_profiles(X, Z, labels, self.k_, self.config.features)
        self.population_ = population_profile(X, self.config.features)
        self.names_ = cluster_names(self.profiles_, self.k_, self.config.name_min_difference)
        self.profiles_.insert(1, "cluster_name", self.profiles_["cluster_id"].map(dict(enumerate(self.names_))))
        self.encoder_, self.booster_, self.surrogate_fidelity_ = fit_surrogate(features, labels, self.k_,
                                                                               self.config)
        self.n_customers_, self.feature_set_version_ = len(X), FEATURE_SET_VERSION
        return self

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict:
        """Feature rows -> cluster_id (int64) and cluster_name, from the fitted state only."""
        self.require_fitted()
        check_feature_set(features, self.feature_set_version_)
        labels = self.assign(features, encoded)
        return {"cluster_id": labels, "cluster_name": np.asarray(self.names_, dtype=object)[labels]}

    def assign(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        """Cluster ids of feature rows (int64 array).

        `encoded`: the rows already through the surrogate's `encoder_.matrix` (the service encodes once). Its
        inputs are the cluster features, all numeric, so their columns hold the values `feature_matrix` reads.
        """
        self.require_fitted()
        if encoded is None:
            X = feature_matrix(features, tuple(self.state_["features"]))
        else:
            X = encoded[:, [self.encoder_.feature_names_.index(f) for f in self.state_["features"]]]
        return assign(self.state_, transform(self.state_, X))

    def surrogate_contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Exact TreeSHAP of the surrogate towards each row's own cluster: one column per input plus "bias"."""
        self.require_fitted()
        X = self.encoder_.transform(features)
        n_inputs = len(self.encoder_.feature_names_) + 1
        values = self.booster_.predict(X, pred_contrib=True)
        values = np.asarray(values).reshape(len(X), self.k_, n_inputs)
        own = values[np.arange(len(X)), self.assign(features)]
        return pd.DataFrame(own, index=features.index, columns=[*self.encoder_.feature_names_, "bias"])

    def explanation(self) -> Explanation:
        """Reasons explain the surrogate's score of each customer's own cluster (the class `assign` gives)."""
        return Explanation(self.booster_, "cluster", "fit to own cluster", "log-odds (own class)", "probability",
                           "softmax", own_class=self.assign)

    def save(self, directory: Path) -> Path:
        """Write pipeline.json, surrogate_model.txt, surrogate_encoder.json and clusters.json (names, profiles)."""
        summary = {"feature_set_version": self.feature_set_version_, "k": self.k_, "criterion": self.criterion_,
                   "names": self.names_,
                   "k_scores": self.k_scores_.to_dict(orient="records"),
                   "profiles": json.loads(self.profiles_.to_json(orient="records")),
                   "population": json.loads(self.population_.to_json(orient="records")),
                   "silhouette": self.silhouette_, "stability_ari": self.stability_ari_,
                   "stability_ari_std": self.stability_ari_std_, "surrogate_fidelity": self.surrogate_fidelity_,
                   "n_customers": self.n_customers_}
        directory = self.save_native(directory, {_SURROGATE_FILE: self.booster_}, summary, _PROFILE_FILE,
                                     _ENCODER_FILE)
        (directory / _STATE_FILE).write_text(json.dumps(self.state_, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ClusterModel:
        """Read a model written by `save`."""
        model, summary, boosters = cls.load_native(directory, [_SURROGATE_FILE], _PROFILE_FILE, _ENCODER_FILE)
        model.state_ = json.loads((Path(directory) / _STATE_FILE).read_text())
        model.booster_ = boosters[_SURROGATE_FILE]
        model.k_, model.criterion_, model.names_ = summary["k"], summary["criterion"], summary["names"]
        model.k_scores_ = pd.DataFrame(summary["k_scores"])
        model.profiles_ = pd.DataFrame(summary["profiles"])
        model.population_ = pd.DataFrame(summary["population"])
        model.silhouette_, model.stability_ari_ = summary["silhouette"], summary["stability_ari"]
        model.stability_ari_std_ = summary["stability_ari_std"]
        model.surrogate_fidelity_ = summary["surrogate_fidelity"]
        model.n_customers_ = summary["n_customers"]
        return model



# ---------------------------------------------------------------------------------------------------------------
# Fitting steps


def feature_matrix(features: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """Float matrix of the named feature columns (booleans as 0/1, missing as NaN); clear errors otherwise."""
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise ValueError(f"feature table lacks the cluster features {', '.join(missing)}: build features with the "
                         "full catalog or choose ClusterConfig.features among its columns")
    text = [n for n in names if n not in FEATURES_BY_NAME or FEATURES_BY_NAME[n].dtype == "string"]
    if text:
        raise ValueError(f"cluster features must be numeric catalog features; not usable: {', '.join(text)}")
    return np.column_stack([features[n].astype("float64").to_numpy(dtype=float, na_value=np.nan) for n in names]) \
        if len(features) else np.empty((0, len(names)))


def usable_k_values(n: int, config: ClusterConfig) -> list[int]:
    """k values of config.k_range with at least config.min_customers_per_cluster customers per cluster."""
    low, high = config.k_range
    per = config.min_customers_per_cluster
    if n < per * low:
        raise InsufficientDataError(
            f"{n} customers are too few for {low} clusters: the minimum is {per} per cluster ({per * low} for "
            f"k={low}, ClusterConfig.min_customers_per_cluster); use more customers or a smaller k_range")
    return list(range(low, min(high, n // per) + 1))


def select_k(X: np.ndarray, sample: np.ndarray, k_values: list[int], config: ClusterConfig) -> tuple[pd.DataFrame,
                                                                                                     str]:
    """Fit every k on the fixed sample; score it. Returns (k_scores table, criterion name).

    KMeans: silhouette (higher is better) and inertia. GMM: BIC (lower is better) and silhouette for reference.
    """
    rows = []
    for k in k_values:
        pipeline = build_pipeline(config, k, config.seed).fit(X[sample])
        Z = pipeline[:-1].transform(X[sample])
        labels = pipeline.predict(X[sample])
        row = {"k": k, "silhouette": float(silhouette_score(Z, labels)) if len(set(labels)) > 1 else float("nan")}
        clusterer = pipeline.named_steps["cluster"]
        row.update({"inertia": float(clusterer.inertia_)} if config.method == "kmeans"
                   else {"bic": float(clusterer.bic(Z))})
        rows.append(row)
    return pd.DataFrame(rows), ("silhouette" if config.method == "kmeans" else "bic")


def _best_k(scores: pd.DataFrame, criterion: str) -> int:
    """k with the best criterion value (the smaller k on ties)."""
    values = scores[criterion].to_numpy()
    best = np.nanargmax(values) if criterion == "silhouette" else np.nanargmin(values)
    return int(scores["k"].iloc[best])


def _size_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Old cluster ids ordered by size, largest first (ties: smaller old id), so cluster 0 is the largest."""
    sizes = np.bincount(labels, minlength=k)
    return np.lexsort((np.arange(k), -sizes))


def stability(X: np.ndarray, labels: np.ndarray, k: int, config: ClusterConfig) -> tuple[float, float]:
    """Mean and standard deviation of the adjusted Rand index between `labels` and the assignments of all rows by
    the pipeline refitted on each bootstrap resample (size min(n, sample_size), drawn with replacement)."""
    rng = np.random.default_rng(config.seed + 1)
    scores = []
    for round_ in range(config.bootstrap_rounds):
        resample = rng.choice(len(X), size=min(len(X), config.sample_size), replace=True)
        pipeline = build_pipeline(config, k, config.seed + 1 + round_).fit(X[resample])
        scores.append(adjusted_rand_score(labels, pipeline.predict(X)))
    return (float(np.mean(scores)), float(np.std(scores))) if scores else (float("nan"), float("nan"))


def cluster_profiles(X: np.ndarray, Z: np.ndarray, labels: np.ndarray, k: int,
                     names: tuple[str, ...]) -> pd.DataFrame:
    """One row per cluster: cluster_id, size, share, then per feature <f>__median, <f>__mean (feature units,
    missing values ignored) and <f>__std_diff ((cluster mean - population mean) / population std of the model's
    transformed feature). The population itself is `population_profile`."""
    mean, std = Z.mean(axis=0), Z.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    rows = []
    for c in range(k):
        members = labels == c
        row = {"cluster_id": c, "size": int(members.sum()), "share": float(members.mean())}
        for j, name in enumerate(names):
            values = X[members, j]
            present = values[~np.isnan(values)]
            row[f"{name}__median"] = float(np.median(present)) if present.size else None
            row[f"{name}__mean"] = float(present.mean()) if present.size else None
            row[f"{name}__std_diff"] = float((Z[members, j].mean() - mean[j]) / std[j]) if members.any() else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def population_profile(X: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    """The reference of the profiles: one row per feature with feature, label, group, median, mean, missing_share
    (feature units, missing values ignored)."""
    rows = []
    for j, name in enumerate(names):
        values = X[:, j]
        present = values[~np.isnan(values)]
        rows.append({"feature": name, "label": FEATURES_BY_NAME[name].label, "group": FEATURES_BY_NAME[name].group,
                     "median": float(np.median(present)) if present.size else None,
                     "mean": float(present.mean()) if present.size else None,
                     "missing_share": float(np.isnan(values).mean()) if len(values) else 0.0})
    return pd.DataFrame(rows)


def std_diff_matrix(profiles: pd.DataFrame) -> pd.DataFrame:
    """Clusters x features matrix of standardized differences (index cluster_id, columns feature names)."""
    columns = [c for c in profiles.columns if c.endswith("__std_diff")]
    out = profiles.set_index("cluster_id")[columns]
    out.columns = [c.removesuffix("__std_diff") for c in columns]
    return out


def cluster_names(profiles: pd.DataFrame, k: int, min_difference: float) -> list[str]:
    """Readable, unique names from the most distinguishing features (one per business group), e.g.
    "frequent discount shoppers" or "lapsed low-volume customers".

    Descriptors are the features with |standardized difference| >= min_difference, strongest first, at most one per
    business group; the first two make the name. A name already taken (clusters are named largest first) tries the
    strongest descriptor with each weaker one, then three descriptors, then gets a number.
    """
    diffs = std_diff_matrix(profiles)
    rows = profiles.set_index("cluster_id")
    taken: list[str] = []
    for c in range(k):
        noun = _noun(rows.loc[c])
        words = _descriptors(diffs.loc[c], min_difference, purchases=noun != "non-buyers")
        options = [words[:2], *([words[0], w] for w in words[2:]), words[:3]] if words else [["typical"]]
        names = [" ".join([*option, noun]) for option in options]
        name = next((n for n in names if n not in taken), None)
        taken.append(name or f"{names[0]} ({c + 1})")
    return taken


def _descriptors(diff_row: pd.Series, min_difference: float, purchases: bool = True) -> list[str]:
    """Descriptor words of one cluster, strongest difference first, one per business group.

    purchases=False skips features computed from transactions ("low-volume non-buyers" says nothing).
    """
    seen_groups, words = set(), []
    for feature in diff_row.abs().sort_values(ascending=False, kind="stable").index:
        value = diff_row[feature]
        group = FEATURES_BY_NAME[feature].group
        if abs(value) < min_difference or group in seen_groups:
            continue
        if not purchases and FEATURES_BY_NAME[feature].table == "transactions":
            continue
        high, low = DESCRIPTORS.get(feature, (f"high-{feature}", f"low-{feature}"))
        word = high if value > 0 else low
        if word not in words:
            seen_groups.add(group)
            words.append(word)
    return words


def _noun(row: pd.Series) -> str:
    """"non-buyers" when the typical member never bought, "shoppers" when they bought in the last year, else
    "customers" (only when those features are clustered)."""
    if row.get("orders_count_total__median") == 0:
        return "non-buyers"
    if (row.get("orders_count_365d__median") or 0) > 0:
        return "shoppers"
    return "customers"


def fit_surrogate(features: pd.DataFrame, labels: np.ndarray, k: int,
                  config: ClusterConfig) -> tuple[FeatureEncoder, lgb.Booster, float]:
    """LightGBM multiclass on the raw cluster features (missing kept as missing) -> cluster id.

    Trained on all but `surrogate_holdout_share` of the customers (a seeded permutation of sorted ids); fidelity is
    its accuracy on those held out. Returns (encoder, booster, fidelity).
    """
    inputs = list(config.features)
    encoder = FeatureEncoder().fit(features[inputs])
    X = encoder.transform(features[inputs])
    order = np.argsort(features["customer_id"].astype(str).to_numpy(), kind="stable")
    shuffled = np.random.default_rng(config.seed + 2).permutation(order)
    held_out = np.zeros(len(X), dtype=bool)
    held_out[shuffled[: max(round(config.surrogate_holdout_share * len(X)), 1)]] = True
    params = {"objective": "multiclass", "num_class": k, "learning_rate": config.surrogate_learning_rate,
              "num_leaves": config.surrogate_num_leaves, "min_data_in_leaf": config.surrogate_min_data_in_leaf,
              "seed": config.seed, "num_threads": config.num_threads, "deterministic": True,
              "force_col_wise": True, "verbosity": -1}
    data = lgb.Dataset(X[~held_out], label=labels[~held_out])
    booster = lgb.train(params, data, num_boost_round=config.surrogate_num_boost_round)
    predicted = booster.predict(X[held_out], num_threads=config.num_threads).argmax(axis=1)
    return encoder, booster, float((predicted == labels[held_out]).mean())


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and figures


def plain_kmeans(features: pd.DataFrame, names: tuple[str, ...], k: int, seed: int = 0) -> np.ndarray:
    """The textbook baseline of the pipeline: KMeans with the same k on the same features, median-imputed and
    standardized (no log, no robust range). Labels per row of `features`."""
    from sklearn.preprocessing import StandardScaler

    X = feature_matrix(features, names)
    X = np.where(np.isnan(X), np.nanmedian(X, axis=0), X)
    with threadpool_limits(limits=1):
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(StandardScaler().fit_transform(X))


def label_agreement(model: ClusterModel, features: pd.DataFrame, known: pd.Series) -> dict[str, float]:
    """Adjusted Rand index of the model's clusters, and of `plain_kmeans` with the same k, against a known
    labelling of the customers (`known`: label by customer_id; e.g. the generator's planted personas)."""
    truth = known.reindex(features["customer_id"].astype(str)).to_numpy()
    return {"ari": float(adjusted_rand_score(truth, model.assign(features))),
            "plain_kmeans_ari": float(adjusted_rand_score(truth, plain_kmeans(features, model.config.features,
                                                                              model.k_, model.config.seed)))}


def evaluate_clusters(config: ClusterConfig, features: pd.DataFrame, *, as_of: datetime,
                      model: ClusterModel | None = None) -> Evaluation:
    """Fit (unless a fitted `model` is given) and report the cluster model.

    Metrics: k, silhouette (on the fixed sample), stability_ari (+ _std), surrogate_fidelity.
    Baselines: majority_cluster (surrogate_fidelity of always answering the largest cluster).
    Figures: "profile_heatmap", "cluster_sizes", "k_selection".
    Tables: "profiles", "population", "k_scores", "std_diff" (clusters x features, rows named).
    """
    model = model if model is not None else ClusterModel(config).fit(features)
    metrics = {"k": float(model.k_), "silhouette": model.silhouette_, "stability_ari": model.stability_ari_,
               "stability_ari_std": model.stability_ari_std_, "surrogate_fidelity": model.surrogate_fidelity_}
    largest_share = float(model.profiles_["share"].max())
    diffs = std_diff_matrix(model.profiles_)
    diffs.index = [model.names_[i] for i in diffs.index]
    return Evaluation(
        metrics=metrics, baselines={"majority_cluster": {"surrogate_fidelity": largest_share}},
        figures={"profile_heatmap": plots.profile_heatmap(model.profiles_),
                 "cluster_sizes": plots.cluster_sizes(model.profiles_),
                 "k_selection": plots.k_selection(model.k_scores_, model.criterion_, model.k_)},
        tables={"profiles": model.profiles_, "population": model.population_, "k_scores": model.k_scores_,
                "std_diff": diffs.rename_axis("cluster_name").reset_index()},
        n_customers=model.n_customers_, as_of=as_of,
        notes=[f"k={model.k_} chosen by {model.criterion_} over k={model.k_scores_['k'].min()}..."
               + f"{model.k_scores_['k'].max()} ({model.config.method})"])
