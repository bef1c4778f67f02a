"""Uplift model: who is moved by a campaign, not only who buys, learnt from past campaigns and their holdouts.

Data (DESIGN.md section 3, events): a past campaign is a `campaign_id` whose audience holds both contacted customers
(any event of that campaign, e.g. `email_sent`) and held-out ones (a `campaign_holdout` event). Its start is the
first of those events; each audience member is one row: the features as of the start (the same feature code as
every model, strictly before it), treated or held out, and whether they bought in the `window_days` after the start
(`converted`). A customer both contacted and held out by one campaign is left out (counted in a note).

Method: two-model (T-learner) LightGBM. One classifier of conversion on treated rows, one on held-out rows, each
early-stopped over customer folds; the uplift is the difference of their probabilities. Each row's difference is
computed out of fold (by the models that did not see that customer), and one LightGBM regression is fitted to
those differences: the served score. So the score is one booster in probability points, and its exact TreeSHAP
contributions add up to it (reasons in words a marketer reads: "raises the chance the offer moves them by 3
points"); `fidelity_` (R^2 of the served score on the out-of-fold differences) says how closely it follows them.

Protocol (as churn's "backtest, then refit"): labelled campaigns are those whose windows end by `as_of` and that
started in the `lookback_days` before it. The latest `evaluation_campaigns` are held out; the model fitted on the
campaigns whose windows end before the first of them starts is evaluated on them, out of time, against "target the
likeliest buyers" (a LightGBM classifier of conversion on every row, treatment ignored: the usual heuristic) and
random targeting. The served model is refitted on every labelled campaign.

Metrics on the held-out campaigns: `qini` (the area between the Qini curve and random targeting's line, as a share
of that area for a perfect ordering of the observed outcomes: 0 random, 1 perfect; Radcliffe 2007), `uplift_at_k`
(treated minus held-out conversion among the top k% by score), `average_uplift` (the campaigns' own effect).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.catalog import FEATURE_SET_VERSION
from features.errors import InsufficientDataError
from training import plots
from training.encoding import FeatureEncoder, check_feature_set
from training.estimators.base import Chart, Estimator, Explanation, ReportPage
from training.estimators.churn import NOT_POINT_IN_TIME, fit_boosted, lightgbm_params
from training.estimators.lookalike import model_inputs
from training.evaluation import Evaluation, margin_over_baselines
from training.runtime import fit_threads

HOLDOUT_EVENT = "campaign_holdout"
_MODEL_FILE, _STATE_FILE = "uplift_model.txt", "uplift.json"
MIN_EVALUATION_ROWS_PER_ARM = 30  # fewer treated or held-out rows in the evaluation campaigns: no figure to judge on


@dataclass(frozen=True)
class UpliftConfig:
    """Settings of an uplift model; every field has a default.

    Data: window_days (a conversion counts in this many days after a campaign's start), lookback_days (campaigns that
    started this long before as_of are used), evaluation_campaigns (the latest campaigns held out for the
    out-of-time evaluation), min_rows_per_arm (fewer treated or held-out rows to fit on: InsufficientDataError),
    max_rows (more audience rows than this over all campaigns: each row is kept with the same probability, so every
    campaign and arm keeps its share; recorded in the run), top_k_percents (uplift at these reach levels). LightGBM: learning_rate, n_estimators (most rounds; early-stopped
    over cv_folds customer folds with early_stopping_rounds), num_leaves, min_data_in_leaf, feature_fraction,
    bagging_fraction, lambda_l2; the served score's regression: score_rounds, score_num_leaves. exclude_features are
    never inputs; seed fixes every random choice; num_threads is LightGBM's.
    """

    window_days: int = 14
    lookback_days: int = 365
    evaluation_campaigns: int = 2
    min_rows_per_arm: int = 200
    max_rows: int = 500_000
    top_k_percents: tuple[int, ...] = (10, 20, 30)
    learning_rate: float = 0.1
    n_estimators: int = 300
    early_stopping_rounds: int = 30
    cv_folds: int = 3
    num_leaves: int = 15
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    score_rounds: int = 100
    score_num_leaves: int = 15
    exclude_features: tuple[str, ...] = NOT_POINT_IN_TIME
    seed: int = 0
    num_threads: int = field(default_factory=fit_threads)  # SEGMENTS_THREADS, else 2


@dataclass(frozen=True)
class CampaignRows:
    """One row per (campaign, audience member): features as of the campaign's start and what happened.

    features: feature table rows (customer_id + catalog columns); treated, converted: bool arrays aligned with them;
    campaign_id, start: per row; campaigns: one row per campaign (campaign_id, start, treated, held_out,
    conversion_treated, conversion_held_out, observed_uplift).
    """

    features: pd.DataFrame
    treated: np.ndarray
    converted: np.ndarray
    campaign_id: np.ndarray
    start: np.ndarray
    campaigns: pd.DataFrame

    def subset(self, campaign_ids) -> CampaignRows:
        keep = np.isin(self.campaign_id, list(campaign_ids))
        return CampaignRows(self.features.loc[keep].reset_index(drop=True), self.treated[keep], self.converted[keep],
                            self.campaign_id[keep], self.start[keep],
                            self.campaigns[self.campaigns["campaign_id"].isin(list(campaign_ids))])

    def __len__(self) -> int:
        return len(self.treated)


class UpliftModel(Estimator):
    """Two-model LightGBM uplift, served as one regression booster of the out-of-fold differences (module docstring).

    Fitted attributes: booster_ (the served score), encoder_, fidelity_ (R^2 of the score on the out-of-fold
    differences), rounds_ (rounds of the treated and held-out classifiers), n_treated_, n_held_out_, campaigns_
    (ids fitted on), average_uplift_ (treated minus held-out conversion over the fitted rows), feature_set_version_.
    """

    kind = "uplift"
    config_class = UpliftConfig
    primary_metric = "qini"
    headline_metrics = ("qini", "uplift_at_20")
    report = ReportPage(
        title="Campaign response (uplift) model",
        nav_label="Uplift",
        purpose="How much a campaign changes each customer's chance of buying within {horizon} days of it: learnt "
                "from past campaigns, comparing the customers contacted with those held out. Target the customers "
                "it moves, not those who would buy anyway.",
        shown_metrics=("qini", "uplift_at_10", "uplift_at_20", "uplift_at_30", "average_uplift"),
        subject="campaign response",
        evaluated="evaluation campaigns (out of time: after every training campaign's window)",
        target_label="Contacted who bought", target_percent=True, chart_tables=("qini_curve",),
        charts=(Chart("qini", "Qini curve", "Extra buyers the campaign makes, per customer of its audience, when "
                      "only the customers ranked highest are contacted (held-out campaigns). The uplift model "
                      "against targeting the likeliest buyers and random targeting.",
                      lambda t, _h, _s: plots.qini(t["qini_curve"])),))

    def fit(self, rows: CampaignRows) -> UpliftModel:
        """Fit on campaign rows (`campaign_rows`): the two classifiers, then the served score on their out-of-fold
        differences."""
        check_arms(rows, self.config.min_rows_per_arm, "training campaigns")
        x = rows.features.reset_index(drop=True)
        self.encoder_ = fit_encoder(self.config, x)
        matrix = self.encoder_.transform(x)
        differences, self.rounds_ = out_of_fold_uplift(self.config, self.encoder_, x, matrix, rows.treated,
                                                       rows.converted)
        dataset = lgb.Dataset(matrix, differences, categorical_feature=self.encoder_.categorical_features or "auto")
        params = lightgbm_params(self.config, "regression", {}, num_leaves=self.config.score_num_leaves)
        params.pop("monotone_rules")
        booster = lgb.train(params, dataset, num_boost_round=self.config.score_rounds)
        self.booster_ = lgb.Booster(model_str=booster.model_to_string())
        fitted = self.booster_.predict(matrix)
        self.fidelity_ = float(1.0 - np.sum((differences - fitted) ** 2)
                               / max(np.sum((differences - differences.mean()) ** 2), 1e-12))
        self.n_treated_, self.n_held_out_ = int(rows.treated.sum()), int((~rows.treated).sum())
        self.campaigns_ = sorted(set(rows.campaign_id.tolist()))
        self.average_uplift_ = observed_uplift(rows.converted, rows.treated)
        self.feature_set_version_ = FEATURE_SET_VERSION
        return self

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict:
        """Feature rows -> uplift_score: the estimated change in the chance of buying within the window when
        contacted rather than held out (probability points, -1..1)."""
        self.require_fitted()
        check_feature_set(features, self.feature_set_version_)
        X = self.encoder_.matrix(features) if encoded is None else encoded
        return {"uplift_score": np.clip(self.booster_.predict(X), -1.0, 1.0)}

    def explanation(self) -> Explanation:
        return Explanation(self.booster_, "uplift", "campaign response", "probability points", "probability points",
                           "identity")

    def save(self, directory: Path) -> Path:
        state = {"fidelity": self.fidelity_, "rounds": self.rounds_, "n_treated": self.n_treated_,
                 "n_held_out": self.n_held_out_, "campaigns": self.campaigns_, "average_uplift": self.average_uplift_}
        return self.save_native(directory, {_MODEL_FILE: self.booster_}, state, _STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> UpliftModel:
        model, state, boosters = cls.load_native(directory, [_MODEL_FILE], _STATE_FILE)
        model.booster_ = boosters[_MODEL_FILE]
        model.fidelity_, model.rounds_ = state["fidelity"], state["rounds"]
        model.n_treated_, model.n_held_out_ = state["n_treated"], state["n_held_out"]
        model.campaigns_, model.average_uplift_ = state["campaigns"], state["average_uplift"]
        return model


# ---------------------------------------------------------------------------------------------------------------
# Fitting helpers


def fit_encoder(config: UpliftConfig, x: pd.DataFrame) -> FeatureEncoder:
    """The encoder of the model inputs: the catalog features of `x` but `exclude_features`."""
    return FeatureEncoder().fit(x[model_inputs(x, list(config.exclude_features))])


def out_of_fold_uplift(config: UpliftConfig, encoder: FeatureEncoder, x: pd.DataFrame, matrix: pd.DataFrame,
                       treated: np.ndarray, converted: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Per row: P(convert | treated) - P(convert | held out), each from a model that did not see this row (its own
    arm: the fold model that did not see the row's customer, from the out-of-fold margin; the other arm: that arm's
    model, fitted on the other arm's rows only). `matrix` is `x` through `encoder`. Returns (differences, rounds per
    arm)."""
    params = lightgbm_params(config, "binary", {})
    probability, rounds = {}, {}
    for arm, rows in (("treated", treated), ("held_out", ~treated)):
        booster, rounds[arm], out_of_fold = fit_boosted(params, encoder, x.loc[rows].reset_index(drop=True),
                                                        pd.Series(converted[rows].astype(float)), config)
        p = booster.predict(matrix, raw_score=True)
        p[rows] = out_of_fold
        probability[arm] = 1.0 / (1.0 + np.exp(-p))
    return probability["treated"] - probability["held_out"], rounds


