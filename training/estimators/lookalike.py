"""Look-alike model: "customers like our seed", as positive-unlabelled (PU) learning with LightGBM.

Method (Elkan & Noto 2008, "Learning classifiers from only positive and unlabeled data")
---------------------------------------------------------------------------------------
Seed members are labelled (s = 1); everyone else is unlabelled (s = 0), a mix of customers who are like the seed and
customers who are not. Under the "selected completely at random" assumption, a classifier of labelled vs unlabelled,
g(x) = P(s=1 | x), is proportional to the probability of being seed-like: P(y=1 | x) = g(x) / c with
c = P(s=1 | y=1), estimated as the mean of g over seed members the classifier did not see.

- A calibration fit holds out `calibration_share` of the seed members (deterministic by `seed`) and estimates
  c from their scores; the final booster is then trained on all seed members vs all other customers.
- lookalike_score = min(g(x) / c, 1): the estimated probability of being seed-like (the ranking is g's).
- No class weights: they would break g's meaning as P(s=1 | x), and the ranking does not need them.
- One booster, not a bag of PU boosters, so SHAP reads one model (`booster_.predict(X, pred_contrib=True)`).
  Seed-like customers sit among the unlabelled rows with label 0, so a flexible model could learn to push exactly
  them down; shallow trees, a minimum leaf size and row subsampling limit that memorisation, and the evaluation
  measures it directly: held-out seed members are put back among the unlabelled training rows, like the
  look-alikes a campaign is looking for.

Feature exclusion: a rule seed records the features its rule uses and their window variants (see `training.seeds`);
they are not model inputs. `LookalikeConfig.exclude_features` removes more (e.g. for tag or id seeds).

Percentiles compare a score with the distribution of scores over the customers the model was fitted on, stored as
quantiles at fit time; they never depend on the batch being scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.catalog import FEATURE_SET_VERSION, FEATURES_BY_NAME, GROUPS
from features.errors import InsufficientDataError
from training import plots
from training.encoding import FeatureEncoder, check_feature_set
from training.estimators.base import Chart, Estimator, Explanation, ReportPage
from training.evaluation import Evaluation, importance_rows, lift_at, margin_over_baselines
from training.runtime import fit_threads

_MODEL_FILE, _ENCODER_FILE, _STATE_FILE = "lookalike_model.txt", "encoder.json", "lookalike.json"
LEAK_AUC = 0.98  # a single input separating the seed this well is reported as a possible proxy of its definition
_MIN_LABEL_FREQUENCY = 1e-6  # guards g / c when a calibration fit scores every held-out seed member near 0


@dataclass(frozen=True)
class LookalikeConfig:
    """Settings of a look-alike model; every field has a default.

    LightGBM: learning_rate, num_boost_round, num_leaves, min_data_in_leaf, feature_fraction, bagging_fraction,
    bagging_freq, lambda_l2. Data: min_seed_members (below it: InsufficientDataError), holdout_share (evaluation:
    seed members held out), calibration_share (seed members held out to estimate c), exclude_features (never model
    inputs, on top of a rule seed's own exclusions), top_k_percents (evaluation reach levels), reference_quantiles
    (resolution of stored percentiles). seed fixes every random choice; num_threads is LightGBM's.
    """

    learning_rate: float = 0.05
    num_boost_round: int = 200
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    seed: int = 0
    num_threads: int = field(default_factory=fit_threads)  # SEGMENTS_THREADS, else 2
    holdout_share: float = 0.2
    calibration_share: float = 0.2
    min_seed_members: int = 30
    exclude_features: tuple[str, ...] = ()
    top_k_percents: tuple[int, ...] = (1, 5, 10, 20)
    reference_quantiles: int = 1001

    def lgb_params(self) -> dict:
        """LightGBM parameters: binary objective, deterministic, quiet."""
        return {"objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
                "lambda_l2": self.lambda_l2, "seed": self.seed, "num_threads": self.num_threads,
                "deterministic": True, "force_col_wise": True, "verbosity": -1}



class LookalikeModel(Estimator):
    """Positive-unlabelled LightGBM model of a seed segment (module docstring).

    Fitted attributes: booster_ (lightgbm.Booster), encoder_ (FeatureEncoder of the model inputs), seed_name_,
    seed_definition_ (dict), excluded_features_ (list), label_frequency_ (Elkan-Noto c), reference_quantiles_
    (scores at evenly spaced quantiles of the fitted population), n_seed_, n_unlabelled_, feature_set_version_.
    """

    kind = "lookalike"
    config_class = LookalikeConfig
    primary_metric = "recall_at_10"
    headline_metrics = ("recall_at_10", "lift_at_10")
    needs_seed = True
    report = ReportPage(
        title="Look-alike model", nav_label="Look-alike: {seed}",
        purpose="How much each customer resembles the seed segment '{seed}' ({what}); the features that define the "
                "seed are left out, so the model finds customers like them, not copies.",
        shown_metrics=("entry_lift_at_10", "entry_rate_at_10", "recall_at_1", "recall_at_5", "recall_at_10",
                       "recall_at_20", "lift_at_10"),
        subject="likeness to {seed}", contrast=True,
        evaluated="evaluation date (seed members held out from training)", chart_tables=("reach",),
        charts=(Chart("lift", "Lift", "How many times more seed members the model finds than random targeting, "
                      "by reach.", lambda t, _h, seed: plots.reach_lift(t["reach"], seed)),
                Chart("reach", "Reach", "Share of held-out seed members found as more customers are reached. A "
                      "look-alike score ranks customers; it is not a probability that can be checked against "
                      "outcomes, so it has no calibration chart.", lambda t, _h, seed: plots.reach(t["reach"], seed))))

    def fit(self, features: pd.DataFrame, seed_ids: pd.Series | set[str], seed_name: str,
            definition: dict | None = None) -> LookalikeModel:
        """Fit on a feature table (customer_id + catalog columns) with the seed members' ids.

        `definition` is the seed's definition from `training.seeds.resolve_seed`; its excluded_features are
        removed from the inputs, as are config.exclude_features. Seed ids not in `features` are ignored.
        """
        definition = dict(definition or {"name": seed_name, "kind": "ids"})
        label = seed_labels(features, seed_ids)
        check_seed_size(label, self.config, seed_name)
        inputs = model_inputs(features, [*definition.get("excluded_features", []), *self.config.exclude_features])
        self.encoder_ = FeatureEncoder().fit(features[inputs])
        X = self.encoder_.transform(features[inputs])
        calibration = holdout_mask(features["customer_id"], label, self.config.calibration_share, self.config.seed)
        probe = _train(X[~calibration], label[~calibration], self.encoder_, self.config)
        label_frequency = float(probe.predict(X[calibration], num_threads=self.config.num_threads).mean())
        self.booster_ = _train(X, label, self.encoder_, self.config)
        self.label_frequency_ = max(label_frequency, _MIN_LABEL_FREQUENCY)
        self.seed_name_, self.seed_definition_ = seed_name, definition
        self.excluded_features_ = [name for name in features.columns
                                   if name in FEATURES_BY_NAME and name not in inputs]
        self.n_seed_, self.n_unlabelled_ = int(label.sum()), int((~label).sum())
        self.feature_set_version_ = FEATURE_SET_VERSION
        scores = self._classifier_output(X)
        levels = np.linspace(0.0, 1.0, self.config.reference_quantiles)
        self.reference_quantiles_ = np.quantile(scores, levels).tolist()
        return self

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict:
        """Feature rows -> lookalike_score (0..1) and lookalike_percentile (0..100).

        The percentile is the share of the fitted population with a lower score (ties count half), from the
        quantiles stored at fit time, so one customer scores the same alone as in any batch. `encoded`: the rows
        already through `encoder_.matrix` (the service encodes once for scores and reasons).
        """
        self.require_fitted()
        check_feature_set(features, self.feature_set_version_)
        g = self._classifier_output(self.encoder_.matrix(features) if encoded is None else encoded)
        return {"lookalike_score": np.minimum(g / self.label_frequency_, 1.0),
                "lookalike_percentile": self._percentile(g)}

    def ranking_score(self, features: pd.DataFrame) -> np.ndarray:
        """The classifier output g(x): same order as lookalike_score but without the ties at the cap of 1."""
        self.require_fitted()
        return self._classifier_output(self.encoder_.transform(features))

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Exact TreeSHAP values (log-odds of being a seed member) per model input, plus a "bias" column."""
        self.require_fitted()
        X = self.encoder_.transform(features)
        values = self.booster_.predict(X, pred_contrib=True)
        return pd.DataFrame(values, index=features.index, columns=[*self.encoder_.feature_names_, "bias"])

    def explanation(self) -> Explanation:
        return Explanation(self.booster_, f"lookalike_{self.seed_name_}", f"likeness to {self.seed_name_}",
                           "log-odds", "probability", "logistic")

    def _classifier_output(self, X: pd.DataFrame) -> np.ndarray:
        # Percentiles and rankings use g itself: min(g / c, 1) ties every customer above c at 1.
        return self.booster_.predict(X)

    def _percentile(self, score: np.ndarray) -> np.ndarray:
        ref = np.asarray(self.reference_quantiles_)
        below = np.searchsorted(ref, score, side="left")
        at_or_below = np.searchsorted(ref, score, side="right")
        return 100.0 * (below + at_or_below) / (2.0 * len(ref))

    def save(self, directory: Path) -> Path:
        """Write the LightGBM text model, the encoder JSON and the state JSON into `directory` (created)."""
        state = {"feature_set_version": self.feature_set_version_, "seed_name": self.seed_name_,
                 "seed_definition": self.seed_definition_, "excluded_features": self.excluded_features_,
                 "label_frequency": self.label_frequency_, "n_seed": self.n_seed_,
                 "n_unlabelled": self.n_unlabelled_, "reference_quantiles": self.reference_quantiles_}
        return self.save_native(directory, {_MODEL_FILE: self.booster_}, state, _STATE_FILE, _ENCODER_FILE)

    @classmethod
    def load(cls, directory: Path) -> LookalikeModel:
        """Read a model written by `save`."""
        model, state, boosters = cls.load_native(directory, [_MODEL_FILE], _STATE_FILE, _ENCODER_FILE)
        model.booster_ = boosters[_MODEL_FILE]
        model.seed_name_, model.seed_definition_ = state["seed_name"], state["seed_definition"]
        model.excluded_features_ = state["excluded_features"]
        model.label_frequency_ = state["label_frequency"]
        model.n_seed_, model.n_unlabelled_ = state["n_seed"], state["n_unlabelled"]
        model.reference_quantiles_ = state["reference_quantiles"]
        return model


# ---------------------------------------------------------------------------------------------------------------
# Fitting helpers


def seed_labels(features: pd.DataFrame, seed_ids: pd.Series | set[str]) -> np.ndarray:
    """Boolean array aligned with `features` rows: is the customer a seed member."""
    ids = {str(i) for i in (seed_ids.dropna() if isinstance(seed_ids, pd.Series) else seed_ids)}
    return features["customer_id"].astype(str).isin(ids).to_numpy()


def check_seed_size(label: np.ndarray, config: LookalikeConfig, seed_name: str) -> None:
    """InsufficientDataError when the seed or the rest of the population is below config.min_seed_members."""
    n_seed, n_rest = int(label.sum()), int((~label).sum())
    if n_seed < config.min_seed_members:
        raise InsufficientDataError(
            f"seed '{seed_name}' has {n_seed} members in the feature table, fewer than the minimum of "
            f"{config.min_seed_members} (LookalikeConfig.min_seed_members): widen the seed definition, use an "
            "earlier or later --as-of, or lower the minimum knowingly")
    if n_rest < config.min_seed_members:
        raise InsufficientDataError(
            f"seed '{seed_name}' covers {n_seed} of {len(label)} customers, leaving {n_rest} outside it (minimum "
            f"{config.min_seed_members}): there is nobody left to find look-alikes among; narrow the seed")


def model_inputs(features: pd.DataFrame, excluded: list[str]) -> list[str]:
    """Catalog feature columns of `features` that the model may use (the excluded ones removed)."""
    unknown = [name for name in excluded if name not in FEATURES_BY_NAME]
    if unknown:
        raise ValueError(f"exclude_features names unknown features: {', '.join(unknown)} (see `segments catalog`)")
    return [c for c in features.columns if c in FEATURES_BY_NAME and c not in set(excluded)]


def holdout_mask(customer_ids: pd.Series, label: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean array: a `share` of the seed members (at least one), chosen by a seeded permutation of sorted ids.

    Sorting first makes the choice depend only on the ids and the seed, not on the row order of the table.
    """
    positions = np.flatnonzero(label)
    positions = positions[np.argsort(customer_ids.astype(str).to_numpy()[positions], kind="stable")]
    n_out = min(max(round(share * len(positions)), 1), len(positions) - 1)
    chosen = np.random.default_rng(seed).permutation(positions)[:n_out]
    mask = np.zeros(len(label), dtype=bool)
    mask[chosen] = True
    return mask


def _train(X: pd.DataFrame, label: np.ndarray, encoder: FeatureEncoder, config: LookalikeConfig) -> lgb.Booster:
    data = lgb.Dataset(X, label=label.astype(int), categorical_feature=encoder.categorical_features or "auto",
                       free_raw_data=True)
    return lgb.train(config.lgb_params(), data, num_boost_round=config.num_boost_round)



# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def recall_at_reach(score: np.ndarray, is_target: np.ndarray, percents) -> dict[int, float]:
    """Share of targets among the top k% by score, for each k in `percents` (ties broken by position)."""
    order = np.argsort(-score, kind="stable")
    total = max(int(is_target.sum()), 1)
    out = {}
    for k in percents:
        n_top = max(round(k / 100.0 * len(score)), 1)
        out[k] = float(is_target[order[:n_top]].sum() / total)
    return out


def centroid_similarity(features: pd.DataFrame, inputs: list[str], train_seed: np.ndarray) -> np.ndarray:
    """Baseline score: minus the distance to the training seed members' mean in robust-standardised features.

    Numeric inputs only; each is centred on its median and divided by its 5-95% range over all rows, missing
    values at the median. No model, no learning of which features matter.
    """
    numeric = [c for c in inputs if FEATURES_BY_NAME[c].dtype != "string"]
    X = features[numeric].astype("float64").to_numpy(dtype=float, na_value=np.nan)
    median = np.nanmedian(X, axis=0)
    spread = np.nanpercentile(X, 95, axis=0) - np.nanpercentile(X, 5, axis=0)
    Z = (np.where(np.isnan(X), median, X) - median) / np.where(spread > 0, spread, 1.0)
    centroid = Z[train_seed].mean(axis=0)
    return -np.sqrt(((Z - centroid) ** 2).sum(axis=1))


def separating_features(features: pd.DataFrame, label: np.ndarray, inputs: list[str]) -> pd.DataFrame:
    """How well each model input alone separates seed members from the rest: a leakage check.

    AUC of the feature's value (missing ranked lowest) and of its missingness, whichever is further from 0.5, folded
    to >= 0.5. Text features are judged on missingness only (their codes have no order). A feature near 1.0 alone
    tells seed members apart: often a proxy of the seed's definition, worth excluding (exclude_features).
    Columns: feature, label, auc; highest first.
    """
    rows = []
    for name in inputs:
        column = features[name]
        missing = column.isna().to_numpy()
        candidates = [roc_auc_score(label, missing)] if 0 < missing.sum() < len(missing) else [0.5]
        if FEATURES_BY_NAME[name].dtype != "string":
            values = column.astype("float64").to_numpy(dtype=float, na_value=np.nan)
            if np.isfinite(values).any():
                candidates.append(roc_auc_score(label, np.where(np.isnan(values), np.nanmin(values) - 1, values)))
        auc = max(max(a, 1 - a) for a in candidates)
        rows.append({"feature": name, "label": FEATURES_BY_NAME[name].label, "auc": float(auc)})
    return pd.DataFrame(rows).sort_values("auc", ascending=False, kind="stable").reset_index(drop=True)


ENTRY_REACH = 0.10  # the out-of-time headline: the top 10% of non-members by score
MIN_ENTRANTS = 20  # fewer, and the top 10% holds about 2 of them: no figure to judge a model on


def entry_rate(entered: np.ndarray, score: np.ndarray) -> float:
    """Share of the top `ENTRY_REACH` by score that entered the seed (ties broken by position, as lift_at)."""
    return lift_at(entered, score, ENTRY_REACH) * float(np.mean(entered)) if np.mean(entered) > 0 else 0.0


def near_miss_score(features: pd.DataFrame, definition: dict) -> np.ndarray:
    """How close a non-member is to the seed's own rule: its ranking attribute (`top_by`), else the first feature
    the rule reads, higher first ("x < c" rules: lower first). Missing values rank last."""
    column = definition.get("top_by") or (definition.get("features_used") or [None])[0]
    if column is None or column not in features:
        return np.zeros(len(features))
    values = pd.to_numeric(features[column].astype("float64"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    descending = not re.search(rf"\b{re.escape(column)}\s*<", definition.get("rule") or "")
    values = values if descending else -values
    return np.where(np.isnan(values), -np.inf, values)


def evaluate_entries(config: LookalikeConfig, before: pd.DataFrame, seed_before: set[str], seed_after: set[str],
                     seed_name: str, definition: dict) -> tuple[dict, dict, pd.DataFrame]:
    """Out of time, what a marketer asks of a look-alike: of the customers outside the seed at an earlier date,
    do the ones it ranks highest join the seed by a later date?

    A look-alike is fitted on the seed at the earlier date (`before`, `seed_before`) and ranks everyone outside it;
    `seed_after` is the seed resolved on the later feature table. Metrics: entry_rate_at_10 (share of the top 10%
    that entered), entry_lift_at_10 (that share over the entry rate of all non-members), the margin over the best
    baseline with its paired-bootstrap interval. Baselines: random, and rule_near_miss (ranking by the seed's own
    defining attribute: the customers just below its threshold, `near_miss_score`). Returns (metrics, baselines,
    share of the entrants found at each reach, by the model and by the rule's near-misses).
    """
    model = LookalikeModel(config).fit(before, seed_before, seed_name, definition)
    outside = before[~seed_labels(before, seed_before)].reset_index(drop=True)
    entered = seed_labels(outside, seed_after).astype(int)
    if entered.sum() < MIN_ENTRANTS:
        raise InsufficientDataError(f"only {entered.sum()} customers outside the seed '{seed_name}' entered it in the "
                                    f"horizon (minimum {MIN_ENTRANTS}): too few to judge the look-alike on")
    scores = {"model": model.ranking_score(outside),
              "random": np.random.default_rng(config.seed).random(len(outside)),
              "rule_near_miss": near_miss_score(outside, definition)}

    def lift(y: np.ndarray, score: np.ndarray) -> float:
        return lift_at(y, score, ENTRY_REACH)

    margin, _ = margin_over_baselines("entry_lift_at_10", entered, scores["model"],
                                      {k: v for k, v in scores.items() if k != "model"}, lift)
    of = {name: {"entry_rate_at_10": entry_rate(entered, score), "entry_lift_at_10": lift(entered, score)}
          for name, score in scores.items()}
    metrics = {**of.pop("model"), **margin, "entry_rate_all": float(entered.mean()),
               "n_outside_seed": float(len(outside))}
    reach = reach_table(scores["model"], entered.astype(bool), {"rule near-miss": scores["rule_near_miss"]})
    return metrics, of, reach


def evaluate_lookalike(config: LookalikeConfig, features: pd.DataFrame, seed_ids: pd.Series | set[str],
                       seed_name: str, *, as_of: datetime, definition: dict | None = None) -> Evaluation:
    """Hold out `config.holdout_share` of the seed, fit on the rest, and find the held-out members again.

    Held-out members stay in the population as unlabelled customers, exactly like the look-alikes a campaign looks
    for. Scored population: every customer not used as a training seed member.
    Metrics: recall_at_{k} (share of held-out members in the top k% of the scored population) and lift_at_{k}
    (recall / k%) for k in config.top_k_percents. Baselines: random (recall = k%) and centroid similarity.
    Figures: "reach" (recall and mean score against reach), "seed_shap" (what the seed members have in common).
    Tables: "reach", "seed_shap_groups", "seed_shap_features", "separating_features" (leakage check; the largest
    single-input AUC is the metric max_single_feature_auc, and inputs above LEAK_AUC are named in the notes).
    """
    label = seed_labels(features, seed_ids)
    check_seed_size(label, config, seed_name)
    held_out = holdout_mask(features["customer_id"], label, config.holdout_share, config.seed)
    n_train = int((label & ~held_out).sum())
    if n_train < config.min_seed_members:
        raise InsufficientDataError(
            f"seed '{seed_name}' has {int(label.sum())} members; holding out {int(held_out.sum())} for evaluation "
            f"leaves {n_train} to train on, fewer than the minimum of {config.min_seed_members}: the evaluation "
            f"needs at least {int(np.ceil(config.min_seed_members / (1 - config.holdout_share)))} members")
    train_ids = features.loc[label & ~held_out, "customer_id"]
    model = LookalikeModel(config).fit(features, set(train_ids.astype(str)), seed_name, definition)
    scored = ~(label & ~held_out)
    target = held_out[scored]
    score = model.ranking_score(features.loc[scored])
    inputs = model.encoder_.feature_names_
    baseline = centroid_similarity(features, inputs, label & ~held_out)[scored]
    ks = config.top_k_percents
    reach = reach_table(score, target, {"centroid similarity": baseline})
    model_recall = recall_at_reach(score, target, ks)
    centroid_recall = recall_at_reach(baseline, target, ks)
    metrics = {**{f"recall_at_{k}": model_recall[k] for k in ks},
               **{f"lift_at_{k}": model_recall[k] / (k / 100.0) for k in ks},
               "n_seed_train": float((label & ~held_out).sum()), "n_seed_held_out": float(held_out.sum())}
    baselines = {"random": {**{f"recall_at_{k}": k / 100.0 for k in ks}, **{f"lift_at_{k}": 1.0 for k in ks}},
                 "centroid_similarity": {**{f"recall_at_{k}": centroid_recall[k] for k in ks},
                                         **{f"lift_at_{k}": centroid_recall[k] / (k / 100.0) for k in ks}}}
    groups, top_features = seed_shap_summary(model, features, label)
    separating = separating_features(features, label, inputs)
    metrics["max_single_feature_auc"] = float(separating["auc"].iloc[0])
    leaks = separating[separating["auc"] >= LEAK_AUC]
    return Evaluation(
        metrics=metrics, baselines=baselines,
        figures={"reach": plots.reach(reach, seed_name), "reach_lift": plots.reach_lift(reach, seed_name),
                 "seed_shap": plots.seed_shap(top_features, seed_name)},
        tables={"reach": reach, "seed_shap_groups": groups, "seed_shap_features": top_features,
                "separating_features": separating.head(15)},
        n_customers=int(scored.sum()), as_of=as_of,
        notes=[f"held out {int(held_out.sum())} of {int(label.sum())} seed members; excluded features: "
               + (", ".join(model.excluded_features_) or "none"),
               *([f"these inputs alone separate the seed (AUC >= {LEAK_AUC}): "
                  + ", ".join(f"{r.feature} ({r.auc:.3f})" for r in leaks.itertuples())
                  + "; if they restate the seed's definition, add them to exclude_features"] if len(leaks) else [])])


def reach_table(score: np.ndarray, target: np.ndarray, baselines: dict[str, np.ndarray]) -> pd.DataFrame:
    """Reach curve at every whole percent of the scored population, best scores first.

    Columns: reach_pct, customers, recall (model), mean_score (model, over the customers reached),
    recall_<baseline> for each baseline, recall_random (= reach).
    """
    percents = list(range(1, 101))
    order = np.argsort(-score, kind="stable")
    n_top = [max(round(p / 100.0 * len(score)), 1) for p in percents]
    table = pd.DataFrame({"reach_pct": percents, "customers": n_top,
                          "recall": list(recall_at_reach(score, target, percents).values()),
                          "mean_score": [float(score[order[:n]].mean()) for n in n_top]})
    for name, values in baselines.items():
        table[f"recall_{name.replace(' ', '_')}"] = list(recall_at_reach(values, target, percents).values())
    table["recall_random"] = table["reach_pct"] / 100.0
    return table


def seed_shap_summary(model: LookalikeModel, features: pd.DataFrame, is_seed: np.ndarray,
                      top: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What seed members have in common: mean |SHAP| over the seed members, by business group and by feature.

    Group attributions sum each customer's SHAP values within the group before taking |.| (SHAP is additive).
    Groups table: group, group_label, mean_abs_shap, share (of the groups' total), top_features (labels).
    Features table (the `top` largest): feature, label, group, mean_abs_shap, mean_shap (+: pulls towards the
    seed on average), seed_median and population_median (most common value for text features).
    """
    seed_rows = importance_rows(features.loc[is_seed])
    contrib = model.contributions(seed_rows).drop(columns="bias")
    group_of = {c: FEATURES_BY_NAME[c].group for c in contrib.columns}
    per_feature = pd.DataFrame({
        "feature": contrib.columns,
        "label": [FEATURES_BY_NAME[c].label for c in contrib.columns],
        "group": [group_of[c] for c in contrib.columns],
        "mean_abs_shap": contrib.abs().mean().to_numpy(),
        "mean_shap": contrib.mean().to_numpy(),
        "seed_median": [_median(seed_rows[c]) for c in contrib.columns],
        "population_median": [_median(features[c]) for c in contrib.columns],
    }).sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    by_group = contrib.T.groupby(contrib.columns.map(group_of)).sum().T
    groups = pd.DataFrame({"group": by_group.columns, "mean_abs_shap": by_group.abs().mean().to_numpy()})
    groups = groups.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    groups.insert(1, "group_label", groups["group"].map(GROUPS))
    groups["share"] = groups["mean_abs_shap"] / groups["mean_abs_shap"].sum()
    groups["top_features"] = [", ".join(per_feature.loc[per_feature["group"] == g, "label"].head(3))
                              for g in groups["group"]]
    return groups, per_feature.head(top)


def _median(column: pd.Series) -> float | str | None:
    """Median of a numeric column, most common value of a text one (None when all missing)."""
    values = column.dropna()
    if values.empty:
        return None
    if pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        return str(values.astype(str).mode().iloc[0])
    return float(values.astype("float64").median())
