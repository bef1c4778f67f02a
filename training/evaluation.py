"""Metrics and tables shared by every model kind (churn, value, look-alike, clusters).

Everything here is generic: functions take arrays of outcomes and scores (or named dicts of them, so baselines sit
beside the model) and return numbers or DataFrames. Nothing here knows a model class; the estimators
(`training.estimators.churn`, `training.estimators.value`, ...) assemble an `Evaluation` from these pieces and
draw its charts with `training.plots`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

N_CALIBRATION_BINS = 10
TOP_FRACTION = 0.1

# Business bands for slices: fixed edges (not quantiles of the evaluated data), so slices mean the same thing in
# every run and a customer's slice never depends on who else is evaluated.
TENURE_BANDS = ((0, 90, "< 3 months"), (90, 365, "3-12 months"), (365, 730, "1-2 years"), (730, np.inf, "2+ years"))
FREQUENCY_BANDS = ((0, 1, "none"), (1, 2, "1 order"), (2, 4, "2-3 orders"), (4, 12, "4-11 orders"),
                   (12, np.inf, "12+ orders"))


BOOTSTRAP_ROUNDS = 500  # the 95% interval's ends move by ~0.002 ROC-AUC between seeds at this count


@dataclass
class Evaluation:
    """One out-of-time evaluation of a model, with baselines side by side.

    Attributes:
        metrics: the model's metrics by name (e.g. roc_auc, pr_auc, brier, log_loss, lift_top_decile, ece).
        baselines: baseline name -> metrics under the same names (only those that apply: a rank-only baseline
            such as recency has no brier, log_loss or ece).
        figures: name -> matplotlib Figure ("calibration", "lift", "gains", ...).
        tables: name -> DataFrame ("slices", "calibration", "lift", "data_window", ...).
        n_customers: customers evaluated.
        as_of: the evaluation snapshot's as_of.
        notes: human-readable remarks (e.g. a baseline that fell back to a simpler method, and why).
    """

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    figures: dict[str, Figure]
    tables: dict[str, pd.DataFrame]
    n_customers: int
    as_of: datetime
    notes: list[str] = field(default_factory=list)

    def comparison(self) -> pd.DataFrame:
        """Model and baselines side by side: one row per metric, one column per scorer ("model" first)."""
        columns = {"model": self.metrics, **self.baselines}
        return pd.DataFrame(columns).rename_axis("metric")


# ---------------------------------------------------------------------------------------------------------------
# Binary outcomes (churn, look-alike)


def calibration_table(y_true, probability, n_bins: int = N_CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability bins of equal width on [0, 1].

    Returns one row per bin: bin (0-based), lower, upper, n, mean_predicted, observed_rate (NaN for empty bins).
    """
    y, p = _as_arrays(y_true, probability)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": index, "p": p, "y": y})
    grouped = frame.groupby("bin").agg(n=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean"))
    out = grouped.reindex(range(n_bins))
    out["n"] = out["n"].fillna(0).astype("int64")
    out.insert(0, "lower", edges[:-1])
    out.insert(1, "upper", edges[1:])
    return out.rename_axis("bin").reset_index()


def expected_calibration_error(y_true, probability, n_bins: int = N_CALIBRATION_BINS) -> float:
    """ECE: the customer-weighted mean gap |mean predicted - observed rate| over equal-width bins."""
    bins = calibration_table(y_true, probability, n_bins)
    filled = bins[bins["n"] > 0]
    gaps = (filled["mean_predicted"] - filled["observed_rate"]).abs()
    return float((gaps * filled["n"]).sum() / filled["n"].sum())


def lift_table(y_true, score, n_groups: int = 10) -> pd.DataFrame:
    """Outcomes by score group, best scores first (group 1 = top 10% with the default 10 groups).

    Ties are broken by position (a stable sort), so equal scores never straddle groups at random.
    Returns: group, n, positives (sum of outcomes), rate, lift (rate / overall rate), cumulative_share (of all
    customers), cumulative_capture (share of all outcomes captured down to this group).
    """
    y, s = _as_arrays(y_true, score)
    order = np.argsort(-s, kind="stable")
    group = np.empty(len(y), dtype=np.int64)
    group[order] = np.arange(len(y)) * n_groups // max(len(y), 1) + 1
    frame = pd.DataFrame({"group": group, "y": y}).groupby("group").agg(n=("y", "size"), positives=("y", "sum"))
    frame["rate"] = frame["positives"] / frame["n"]
    overall = y.mean() if len(y) else np.nan
    frame["lift"] = frame["rate"] / overall if overall > 0 else np.nan
    frame["cumulative_share"] = frame["n"].cumsum() / len(y)
    total = y.sum()
    frame["cumulative_capture"] = frame["positives"].cumsum() / total if total > 0 else np.nan
    return frame.reset_index()


def lift_at(y_true, score, fraction: float = TOP_FRACTION) -> float:
    """Outcome rate among the top `fraction` by score divided by the overall rate (1.0 = no better than random)."""
    y, s = _as_arrays(y_true, score)
    k = max(round(fraction * len(y)), 1)
    top = y[np.argsort(-s, kind="stable")[:k]]
    overall = y.mean()
    return float(top.mean() / overall) if overall > 0 else float("nan")


def ranking_metrics(y_true, score) -> dict[str, float]:
    """Metrics of a score used only to rank: roc_auc, pr_auc (average precision), lift_top_decile."""
    y, s = _as_arrays(y_true, score)
    if len(np.unique(y)) < 2:  # AUCs are undefined with one class (e.g. a tiny slice)
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "lift_top_decile": lift_at(y, s)}
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s)),
            "lift_top_decile": lift_at(y, s)}