def response_model(config: UpliftConfig, rows: CampaignRows) -> tuple[FeatureEncoder, lgb.Booster]:
    """The "target the likeliest buyers" heuristic: a classifier of conversion on every row, treatment ignored."""
    x = rows.features.reset_index(drop=True)
    encoder = fit_encoder(config, x)
    booster, _, _ = fit_boosted(lightgbm_params(config, "binary", {}), encoder, x,
                                pd.Series(rows.converted.astype(float)), config)
    return encoder, booster


def check_arms(rows: CampaignRows, minimum: int, where: str) -> None:
    n_treated, n_held_out = int(rows.treated.sum()), int((~rows.treated).sum())
    if min(n_treated, n_held_out) < minimum:
        raise InsufficientDataError(
            f"{where}: {n_treated} treated and {n_held_out} held-out rows, fewer than min_rows_per_arm={minimum} in "
            "one arm: run campaigns with a larger holdout, add earlier campaigns (--as-of, lookback_days) or lower "
            "min_rows_per_arm")


def observed_uplift(converted: np.ndarray, treated: np.ndarray) -> float:
    """Treated minus held-out conversion rate (NaN when an arm is empty)."""
    if treated.all() or not treated.any():
        return float("nan")
    return float(converted[treated].mean() - converted[~treated].mean())


