"""Snapshots and labels: the feature table at an as_of and what each customer did in the horizon after it.

Time is explicit everywhere. Features use records strictly before as_of; outcomes use [as_of, as_of + horizon), so
every record belongs to exactly one side (a purchase stamped exactly at as_of is the future, never lost between the
two). Splits are by time: training snapshots' outcome windows all end on or before the evaluation as_of.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features.build import PURCHASE_SQL, FeatureQuery, exact_sum_sql
from features.validate import ValidationResult

DEFAULT_HORIZON_DAYS = 90


@dataclass(frozen=True)
class Snapshot:
    """Features as of `as_of` with outcomes over the following `horizon_days` (None when the future is unknown).

    `outcomes` columns: customer_id, purchases_next (orders in the horizon), spend_next (their amount),
    churned (no purchase in the horizon), eligible (bought in the 365 days before as_of: the churn population).
    """

    as_of: datetime
    horizon_days: int
    features: pd.DataFrame
    outcomes: pd.DataFrame | None

    def churn_frame(self) -> tuple[pd.DataFrame, pd.Series]:
        """Features and churn label of the eligible customers (active in the last year)."""
        joined = self.features.merge(self.outcomes, on="customer_id", how="left", validate="one_to_one")
        eligible = joined[joined["eligible"]].reset_index(drop=True)
        return eligible[self.features.columns], eligible["churned"].astype(int)


def future_activity(validation: ValidationResult, as_of: datetime, horizon_days: int) -> pd.DataFrame:
    """Purchases (returns excluded) per customer in [as_of, as_of + horizon): customer_id, purchases_next, spend_next.

    Only customers with at least one purchase appear; the caller fills the rest with zeros.
    """
    end = as_of + timedelta(days=horizon_days)
    return validation.con.execute(
        f"""SELECT customer_id, count(*) AS purchases_next, CAST({exact_sum_sql("amount")} AS DOUBLE) AS spend_next
            FROM transactions WHERE {PURCHASE_SQL} AND timestamp >= ? AND timestamp < ? GROUP BY customer_id""",
        [as_of, end],
    ).df()


def data_end(validation: ValidationResult) -> datetime:
    """Time of the latest transaction: outcome windows must end on or before it to be fully observed."""
    return validation.con.execute("SELECT max(timestamp) FROM transactions").fetchall()[0][0]


CHURN_POPULATION_FIELDS = ("orders_count_365d",)  # the features `churn_eligible` reads


def churn_eligible(features: pd.DataFrame) -> np.ndarray:
    """The churn population (DESIGN.md section 8), one bool per row: a purchase in the 365 days before as_of
    (column orders_count_365d > 0; missing counts as none)."""
    return features["orders_count_365d"].fillna(0).to_numpy() > 0


def make_snapshot(validation: ValidationResult, as_of: datetime, horizon_days: int = DEFAULT_HORIZON_DAYS,
                  query: FeatureQuery | None = None, with_outcomes: bool = True) -> Snapshot:
    """Features as of `as_of` and, when asked, outcomes over the horizon (which must lie inside the data)."""
    query = query or FeatureQuery(validation.columns)
    features = query.run_duckdb(validation.con, as_of)
    if not with_outcomes:
        return Snapshot(as_of, horizon_days, features, None)
    if as_of + timedelta(days=horizon_days) > data_end(validation) + timedelta(days=1):
        raise ValueError(
            f"the {horizon_days}-day outcome window after {as_of:%Y-%m-%d} ends after the last transaction "
            f"({data_end(validation):%Y-%m-%d}): choose an earlier --as-of or a shorter --horizon")
    activity = future_activity(validation, as_of, horizon_days)
    outcomes = features[["customer_id"]].merge(activity, on="customer_id", how="left")
    outcomes["purchases_next"] = outcomes["purchases_next"].fillna(0).astype("int64")
    outcomes["spend_next"] = outcomes["spend_next"].fillna(0.0).astype("float64")
    outcomes["churned"] = outcomes["purchases_next"] == 0
    outcomes["eligible"] = churn_eligible(features)
    return Snapshot(as_of, horizon_days, features, outcomes)


def training_dates(evaluation_as_of: datetime, horizon_days: int, n_snapshots: int = 4,
                   step_days: int = 30) -> list[datetime]:
    """as_of dates for training snapshots, oldest first, whose outcome windows end on or before the evaluation as_of.

    The newest training snapshot is `evaluation_as_of - horizon`; earlier ones step back by `step_days`.
    """
    latest = evaluation_as_of - timedelta(days=horizon_days)
    return sorted(latest - timedelta(days=step_days * k) for k in range(n_snapshots))


def data_fingerprint(validation: ValidationResult) -> str:
    """A short hash of the clean transactions (rows, time range, total amount): runs evaluated on the same data
    share it, which is what makes their metrics comparable."""
    import hashlib

    row = validation.con.execute(
        "SELECT count(*), min(timestamp), max(timestamp), round(sum(amount), 2) FROM transactions").fetchall()[0]
    return hashlib.sha1(repr(row).encode()).hexdigest()[:12]
