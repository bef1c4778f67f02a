"""Does a segment work? Campaign lift against the holdout, and what a rule segment's members did in the past.

`measure` compares the segment's targeted members with its holdout (the deterministic `in_holdout` draw the campaign
left alone) over a window after the campaign started: conversion, orders and spend per customer, the difference
with a 95% confidence interval, the relative lift with its own 95% interval and a p-value. Holdouts are often small
(10% of a few hundred members), so the statistics hold at any size: for conversion, Newcombe's hybrid score interval
of the difference (from two Wilson intervals; never of zero width at 0% or 100%), Fisher's exact test and the
ratio's MOVER-R interval from the same Wilson intervals; for orders and spend, Welch's t (Welch-Satterthwaite degrees of freedom), with a
warning under `SMALL_GROUP` customers in either group, where a mean of a skewed amount is still rough.
`tests/test_lift.py` checks the coverage of the intervals by simulation.

`backtest` evaluates a rule segment at past dates, point in time, and compares what its members did in the following
horizon with what the active population did: a segment meant to catch churners should churn more than the
population, one meant to catch loyal customers less.

Both are pure: they read the validated tables and return results; the caller reads the membership log, prints and
writes. Purchases are counted as everywhere else (`training.labels.future_activity`): returns are not orders, spend
is the amount of purchases, and a purchase stamped exactly at the window start belongs to the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist

import numpy as np
import pandas as pd

from features.pipeline import feature_batches
from features.segments import Segment, SegmentSet, evaluate, in_holdout, plain
from features.validate import ValidationResult
from serving.segments.refresh import evaluate_batches
from training.labels import CHURN_POPULATION_FIELDS, churn_eligible, data_end, future_activity

Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95%: 1.95996...
SMALL_GROUP = 30  # below this many customers in a group, means of orders and spend get a warning
TABLE_COLUMNS = ["metric", "targeted", "holdout", "difference", "ci_low", "ci_high", "lift", "relative_ci_low",
                 "relative_ci_high", "p_value"]
BACKTEST_METRICS = ("churn_rate", "conversion_rate", "mean_orders", "mean_spend")
OUTCOMES = ["orders", "spend", "converted"]  # a customer's window outcomes (`window_outcomes`, without the id)


# ---------------------------------------------------------------------------------------------------------------
# What customers did in a window


def window_activity(validation: ValidationResult, start: datetime, end: datetime) -> pd.DataFrame:
    """Purchases per customer in [start, end) (`future_activity`: customers with one at least)."""
    # future_activity takes a horizon in days; a fractional one keeps any end exact to the microsecond.
    return future_activity(validation, start, (end - start) / timedelta(days=1))


def window_outcomes(validation: ValidationResult, customer_ids, start: datetime, end: datetime,
                    activity: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per given customer (in the given order), purchases in [start, end): customer_id, orders, spend, converted.

    Customers without a purchase in the window get 0 orders, 0 spend, converted False. `activity`: the window's
    `window_activity` when the caller has it (a report measures every segment over the same window).
    """
    activity = window_activity(validation, start, end) if activity is None else activity
    frame = pd.DataFrame({"customer_id": pd.Series(customer_ids, dtype=str).to_numpy()})
    frame = frame.merge(activity.astype({"customer_id": str}), on="customer_id", how="left", validate="many_to_one")
    return pd.DataFrame({"customer_id": frame["customer_id"],
                         "orders": frame["purchases_next"].fillna(0).astype("int64"),
                         "spend": frame["spend_next"].fillna(0.0).astype("float64"),
                         "converted": frame["purchases_next"].fillna(0).to_numpy() > 0})


# ---------------------------------------------------------------------------------------------------------------
# Targeted against holdout


@dataclass(frozen=True)
class Comparison:
    """One metric, targeted against holdout: difference (targeted - holdout) with its 95% interval, relative lift
    (targeted / holdout - 1, NaN when the holdout figure is 0) with its 95% interval (`relative_interval`; NaN when
    either figure is 0) and two-sided p-value (NaN when undefined)."""

    metric: str
    targeted: float
    holdout: float
    difference: float
    ci_low: float
    ci_high: float
    lift: float
    relative_ci_low: float
    relative_ci_high: float
    p_value: float


