"""The textbook part of the churn margin (Pareto/NBD or BG/NBD on three inputs) and its exact Shapley values.

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

The same term, alone, is the textbook as a served candidate (`ChurnModel` with candidate "pnbd" or "bgnbd", issue 11
item 2): FAMILIES gives each family's term, higher meaning likelier to churn. BG/NBD's is the log-odds of its
P(no purchase in the horizon), so with the identity calibration the served probability is BG/NBD's own (the
fallback of programmes too small for the trees).
"""

from __future__ import annotations

import functools
from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd

from training.estimators.baselines import (
    BaselineFitError,
    BGNBDBaseline,
    bgnbd_churn_probability,
    fit_purchase_model,
    rfm_summary_from_features,
)

INPUTS = ("orders_count_total", "days_since_first_order", "days_since_last_order")
EXPECTED_FLOOR = 1e-6  # expected purchases are floored before the log (customers who never bought)
# Weights of the term the backtest chooses from (log-odds per unit of log expected purchases).
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
FAMILIES = ("pnbd", "bgnbd")


def _fitter(family: str):
    from lifetimes import BetaGeoFitter, ParetoNBDFitter  # heavy imports (autograd): only when used

    return {"pnbd": ParetoNBDFitter, "bgnbd": BetaGeoFitter}[family]


@functools.lru_cache(maxsize=64)
def _fitted(family: str, params: tuple[tuple[str, float], ...]):
    """A `family` fitter holding `params`, built once per parameter set (read only: a Series and a fitter per call
    cost ~60 us, three calls per scored customer)."""
    fitter = _fitter(family)()
    fitter.params_ = dict(params)  # read by name only: a Series lookup cost ~12 us, four per call
    return fitter


def fit_textbook(features: pd.DataFrame, family: str = "pnbd") -> dict | None:
    """A textbook model (`family`: "pnbd" or "bgnbd") fitted on a feature table's purchase summary: its family,
    parameters and reference customer (the medians of INPUTS among buyers); None when the fit fails (the margin
    is then the trees' alone)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown textbook family {family!r}: use one of {', '.join(FAMILIES)}")
    # Pareto/NBD starts at its mean unless told otherwise (lifetimes picks random starts): repeatable fits
    options = {"initial_params": np.ones(4)} if family == "pnbd" else {}
    try:
        fitted, _ = fit_purchase_model(_fitter(family), rfm_summary_from_features(features), **options)
    except BaselineFitError:
        return None
    buyers = features.loc[features["orders_count_total"].fillna(0) > 0, list(INPUTS)]
    return {"family": family, "params": {k: float(v) for k, v in fitted.params_.items()},
            "reference": [float(buyers[c].median()) for c in INPUTS]}


def term(textbook: dict, values: np.ndarray, horizon_days: float) -> np.ndarray:
    """The textbook's churn term per row of `values` (columns INPUTS), higher = likelier to churn: Pareto/NBD
    -log(expected purchases in the next `horizon_days`), BG/NBD the log-odds of no purchase in them.

    Defined for any combination of values (Shapley mixes a customer's with the reference's): no purchase, or a
    missing value, counts as certain to churn (the floor); recency is clipped to [0, tenure]. Models saved before
    BG/NBD was a family hold Pareto/NBD parameters without a "family".
    """
    family = textbook.get("family", "pnbd")
    orders, first, last = (np.asarray(values[:, i], dtype=float) for i in range(3))
    bought = (np.nan_to_num(orders) > 0) & np.isfinite(first) & np.isfinite(last)
    quiet = np.full(len(values), 1.0 - EXPECTED_FLOOR)  # P(no purchase), BG/NBD
    expected = np.full(len(values), EXPECTED_FLOOR)  # expected purchases, Pareto/NBD
    if bought.any():
        fitter = _fitted(family, tuple(textbook["params"].items()))
        tenure = first[bought] + 0.5  # floored days, as rfm_summary_from_features
        recency = np.clip(first[bought] - last[bought], 0.0, tenure)
        with np.errstate(all="ignore"):
            if family == "bgnbd":
                found = bgnbd_churn_probability(fitter, orders[bought] - 1, recency, tenure, horizon_days)
                quiet[bought] = np.nan_to_num(found, nan=1.0 - EXPECTED_FLOOR)
            else:
                found = fitter.conditional_expected_number_of_purchases_up_to_time(
                    horizon_days, orders[bought] - 1, recency, tenure)
                expected[bought] = np.nan_to_num(np.asarray(found, dtype=float), nan=EXPECTED_FLOOR)
    if family == "bgnbd":
        quiet = np.clip(quiet, EXPECTED_FLOOR, 1.0 - EXPECTED_FLOOR)
        return np.log(quiet) - np.log1p(-quiet)
    return -np.log(np.maximum(expected, EXPECTED_FLOOR))


def shapley(textbook: dict, values: np.ndarray, horizon_days: float) -> tuple[np.ndarray, float]:
    """Exact baseline Shapley values of `term` per row (rows x 3, columns INPUTS) against the textbook's reference
    customer, and term(reference). The values sum to term(row) - term(reference)."""
    return exact_shapley(lambda v: term(textbook, v, horizon_days), values, textbook["reference"])


def exact_shapley(function, values: np.ndarray, reference: list[float]) -> tuple[np.ndarray, float]:
    """Exact baseline Shapley values of a row function (stacked rows -> one value each) per row of `values`:
    each coalition of inputs takes the row's values, the others the reference's (2^inputs evaluations per row).
    Also returns function(reference) (the empty coalition's value, the base of the contributions): the values sum
    to function(row) - function(reference).

    Each row's values are summed elementwise in one fixed order, never through a matrix product (whose summation
    order may depend on the number of rows): a customer's reasons are the same alone and in any batch, to the bit."""
    rows, n = values.shape
    members, terms = _coalitions(n)
    reference = np.asarray(reference, dtype=float)
    stacked = np.where(members[:, None, :], values[None, :, :], reference)  # coalitions x rows x inputs
    evaluated = function(np.concatenate([stacked.reshape(-1, n), reference[None, :]]))
    at = evaluated[:-1].reshape(len(members), rows)  # coalitions x rows
    out = np.zeros((rows, n))
    for i, pairs in enumerate(terms):
        for joined, alone, weight in pairs:
            out[:, i] += weight * (at[joined] - at[alone])
    return out, float(evaluated[-1])


