"""Value: expected purchases and expected spend of every customer over the next `horizon_days`.

Two LightGBM regressors on the same feature matrix, trained on ALL customers known at each as_of (not only the
churn-eligible: a customer who never bought may still buy):
- purchases: Poisson objective (a count; log link, so predictions are positive and multiplicative in the features);
- spend: Tweedie objective (variance power 1.5 by default). Next-horizon spend is zero for most customers and a
  positive, skewed amount for the rest: exactly the compound Poisson-gamma law Tweedie models with 1 < p < 2. One
  model of spend, rather than a two-part purchases x order value model, keeps a single early-stopping criterion on
  the quantity we rank by and avoids multiplying two models' errors; expected purchases come from their own model.

Snapshots are used as in `training.estimators.churn` (the newest validates and early-stops; older snapshots whose outcome
window overlaps the validation one are left out). Monotone constraints: all else equal a more recent purchase and
more purchases never lower expected purchases or spend (-1 on days_since_last_order, +1 on orders_count_*).

Known limitation: the feature set has no calendar input, so the model learns the purchase level of the seasons its
training horizons covered. Evaluated on a seasonal low after training on high seasons, it ranks well but
over-predicts the level (on the generated data: x1.4-1.5 the actual total, against x1.2-1.3 for BG/NBD).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.errors import InsufficientDataError
from features.validate import ValidationResult
from training import plots
from training.encoding import check_feature_set
from training.estimators import textbook
from training.estimators.base import Chart, Estimator, Explanation, ReportPage, candidate_table
from training.estimators.baselines import (
    BaselineFitError,
    BGNBDBaseline,
    align_rfm,
    last_horizon_repeats,
    rfm_summary,
    rfm_summary_from_features,
)
from training.estimators.churn import (
    NOT_POINT_IN_TIME,
    check_out_of_time,
    data_window,
    fit_boosted,
    lightgbm_params,
    load_snapshot_model,
    prepare_snapshot_fit,
    save_snapshot_model,
)
from training.evaluation import (
    Evaluation,
    amount_calibration_table,
    amount_metrics,
    importance_rows,
    lift_table,
    margin_over_baselines,
    segment_slices,
    shap_importance,
    slice_table,
    spearman,
)
from training.labels import Snapshot
from training.runtime import fit_threads

TARGETS = {"purchases": "purchases_next", "spend": "spend_next"}
OUTPUTS = {"purchases": "expected_purchases", "spend": "expected_spend"}


@dataclass(frozen=True)
class ValueConfig:
    """Everything that defines a value model run (logged to MLflow with `dataclasses.asdict`)."""

    horizon_days: int = 90
    n_snapshots: int = 4
    step_days: int = 30
    cv_folds: int = 3
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 50
    n_estimators: int = 1000
    early_stopping_rounds: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    tweedie_variance_power: float = 1.5
    exclude_features: tuple[str, ...] = NOT_POINT_IN_TIME
    seed: int = 0
    num_threads: int = field(default_factory=fit_threads)  # SEGMENTS_THREADS, else 2
    min_buyers: int = 50  # customers with a purchase in the horizon, in the training and in the validation data
    # What is served (CANDIDATES): "lightgbm" (the two boosters) or "bgnbd_gamma_gamma" (the textbook, fitted on
    # the newest training snapshot). None lets the backtest choose the best out of time (spend rank correlation).
    candidate: str | None = None


CANDIDATES = ("lightgbm", "bgnbd_gamma_gamma")
CANDIDATE_NAMES = {"lightgbm": "LightGBM (Poisson and Tweedie)", "bgnbd_gamma_gamma": "BG/NBD x Gamma-Gamma (textbook)"}


class ValueModel(Estimator):
    """Poisson model of next-horizon purchases and Tweedie model of next-horizon spend.

    Fitted attributes: candidate_ (what is served, CANDIDATES), encoder_, boosters_ ({"purchases", "spend"}, each
    cut at its best iteration; empty for the textbook candidate), best_iterations_, textbook_ (BG/NBD and
    Gamma-Gamma parameters with the reference customer, or None), fit_as_of_, n_train_rows_, feature_set_version_;
    after `settings_from_backtest`, candidates_ (every candidate's backtest figure).
    `booster_` is the spend booster (what value explanations use by default; None for the textbook).
    """

    kind = "value"
    config_class = ValueConfig
    fitted_attribute = "boosters_"
    headline_metrics = ("spearman_spend", "mae_spend")
    candidate_names = CANDIDATE_NAMES
    candidate_metric = "spend rank correlation"
    report = ReportPage(
        title="Customer value model", nav_label="Value",
        purpose="Expected purchases and spend of each customer over the next {horizon} days.",
        shown_metrics=("spearman_spend", "top_decile_capture_spend", "mae_spend", "total_ratio_spend",
                       "spearman_purchases", "mae_purchases"),
        target_label="Mean spend", chart_tables=("calibration", "deciles"),
        charts=(Chart("calibration", "Calibration", "Do customers predicted to spend more actually spend that much?",
                      lambda t, horizon, _: plots.amount_calibration(t["calibration"], f"{horizon}-day spend"),
                      square=True),
                Chart("lift", "Lift", "How much more the customers ranked highest actually spent.",
                      lambda t, _h, _s: plots.lift(t["deciles"], "spend"))))

    @property
    def booster_(self) -> lgb.Booster | None:
        return self.boosters_.get("spend")

    def fit(self, train: list[Snapshot]) -> ValueModel:
        """Fit on labelled snapshots: both targets' boosters, rounds early-stopped over customer folds
        (`fit_boosted`), and the textbook on the newest snapshot, as the candidate setting asks (None: both, for
        `settings_from_backtest`; until then the boosters are served). The textbook needs no minimum of buyers:
        it is the small-programme fallback (`fallback_settings`)."""
        candidate = self.config.candidate
        if candidate not in (None, *CANDIDATES):
            raise ValueError(f"unknown value candidate {candidate!r}: use one of {', '.join(CANDIDATES)}")
        with_trees = candidate in (None, "lightgbm")
        x, y = prepare_snapshot_fit(self, train, value_rows, check_minimums=with_trees)
        self.boosters_, self.best_iterations_ = {}, {}
        for target, column in TARGETS.items() if with_trees else ():
            self.boosters_[target], self.best_iterations_[target], _ = fit_boosted(
                self._params(target), self.encoder_, x, y[column], self.config)
        usable = candidate != "lightgbm" and set(textbook.VALUE_INPUTS) <= set(self.encoder_.feature_names_)
        newest = max(train, key=lambda s: s.as_of).features
        self.textbook_ = textbook.fit_value_textbook(newest) if usable else None
        if not with_trees and self.textbook_ is None:
            raise InsufficientDataError(f"{CANDIDATE_NAMES[candidate]} could not be fitted on the purchase history "
                                        f"as of {max(self.fit_as_of_):%Y-%m-%d}")
        self.candidate_ = "lightgbm" if with_trees else candidate
        return self

    @staticmethod
    def fallback_settings(error: InsufficientDataError) -> dict:
        """What a programme too small for the boosters is served instead: BG/NBD x Gamma-Gamma (no labels)."""
        return {"candidate": "bgnbd_gamma_gamma"}

    def settings_from_backtest(self, evaluation: Snapshot) -> dict:
        """The served candidate, chosen out of time when the config leaves it open: the boosters or the textbook,
        whichever ranks next-horizon spend better (Spearman) on the backtest's evaluation snapshot (ties: the
        boosters). `candidates_` keeps both figures and the margin's paired-bootstrap interval."""
        if self.config.candidate is not None or not self.boosters_ or self.textbook_ is None:
            return {}
        x, actual = value_rows([evaluation])
        X = self.encoder_.matrix(x)
        options = {("lightgbm", 0.0): self.boosters_["spend"].predict(X),
                   ("bgnbd_gamma_gamma", 0.0): self._textbook_amounts(X)[1]}
        spend = actual["spend_next"].to_numpy()
        scores = {key: round(spearman(spend, predicted), 6) for key, predicted in options.items()}
        best = max(scores, key=lambda key: (scores[key], key[0] == "lightgbm"))
        self.candidate_ = best[0]
        self.candidates_ = candidate_table(self.candidate_names, spearman, spend, options, scores, best)
        return {"candidate": best[0]}

    def _textbook_columns(self) -> list[int]:
        return [self.encoder_.feature_names_.index(name) for name in textbook.VALUE_INPUTS]

    def _textbook_amounts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return textbook.value_amounts(self.textbook_, X[:, self._textbook_columns()], self.config.horizon_days)

    def _textbook_contributions(self, X: np.ndarray) -> np.ndarray:
        """The textbook's log expected spend as contributions (rows x inputs + base value): exact Shapley values
        on its four inputs against the reference customer."""
        horizon, columns = self.config.horizon_days, self._textbook_columns()
        out = np.zeros((len(X), len(self.encoder_.feature_names_) + 1))
        out[:, columns], out[:, -1] = textbook.exact_shapley(lambda v: textbook.log_spend(self.textbook_, v, horizon),
                                                             X[:, columns], self.textbook_["reference"])
        return out

    @property
    def _serves_textbook(self) -> bool:
        return self.candidate_ == "bgnbd_gamma_gamma"

    @staticmethod
    def target(snapshot: Snapshot) -> pd.Series:
        """Next-horizon spend of every customer of the snapshot (what data windows report the mean of)."""
        return value_rows([snapshot])[1]["spend_next"]

    primary_metric = "spearman_spend"

    def outcome_scores(self, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(actual spend, expected spend) over a labelled snapshot, for `primary_metric` (a retrain's re-judging)."""
        x, actual = value_rows([snapshot])
        return actual["spend_next"].to_numpy(), self.predict(x)["expected_spend"].to_numpy()

    metric = staticmethod(spearman)  # the function itself: bootstraps count its resamples (training.evaluation)

    def _check_minimums(self, y: pd.DataFrame, as_of: list[datetime], where: str) -> None:
        buyers = int((y["purchases_next"] > 0).sum())
        if buyers < self.config.min_buyers:
            dates = ", ".join(f"{d:%Y-%m-%d}" for d in as_of)
            raise InsufficientDataError(
                f"only {buyers} customers with a purchase in the {self.config.horizon_days}-day horizon in the "
                f"{where} (as_of {dates}; minimum {self.config.min_buyers}) among {len(y)} customers: use more "
                f"history (a later --as-of, more customers) or a longer horizon (--horizon)")

    def _params(self, target: str) -> dict:
        monotone = {"days_since_last_order": -1, "orders_count_": 1}
        if target == "purchases":
            return lightgbm_params(self.config, objective="poisson", monotone=monotone)
        return lightgbm_params(self.config, objective="tweedie", monotone=monotone,
                               tweedie_variance_power=self.config.tweedie_variance_power)

    def margin(self, features: pd.DataFrame, target: str = "spend") -> np.ndarray:
        """Raw margin (log of the expected amount) of one target: what SHAP contributions add up to."""
        self.require_fitted()
        if self._serves_textbook:
            amounts = self._textbook_amounts(self.encoder_.matrix(features))[list(TARGETS).index(target)]
            return np.log(np.maximum(amounts, textbook.EXPECTED_FLOOR))
        return self.boosters_[target].predict(self.encoder_.transform(features), raw_score=True)

    def contributions(self, features: pd.DataFrame, target: str = "spend") -> pd.DataFrame:
        """Exact contributions to one target's margin (TreeSHAP, or the textbook's exact Shapley values for
        spend): one column per feature plus `expected_value`."""
        self.require_fitted()
        if self._serves_textbook and target != "spend":
            raise ValueError("the textbook candidate explains expected spend only")
        values = (self.explanation().contributions(self.encoder_.matrix(features)) if self._serves_textbook
                  else self.boosters_[target].predict(self.encoder_.transform(features), pred_contrib=True))
        return pd.DataFrame(values, index=features.index, columns=[*self.encoder_.feature_names_, "expected_value"])

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict:
        """Feature table -> expected_purchases and expected_spend over the horizon.

        `encoded`: the rows already through `encoder_.matrix` (the service encodes once for scores and reasons).
        """
        self.require_fitted()
        check_feature_set(features, self.feature_set_version_)
        matrix = self.encoder_.matrix(features) if encoded is None else encoded
        if self._serves_textbook:
            purchases, spend = self._textbook_amounts(matrix)
            return {OUTPUTS["purchases"]: purchases, OUTPUTS["spend"]: spend}
        return {OUTPUTS[t]: self.boosters_[t].predict(matrix) for t in TARGETS}

    def explanation(self) -> Explanation:
        """Reasons explain expected spend (the spend booster, or the textbook's formula), on the log scale."""
        if self._serves_textbook:
            return Explanation(None, "value", "expected spend", "log of expected spend", "currency", "log",
                               extra=self._textbook_contributions)
        return Explanation(self.boosters_["spend"], "value", "expected spend", "log of expected spend", "currency",
                           "log")

    def save(self, directory: Path) -> None:
        """Write booster_purchases.txt and booster_spend.txt (the boosters' candidate), encoder.json and model.json
        (config, metadata and the textbook's parameters) to `directory`."""
        boosters = {} if self._serves_textbook else {f"booster_{t}": b for t, b in self.boosters_.items()}
        save_snapshot_model(self, directory, boosters, {
            "best_iterations": self.best_iterations_, "candidate": self.candidate_,
            "textbook": self.textbook_ if self._serves_textbook else None})

    @classmethod
    def load(cls, directory: Path) -> ValueModel:
        """Load a model written by `save`; it scores identically."""
        meta = json.loads((Path(directory) / "model.json").read_text())
        candidate = meta.get("candidate", "lightgbm")  # saved before the textbook candidate: the boosters
        names = [f"booster_{t}" for t in TARGETS] if candidate == "lightgbm" else []
        model, meta, boosters = load_snapshot_model(cls, directory, names)
        model.boosters_ = {t: boosters[f"booster_{t}"] for t in TARGETS if f"booster_{t}" in boosters}
        model.best_iterations_ = meta["best_iterations"]
        model.candidate_, model.textbook_ = candidate, meta.get("textbook")
        return model


def value_rows(snapshots: list[Snapshot]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All customers' features and outcomes (purchases_next, spend_next) of several snapshots, stacked."""
    xs, ys = [], []
    for s in snapshots:
        joined = s.features.merge(s.outcomes[["customer_id", *TARGETS.values()]], on="customer_id", how="left",
                                  validate="one_to_one")
        xs.append(joined[s.features.columns])
        ys.append(joined[list(TARGETS.values())].fillna(0))
    return pd.concat(xs, ignore_index=True), pd.concat(ys, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_value(model: ValueModel, evaluation: Snapshot, train: list[Snapshot],
                   validation: ValidationResult | None = None) -> Evaluation:
    """Out-of-time evaluation on every customer of `evaluation`, with baselines side by side.

    Baselines: "bgnbd_gamma_gamma" (BG/NBD purchases x Gamma-Gamma value per purchase, fitted on the history
    before the evaluation as_of; customers who never bought get 0) and "last_horizon" (the last window's purchases
    and spend repeat). Pass `validation` so the BG/NBD summary comes from the transactions themselves.
    Metrics (suffix _purchases / _spend): mae, rmse, spearman, top_decile_capture, total_ratio; e.g. spearman_spend;
    and the spend rank correlation's margin over the best baseline with its paired-bootstrap 95% interval.
    Tables: deciles (spend by predicted-spend decile), slices, data_window. Figures: gains, lift, calibration.
    """
    check_out_of_time(train, evaluation)
    x, actual = value_rows([evaluation])
    predictions = {"model": model.predict(x).reset_index(drop=True),
                   **value_baselines(x, evaluation, validation)}
    notes = predictions.pop("_notes")
    metrics_of = {name: {**amount_metrics(actual["purchases_next"], p["expected_purchases"], "purchases"),
                         **amount_metrics(actual["spend_next"], p["expected_spend"], "spend")}
                  for name, p in predictions.items()}
    spend = {name: p["expected_spend"].to_numpy() for name, p in predictions.items()}
    margin, comparison = margin_over_baselines(
        "spearman_spend", actual["spend_next"], spend["model"], {n: s for n, s in spend.items() if n != "model"},
        spearman)
    metrics_of["model"].update(margin)
    deciles = {name: lift_table(actual["spend_next"], s) for name, s in spend.items()}
    calibration = {name: amount_calibration_table(actual["spend_next"], s) for name, s in spend.items()}
    importance = shap_importance(model.contributions(importance_rows(x), target="spend"))
    tables = {
        "deciles": pd.concat([t.assign(scorer=n) for n, t in deciles.items()], ignore_index=True),
        "calibration": pd.concat([t.assign(scorer=n) for n, t in calibration.items()], ignore_index=True),
        "slices": _value_slices(x, actual["spend_next"].to_numpy(), spend),
        "data_window": data_window(train, evaluation, model, model.target),
        "shap_importance": importance,
        "baseline_comparison": comparison,
    }
    figures = {"gains": plots.gains(tables["deciles"], "spend"), "lift": plots.lift(tables["deciles"], "spend"),
               "calibration": plots.amount_calibration(tables["calibration"], f"{evaluation.horizon_days}-day spend"),
               "shap_summary": plots.shap_summary(importance, "What drives expected spend", "log of expected spend")}
    return Evaluation(metrics=metrics_of.pop("model"), baselines=metrics_of, figures=figures, tables=tables,
                      n_customers=len(x), as_of=evaluation.as_of, notes=notes)


def value_baselines(x: pd.DataFrame, evaluation: Snapshot, validation: ValidationResult | None) -> dict:
    """Baseline predictions (expected_purchases, expected_spend; rows of `x`, index 0..n-1) and "_notes".

    A BG/NBD fit that fails leaves "bgnbd_gamma_gamma" out, with a note; "last_horizon" is always there."""
    notes = []
    if validation is not None:
        rfm = rfm_summary(validation, evaluation.as_of)
    else:
        rfm = rfm_summary_from_features(evaluation.features)
        notes.append("BG/NBD summary approximated from the feature table (no validated tables passed)")
    predictions = {"last_horizon": last_horizon_repeats(x, evaluation.horizon_days).reset_index(drop=True),
                   "_notes": notes}
    try:
        baseline = BGNBDBaseline().fit(rfm)
    except BaselineFitError as exc:  # a textbook baseline never stops the model (training.estimators.baselines)
        notes.append(f"BG/NBD x Gamma-Gamma baseline left out: {exc}")
        return predictions
    if baseline.spend_method_ != "gamma_gamma":
        notes.append(f"BG/NBD x Gamma-Gamma baseline: value per purchase from {baseline.spend_method_}")
    rows, present = align_rfm(rfm, x["customer_id"])
    purchases, spend = np.zeros(len(x)), np.zeros(len(x))  # BG/NBD models repeat buyers: never bought -> 0
    purchases[present] = baseline.expected_purchases(rows, evaluation.horizon_days)
    spend[present] = baseline.expected_spend(rows, evaluation.horizon_days)
    predictions["bgnbd_gamma_gamma"] = pd.DataFrame({"expected_purchases": purchases, "expected_spend": spend})
    return predictions


def _value_slices(x: pd.DataFrame, spend: np.ndarray, predicted: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per segment slice: mean actual spend, and each scorer's mean predicted spend and spend Spearman."""
    def metrics(rows: np.ndarray) -> dict[str, float]:
        out = {"mean_spend": float(spend[rows].mean())}
        for name, p in predicted.items():
            m = amount_metrics(spend[rows], p[rows])
            out[f"mean_predicted_{name}"] = float(p[rows].mean())
            out[f"spearman_{name}"] = m["spearman"]
        return out

    return slice_table(segment_slices(x), metrics)