def roc_auc(y_true, score) -> float:
    """ROC-AUC by the Mann-Whitney rank sum (ties count half): the same value as sklearn's roc_auc_score, ~20x faster
    on the thousands of resamples a bootstrap draws. NaN with one class only."""
    y, s = _as_arrays(y_true, score)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = rankdata(s)[y.astype(bool)].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


class ResampledAUC:
    """`roc_auc` of bootstrap resamples of one (labels, scores) from the rows drawn: each row's group of equal
    scores and label are coded once, then a resample is one count per (group, label) and a cumulative sum. The same
    value as `roc_auc` on the resampled rows (the Mann-Whitney count, in exact arithmetic), without ranking every
    resample, which was most of a 100k-customer churn evaluation."""

    def __init__(self, y: np.ndarray, score: np.ndarray):
        values, group = np.unique(score, return_inverse=True)  # group: the rank of the row's score among distinct ones
        self.groups = len(values)
        self.code = group * 2 + y.astype(bool)

    def __call__(self, rows: np.ndarray) -> float:
        counts = np.bincount(self.code[rows], minlength=2 * self.groups).reshape(self.groups, 2)
        negatives, positives = counts[:, 0], counts[:, 1]
        below = np.cumsum(negatives) - negatives
        return float((positives * (below + 0.5 * negatives)).sum() / (positives.sum() * negatives.sum()))


class _MidRanks:
    """Average ranks (ties share their mean rank, as `rankdata`) of any resample of one array, by counting."""

    def __init__(self, values: np.ndarray):
        distinct, self.code = np.unique(values, return_inverse=True)
        self.groups = len(distinct)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        codes = self.code[rows]
        counts = np.bincount(codes, minlength=self.groups)
        return (np.cumsum(counts) - (counts - 1) / 2.0)[codes]


class ResampledSpearman:
    """`spearman` of bootstrap resamples: the Pearson correlation of counted average ranks (no sort per resample);
    NaN when a side is constant in the resample, as `spearman`."""

    def __init__(self, y: np.ndarray, score: np.ndarray):
        self.y_ranks, self.score_ranks = _MidRanks(y), _MidRanks(score)

    def __call__(self, rows: np.ndarray) -> float:
        a, b = self.y_ranks(rows), self.score_ranks(rows)
        a, b = a - a.mean(), b - b.mean()
        spread = np.sqrt((a @ a) * (b @ b))
        return float(a @ b / spread) if spread > 0 else np.nan