@functools.lru_cache(maxsize=8)
def _coalitions(n: int) -> tuple[np.ndarray, list[list[tuple[int, int, float]]]]:
    """Every coalition of `n` inputs as a membership mask (2^n x n, by size), and per input the terms of its
    Shapley value: (coalition with it, the same without it, weight) for every coalition without it, in order."""
    coalitions = [frozenset(c) for size in range(n + 1) for c in combinations(range(n), size)]
    members = np.array([[i in c for i in range(n)] for c in coalitions], dtype=bool).reshape(len(coalitions), n)
    index = {c: k for k, c in enumerate(coalitions)}
    terms = [[(index[c | {i}], k, factorial(len(c)) * factorial(n - len(c) - 1) / factorial(n))
              for k, c in enumerate(coalitions) if i not in c] for i in range(n)]
    return members, terms


# ---------------------------------------------------------------------------------------------------------------
# Value: BG/NBD purchases x Gamma-Gamma value per purchase, as a served candidate of the value model

VALUE_INPUTS = (*INPUTS, "spend_sum_total")


def fit_value_textbook(features: pd.DataFrame) -> dict | None:
    """BG/NBD and Gamma-Gamma fitted on a feature table's purchase summary (`BGNBDBaseline`), as JSON-ready
    parameters with the reference customer (medians of VALUE_INPUTS among buyers); None when BG/NBD fails."""
    try:
        fitted = BGNBDBaseline().fit(rfm_summary_from_features(features))
    except BaselineFitError:
        return None
    buyers = features.loc[features["orders_count_total"].fillna(0) > 0, list(VALUE_INPUTS)]
    gamma_gamma = fitted.gamma_gamma_
    return {"family": "bgnbd_gamma_gamma", "params": {k: float(v) for k, v in fitted.bgnbd_.params_.items()},
            "gamma_gamma": None if gamma_gamma is None else {k: float(v) for k, v in gamma_gamma.params_.items()},
            "spend_method": fitted.spend_method_, "fallback_order_value": fitted.fallback_order_value_,
            "reference": [float(buyers[c].median()) for c in VALUE_INPUTS]}


def value_amounts(textbook: dict, values: np.ndarray, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    """(expected purchases, expected spend) over the horizon per row of `values` (columns VALUE_INPUTS), as the
    BG/NBD x Gamma-Gamma baseline predicts them from the feature-table summary; 0 for customers who never bought."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    orders, first, last, spend = (np.asarray(values[:, i], dtype=float) for i in range(4))
    bought = (np.nan_to_num(orders) > 0) & np.isfinite(first) & np.isfinite(last)
    purchases, amounts = np.zeros(len(values)), np.zeros(len(values))
    if not bought.any():
        return purchases, amounts
    model = BGNBDBaseline()
    model.bgnbd_ = BetaGeoFitter()
    model.bgnbd_.params_ = pd.Series(textbook["params"])
    model.gamma_gamma_ = None
    if textbook["gamma_gamma"] is not None:
        model.gamma_gamma_ = GammaGammaFitter()
        model.gamma_gamma_.params_ = pd.Series(textbook["gamma_gamma"])
    model.fallback_order_value_ = textbook["fallback_order_value"]
    tenure = first[bought] + 0.5  # as rfm_summary_from_features
    frequency = orders[bought] - 1
    rfm = pd.DataFrame({"frequency": frequency, "recency": np.clip(first[bought] - last[bought], 0.0, tenure),
                        "T": tenure, "monetary_value": np.where(frequency > 0, np.nan_to_num(spend[bought]) /
                                                                np.maximum(orders[bought], 1), np.nan)})
    with np.errstate(all="ignore"):
        purchases[bought] = np.nan_to_num(model.expected_purchases(rfm, horizon_days))
        amounts[bought] = np.nan_to_num(purchases[bought] * model.expected_order_value(rfm))
    return purchases, amounts


def log_spend(textbook: dict, values: np.ndarray, horizon_days: float) -> np.ndarray:
    """log of expected spend (floored): the margin the value candidate's reasons explain (a "log" link)."""
    return np.log(np.maximum(value_amounts(textbook, values, horizon_days)[1], EXPECTED_FLOOR))
