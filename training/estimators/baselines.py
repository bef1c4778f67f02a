"""Baselines every churn and value evaluation reports beside the model.

- Recency: churn score = days since the last purchase (never bought = the largest value seen).
- Last horizon repeats: next-horizon purchases and spend = those of the last window of the same length.
- BG/NBD (Fader, Hardie & Lee 2005) fitted with `lifetimes.BetaGeoFitter` on the purchase history available at
  the evaluation as_of only (no outcome is seen), and Gamma-Gamma (`lifetimes.GammaGammaFitter`) on repeat buyers
  for the value per purchase.
- Pareto/NBD (Schmittlein, Morrison & Colombo 1987) with `lifetimes.ParetoNBDFitter`, the same way: churn is ranked
  by expected purchases over the horizon (ranking metrics only: its P(no purchase in a window) has no closed form).

The textbook fits see at most `FIT_SAMPLE` customers (a seeded sample; the parameters are population rates, and the
Pareto/NBD fit costs ~10 s per 23,000 customers) and predict for everyone. A fit that fails to converge is retried
with a stronger penalizer (`PENALIZERS`); if every try fails, `BaselineFitError` says so and the caller reports the
baseline as missing: a textbook baseline never stops a model from training (at 1M customers of uniformly random
purchases, BG/NBD did not converge with the default penalizer).

The BG/NBD summary (frequency, recency, T, monetary_value) is built here with DuckDB from the validated tables,
because lifetimes' own summary helpers break on pandas 3. Time unit: days; purchases on the same calendar day count
as one purchase occasion (the BG/NBD convention), and the first occasion is not a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.build import PURCHASE_SQL, exact_sum_sql
from features.validate import ValidationResult

BGNBD_PENALIZER = 0.001
PENALIZERS = (BGNBD_PENALIZER, 0.01, 0.1)  # tried in order until a fit converges
FIT_SAMPLE = 20_000
MIN_REPEAT_BUYERS_GAMMA_GAMMA = 30  # below this the Gamma-Gamma fit is noise; fall back (see BGNBDBaseline)


def rfm_summary(validation: ValidationResult, as_of: datetime) -> pd.DataFrame:
    """BG/NBD summary per customer from the clean transactions strictly before `as_of` (returns excluded).

    Out columns: customer_id, frequency (repeat purchase days), recency (days from the first to the last purchase
    day), T (days from the first purchase day to as_of), monetary_value (mean spend of the repeat purchase days;
    NaN without repeats), orders (purchases, not days). Only customers with at least one purchase appear.
    """
    return validation.con.execute(
        f"""
        WITH days AS (
            SELECT customer_id, date_trunc('day', timestamp) AS day, {exact_sum_sql("amount")} AS spend,
                   count(*) AS orders
            FROM transactions WHERE {PURCHASE_SQL} AND timestamp < ? GROUP BY ALL
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY day) AS occasion FROM days
        )
        SELECT customer_id,
               count(*) - 1 AS frequency,
               date_diff('second', min(day), max(day)) / 86400.0 AS recency,
               date_diff('second', min(day), ?::TIMESTAMP) / 86400.0 AS T,
               avg(spend) FILTER (WHERE occasion > 1) AS monetary_value,  -- of exact sums: a DOUBLE
               sum(orders) AS orders
        FROM ranked GROUP BY customer_id ORDER BY customer_id
        """,
        [as_of, as_of],
    ).df().astype({"customer_id": "string", "frequency": "int64", "orders": "int64"})


def rfm_summary_from_features(features: pd.DataFrame) -> pd.DataFrame:
    """Approximate BG/NBD summary from a feature table, for when the raw transactions are not at hand.

    In: customer_id, orders_count_total, days_since_first_order, days_since_last_order, spend_sum_total.
    Out: as `rfm_summary`, but counting purchases rather than purchase days, with whole days, and with the
    monetary value averaged over all purchases (the first included). Prefer `rfm_summary`.
    """
    bought = features["orders_count_total"].fillna(0).to_numpy() > 0
    f = features.loc[bought]
    frequency = f["orders_count_total"].astype("int64") - 1
    return pd.DataFrame({
        "customer_id": f["customer_id"].astype("string"),
        "frequency": frequency,
        "recency": (f["days_since_first_order"] - f["days_since_last_order"]).astype(float),
        "T": f["days_since_first_order"].astype(float) + 0.5,  # floored days: keep T > recency
        "monetary_value": (f["spend_sum_total"] / f["orders_count_total"]).where(frequency > 0).astype(float),
        "orders": f["orders_count_total"].astype("int64"),
    }).reset_index(drop=True)


def recency_score(features: pd.DataFrame) -> np.ndarray:
    """Churn score of the recency baseline: days_since_last_order, customers who never bought get the maximum."""
    days = features["days_since_last_order"].astype("float64")
    fill = days.max() if days.notna().any() else 0.0
    return days.fillna(fill).to_numpy()


def last_horizon_repeats(features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Naive value baseline: next horizon = the last window, rescaled to the horizon's length.

    The feature window closest to the horizon is used (orders_count_<w>d, spend_sum_<w>d with w in 14, 30, 90, 365).
    Out: expected_purchases, expected_spend, same index as `features`.
    """
    windows = [w for w in (14, 30, 90, 365) if f"orders_count_{w}d" in features and f"spend_sum_{w}d" in features]
    w = min(windows, key=lambda w: abs(np.log(horizon_days / w)))
    scale = horizon_days / w
    return pd.DataFrame({
        "expected_purchases": features[f"orders_count_{w}d"].fillna(0).astype(float) * scale,
        "expected_spend": features[f"spend_sum_{w}d"].fillna(0).astype(float) * scale,
    }, index=features.index)