def _resampled(metric: Callable, y: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], float]:
    """metric(resample) from the rows drawn: the counting form where the metric has one (and nothing is missing),
    else the metric itself."""
    counted = {roc_auc: ResampledAUC, spearman: ResampledSpearman}.get(metric)
    if counted is not None and not (np.isnan(score).any() or np.isnan(y).any()):
        return counted(y, score)
    return lambda rows: metric(y[rows], score[rows])


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], y_true, model_score, baseline_score,
                     rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
    """95% interval of metric(model) - metric(baseline) over bootstrap resamples of customers (paired: both scorers
    see the same resample). Resamples with one class only are skipped."""
    y, a, b = _as_arrays(y_true, model_score, baseline_score)
    of_model, of_baseline = _resampled(metric, y, a), _resampled(metric, y, b)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].min() == y[rows].max():
            continue
        diffs.append(of_model(rows) - of_baseline(rows))
    if not diffs:
        return float("nan"), float("nan")
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def bootstrap_interval(metric: Callable[[np.ndarray, np.ndarray], float], y_true, score,
                       rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
    """95% interval of metric(score) over bootstrap resamples of customers (resamples with one class skipped):
    what a figure on a small evaluation is worth."""
    y, s = _as_arrays(y_true, score)
    of_score = _resampled(metric, y, s)
    rng = np.random.default_rng(seed)
    values = [of_score(rows) for rows in (rng.integers(0, len(y), len(y)) for _ in range(rounds))
              if y[rows].min() != y[rows].max()]
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def margin_over_baselines(metric_name: str, y_true, model_score, baseline_scores: Mapping[str, np.ndarray],
                          metric: Callable[[np.ndarray, np.ndarray], float]) -> tuple[dict[str, float], pd.DataFrame]:
    """How far the model is above each baseline on `metric_name`, with paired-bootstrap 95% intervals.

    Returns (metrics, table). metrics: margin_vs_best_baseline, margin_ci_low, margin_ci_high, best_baseline_value
    (the best baseline is the one with the highest metric; all metrics are higher-is-better). table: one row per
    baseline: baseline, metric, model, value, margin, ci_low, ci_high, verdict ("better", "worse" or "no clear
    difference": whether the interval excludes 0).
    """
    model_value = metric(*_as_arrays(y_true, model_score))
    rows = []
    for name, score in baseline_scores.items():
        value = metric(*_as_arrays(y_true, score))
        low, high = paired_bootstrap(metric, y_true, model_score, score)
        verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
        rows.append({"baseline": name, "metric": metric_name, "model": model_value, "value": value,
                     "margin": model_value - value, "ci_low": low, "ci_high": high, "verdict": verdict})
    table = pd.DataFrame(rows, columns=["baseline", "metric", "model", "value", "margin", "ci_low", "ci_high",
                                        "verdict"])
    if table.empty:
        return {}, table
    best = table.loc[table["value"].idxmax()]
    return {"margin_vs_best_baseline": float(best["margin"]), "margin_ci_low": float(best["ci_low"]),
            "margin_ci_high": float(best["ci_high"]), "best_baseline_value": float(best["value"])}, table


def probability_metrics(y_true, probability) -> dict[str, float]:
    """Ranking metrics plus those of a probability: brier, log_loss, ece (10 equal-width bins)."""
    y, p = _as_arrays(y_true, probability)
    p = np.clip(p, 1e-15, 1 - 1e-15)  # log-loss of a hard 0/1 is infinite; clip like sklearn used to
    return {**ranking_metrics(y, p), "brier": float(brier_score_loss(y, p)),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "ece": expected_calibration_error(y, p)}


# ---------------------------------------------------------------------------------------------------------------
# Amounts (purchases, spend)


def top_fraction_capture(actual, predicted, fraction: float = TOP_FRACTION) -> float:
    """Share of the total actual amount held by the top `fraction` of customers by prediction."""
    a, p = _as_arrays(actual, predicted)
    k = max(round(fraction * len(a)), 1)
    total = a.sum()
    return float(a[np.argsort(-p, kind="stable")[:k]].sum() / total) if total > 0 else float("nan")


def spearman(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (it is undefined there)."""
    return float(spearmanr(actual, predicted).statistic) if np.ptp(actual) > 0 and np.ptp(predicted) > 0 else np.nan


def amount_metrics(actual, predicted, suffix: str = "") -> dict[str, float]:
    """Error and ranking metrics of a predicted amount, named "<metric>_<suffix>" (e.g. spearman_spend):
    mae, rmse, spearman, top_decile_capture, and total_ratio (sum predicted / sum actual: 1.0 = unbiased level).
    """
    a, p = _as_arrays(actual, predicted)
    rho = spearman(a, p)
    values = {
        "mae": float(np.mean(np.abs(a - p))),
        "rmse": float(np.sqrt(np.mean((a - p) ** 2))),
        "spearman": float(rho),
        "top_decile_capture": top_fraction_capture(a, p),
        "total_ratio": float(p.sum() / a.sum()) if a.sum() > 0 else float("nan"),
    }
    return {f"{name}_{suffix}" if suffix else name: value for name, value in values.items()}


def amount_calibration_table(actual, predicted, n_groups: int = 10) -> pd.DataFrame:
    """Mean predicted against mean actual amount per predicted decile (group 1 = highest predictions).

    Returns: group, n, mean_predicted, mean_actual.
    """
    a, p = _as_arrays(actual, predicted)
    order = np.argsort(-p, kind="stable")
    group = np.empty(len(a), dtype=np.int64)
    group[order] = np.arange(len(a)) * n_groups // max(len(a), 1) + 1
    frame = pd.DataFrame({"group": group, "p": p, "a": a})
    return frame.groupby("group").agg(n=("a", "size"), mean_predicted=("p", "mean"),
                                      mean_actual=("a", "mean")).reset_index()


# ---------------------------------------------------------------------------------------------------------------
# Slices


def segment_slices(features: pd.DataFrame) -> dict[str, pd.Series]:
    """Business slices of customers from a feature table (only those whose columns are present).

    In: feature columns loyalty_member, loyalty_tier, customer_tenure_days, orders_count_365d.
    Out: slice name ("loyalty", "tenure", "frequency") -> a string label per row, aligned with `features.index`.
    """
    slices = {}
    if "loyalty_member" in features:
        member = features["loyalty_member"].fillna(False).astype(bool)
        tier = features["loyalty_tier"].astype("object") if "loyalty_tier" in features else None
        label = np.where(member, "member", "non-member").astype(object)
        if tier is not None:
            label = np.where(member & tier.notna(), "member: " + tier.fillna("").astype(str), label)
        slices["loyalty"] = pd.Series(label, index=features.index, dtype="object")
    if "customer_tenure_days" in features:
        slices["tenure"] = _band(features["customer_tenure_days"], TENURE_BANDS)
    if "orders_count_365d" in features:
        slices["frequency"] = _band(features["orders_count_365d"], FREQUENCY_BANDS)
    return slices


def _band(values: pd.Series, bands) -> pd.Series:
    """Label each value with the band [lower, upper) it falls in; missing values are "unknown"."""
    v = pd.to_numeric(values.astype("object"), errors="coerce").to_numpy(dtype=float)
    label = np.full(len(v), "unknown", dtype=object)
    for lower, upper, name in bands:
        label[(v >= lower) & (v < upper)] = name
    return pd.Series(label, index=values.index, dtype="object")


def slice_table(slices: Mapping[str, pd.Series], metric_fn: Callable[[np.ndarray], dict[str, float]],
                min_customers: int = 30) -> pd.DataFrame:
    """Metrics per segment of every slice.

    `metric_fn(positions)` gets the integer row positions of a segment and returns its metrics. Segments smaller than
    `min_customers` are listed with their size but no metrics: numbers on a handful of customers mislead.
    Returns: slice, segment, n, then one column per metric.
    """
    rows = []
    for slice_name, labels in slices.items():
        values = labels.to_numpy()
        for segment in sorted(pd.unique(values)):
            positions = np.flatnonzero(values == segment)
            metrics = metric_fn(positions) if len(positions) >= min_customers else {}
            rows.append({"slice": slice_name, "segment": segment, "n": len(positions), **metrics})
    return pd.DataFrame(rows)


def _as_arrays(*columns) -> list[np.ndarray]:
    """Float arrays of equal length (pandas objects lose their index: callers align before calling)."""
    arrays = [np.asarray(pd.Series(c).to_numpy(dtype=float, na_value=np.nan) if isinstance(c, pd.Series) else c,
                         dtype=float) for c in columns]
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    return arrays


IMPORTANCE_ROWS = 50_000  # exact TreeSHAP costs per row; a mean |SHAP| over this many is steady to about 1%


def importance_rows(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The rows an importance table is computed on: all, or a seeded sample of IMPORTANCE_ROWS of a large
    evaluation (at 250k rows the exact contributions took minutes per model)."""
    return frame.sample(n=IMPORTANCE_ROWS, random_state=seed) if len(frame) > IMPORTANCE_ROWS else frame


def shap_importance(contributions: pd.DataFrame) -> pd.DataFrame:
    """Mean |SHAP| per feature and per business attribute group, from exact TreeSHAP contributions.

    In: one column per model feature (plus `expected_value` / `bias`, ignored). Out columns: feature, label, group,
    mean_abs_shap, group_share (share of the group's total in all attributions), sorted by mean_abs_shap.
    """
    from features.catalog import FEATURES_BY_NAME, GROUPS

    values = contributions.drop(columns=["expected_value", "bias"], errors="ignore").abs().mean()
    table = pd.DataFrame({"feature": values.index, "mean_abs_shap": values.to_numpy()})
    table["label"] = [FEATURES_BY_NAME[f].label for f in table["feature"]]
    table["group"] = [GROUPS[FEATURES_BY_NAME[f].group] for f in table["feature"]]
    totals = table.groupby("group")["mean_abs_shap"].transform("sum")
    table["group_share"] = totals / table["mean_abs_shap"].sum()
    return table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
