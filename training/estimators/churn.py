"""Churn: calibrated probability that an active customer makes no purchase in the next `horizon_days`.

Population and label (DESIGN.md section 8): customers who bought in the 365 days before as_of (`eligible`); churned =
no purchase in [as_of, as_of + horizon) (`training.labels.Snapshot.churn_frame`).

How `ChurnModel.fit` uses the snapshots (`snapshot_dates`: the newest ends its outcome window at the fit's end date,
earlier ones step back by `step_days`):
- every snapshot fits the trees. The number of rounds comes from cross-validation over customers
  (`fit_boosted`): all rows of a customer, from every snapshot, sit in one fold, so the rows that early-stop never
  share a label with the rows that fit, even where the snapshots' outcome windows overlap;
- the calibration (isotonic or sigmoid, chosen by nested out-of-fold log-loss) is fitted on the out-of-fold margins,
  then applied to the final booster fitted on all rows (scikit-learn's CalibratedClassifierCV, ensemble=False).
An earlier scheme kept the newest snapshot apart for early stopping and calibration and fitted the trees on
snapshots one horizon older still: on CDNOW at 1997-10-01 it trained on customers at most 3 months old, and its
backtest (0.677 ROC-AUC) lost to every textbook baseline; that wasted horizon is what the folds give back.

Monotone constraints encode behaviour we know: all else equal a more recent purchase never raises churn risk
(+1 on days_since_last_order) and more purchases never raise it (-1 on every orders_count_* window).
The textbook term added to the trees' margin (`training.estimators.textbook`) keeps the first but not the second:
in Pareto/NBD a frequent buyer gone silent is likelier gone than an occasional one.

Saved in native formats only: LightGBM text model, encoder JSON, calibration JSON, config and metadata JSON.
The helpers at the end of this module (snapshot schedule, LightGBM training, JSON files) are shared with
`training.estimators.value`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GroupKFold, StratifiedKFold

from features.catalog import FEATURE_SET_VERSION
from features.errors import InsufficientDataError
from features.outputs import BANDS
from features.validate import ValidationResult
from training import plots
from training.encoding import FeatureEncoder, check_feature_set
from training.estimators import textbook
from training.estimators.base import Chart, Estimator, Explanation, ReportPage, candidate_table, write_json
from training.estimators.baselines import (
    BaselineFitError,
    BGNBDBaseline,
    ParetoNBDBaseline,
    align_rfm,
    recency_score,
    rfm_summary,
    rfm_summary_from_features,
)
from training.evaluation import (
    Evaluation,
    bootstrap_interval,
    calibration_table,
    expected_calibration_error,
    importance_rows,
    lift_table,
    margin_over_baselines,
    probability_metrics,
    ranking_metrics,
    roc_auc,
    segment_slices,
    shap_importance,
    slice_table,
)
from training.labels import Snapshot, training_dates
from training.runtime import fit_threads

CALIBRATION_METHODS = ("isotonic", "sigmoid")
PROBABILITY_FLOOR = 1e-4  # calibrated probabilities stay inside (0, 1): a hard 0 or 1 is never justified
BAND_DTYPE = pd.CategoricalDtype(BANDS, ordered=True)  # churn_band: low < medium < high
# Snapshot-valued columns of the customer table describe the state at load time, not at as_of: points_balance moves
# with every later purchase, so in past snapshots it leaks the future. Excluded from training by default.
NOT_POINT_IN_TIME = ("points_balance",)


@dataclass(frozen=True)
class ChurnConfig:
    """Everything that defines a churn model run (logged to MLflow with `dataclasses.asdict`)."""

    horizon_days: int = 90
    n_snapshots: int = 4  # training snapshots, one every step_days (see `snapshot_dates`)
    step_days: int = 30
    cv_folds: int = 3  # customer folds for early stopping and the out-of-fold margins calibration is fitted on
    band_thresholds: tuple[float, float] = (0.3, 0.6)  # low < 0.3 <= medium < 0.6 <= high
    learning_rate: float = 0.03
    num_leaves: int = 7  # small trees: ~7,500 training rows, and the signal is smooth (recency x frequency)
    min_data_in_leaf: int = 50
    n_estimators: int = 1000  # maximum boosting rounds; early stopping picks the number
    early_stopping_rounds: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    calibration_folds: int = 5
    exclude_features: tuple[str, ...] = NOT_POINT_IN_TIME
    seed: int = 0
    num_threads: int = field(default_factory=fit_threads)  # SEGMENTS_THREADS, else 2
    min_churners: int = 50
    min_non_churners: int = 50
    # Weight of the textbook term (Pareto/NBD, training/estimators/textbook.py) in the margin: None lets the
    # backtest choose it out of time (`settings_from_backtest`), a number fixes it, 0 leaves the trees alone.
    textbook_weight: float | None = None
    # What is served (CANDIDATES): "lightgbm" (the trees plus the weighted textbook term), or the textbook alone,
    # "pnbd" or "bgnbd", calibrated like the trees. None lets the backtest choose the best out of time.
    candidate: str | None = None


# The served candidates: the model, and the textbook baselines as models with the same outputs, reasons and bands.
CANDIDATES = ("lightgbm", "pnbd", "bgnbd")
CANDIDATE_NAMES = {"lightgbm": "LightGBM with the Pareto/NBD term", "pnbd": "Pareto/NBD (textbook)",
                   "bgnbd": "BG/NBD (textbook)"}


class ChurnModel(Estimator):
    """LightGBM churn classifier with monotone constraints, rounds and calibration from customer folds.

    Fitted attributes: candidate_ (what is served, CANDIDATES), encoder_, booster_ (best_iteration_ rounds on all
    rows; None for a textbook candidate), best_iteration_, calibration_method_, calibration_ (JSON-ready
    parameters), calibration_scores_ (nested out-of-fold log-loss per method), textbook_ (the textbook family, its
    parameters and reference customer, or None), textbook_weight_, fit_as_of_, n_train_rows_,
    feature_set_version_; after `settings_from_backtest`, candidates_ (every candidate's backtest figure).

    The margin is the trees' log-odds plus `textbook_weight_` times the textbook term (training/estimators/textbook.py);
    a textbook candidate's margin is its term alone (no trees, weight 1).
    """

    kind = "churn"
    config_class = ChurnConfig
    candidate_names = CANDIDATE_NAMES
    candidate_metric = "ROC-AUC"
    report = ReportPage(
        title="Churn risk model", nav_label="Churn",
        purpose="The probability that a customer who bought in the last year makes no purchase in the next "
                "{horizon} days.",
        shown_metrics=("roc_auc", "pr_auc", "lift_top_decile", "brier", "log_loss", "ece"),
        population="active", risk=True, target_label="Churn rate", target_percent=True,
        chart_tables=("calibration", "lift"),
        charts=(Chart("calibration", "Calibration", "Does a predicted 30% churn risk mean that 30% of such customers "
                      "lapse?", lambda t, horizon, _: plots.calibration(t["calibration"], f"{horizon}-day churn"),
                      square=True),
                Chart("lift", "Lift", "How much more often the customers ranked highest actually lapsed.",
                      lambda t, _h, _s: plots.lift(t["lift"], "churn rate"))))
    headline_metrics = ("roc_auc", "pr_auc", "brier", "ece")

    def fit(self, train: list[Snapshot]) -> ChurnModel:
        """Fit on labelled snapshots (see the module docstring); returns self.

        With `candidate` None the trees and both textbook families are fitted, for `settings_from_backtest` to
        choose from; until then the model serves the trees (plus the term at a fixed `textbook_weight`). A
        textbook candidate fits no trees, so it needs no minimum of churners: the small-programme fallback
        (`fallback_settings`) serves BG/NBD's own probability where too few are labelled to calibrate.
        """
        candidate = self.config.candidate
        if candidate not in (None, *CANDIDATES):
            raise ValueError(f"unknown churn candidate {candidate!r}: use one of {', '.join(CANDIDATES)}")
        with_trees = candidate in (None, "lightgbm")
        x, y = prepare_snapshot_fit(self, train, _churn_rows, check_minimums=with_trees)
        X = self.encoder_.matrix(x)
        out_of_fold = None
        self.booster_, self.best_iteration_ = None, 0
        if with_trees:
            self.booster_, self.best_iteration_, out_of_fold = fit_boosted(self._params(), self.encoder_, x, y,
                                                                           self.config)
        newest = max(train, key=lambda s: s.as_of).features
        self.textbooks_ = {family: textbook.fit_textbook(newest, family) for family in self._families()}
        self.textbooks_ = {family: fitted for family, fitted in self.textbooks_.items() if fitted is not None}
        if not with_trees and candidate not in self.textbooks_:
            raise InsufficientDataError(f"{CANDIDATE_NAMES[candidate]} could not be fitted on the purchase history "
                                        f"as of {max(self.fit_as_of_):%Y-%m-%d}")
        terms = {family: self._term(X, fitted) for family, fitted in self.textbooks_.items()}
        self._fit_parts = (out_of_fold, terms, y.to_numpy())
        self.use(candidate or "lightgbm", self.config.textbook_weight or 0.0)
        return self

    def _families(self) -> list[str]:
        """The textbook families `fit` needs: the blend's (Pareto/NBD, unless its weight is fixed at 0) and the
        candidates'; none without the textbook's inputs."""
        if not set(textbook.INPUTS) <= set(self.encoder_.feature_names_):
            return []
        candidate = self.config.candidate
        if candidate in textbook.FAMILIES:
            return [candidate]
        blend = ["pnbd"] if self.config.textbook_weight != 0 else []
        return blend if candidate == "lightgbm" else list(textbook.FAMILIES)

    def use(self, candidate: str, weight: float = 0.0) -> None:
        """Serve `candidate` ("lightgbm" with the textbook term at `weight`, or a textbook family alone) and fit
        its calibration on the training rows' out-of-fold margins (right after `fit`, which keeps them).

        Too few churners or non-churners to calibrate (a textbook candidate fitted on a small programme): BG/NBD's
        own probability is served (the identity calibration of its log-odds); any other candidate is refused.
        """
        out_of_fold, terms, y = self._fit_parts
        if candidate == "lightgbm":
            self.textbook_ = self.textbooks_.get("pnbd") if weight else None
            self.textbook_weight_ = float(weight) if self.textbook_ is not None else 0.0
            margin = out_of_fold + (self.textbook_weight_ * terms["pnbd"] if self.textbook_weight_ else 0.0)
        else:
            self.textbook_, self.textbook_weight_, margin = self.textbooks_[candidate], 1.0, terms[candidate]
        self.candidate_ = candidate
        if min(int(y.sum()), int((1 - y).sum())) >= self.config.calibration_folds * 2:
            self.calibration_method_, self.calibration_scores_ = choose_calibration(
                margin, y, self.config.calibration_folds, self.config.seed)
            self.calibration_ = fit_calibration(self.calibration_method_, margin, y)
        elif candidate == "bgnbd":
            self.calibration_method_, self.calibration_scores_ = "identity", {}
            self.calibration_ = {"method": "identity"}
        else:
            raise InsufficientDataError(f"too few churners ({int(y.sum())}) or non-churners ({int((1 - y).sum())}) "
                                        f"in the training snapshots to calibrate {CANDIDATE_NAMES[candidate]}")

    @staticmethod
    def fallback_settings(error: InsufficientDataError) -> dict:
        """What a programme too small for the trees is served instead (the training protocol asks on
        InsufficientDataError): BG/NBD, which needs no labels to fit."""
        return {"candidate": "bgnbd"}

    def settings_from_backtest(self, evaluation: Snapshot) -> dict:
        """The served candidate and textbook weight, chosen out of time where the config leaves them open: of the
        trees with the term at each of `textbook.WEIGHTS` and each textbook family alone, the one with the highest
        ROC-AUC on the backtest's evaluation snapshot (ties: the trees, then the smaller weight). This model then
        serves it, and the served refit is fitted with it. `candidates_` keeps every option's figure, with the
        chosen one's margin over the best of each other candidate (paired bootstrap, 95%)."""
        open_weight = self.config.textbook_weight is None and "pnbd" in self.textbooks_
        open_candidate = self.config.candidate is None
        if self.booster_ is None or not (open_weight or open_candidate):
            return {}
        x, y = evaluation.churn_frame()
        X, labels = self.encoder_.matrix(x), y.to_numpy()
        trees = self.booster_.predict(X, raw_score=True)
        weights = textbook.WEIGHTS if open_weight else (self.textbook_weight_,)
        options = {("lightgbm", w): trees + w * self._term(X, self.textbooks_["pnbd"]) if w else trees
                   for w in weights}
        if open_candidate:
            options.update({(family, 1.0): self._term(X, fitted) for family, fitted in self.textbooks_.items()})
        scores = {key: round(roc_auc(labels, margin), 6) for key, margin in options.items()}
        order = {name: i for i, name in enumerate(CANDIDATES)}
        best = max(scores, key=lambda key: (scores[key], -order[key[0]], -key[1]))
        self.use(*best)
        self.candidates_ = candidate_table(self.candidate_names, roc_auc, labels, options, scores, best)
        return {"candidate": best[0], **({"textbook_weight": best[1]} if best[0] == "lightgbm" else {})}

    def _term(self, X: np.ndarray, fitted: dict | None = None) -> np.ndarray:
        """A textbook term per encoded row (`fitted`, by default the served one; zeros without one)."""
        fitted = self.textbook_ if fitted is None else fitted
        if fitted is None:
            return np.zeros(len(X))
        return textbook.term(fitted, X[:, self._textbook_columns], self.config.horizon_days)

    @property
    def _textbook_columns(self) -> list[int]:
        return [self.encoder_.feature_names_.index(name) for name in textbook.INPUTS]

    def _textbook_contributions(self, X: np.ndarray) -> np.ndarray:
        """The textbook part of the margin as contributions (rows x inputs + base value), exact Shapley values on
        its three inputs: with the trees' TreeSHAP they add up to the margin."""
        out = np.zeros((len(X), len(self.encoder_.feature_names_) + 1))
        values, at_reference = textbook.shapley(self.textbook_, X[:, self._textbook_columns], self.config.horizon_days)
        out[:, self._textbook_columns] = self.textbook_weight_ * values
        out[:, -1] = self.textbook_weight_ * at_reference
        return out

    @staticmethod
    def target(snapshot: Snapshot) -> pd.Series:
        """The label the model learns, of the snapshot's churn population (what data windows report the mean of)."""
        return snapshot.churn_frame()[1]

    primary_metric = "roc_auc"

    def outcome_scores(self, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(label, score) on a labelled snapshot's churn population, for `primary_metric` (a retrain's re-judging)."""
        x, y = snapshot.churn_frame()
        return y.to_numpy(), self.predict_proba(x)

    metric = staticmethod(roc_auc)  # the function itself: bootstraps count its resamples (training.evaluation)

    def _check_minimums(self, y: pd.Series, as_of: list[datetime], where: str) -> None:
        """Raise InsufficientDataError when churners or non-churners are below the configured minimums."""
        dates = ", ".join(f"{d:%Y-%m-%d}" for d in as_of)
        for name, found, minimum in (("churners", int(y.sum()), self.config.min_churners),
                                     ("non-churners", int((1 - y).sum()), self.config.min_non_churners)):
            if found < minimum:
                raise InsufficientDataError(
                    f"only {found} {name} in the {where} (as_of {dates}; minimum {minimum}) among {len(y)} "
                    f"customers active in the year before as_of: use more history (a later --as-of, more "
                    f"customers) or a longer horizon (--horizon)")

    def _params(self) -> dict:
        monotone = {"days_since_last_order": 1, "orders_count_": -1}
        return lightgbm_params(self.config, objective="binary", monotone=monotone)

    def margin(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        """Log-odds before calibration: the trees' margin plus the weighted textbook term (what contributions add
        up to). `encoded`: the rows already through `encoder_.matrix` (the service encodes once)."""
        self.require_fitted()
        X = self.encoder_.matrix(features) if encoded is None else encoded
        margin = self.booster_.predict(X, raw_score=True) if self.booster_ is not None else np.zeros(len(X))
        return margin + self.textbook_weight_ * self._term(X) if self.textbook_weight_ else margin

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Exact contributions to the margin (TreeSHAP of the trees plus the textbook term's Shapley values): one
        column per model feature plus `expected_value`."""
        self.require_fitted()
        values = self.explanation().contributions(self.encoder_.matrix(features))
        return pd.DataFrame(values, index=features.index, columns=[*self.encoder_.feature_names_, "expected_value"])

    def predict_proba(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        """Calibrated churn probability per row."""
        return apply_calibration(self.calibration_, self.margin(features, encoded))

    def predict_columns(self, features: pd.DataFrame, encoded: np.ndarray | None = None) -> dict:
        """Feature table -> churn_probability (calibrated) and churn_band (low/medium/high).

        The model is trained on customers who bought in the year before as_of; other rows get a score too,
        extrapolated (a customer who never bought has no purchase to lapse from: filter them out upstream).
        """
        check_feature_set(features, self.feature_set_version_)
        probability = self.predict_proba(features, encoded)
        low, high = self.config.band_thresholds
        band = np.where(probability >= high, 2, np.where(probability >= low, 1, 0))  # codes of BANDS
        return {"churn_probability": probability,
                "churn_band": pd.Categorical.from_codes(band, dtype=BAND_DTYPE)}  # from labels: ~0.25 ms a request

    def explanation(self) -> Explanation:
        extra = self._textbook_contributions if self.textbook_weight_ else None
        return Explanation(self.booster_, "churn", "churn risk", "log-odds", "probability", "logistic", extra=extra)

    def save(self, directory: Path) -> None:
        """Write booster.txt, encoder.json, calibration.json and model.json (config and metadata) to `directory`."""
        boosters = {"booster": self.booster_} if self.booster_ is not None else {}
        directory = save_snapshot_model(self, directory, boosters, {
            "best_iteration": self.best_iteration_, "calibration_method": self.calibration_method_,
            "calibration_scores": self.calibration_scores_, "textbook": self.textbook_,
            "textbook_weight": self.textbook_weight_, "candidate": self.candidate_})
        write_json(directory / "calibration.json", self.calibration_)

    @classmethod
    def load(cls, directory: Path) -> ChurnModel:
        """Load a model written by `save`; it scores identically."""
        meta = json.loads((Path(directory) / "model.json").read_text())
        candidate = meta.get("candidate", "lightgbm")  # saved before the textbook candidates: the trees
        model, meta, boosters = load_snapshot_model(cls, directory, ["booster"] if candidate == "lightgbm" else [])
        model.booster_, model.candidate_ = boosters.get("booster"), candidate
        model.calibration_ = json.loads((Path(directory) / "calibration.json").read_text())
        model.calibration_method_ = meta["calibration_method"]
        model.calibration_scores_ = meta["calibration_scores"]
        model.best_iteration_ = meta["best_iteration"]
        model.textbook_, model.textbook_weight_ = meta.get("textbook"), meta.get("textbook_weight", 0.0)
        return model


def _churn_rows(snapshots: list[Snapshot]) -> tuple[pd.DataFrame, pd.Series]:
    """Eligible customers' features and churn labels of several snapshots, stacked (index 0..n-1)."""
    frames = [s.churn_frame() for s in snapshots]
    return (pd.concat([x for x, _ in frames], ignore_index=True),
            pd.concat([y for _, y in frames], ignore_index=True))


# ---------------------------------------------------------------------------------------------------------------
# Calibration: isotonic or sigmoid (Platt) on the margin, stored as plain numbers


def fit_calibration(method: str, margin: np.ndarray, y: np.ndarray) -> dict:
    """Fit a calibration map margin -> probability; returns JSON-ready parameters.

    isotonic: {"method", "x", "y"}: the fitted step function's thresholds, applied by linear interpolation and
    clipped at the ends (what sklearn's IsotonicRegression.predict does). sigmoid: {"method", "a", "b"} with
    p = 1 / (1 + exp(-(a * margin + b))), fitted by maximum likelihood.
    """
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(margin, y)
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "sigmoid":
        a, b = _platt(margin, y)
        return {"method": "sigmoid", "a": a, "b": b}
    raise ValueError(f"unknown calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")


def apply_calibration(calibration: dict, margin: np.ndarray) -> np.ndarray:
    """Calibrated probabilities from margins, kept inside [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]."""
    if calibration["method"] == "identity":  # the margin is already calibrated log-odds (BG/NBD's own)
        p = 1.0 / (1.0 + np.exp(-margin))
    elif calibration["method"] == "isotonic":
        p = np.interp(margin, calibration["x"], calibration["y"])
    else:
        p = 1.0 / (1.0 + np.exp(-(calibration["a"] * margin + calibration["b"])))
    return np.clip(p, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)


def choose_calibration(margin: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[str, dict[str, float]]:
    """The method with the lowest out-of-fold log-loss on the validation rows, and every method's score.

    Fitting and scoring on the same rows would always favour isotonic (it can follow noise), hence the folds.
    """
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for method in CALIBRATION_METHODS:
        out_of_fold = np.empty(len(y))
        for fit_rows, test_rows in splitter.split(margin, y):
            calibration = fit_calibration(method, margin[fit_rows], y[fit_rows])
            out_of_fold[test_rows] = apply_calibration(calibration, margin[test_rows])
        scores[method] = float(log_loss(y, out_of_fold, labels=[0, 1]))
    return min(scores, key=scores.get), scores


def _platt(margin: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of p = sigmoid(a * margin + b), started from the identity map."""
    def loss(params):
        z = params[0] * margin + params[1]
        p = 1.0 / (1.0 + np.exp(-z))
        # log(1 + exp(z)) - y z, written stably; its gradient is (p - y) times (margin, 1)
        value = np.sum(np.logaddexp(0.0, z) - y * z)
        return value, np.array([np.sum((p - y) * margin), np.sum(p - y)])

    result = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_churn(model: ChurnModel, evaluation: Snapshot, train: list[Snapshot],
                   validation: ValidationResult | None = None) -> Evaluation:
    """Out-of-time evaluation on the eligible customers of `evaluation`, with baselines side by side.

    Baselines (`churn_baselines`): "recency" and "pnbd" (ranking metrics only) and "bgnbd" (a probability). Pass
    `validation` (the validated tables) so the textbook summaries come from the transactions themselves; without it,
    an approximation from the feature table is used and a note says so. A textbook fit that fails is a note, never
    an error.
    Metrics: roc_auc (with roc_auc_ci_low and _high, its bootstrap 95% interval), pr_auc, lift_top_decile, brier,
    log_loss, ece, ece_uncalibrated (sigmoid of the margin), and the ROC-AUC margin over the best baseline with its
    paired-bootstrap 95% interval (`margin_over_baselines`).
    Tables: calibration, lift, slices, data_window, shap_importance, baseline_comparison. Figures: calibration, lift,
    gains, shap_summary (mean |SHAP| per feature, coloured by business attribute).
    """
    check_out_of_time(train, evaluation)
    x, y = evaluation.churn_frame()
    probability = model.predict_proba(x)
    scores, probabilities, notes = churn_baselines(x, evaluation, validation)
    metrics = {**probability_metrics(y, probability),
               "ece_uncalibrated": expected_calibration_error(y, 1.0 / (1.0 + np.exp(-model.margin(x))))}
    baselines = {name: probability_metrics(y, probabilities[name]) if name in probabilities
                 else ranking_metrics(y, score) for name, score in scores.items()}
    margin, comparison = margin_over_baselines("roc_auc", y, probability, scores, roc_auc)
    metrics.update(margin)
    metrics["roc_auc_ci_low"], metrics["roc_auc_ci_high"] = bootstrap_interval(roc_auc, y, probability)
    calibration = {"model": calibration_table(y, probability),
                   **{name: calibration_table(y, p) for name, p in probabilities.items()}}
    scorers = {"model": probability, **scores}
    lifts = {name: lift_table(y, score) for name, score in scorers.items()}
    importance = shap_importance(model.contributions(importance_rows(x)))
    tables = {
        "calibration": pd.concat([t.assign(scorer=n) for n, t in calibration.items()], ignore_index=True),
        "lift": pd.concat([t.assign(scorer=n) for n, t in lifts.items()], ignore_index=True),
        "slices": _churn_slices(x, y.to_numpy(), scorers),
        "data_window": data_window(train, evaluation, model, model.target),
        "shap_importance": importance,
        "baseline_comparison": comparison,
    }
    what = f"{evaluation.horizon_days}-day churn"
    figures = {"calibration": plots.calibration(tables["calibration"], what),
               "lift": plots.lift(tables["lift"], "churn rate"), "gains": plots.gains(tables["lift"], "churners"),
               "shap_summary": plots.shap_summary(importance, "What drives churn risk", "log-odds of churn")}
    return Evaluation(metrics=metrics, baselines=baselines, figures=figures, tables=tables, n_customers=len(x),
                      as_of=evaluation.as_of, notes=notes)


def churn_baselines(x: pd.DataFrame, evaluation: Snapshot, validation: ValidationResult | None):
    """Baseline churn scores for the rows of `x` (higher = more likely to churn).

    Returns (scores by baseline, probabilities of the baselines that give one, notes). "recency": days since the
    last purchase; "bgnbd": BG/NBD P(no purchase in the horizon); "pnbd": minus Pareto/NBD expected purchases over
    the horizon. Customers with no purchase before as_of (not eligible in practice) are certain churners. A
    textbook model that cannot be fitted is left out with a note (`BaselineFitError`).
    """
    notes = []
    if validation is not None:
        rfm = rfm_summary(validation, evaluation.as_of)
    else:
        rfm = rfm_summary_from_features(evaluation.features)
        notes.append("BG/NBD and Pareto/NBD summaries approximated from the feature table (no validated tables)")
    rows, present = align_rfm(rfm, x["customer_id"])
    horizon = evaluation.horizon_days
    scores, probabilities = {"recency": recency_score(x)}, {}
    # name: (model, churn score, the score of a customer with no purchase before as_of, is it a probability)
    textbook = {"bgnbd": (BGNBDBaseline, lambda m: m.churn_probability(rows, horizon), 1.0, True),
                "pnbd": (ParetoNBDBaseline, lambda m: -m.expected_purchases(rows, horizon), 0.0, False)}
    for name, (baseline_cls, churn_score, never_bought, is_probability) in textbook.items():
        try:
            fitted = baseline_cls().fit(rfm)
        except BaselineFitError as exc:
            notes.append(f"{DISPLAY_NAMES[name]} baseline left out: {exc}")
            continue
        score = np.full(len(x), never_bought)
        score[present] = churn_score(fitted)
        scores[name] = score
        if is_probability:
            probabilities[name] = score
    return scores, probabilities, notes


def _churn_slices(x: pd.DataFrame, y: np.ndarray, scorers: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per segment slice: churn_rate, mean_probability, and roc_auc of the model and each baseline."""
    def metrics(rows: np.ndarray) -> dict[str, float]:
        out = {"churn_rate": float(y[rows].mean()), "mean_probability": float(scorers["model"][rows].mean())}
        for name, score in scorers.items():
            out[f"roc_auc_{name}"] = ranking_metrics(y[rows], score[rows])["roc_auc"]
        return out

    return slice_table(segment_slices(x), metrics)


DISPLAY_NAMES = {"model": "LightGBM", "recency": "Recency only", "bgnbd": "BG/NBD", "pnbd": "Pareto/NBD",
                 "bgnbd_gamma_gamma": "BG/NBD x Gamma-Gamma", "last_horizon": "Last horizon repeats"}


# ---------------------------------------------------------------------------------------------------------------
# Shared by churn and value models: snapshot schedule, LightGBM training, metadata files


def snapshot_dates(end_as_of: datetime, horizon_days: int, n_snapshots: int = 4,
                   step_days: int = 30) -> list[datetime]:
    """Training as_of dates, oldest first, whose outcome windows all end by `end_as_of`.

    The newest is `end_as_of - horizon`; the others step back by `step_days`. Neighbouring outcome windows may
    overlap: `fit_boosted` keeps each customer in one fold, so no label is shared across folds.
    """
    if n_snapshots < 1:
        raise ValueError(f"n_snapshots must be >= 1, got {n_snapshots}")
    return training_dates(end_as_of, horizon_days, n_snapshots, step_days)


def check_snapshots(train: list[Snapshot], horizon_days: int) -> list[Snapshot]:
    """The snapshots oldest first, checked to be labelled with the config's horizon."""
    if not train:
        raise ValueError("fit needs at least one labelled snapshot: build them with training.estimators.churn.snapshot_dates")
    if any(s.outcomes is None for s in train):
        raise ValueError("every training snapshot needs outcomes: build it with make_snapshot(with_outcomes=True)")
    if any(s.horizon_days != horizon_days for s in train):
        found = sorted({s.horizon_days for s in train})
        raise ValueError(f"snapshots have horizons {found} days, the config says {horizon_days}: rebuild them "
                         f"with horizon_days={horizon_days} or change the config")
    return sorted(train, key=lambda s: s.as_of)


def lightgbm_params(config, objective: str, monotone: dict[str, int], **extra) -> dict:
    """LightGBM parameters from a model config; `monotone` maps a feature name or name prefix ("orders_count_") to
    its constraint (+1 increasing, -1 decreasing). Deterministic for a seed and thread count."""
    return {
        "objective": objective, "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf, "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction, "bagging_freq": 1 if config.bagging_fraction < 1 else 0,
        "lambda_l2": config.lambda_l2, "seed": config.seed, "num_threads": config.num_threads,
        "deterministic": True, "force_col_wise": True, "verbosity": -1,
        "monotone_rules": monotone,  # resolved against the encoder's columns in fit_boosted
        # "basic": the only method whose output was monotone in our checks. "intermediate" and "advanced" broke the
        # constraint on the test data (1-2 trees of ~200; LightGBM issues #5358, #6155, open)
        "monotone_constraints_method": "basic", **extra,
    }


def monotone_vector(feature_names: list[str], rules: dict[str, int]) -> list[int]:
    """Constraint per model column, in the encoder's order: exact names first, then name prefixes ending in '_'."""
    def constraint(name: str) -> int:
        if name in rules:
            return rules[name]
        return next((sign for key, sign in rules.items() if key.endswith("_") and name.startswith(key)), 0)

    return [constraint(n) for n in feature_names]


def customer_folds(customer_ids: pd.Series, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold; every row of a customer, from any snapshot, is in the same fold."""
    n_customers = customer_ids.nunique()
    if n_customers < n_folds:
        raise InsufficientDataError(f"only {n_customers} customers for {n_folds} cross-validation folds")
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # Integer codes in the ids' sorted order: the same folds as the ids themselves (GroupKFold numbers groups in
    # sorted order), without its per-fold np.isin on strings (minutes at 100k customers x 4 snapshots).
    codes = pd.factorize(customer_ids, sort=True)[0]
    return list(splitter.split(np.zeros(len(customer_ids)), groups=codes))


def fit_boosted(params: dict, encoder: FeatureEncoder, x: pd.DataFrame, y: pd.Series,
                config) -> tuple[lgb.Booster, int, np.ndarray]:
    """LightGBM on all rows of `x` with the number of rounds early-stopped over customer folds.

    Returns (booster, rounds, out-of-fold margin per row: each row scored by the fold model that did not see its
    customer, at the chosen rounds). The booster is rebuilt from its own text form, so it predicts exactly like the
    saved file. `config` gives cv_folds, n_estimators, early_stopping_rounds and seed.
    """
    params = dict(params)
    rules = params.pop("monotone_rules", {})
    params["monotone_constraints"] = monotone_vector(encoder.feature_names_, rules)
    matrix = encoder.transform(x)
    label = y.to_numpy(dtype=float)
    dataset = lgb.Dataset(matrix, label, categorical_feature=encoder.categorical_features or "auto",
                          free_raw_data=False)
    folds = customer_folds(x["customer_id"], config.cv_folds, config.seed)
    history = lgb.cv(params, dataset, num_boost_round=config.n_estimators, folds=folds, stratified=False,
                     return_cvbooster=True, callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])
    cv_booster = history.pop("cvbooster")
    rounds = len(next(iter(history.values())))  # lgb.cv keeps the history up to the best round
    out_of_fold = np.empty(len(x))
    for (_, held_out), fold_booster in zip(folds, cv_booster.boosters, strict=True):
        out_of_fold[held_out] = fold_booster.predict(matrix.iloc[held_out], raw_score=True, num_iteration=rounds)
    booster = lgb.train(params, dataset, num_boost_round=rounds)
    return lgb.Booster(model_str=booster.model_to_string()), rounds, out_of_fold


def prepare_snapshot_fit(model, train: list[Snapshot], rows,
                         check_minimums: bool = True) -> tuple[pd.DataFrame, pd.Series | pd.DataFrame]:
    """What churn and value fits share: check the snapshots, build their rows with `rows(snapshots) -> (x, y)`,
    check the model's data minimums (unless told not to: a textbook candidate has none), fit the encoder (without
    `exclude_features`) and record the training dates and size. Returns (x, y)."""
    ordered = check_snapshots(train, model.config.horizon_days)
    x, y = rows(ordered)
    if check_minimums:
        model._check_minimums(y, [s.as_of for s in ordered], "training snapshots")
    model.encoder_ = FeatureEncoder().fit(x.drop(columns=list(model.config.exclude_features), errors="ignore"))
    model.fit_as_of_, model.n_train_rows_ = [s.as_of for s in ordered], len(x)
    model.feature_set_version_ = FEATURE_SET_VERSION
    return x, y


def save_snapshot_model(model, directory: Path, boosters: dict, extra: dict) -> Path:
    """Save what churn and value models share: boosters as <name>.txt, encoder.json, and model.json with the
    config, training dates, row counts and `extra`. Returns the folder."""
    return model.save_native(directory, {f"{name}.txt": booster for name, booster in boosters.items()}, {
        "fit_as_of": [d.isoformat() for d in model.fit_as_of_], "n_train_rows": model.n_train_rows_, **extra})


def load_snapshot_model(cls, directory: Path, booster_names: list[str]):
    """Read what `save_snapshot_model` wrote: (model with the shared attributes set, metadata, boosters by name)."""
    model, meta, boosters = cls.load_native(directory, [f"{name}.txt" for name in booster_names])
    model.fit_as_of_ = [datetime.fromisoformat(d) for d in meta["fit_as_of"]]
    model.n_train_rows_ = meta["n_train_rows"]
    return model, meta, {name: boosters[f"{name}.txt"] for name in booster_names}


def data_window(train: list[Snapshot], evaluation: Snapshot | None, model, label) -> pd.DataFrame:
    """One row per snapshot: as_of, role (train / not used / evaluation), customers, positive rate.

    `label(snapshot)` returns the snapshot's target (a Series) whose mean is reported. `evaluation` is None for a
    fit with no out-of-time evaluation (the refit that is served).
    """
    used = set(getattr(model, "fit_as_of_", []))
    rows = []
    for snapshot in [*sorted(train, key=lambda s: s.as_of), *([evaluation] if evaluation else [])]:
        target = label(snapshot)
        role = "evaluation" if snapshot is evaluation else "train" if snapshot.as_of in used else "not used"
        rows.append({"as_of": snapshot.as_of, "role": role, "horizon_days": snapshot.horizon_days,
                     "customers": len(target), "target_mean": float(target.mean())})
    return pd.DataFrame(rows)


def check_out_of_time(train: list[Snapshot], evaluation: Snapshot) -> None:
    """Out of time means out of time: every training outcome window ends by the evaluation as_of."""
    late = [s.as_of for s in train if s.as_of + timedelta(days=s.horizon_days) > evaluation.as_of]
    if late:
        raise ValueError(f"training snapshots as of {', '.join(f'{d:%Y-%m-%d}' for d in late)} have outcome windows "
                         f"ending after the evaluation as_of {evaluation.as_of:%Y-%m-%d}: the evaluation would not "
                         f"be out of time")