@dataclass(frozen=True)
class Measurement:
    """The result of `measure`: group sizes and one Comparison per metric (conversion_rate, mean_orders,
    mean_spend)."""

    segment: str
    start: datetime
    end: datetime
    holdout_percent: float
    targeted_customers: int
    holdout_customers: int
    comparisons: tuple[Comparison, ...]
    warnings: tuple[str, ...] = ()

    def comparison(self, metric: str) -> Comparison:
        """The comparison of `metric` (conversion_rate, mean_orders or mean_spend)."""
        return next(c for c in self.comparisons if c.metric == metric)

    def table(self) -> pd.DataFrame:
        """Columns TABLE_COLUMNS (metric, targeted, holdout, difference, ci_low, ci_high, lift, relative_ci_low,
        relative_ci_high, p_value); the first row, `customers`, holds the group sizes (its other columns are NaN)."""
        sizes = {"metric": "customers", "targeted": self.targeted_customers, "holdout": self.holdout_customers}
        rows = [sizes, *(vars(c) for c in self.comparisons)]
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    def to_dict(self) -> dict:
        """JSON-ready: dates as ISO text, NaN as None."""
        return {"segment": self.segment, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "holdout_percent": self.holdout_percent,
                "customers": {"targeted": self.targeted_customers, "holdout": self.holdout_customers},
                "metrics": [{k: plain(v) for k, v in vars(c).items()} for c in self.comparisons],
                "warnings": list(self.warnings)}


def measure(members: pd.DataFrame, segment: Segment, validation: ValidationResult, start: datetime,
            end: datetime, activity: pd.DataFrame | None = None) -> Measurement:
    """Lift of a campaign on `segment` over [start, end) (naive UTC): targeted members against the holdout.

    Args:
        members: column customer_id: the segment's members at `start` (duplicates count once).
        segment: gives the name and holdout_percent that decide the holdout (`in_holdout`).
        validation: the clean transactions to count purchases in.
        activity: their `window_activity(validation, start, end)`, when measuring several segments over one window.

    Conversion (at least one purchase) is compared with `compare_rates` (Newcombe, Fisher), mean orders and mean
    spend per customer with `compare_means` (Welch's t); see the module docstring.
    Raises ValueError when the window is empty, `members` has no customer_id, or either group is empty.
    """
    if end <= start:
        raise ValueError(f"the measurement window is empty: end {end:%Y-%m-%d %H:%M} is not after start "
                         f"{start:%Y-%m-%d %H:%M}")
    if "customer_id" not in members.columns:
        raise ValueError(f"members needs a customer_id column; it has {', '.join(map(str, members.columns))}")
    ids = pd.unique(members["customer_id"].astype(str))
    return measure_groups(segment, start, end, *group_outcomes(segment, [ids], validation, start, end, activity))