# ---------------------------------------------------------------------------------------------------------------
# Campaign rows from the validated tables


def campaign_audiences(con, as_of: datetime, window_days: int, lookback_days: int) -> tuple[pd.DataFrame, int]:
    """Audience members of the labelled campaigns (module docstring): (campaign_id, start, customer_id, treated)
    rows ordered by start, and how many members were both contacted and held out (left out)."""
    query = f"""
        WITH audience AS (
            SELECT campaign_id, customer_id, bool_or(event_type <> '{HOLDOUT_EVENT}') AS contacted,
                   bool_or(event_type = '{HOLDOUT_EVENT}') AS held_out, min(timestamp) AS first_seen
            FROM events WHERE campaign_id IS NOT NULL GROUP BY campaign_id, customer_id),
        campaigns AS (
            SELECT campaign_id, min(first_seen) AS start FROM audience GROUP BY campaign_id
            HAVING bool_or(held_out) AND bool_or(contacted AND NOT held_out))
        SELECT a.campaign_id, c.start, a.customer_id, NOT a.held_out AS treated, a.contacted AND a.held_out AS both
        FROM audience a JOIN campaigns c USING (campaign_id)
        WHERE c.start >= ? AND c.start + to_days(?) <= ?
        ORDER BY c.start, a.campaign_id, a.customer_id"""
    if "events" not in {row[0] for row in con.execute("SHOW TABLES").fetchall()}:
        return pd.DataFrame(columns=["campaign_id", "start", "customer_id", "treated"]), 0
    frame = con.execute(query, [as_of - timedelta(days=lookback_days), window_days, as_of]).df()
    both = int(frame["both"].sum())
    return frame.loc[~frame["both"], ["campaign_id", "start", "customer_id", "treated"]], both


