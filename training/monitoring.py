"""Model monitoring: drift against the training reference, realised performance once outcomes are known, and health.

What it holds:
- `reference_profile(frame)`: a JSON-ready summary of a table's distribution, column by column (quantile edges and
  shares for numbers; the top categories and "other" for text and yes/no; the share of missing values as a bin of
  its own). Every training run logs the profile of its evaluation feature table
  (`monitoring/reference_profile.json`); the monitor profiles the model's outputs on the same rows the same way.
- `psi(profile, frame)`: the population stability index of each column of `frame` against the profile, with its
  status: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 drifting (the usual credit-scoring thresholds).
  Feature drift and score drift are the same computation, on features and on model outputs.
- `realised_churn(predictions, outcomes)` and `realised_value(predictions, outcomes)`: the logged predictions of an
  as_of against what customers did over the following horizon (`training.labels.make_snapshot` outcomes, the same
  labels as training), with the metric functions of `training.evaluation` (nothing re-implemented).
- `model_status(...)`: ok / decaying / drifting / stale from those figures, with the reasons in words.
- `monitoring_metrics(result)`: a monitor result's numbers as MLflow metrics. Reading and writing MLflow
  (`training_reference`, `log_monitoring`, `health_history`) is `training.tracking`'s.

Everything here is pure: frames in, frames or dicts out, inputs never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation import amount_metrics, lift_table, probability_metrics

PSI_MODERATE = 0.1  # PSI below this: stable
PSI_DRIFTING = 0.25  # PSI above this: drifting; in between: moderate
N_REFERENCE_BINS = 10  # quantile bins of a numeric column (fewer when values repeat, e.g. counts that are mostly 0)
TOP_CATEGORIES = 10  # categories of a text column kept by name; the rest share one "other" bin
SHARE_FLOOR = 1e-4  # an empty bin counts as this share in the PSI (an empty bin would make it infinite)
# A model is "decaying" when its realised primary metric (churn roc_auc, value spearman_spend) is below the metric of
# its out-of-time evaluation at training by more than this: sampling noise on a few thousand customers moves an AUC
# by ~0.01-0.02, so 0.05 is a real loss of ranking power, not a bad draw.
DECAY_TOLERANCE = 0.05
MONITORING_EXPERIMENT = "segments-monitoring"
REFERENCE_ARTIFACT = "monitoring/reference_profile.json"
PROFILE_VERSION = 1
STATUS_ORDER = ("decaying", "drifting", "stale")  # the most serious first: a row's status is the first that applies


# ---------------------------------------------------------------------------------------------------------------
# Distributions and drift


def reference_profile(features: pd.DataFrame, n_bins: int = N_REFERENCE_BINS, top: int = TOP_CATEGORIES) -> dict:
    """The distribution of every column of `features` (except customer_id), JSON-ready.

    Numbers (int and float columns): `edges`, the distinct inner quantile edges of the non-missing values (up to
    `n_bins` bins, right-closed: (-inf, e1], (e1, e2], ..., (ek, inf)), and `shares`, the share of all rows in each.
    Text and yes/no columns: `categories`, the `top` most frequent values (as text), their `shares` and the `other`
    share. Every column has `missing`, the share of missing values, which is a bin of its own in the PSI.
    Returns {"version", "rows", "columns": {name: {"kind": "numeric" | "categorical", ...}}}.
    """
    columns = {}
    n = len(features)
    for name in features.columns:
        if name == "customer_id":
            continue
        column = features[name]
        if _is_numeric(column):
            values = _floats(column)
            missing = np.isnan(values)
            present = values[~missing]
            inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
            edges = np.unique(np.quantile(present, inner)) if len(present) else np.array([])
            counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
            columns[name] = {"kind": "numeric", "edges": [float(e) for e in edges],
                             "shares": [_share(c, n) for c in counts], "missing": _share(missing.sum(), n)}
        else:
            text = _texts(column)
            counts = text.value_counts(dropna=True)
            kept = counts.sort_values(ascending=False, kind="stable").head(top)
            columns[name] = {"kind": "categorical", "categories": [str(c) for c in kept.index],
                             "shares": [_share(c, n) for c in kept.to_numpy()],
                             "other": _share(counts.sum() - kept.sum(), n), "missing": _share(text.isna().sum(), n)}
    return {"version": PROFILE_VERSION, "rows": n, "columns": columns}


def psi(reference: dict, features: pd.DataFrame) -> pd.DataFrame:
    """Population stability index of each profiled column of `features` against the `reference` profile.

    PSI = sum over bins of (current share - reference share) x ln(current share / reference share), shares floored
    at SHARE_FLOOR. Columns of the profile absent from `features` get NaN and status "absent"; columns not in the
    profile are ignored. Returns columns feature, psi, status (stable / moderate / drifting / absent), most drifted
    first.
    """
    rows = []
    for name, entry in reference["columns"].items():
        if name not in features.columns or len(features) == 0:
            rows.append({"feature": name, "psi": math.nan, "status": "absent"})
            continue
        expected = np.asarray([*entry["shares"], *([entry["other"]] if entry["kind"] == "categorical" else []),
                               entry["missing"]], dtype=float)
        actual = _current_shares(entry, features[name])
        value = _psi(expected, actual)
        rows.append({"feature": name, "psi": value, "status": psi_status(value)})
    table = pd.DataFrame(rows, columns=["feature", "psi", "status"])
    return table.sort_values("psi", ascending=False, kind="stable", na_position="last").reset_index(drop=True)


def psi_status(value: float) -> str:
    """stable (< 0.1), moderate (0.1 to 0.25), drifting (> 0.25); absent for NaN."""
    if value is None or math.isnan(value):
        return "absent"
    if value < PSI_MODERATE:
        return "stable"
    return "moderate" if value <= PSI_DRIFTING else "drifting"


def drift_summary(table: pd.DataFrame, top: int = 3) -> dict:
    """Counts of moderate and drifting columns of a `psi` table, the largest PSI and the `top` drifting columns.

    Returns {"moderate": int, "drifting": int, "max_psi": float | None, "top": [{"feature", "psi"}, ...]}.
    """
    drifting = table[table["status"] == "drifting"]
    finite = table["psi"].dropna()
    return {"moderate": int((table["status"] == "moderate").sum()), "drifting": len(drifting),
            "max_psi": float(finite.max()) if len(finite) else None,
            "top": [{"feature": row.feature, "psi": float(row.psi)} for row in drifting.head(top).itertuples()]}


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)


def _floats(column: pd.Series) -> np.ndarray:
    """Values as floats, missing (and anything that is not a number) as NaN."""
    if _is_numeric(column):
        return column.to_numpy(dtype=float, na_value=np.nan)
    return pd.to_numeric(column.astype("object"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _texts(column: pd.Series) -> pd.Series:
    """Values as text (yes/no as "True"/"False"), missing kept missing."""
    values = column.astype("object")
    return values.where(values.isna(), values.map(str)).astype("object")


def _share(count, n: int) -> float:
    return float(count) / n if n else 0.0


def _current_shares(entry: dict, column: pd.Series) -> np.ndarray:
    """Shares of `column` in the bins of one profiled column, in the order of the profile (missing last)."""
    n = len(column)
    if entry["kind"] == "numeric":
        values = _floats(column)  # text where numbers are expected counts as missing
        missing = np.isnan(values)
        edges = np.asarray(entry["edges"], dtype=float)
        counts = np.bincount(np.searchsorted(edges, values[~missing], side="left"), minlength=len(edges) + 1)
        return np.asarray([*(counts / n), missing.sum() / n])
    text = _texts(column)
    missing = text.isna()
    counts = text[~missing].value_counts()
    named = np.asarray([counts.get(c, 0) for c in entry["categories"]], dtype=float)
    other = (~missing).sum() - named.sum()
    return np.asarray([*(named / n), other / n, missing.sum() / n])


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected, SHARE_FLOOR)
    a = np.maximum(actual, SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


# ---------------------------------------------------------------------------------------------------------------
# Realised performance


@dataclass
class Realised:
    """A model's predictions of one as_of judged against the outcomes of the following horizon.

    Attributes:
        metrics: by name, as at training (churn: roc_auc, pr_auc, lift_top_decile, brier, log_loss, ece; value:
            mae_spend, spearman_spend, ..., and the same for purchases) plus the observed and predicted levels.
        tables: name -> DataFrame (churn: "lift", value: "deciles"; `training.evaluation.lift_table`).
        n_customers: customers judged (churn: the eligible ones, who bought in the year before the as_of).
    """

    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_customers: int = 0


def realised_churn(predictions: pd.DataFrame, outcomes: pd.DataFrame) -> Realised:
    """Logged churn probabilities against what happened.

    In: `predictions` with customer_id, churn_probability (as logged at the as_of); `outcomes` of the snapshot at
    that as_of and horizon (`training.labels.Snapshot.outcomes`: customer_id, churned, eligible). Judged on the
    eligible customers present in both, as the training evaluation is. Out: `Realised` with
    `training.evaluation.probability_metrics` (roc_auc, pr_auc, lift_top_decile, brier, log_loss, ece), churn_rate and
    mean_probability, and the lift table.
    """
    joined = _join(predictions, ["churn_probability"], outcomes, ["churned", "eligible"])
    joined = joined[joined["eligible"].astype(bool)]
    if joined.empty:
        return Realised({}, {}, 0)
    y = joined["churned"].astype(int).to_numpy()
    p = joined["churn_probability"].to_numpy(dtype=float)
    metrics = {**probability_metrics(y, p), "churn_rate": float(y.mean()), "mean_probability": float(p.mean())}
    return Realised(metrics, {"lift": lift_table(y, p)}, len(joined))


def realised_value(predictions: pd.DataFrame, outcomes: pd.DataFrame) -> Realised:
    """Logged expected purchases and spend against what customers bought over the horizon.

    In: `predictions` with customer_id, expected_purchases, expected_spend; `outcomes` with customer_id,
    purchases_next, spend_next (`training.labels.Snapshot.outcomes`). Judged on every customer present in both, as the
    training evaluation is. Out: `Realised` with `training.evaluation.amount_metrics` (mae, rmse, spearman,
    top_decile_capture, total_ratio; suffixes _spend and _purchases) and the spend deciles (lift table).
    """
    joined = _join(predictions, ["expected_purchases", "expected_spend"], outcomes, ["purchases_next", "spend_next"])
    if joined.empty:
        return Realised({}, {}, 0)
    metrics = {**amount_metrics(joined["spend_next"], joined["expected_spend"], "spend"),
               **amount_metrics(joined["purchases_next"], joined["expected_purchases"], "purchases"),
               "actual_spend_mean": float(joined["spend_next"].mean()),
               "expected_spend_mean": float(joined["expected_spend"].mean())}
    return Realised(metrics, {"deciles": lift_table(joined["spend_next"], joined["expected_spend"])}, len(joined))


REALISED = {"churn": realised_churn, "value": realised_value}  # the model kinds with outcomes over a horizon
HEADLINE_METRICS = {"churn": ("roc_auc", "ece", "lift_top_decile"), "value": ("spearman_spend", "mae_spend")}


def _join(predictions: pd.DataFrame, predicted: list[str], outcomes: pd.DataFrame, observed: list[str]):
    left = predictions[["customer_id", *predicted]].assign(customer_id=lambda f: f["customer_id"].astype(str))
    right = outcomes[["customer_id", *observed]].assign(customer_id=lambda f: f["customer_id"].astype(str))
    return left.merge(right, on="customer_id", how="inner", validate="one_to_one")


# ---------------------------------------------------------------------------------------------------------------
# Status


def model_status(realised_metric: float | None, training_metric: float | None, score_drift: dict | None,
                 age_days: float | None, max_age_days: float, metric: str = "metric",
                 tolerance: float = DECAY_TOLERANCE) -> tuple[str, list[str]]:
    """(status, reasons): status is the most serious of decaying, drifting, stale that applies, else "ok".

    - decaying: `realised_metric` below `training_metric` (the out-of-time figure logged at training) by more than
      `tolerance`;
    - drifting: a model output with PSI above PSI_DRIFTING (`score_drift`, a `drift_summary` of the outputs). The
      features' drift explains it but does not decide it: a feature may move (tenure grows as the programme ages)
      without moving the scores, and then nothing built on the scores moves either;
    - stale: the model's training as_of more than `max_age_days` before the time it is judged at.
    """
    reasons: dict[str, str] = {}
    if realised_metric is not None and training_metric is not None and not math.isnan(realised_metric) \
            and realised_metric < training_metric - tolerance:
        reasons["decaying"] = (f"realised {metric} {realised_metric:.3f} is below {training_metric:.3f} at training "
                               f"by more than {tolerance}")
    if score_drift and score_drift["drifting"]:
        reasons["drifting"] = f"output PSI above {PSI_DRIFTING}: " + _top_text(score_drift)
    if age_days is not None and age_days > max_age_days:
        reasons["stale"] = f"trained on data up to {age_days:.0f} days earlier (limit {max_age_days:g} days)"
    status = next((s for s in STATUS_ORDER if s in reasons), "ok")
    return status, [f"{s}: {reasons[s]}" for s in STATUS_ORDER if s in reasons]


def _top_text(summary: dict) -> str:
    return ", ".join(f"{t['feature']} {t['psi']:.2f}" for t in summary["top"])


def age_days(trained_as_of: datetime | None, at: datetime) -> float | None:
    """Whole days from a model's training as_of (its data cut-off) to `at`; None when the as_of is unknown."""
    if trained_as_of is None:
        return None
    return float((at - trained_as_of).days)


def monitoring_metrics(result: dict) -> dict[str, float]:
    """The numbers of a monitor result as MLflow metrics: realised.<metric>, training.<metric>, psi_score_max,
    psi_feature_max, features_moderate, features_drifting, age_days, customers (finite values only)."""
    values: dict[str, float] = {f"realised.{k}": v for k, v in (result.get("realised") or {}).items()}
    if result.get("metric") and result.get("training_metric") is not None:
        values[f"training.{result['metric']}"] = result["training_metric"]
    for prefix, key in (("feature", "feature_drift"), ("score", "score_drift")):
        summary = result.get(key) or {}
        if summary.get("max_psi") is not None:
            values[f"psi_{prefix}_max"] = summary["max_psi"]
        if summary:
            values[f"{prefix}s_moderate"] = summary["moderate"]
            values[f"{prefix}s_drifting"] = summary["drifting"]
    if result.get("age_days") is not None:
        values["age_days"] = result["age_days"]
    if result.get("customers") is not None:
        values["customers"] = result["customers"]
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def result_json(value: Any) -> Any:
    """A monitor result with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: result_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [result_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