def group_outcomes(segment: Segment, member_chunks: Iterable, validation: ValidationResult, start: datetime,
                   end: datetime, activity: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window outcomes (orders, spend, converted) of the targeted members and of the holdout, from the members'
    ids given a chunk at a time (each member once): only their numbers are kept, not their ids, so a segment of
    millions is measured in little memory."""
    activity = window_activity(validation, start, end) if activity is None else activity
    targeted, holdout = [], []
    for ids in member_chunks:
        outcomes = window_outcomes(validation, ids, start, end, activity).drop(columns="customer_id")
        held = in_holdout(ids, segment.name, segment.holdout_percent)
        targeted.append(outcomes[~held])
        holdout.append(outcomes[held])
    return (pd.concat(targeted, ignore_index=True) if targeted else pd.DataFrame(columns=OUTCOMES),
            pd.concat(holdout, ignore_index=True) if holdout else pd.DataFrame(columns=OUTCOMES))


def measure_groups(segment: Segment, start: datetime, end: datetime, targeted: pd.DataFrame,
                   holdout: pd.DataFrame) -> Measurement:
    """`measure` from the groups' window outcomes (`group_outcomes`)."""
    _check_groups(segment, len(targeted) + len(holdout), len(holdout))
    comparisons = (
        compare("conversion_rate", targeted["converted"].to_numpy(float), holdout["converted"].to_numpy(float), True),
        compare("mean_orders", targeted["orders"].to_numpy(float), holdout["orders"].to_numpy(float), False),
        compare("mean_spend", targeted["spend"].to_numpy(float), holdout["spend"].to_numpy(float), False),
    )
    smallest = min(len(targeted), len(holdout))
    group = "holdout" if len(holdout) <= len(targeted) else "targeted group"
    warning = f"only {smallest} customers in the {group}: the intervals are wide, those of orders and spend rough"
    warnings = (warning,) if smallest < SMALL_GROUP else ()
    return Measurement(segment.name, start, end, segment.holdout_percent, len(targeted), len(holdout), comparisons,
                       warnings)


def _check_groups(segment: Segment, members: int, held: int) -> None:
    if held == 0 and segment.holdout_percent == 0:
        raise ValueError(
            f"no holdout members: the segment {segment.name!r} has {members} members and a holdout of 0%: without "
            f"a holdout there is nothing to compare against; set holdout_percent above 0 before the next campaign")
    if held == 0:
        raise ValueError(
            f"no holdout members: the segment {segment.name!r} has {members} members and a holdout of "
            f"{segment.holdout_percent:g}%, which put none of them in the holdout; there is nothing to compare "
            f"against: measure when the segment has more members, or set a larger holdout_percent before the "
            f"campaign")
    if held == members:
        raise ValueError(
            f"no targeted members: all {members} members of the segment {segment.name!r} are in its "
            f"{segment.holdout_percent:g}% holdout; measure when the segment has more members")


def compare(metric: str, targeted: np.ndarray, holdout: np.ndarray, rate: bool) -> Comparison:
    """Targeted against holdout for per-customer values (0/1 when `rate`) at 95%: `compare_rates` or
    `compare_means`."""
    if rate:
        return compare_rates(metric, int(targeted.sum()), len(targeted), int(holdout.sum()), len(holdout))
    return compare_means(metric, targeted, holdout)


def compare_rates(metric: str, x_t: int, n_t: int, x_h: int, n_h: int) -> Comparison:
    """Two proportions x_t / n_t against x_h / n_h, exact or score-based so they hold for small groups and at 0%
    or 100%: Newcombe's hybrid score interval of the difference (method 10, from Wilson intervals), Fisher's exact
    two-sided p-value, and the ratio's interval by MOVER-R from the same Wilson intervals (NaN lift and ratio
    interval when the holdout rate is 0)."""
    from scipy.stats import fisher_exact

    p_t, p_h = x_t / n_t, x_h / n_h
    low_t, high_t = wilson_interval(x_t, n_t)
    low_h, high_h = wilson_interval(x_h, n_h)
    difference = p_t - p_h
    ci_low = difference - math.sqrt((p_t - low_t) ** 2 + (high_h - p_h) ** 2)
    ci_high = difference + math.sqrt((high_t - p_t) ** 2 + (p_h - low_h) ** 2)
    p_value = float(fisher_exact([[x_t, n_t - x_t], [x_h, n_h - x_h]]).pvalue)
    if p_h == 0:  # no ratio to a holdout rate of 0
        return Comparison(metric, p_t, p_h, difference, ci_low, ci_high, float("nan"), float("nan"), float("nan"),
                          p_value)
    # The ratio's interval by MOVER-R (Donner & Zou 2012) from the same Wilson intervals: finite and of non-zero
    # width at 0% and 100%, where a log interval of counts collapses.
    product = p_t * p_h
    ratio_low = (product - math.sqrt(max(product ** 2 - low_t * high_h * (2 * p_t - low_t) * (2 * p_h - high_h), 0)))
    ratio_low /= high_h * (2 * p_h - high_h)
    ratio_high = (product + math.sqrt(max(product ** 2 - high_t * low_h * (2 * p_t - high_t) * (2 * p_h - low_h), 0)))
    ratio_high /= low_h * (2 * p_h - low_h)
    return Comparison(metric, p_t, p_h, difference, ci_low, ci_high, p_t / p_h - 1, ratio_low - 1, ratio_high - 1,
                      p_value)


def wilson_interval(x: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion x / n."""
    p, z2 = x / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_means(metric: str, targeted: np.ndarray, holdout: np.ndarray) -> Comparison:
    """Means per customer, Welch's t: unpooled standard error sqrt(v_t / n_t + v_h / n_h), Welch-Satterthwaite
    degrees of freedom, a two-sided t test (NaN for a group of one or two constant groups: no test)."""
    from scipy.stats import t as student_t

    mean_t, mean_h = float(targeted.mean()), float(holdout.mean())
    var_t, var_h = _var(targeted), _var(holdout)
    n_t, n_h = len(targeted), len(holdout)
    a, b = var_t / n_t, var_h / n_h
    se = math.sqrt(a + b)
    difference = mean_t - mean_h
    lift = mean_t / mean_h - 1 if mean_h > 0 else float("nan")
    if not se > 0:  # constant groups or a group of one: no interval and no test, rather than a certain one
        return Comparison(metric, mean_t, mean_h, difference, float("nan"), float("nan"), lift, float("nan"),
                          float("nan"), float("nan"))
    df = (a + b) ** 2 / ((a * a / (n_t - 1) if a else 0.0) + (b * b / (n_h - 1) if b else 0.0))
    q = float(student_t.ppf(0.975, df))
    p_value = float(2 * student_t.sf(abs(difference / se), df))
    relative_low, relative_high = relative_interval(mean_t, a, mean_h, b, q)
    return Comparison(metric, mean_t, mean_h, difference, difference - q * se, difference + q * se, lift,
                      relative_low, relative_high, p_value)


def relative_interval(mean_t: float, var_mean_t: float, mean_h: float, var_mean_h: float,
                      quantile: float = Z95) -> tuple[float, float]:
    """95% interval of the relative lift mean_t / mean_h - 1, from each mean and the variance of that mean.

    Delta method on the log of the ratio: Var(log m_t - log m_h) ~ var_t / m_t^2 + var_h / m_h^2, so both groups'
    uncertainty counts (the holdout's mean is an estimate too, usually from the smaller group). The interval is
    exp(log ratio +- quantile se) - 1: asymmetric, never below -100%. NaN when either mean is 0 (no log) or a
    variance is undefined.
    """
    if not (mean_t > 0 and mean_h > 0):
        return float("nan"), float("nan")
    se_log = math.sqrt(var_mean_t / mean_t ** 2 + var_mean_h / mean_h ** 2)
    log_ratio = math.log(mean_t / mean_h)
    return math.expm1(log_ratio - quantile * se_log), math.expm1(log_ratio + quantile * se_log)


def _var(values: np.ndarray) -> float:
    return float(values.var(ddof=1)) if len(values) > 1 else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Backtest of a rule segment


def backtest(segments: SegmentSet, name: str, validation: ValidationResult, dates: list[datetime],
             horizon_days: int = 90, bundle=None) -> pd.DataFrame:
    """What the members of rule segment `name` did in the `horizon_days` after each date, against the population.

    At each date (naive UTC) the features are built as of that date, the segment is evaluated on them (thresholds of
    `in top/bottom N%` fitted on that date's customers) and purchases are counted over [date, date + horizon).
    The population is the customers with at least one purchase in the 365 days before the date
    (orders_count_365d > 0, the churn model's population); members need not belong to it (an `inactive` member may
    not have bought for years), so member_share = members / population can exceed 1.

    Returns one row per date: as_of, members, population, member_share, and for each metric (churn_rate: share
    with no purchase; conversion_rate; mean_orders; mean_spend, per customer) <metric>_members,
    <metric>_population and <metric>_ratio (members / population, NaN when the population figure is 0).

    Raises KeyError for an unknown segment; ValueError for a segment that reads model outputs (predictive,
    lookalike, cluster, or referring to one), and for a date whose outcome window ends after the data does.
    `bundle` is passed to `evaluate_batches` as in a refresh; a rule segment never reads its scores.
    """
    if name not in segments.names():
        raise KeyError(f"no segment named {name!r}; defined: {', '.join(segments.names())}")
    needed = segments.closure([name])
    _check_rule_only(needed, name)
    if not dates:
        raise ValueError("backtest needs at least one date")
    _check_windows(validation, dates, horizon_days)
    return pd.DataFrame([_backtest_row(needed, name, validation, as_of, horizon_days, bundle) for as_of in dates])


def _check_rule_only(needed: SegmentSet, name: str) -> None:
    """Model outputs at a past date would come from models trained on later data: the backtest would be leaked."""
    for segment in needed:
        if segment.kind == "rule":
            continue
        via = "" if segment.name == name else f" through segment {segment.name!r}, which it refers to,"
        raise ValueError(
            f"cannot backtest segment {name!r}: it reads model outputs{via} ({segment.name!r} is a {segment.kind} "
            f"segment). Scoring past dates with today's models, trained on later data, would leak the outcomes "
            f"into the backtest; only rule segments (features only) can be backtested")


def _check_windows(validation: ValidationResult, dates: list[datetime], horizon_days: int) -> None:
    """Every outcome window must be fully observed; the rule is training's (`make_snapshot`): the window may end
    up to the day after the last transaction, whose day is taken as complete."""
    last = data_end(validation)
    if last is None:
        raise ValueError("the data has no transactions: nothing to backtest")
    for as_of in dates:
        if as_of + timedelta(days=horizon_days) > last + timedelta(days=1):
            raise ValueError(
                f"the {horizon_days}-day outcome window after {as_of:%Y-%m-%d} ends on "
                f"{as_of + timedelta(days=horizon_days):%Y-%m-%d}, after the last transaction "
                f"({last:%Y-%m-%d}): its outcomes would be incomplete; choose dates up to "
                f"{last + timedelta(days=1) - timedelta(days=horizon_days):%Y-%m-%d} or a shorter horizon")


def _backtest_row(needed: SegmentSet, name: str, validation: ValidationResult, as_of: datetime, horizon_days: int,
                  bundle) -> dict:
    # Batch by batch, keeping what the segment reads and what the churn population is defined on.
    evaluated, _ = evaluate_batches(needed, feature_batches(validation, as_of), bundle, also=CHURN_POPULATION_FIELDS)
    if name in evaluated.skipped:
        raise ValueError(f"segment {name!r} cannot be evaluated as of {as_of:%Y-%m-%d}: {evaluated.skipped[name]}")
    values = evaluated.read()  # a backtest compares members with their whole population
    evaluated.close()
    member = evaluate(evaluated.usable.closure([name]), values, evaluated.thresholds)[name].to_numpy()
    outcomes = window_outcomes(validation, values["customer_id"], as_of, as_of + timedelta(days=horizon_days))
    population = churn_eligible(values)
    row = {"as_of": as_of, "members": int(member.sum()), "population": int(population.sum()),
           "member_share": member.sum() / population.sum() if population.any() else float("nan")}
    of_members, of_population = _group_metrics(outcomes[member]), _group_metrics(outcomes[population])
    for metric in BACKTEST_METRICS:
        row[f"{metric}_members"] = of_members[metric]
        row[f"{metric}_population"] = of_population[metric]
        row[f"{metric}_ratio"] = (of_members[metric] / of_population[metric] if of_population[metric] > 0
                                  else float("nan"))
    return row


def _group_metrics(outcomes: pd.DataFrame) -> dict[str, float]:
    """Churn and conversion rates, mean orders and spend of a group's window outcomes (NaN for an empty group)."""
    if outcomes.empty:
        return dict.fromkeys(BACKTEST_METRICS, float("nan"))
    conversion = float(outcomes["converted"].mean())
    return {"churn_rate": 1 - conversion, "conversion_rate": conversion,
            "mean_orders": float(outcomes["orders"].mean()), "mean_spend": float(outcomes["spend"].mean())}
