"""The textbook term of the churn margin: Pareto/NBD's expected purchases over the horizon, and its exact Shapley values.

Trees cannot extrapolate. Where the customers scored are older than any the training snapshots show (a young
programme, or CDNOW's single 1997 cohort: at 1997-10-01 every one-time buyer is 183-273 days past the last purchase,
the training snapshots at most 183), every split on tenure or recency saturates. Pareto/NBD's smooth dependence on
frequency, recency and tenure carries on. The churn margin is therefore the trees' log-odds plus `weight` times
`term = -log(expected purchases over the horizon)`, the parameters fitted point in time on the newest training
snapshot; the weight is chosen out of time (`ChurnModel.settings_from_backtest`), 0 leaves the trees alone.

Explanations stay exact. The term reads three model inputs (INPUTS); its contribution is split among them by exact
Shapley values against a reference customer (baseline Shapley: 2^3 evaluations per row), so the reasons and drivers
name the same attributes as the trees ("Days since last purchase", "Purchases", "Days since first purchase") and
everything still adds up to the served margin: the term at the reference joins the base value.
"""

from __future__ import annotations

from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd

from training.estimators.baselines import BaselineFitError, ParetoNBDBaseline, rfm_summary_from_features

INPUTS = ("orders_count_total", "days_since_first_order", "days_since_last_order")
EXPECTED_FLOOR = 1e-6  # expected purchases are floored before the log (customers who never bought)
# Weights of the term the backtest chooses from (log-odds per unit of log expected purchases).
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


def fit_textbook(features: pd.DataFrame) -> dict | None:
    """Pareto/NBD parameters fitted on a feature table's purchase summary, and the reference customer (the medians
    of INPUTS among buyers); None when the fit fails (the margin is then the trees' alone)."""
    try:
        fitted = ParetoNBDBaseline().fit(rfm_summary_from_features(features))
    except BaselineFitError:
        return None
    buyers = features.loc[features["orders_count_total"].fillna(0) > 0, list(INPUTS)]
    return {"params": {k: float(v) for k, v in fitted.pnbd_.params_.items()},
            "reference": [float(buyers[c].median()) for c in INPUTS]}


def term(params: dict, values: np.ndarray, horizon_days: float) -> np.ndarray:
    """-log(Pareto/NBD expected purchases in the next `horizon_days`) per row of `values` (columns INPUTS).

    Defined for any combination of values (Shapley mixes a customer's with the reference's): no purchase, or a
    missing value, gives the floor; recency is clipped to [0, tenure].
    """
    from lifetimes import ParetoNBDFitter

    orders, first, last = (np.asarray(values[:, i], dtype=float) for i in range(3))
    bought = (np.nan_to_num(orders) > 0) & np.isfinite(first) & np.isfinite(last)
    expected = np.full(len(values), EXPECTED_FLOOR)
    if bought.any():
        fitter = ParetoNBDFitter()
        fitter.params_ = pd.Series(params)
        tenure = first[bought] + 0.5  # floored days, as rfm_summary_from_features
        recency = np.clip(first[bought] - last[bought], 0.0, tenure)
        with np.errstate(all="ignore"):
            found = fitter.conditional_expected_number_of_purchases_up_to_time(
                horizon_days, orders[bought] - 1, recency, tenure)
        expected[bought] = np.nan_to_num(np.asarray(found, dtype=float), nan=EXPECTED_FLOOR)
    return -np.log(np.maximum(expected, EXPECTED_FLOOR))


def shapley(params: dict, values: np.ndarray, reference: list[float], horizon_days: float) -> np.ndarray:
    """Exact baseline Shapley values of `term` per row (rows x 3, columns INPUTS): each coalition of inputs takes
    the row's values, the others the reference's. They sum to term(row) - term(reference)."""
    n = values.shape[1]
    base = np.broadcast_to(np.asarray(reference, dtype=float), values.shape)
    coalitions = [frozenset(c) for size in range(n + 1) for c in combinations(range(n), size)]
    stacked = np.concatenate([np.where(np.isin(np.arange(n), list(c)), values, base) for c in coalitions])
    at = dict(zip(coalitions, np.split(term(params, stacked, horizon_days), len(coalitions)), strict=True))
    out = np.zeros(values.shape)
    for i in range(n):
        for coalition in coalitions:
            if i in coalition:
                continue
            weight = factorial(len(coalition)) * factorial(n - len(coalition) - 1) / factorial(n)
            out[:, i] += weight * (at[coalition | {i}] - at[coalition])
    return out