def sample_audience(audience: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ~`max_rows` audience rows: each kept with probability max_rows / rows (seeded), so campaigns and arms
    keep their shares in expectation; all of them when there are fewer."""
    if len(audience) <= max_rows:
        return audience
    keep = np.random.default_rng(seed).random(len(audience)) < max_rows / len(audience)
    return audience.loc[keep]


def campaign_rows(audience: pd.DataFrame, snapshot) -> CampaignRows:
    """The rows of the audiences in `audience` with their features and conversions; `snapshot(start)` gives the
    Snapshot (features + outcomes over the window) at a campaign's start."""
    parts = []
    for (campaign_id, start), members in audience.groupby(["campaign_id", "start"], sort=False):
        shot = snapshot(start.to_pydatetime())
        joined = members.merge(shot.features, on="customer_id", how="inner", validate="one_to_one")
        joined = joined.merge(shot.outcomes[["customer_id", "purchases_next"]], on="customer_id", how="left")
        joined["converted"] = joined["purchases_next"].fillna(0).to_numpy() > 0
        parts.append(joined)
    table = pd.concat(parts, ignore_index=True)
    feature_columns = [c for c in table.columns
                       if c not in ("campaign_id", "start", "treated", "purchases_next", "converted")]
    treated, converted = table["treated"].to_numpy(bool), table["converted"].to_numpy(bool)
    summary = (table.assign(conv_t=table["converted"].where(table["treated"]),
                            conv_h=table["converted"].where(~table["treated"]))
               .groupby(["campaign_id", "start"], sort=False)
               .agg(treated=("treated", "sum"), held_out=("treated", lambda t: int((~t).sum())),
                    conversion_treated=("conv_t", "mean"), conversion_held_out=("conv_h", "mean"))
               .reset_index())
    summary["observed_uplift"] = summary["conversion_treated"] - summary["conversion_held_out"]
    return CampaignRows(table[feature_columns], treated, converted, table["campaign_id"].to_numpy(),
                        table["start"].to_numpy(), summary)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def qini_curve(converted: np.ndarray, treated: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Q(k) for k = 1..n customers contacted best score first: treated conversions minus held-out conversions scaled
    to the treated count, Y_t(k) - Y_c(k) * N_t(k) / N_c(k), per customer of the audience (divided by n)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    t, y = treated[order].astype(float), converted[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(1.0 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1.0 - t))
    scaled = np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    return (y_t - scaled) / len(order)


def qini(converted: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Area between the Qini curve and random targeting's straight line, as a share of that area for the perfect
    ordering of the observed outcomes (treated buyers first, held-out buyers last): 0 random, 1 perfect."""
    def gain(values: np.ndarray) -> float:
        curve = qini_curve(converted, treated, values)
        return float(curve.mean() - curve[-1] / 2.0)

    y, t = converted.astype(float), treated.astype(float)
    perfect = gain(y * t - y * (1.0 - t))
    return gain(score) / perfect if perfect > 0 else float("nan")


def uplift_at(converted: np.ndarray, treated: np.ndarray, score: np.ndarray, percent: int) -> float:
    """Treated minus held-out conversion among the top `percent`% by score (NaN when an arm is absent there)."""
    top = np.argsort(-np.asarray(score, dtype=float), kind="stable")[:max(1, round(len(score) * percent / 100))]
    return observed_uplift(converted[top], treated[top])


def outcome_codes(converted: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """Conversion and arm in one number (converted + 2 * treated), so the customer bootstrap resamples both."""
    return converted.astype(int) + 2 * treated.astype(int)


def qini_of_codes(codes: np.ndarray, score: np.ndarray) -> float:
    return qini(codes % 2 == 1, codes >= 2, score)


def uplift_metrics(converted: np.ndarray, treated: np.ndarray, score: np.ndarray,
                   percents: tuple[int, ...]) -> dict[str, float]:
    return {"qini": qini(converted, treated, score),
            **{f"uplift_at_{k}": uplift_at(converted, treated, score, k) for k in percents},
            "average_uplift": observed_uplift(converted, treated)}


def evaluate_uplift(model: UpliftModel, train: CampaignRows, evaluation: CampaignRows) -> Evaluation:
    """The backtest model on the held-out campaigns against the likeliest-buyers heuristic and random targeting."""
    config = model.config
    y, t = evaluation.converted, evaluation.treated
    score = model.predict(evaluation.features)["uplift_score"].to_numpy()
    encoder, response = response_model(config, train)
    scorers = {"likeliest_buyers": response.predict(encoder.transform(evaluation.features)),
               "random": np.random.default_rng(config.seed).random(len(y))}
    metrics = uplift_metrics(y, t, score, config.top_k_percents)
    baselines = {name: uplift_metrics(y, t, s, config.top_k_percents) for name, s in scorers.items()}
    margins, margin_table = margin_over_baselines("qini", outcome_codes(y, t), score, scorers, qini_of_codes)
    metrics.update(margins)
    metrics["score_fidelity"] = model.fidelity_
    fractions = np.linspace(0.0, 1.0, 101)
    curve = {"fraction": fractions}
    for name, values in {"model": score, **scorers}.items():
        full = np.concatenate([[0.0], qini_curve(y, t, values)])
        curve[name] = full[np.round(fractions * len(y)).astype(int)]
    campaigns = pd.concat([train.campaigns.assign(role="train"), evaluation.campaigns.assign(role="evaluation")])
    held_out_campaigns = ", ".join(evaluation.campaigns["campaign_id"])
    notes = [(f"Held-out campaigns: {held_out_campaigns} ({len(y):,} audience members; treated {int(t.sum()):,}, "
              f"held out {int((~t).sum()):,}).")]
    return Evaluation(metrics, baselines, {}, {"qini_curve": pd.DataFrame(curve), "baseline_margins": margin_table,
                                               "campaigns": campaigns, "data_window": data_window(campaigns)},
                      len(y), pd.Timestamp(evaluation.campaigns["start"].min()).to_pydatetime(), notes)


def data_window(campaigns: pd.DataFrame) -> pd.DataFrame:
    """The model page's data-window rows: one per campaign (its start, role, audience, conversion of the treated)."""
    return pd.DataFrame({"as_of": campaigns["start"], "role": campaigns["role"],
                         "customers": campaigns["treated"] + campaigns["held_out"],
                         "target_mean": campaigns["conversion_treated"]})