class BaselineFitError(RuntimeError):
    """A textbook model could not be fitted with any penalizer of `PENALIZERS`."""


def fit_purchase_model(fitter_cls, rfm: pd.DataFrame, penalizers: tuple[float, ...] = PENALIZERS, seed: int = 0,
                       **fit_options):
    """A lifetimes BG/NBD-family fitter fitted on (a sample of) `rfm`, retrying with stronger penalizers.

    `fit_options` go to the fitter's `fit`. Returns (fitted model, the penalizer that converged). Raises
    BaselineFitError naming every try.
    """
    from lifetimes.utils import ConvergenceError

    sample = rfm.sample(n=FIT_SAMPLE, random_state=seed) if len(rfm) > FIT_SAMPLE else rfm
    if sample.empty:
        raise BaselineFitError(f"{fitter_cls.__name__}: no customer with a purchase to fit on")
    errors = []
    for penalizer in penalizers:
        try:
            with np.errstate(all="ignore"):
                model = fitter_cls(penalizer_coef=penalizer).fit(
                    sample["frequency"].to_numpy(), sample["recency"].to_numpy(), sample["T"].to_numpy(),
                    **fit_options)
        except (ConvergenceError, ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            errors.append(f"penalizer {penalizer}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        params = np.asarray(model.params_, dtype=float)
        if np.all(np.isfinite(params) & (params > 0)):
            return model, penalizer
        errors.append(f"penalizer {penalizer}: parameters not finite and positive {dict(model.params_)}")
    raise BaselineFitError(f"{fitter_cls.__name__} did not fit on {len(sample):,} customers ({'; '.join(errors)})")


@dataclass
class ParetoNBDBaseline:
    """Pareto/NBD purchase counts; `fit` takes an `rfm_summary`, predictions are aligned with its rows."""

    def fit(self, rfm: pd.DataFrame) -> ParetoNBDBaseline:
        from lifetimes import ParetoNBDFitter

        # lifetimes starts Pareto/NBD from random parameters unless given some: start at its mean, for repeatable fits
        self.pnbd_, self.penalizer_ = fit_purchase_model(ParetoNBDFitter, rfm, initial_params=np.ones(4))
        return self

    def expected_purchases(self, rfm: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Expected purchase days in the next `horizon_days` (Pareto/NBD conditional expectation)."""
        with np.errstate(all="ignore"):
            return np.asarray(self.pnbd_.conditional_expected_number_of_purchases_up_to_time(
                horizon_days, rfm["frequency"].to_numpy(dtype=float), rfm["recency"].to_numpy(dtype=float),
                rfm["T"].to_numpy(dtype=float)), dtype=float)


@dataclass
class BGNBDBaseline:
    """BG/NBD for purchase counts (and churn), Gamma-Gamma for the value of a purchase.

    `fit` takes an `rfm_summary` at the evaluation as_of; prediction methods take the same kind of summary and
    return arrays aligned with its rows. Fitted state: `bgnbd_`, `gamma_gamma_` (None when it could not be used),
    `spend_method_` ("gamma_gamma" or "mean_order_value: <why>"), `fallback_order_value_`, `penalizer_` (the one
    that converged, see `fit_purchase_model`).
    """

    penalizer_coef: float = BGNBD_PENALIZER
    min_repeat_buyers: int = MIN_REPEAT_BUYERS_GAMMA_GAMMA

    def fit(self, rfm: pd.DataFrame) -> BGNBDBaseline:
        from lifetimes import BetaGeoFitter  # heavy import (autograd); only when a baseline is fitted

        penalizers = tuple(sorted({self.penalizer_coef, *(p for p in PENALIZERS if p > self.penalizer_coef)}))
        self.bgnbd_, self.penalizer_ = fit_purchase_model(BetaGeoFitter, rfm, penalizers)
        self.gamma_gamma_, self.spend_method_ = self._fit_gamma_gamma(rfm)
        repeat = rfm["monetary_value"].notna()
        # Customers without a repeat purchase have no Gamma-Gamma-free value estimate: use the mean repeat value.
        self.fallback_order_value_ = float(rfm.loc[repeat, "monetary_value"].mean()) if repeat.any() else 0.0
        return self

    def _fit_gamma_gamma(self, rfm: pd.DataFrame):
        """Gamma-Gamma on repeat buyers with a positive mean value, or None and the reason it was not used.

        Failure cases handled: too few repeat buyers; the optimiser not converging; q <= 1, where the model's
        population mean value v*p/(q-1) is undefined or negative.
        """
        from lifetimes import GammaGammaFitter
        from lifetimes.utils import ConvergenceError

        repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
        if len(repeat) < self.min_repeat_buyers:
            return None, (f"mean_order_value: only {len(repeat)} repeat buyers (Gamma-Gamma needs "
                          f"{self.min_repeat_buyers})")
        try:
            model = GammaGammaFitter(penalizer_coef=self.penalizer_coef).fit(
                repeat["frequency"].to_numpy(), repeat["monetary_value"].to_numpy())
        except (ConvergenceError, ValueError, np.linalg.LinAlgError) as exc:
            return None, f"mean_order_value: Gamma-Gamma fit failed ({type(exc).__name__})"
        if model.params_["q"] <= 1.0:
            return None, f"mean_order_value: Gamma-Gamma q={model.params_['q']:.3f} <= 1 (population mean undefined)"
        return model, "gamma_gamma"

    def churn_probability(self, rfm: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """P(no purchase in the next `horizon_days`) = 1 - P(alive) * (1 - E[exp(-lambda * H) | alive]).

        Given alive, the purchase rate's posterior is Gamma(r + x, alpha + T), so the expectation is
        ((alpha + T) / (alpha + T + H)) ** (r + x). BG/NBD customers only drop out right after a purchase, so an
        alive customer stays alive until their next purchase.
        """
        return bgnbd_churn_probability(self.bgnbd_, rfm["frequency"].to_numpy(dtype=float),
                                       rfm["recency"].to_numpy(dtype=float), rfm["T"].to_numpy(dtype=float),
                                       horizon_days)

    def expected_purchases(self, rfm: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Expected purchase days in the next `horizon_days` (BG/NBD conditional expectation).

        When the fit puts the dropout shape parameters a and b near zero (seen on data without dropout), the
        closed form overflows for customers with one repeat purchase: its hypergeometric term 2F1(r+x, b+x; a+b+x-1;
        z) has a+b+x-1 -> 0 there (0 x inf). Its limit, used where the closed form is not finite, is P(alive) x
        horizon x the posterior mean rate (r + x) / (alpha + T).
        """
        frequency, recency, age = (rfm[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
        with np.errstate(all="ignore"):
            expected = np.asarray(self.bgnbd_.conditional_expected_number_of_purchases_up_to_time(
                horizon_days, frequency, recency, age), dtype=float)
        broken = ~np.isfinite(expected)
        if broken.any():
            r, alpha = self.bgnbd_.params_["r"], self.bgnbd_.params_["alpha"]
            alive = self.bgnbd_.conditional_probability_alive(frequency[broken], recency[broken], age[broken])
            expected[broken] = alive * horizon_days * (r + frequency[broken]) / (alpha + age[broken])
        return expected

    def expected_order_value(self, rfm: pd.DataFrame) -> np.ndarray:
        """Expected value of a purchase: Gamma-Gamma's conditional mean, or the fallback described in `fit`."""
        observed = rfm["monetary_value"].to_numpy(dtype=float)
        if self.gamma_gamma_ is None:
            return np.where(np.isnan(observed), self.fallback_order_value_, observed)
        frequency = rfm["frequency"].to_numpy(dtype=float)
        # Gamma-Gamma conditions on repeat purchases: with none, its estimate is the population mean.
        return np.asarray(self.gamma_gamma_.conditional_expected_average_profit(
            frequency, np.where(np.isnan(observed), 1.0, observed)), dtype=float)

    def expected_spend(self, rfm: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Expected spend in the next `horizon_days` = expected purchases x expected value per purchase."""
        return self.expected_purchases(rfm, horizon_days) * self.expected_order_value(rfm)


def bgnbd_churn_probability(fitter, frequency: np.ndarray, recency: np.ndarray, age: np.ndarray,
                            horizon_days: float) -> np.ndarray:
    """BG/NBD P(no purchase in the next `horizon_days`) from a fitted `BetaGeoFitter` (see
    `BGNBDBaseline.churn_probability`)."""
    r, alpha = fitter.params_["r"], fitter.params_["alpha"]
    p_alive = fitter.conditional_probability_alive(frequency, recency, age)
    p_quiet_if_alive = ((alpha + age) / (alpha + age + horizon_days)) ** (r + frequency)
    return np.clip(1.0 - p_alive * (1.0 - p_quiet_if_alive), 0.0, 1.0)


def align_rfm(rfm: pd.DataFrame, customer_ids: pd.Series) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of `rfm` in the order of `customer_ids`, and a mask of the customers that have a row (bought before)."""
    indexed = rfm.set_index("customer_id")
    ids = pd.Index(customer_ids.astype("string"))
    present = ids.isin(indexed.index)
    return indexed.reindex(ids[present]).reset_index(), np.asarray(present)
