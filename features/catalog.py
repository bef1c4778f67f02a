"""The feature catalog: one declaration per feature, read by the builder, schemas, API docs and reports.

Each `Feature` carries its name (unit and window in the name), dtype, business group, label, one-line description,
the raw columns it needs, and its definition as an Ibis expression. The builder (`features.build`) runs the
definitions on DuckDB by default and on any other Ibis backend (Spark) unchanged.

Definitions see prepared tables (see `features.build`):
- `transactions` source: the customer's transactions strictly before as_of, with `age_s` (seconds from the
  transaction to as_of, > 0) and `is_order` (not a return). Validation guarantees unique transaction ids, so a row
  count is a count of distinct transactions.
- `events` source: engagement events strictly before as_of, with `age_s` and `is_engagement` (a customer action).
- `customers` source: the customer row and the scalar `as_of`.
- `derived` source: the joined feature row (earlier features by name).
- `top:<column>` / `gaps` sources: computed by dedicated steps in `features.build`; the catalog only declares them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ibis

FEATURE_SET_VERSION = "2026.11.1"

DAY_S = 86_400
WINDOWS = (14, 30, 90, 365)

# Event types that are the customer's own action (email_sent is the brand's, loyalty_join/tier_change are states).
ENGAGEMENT_TYPES = (
    "email_open", "email_click", "push_open", "sms_click", "app_open", "web_visit",
    "reward_redeemed", "review", "referral", "survey_response",
)
DIGITAL_CHANNELS = ("online", "app", "web", "mobile")

GROUPS = {
    "recency": "Recency",
    "frequency": "Frequency",
    "monetary": "Spend",
    "trend": "Trend",
    "rhythm": "Purchase rhythm",
    "assortment": "Assortment",
    "channel": "Channel and timing",
    "returns": "Returns and discounts",
    "engagement": "Engagement",
    "loyalty": "Loyalty programme",
    "profile": "Profile",
}


@dataclass(frozen=True)
class Feature:
    """One feature: its declaration and its definition.

    `dtype` is one of int64, float64, string, boolean. `fill` is the value for a customer who has no rows in the
    source table (0 for counts and sums; None keeps it missing). `bounds` are the valid range checked by the schema.
    """

    name: str
    dtype: str
    group: str
    label: str
    description: str
    source: str
    expr: Callable | None = None
    requires: tuple[str, ...] = ()
    window_days: int | None = None
    fill: float | int | None = None
    bounds: tuple[float | None, float | None] = (None, None)
    unit: str = ""

    @property
    def table(self) -> str:
        """The raw table the feature comes from (derived features name the table of their inputs)."""
        return self.requires[0].split(".")[0] if self.requires else "transactions"


def within(t, days: int):
    """Rows in the window [as_of - days, as_of): `age_s` is seconds before as_of, always > 0."""
    return t.age_s <= days * DAY_S


# Sums are exact: each value in fixed point (6 decimals), summed, then a float again. A float sum's last bits depend on
# the order DuckDB's threads combine their partial sums: two runs on the same 1M customers gave different spend for
# 30% of them. Validation bounds every number to +-MAX_ABS_AMOUNT (features/contract.py), within the 12 digits here.
# The feature set's version stayed: every value is what it was to 1e-12, and the columns mean what they meant.
EXACT_SUM_TYPE = "decimal(18, 6)"


def exact_sum(values, where):
    """Sum of `values` over the rows where `where` holds, as a float64 that does not depend on the rows' order."""
    return values.cast(EXACT_SUM_TYPE).sum(where=where).cast("float64")


def ratio(numerator, denominator):
    """numerator / denominator, missing when the denominator is 0 or missing."""
    return numerator / denominator.nullif(0)


def trend(recent, previous):
    """Symmetric change in [-1, 1]: +1 all recent, -1 all previous, missing when both are 0."""
    return ratio(recent - previous, recent + previous)


NONNEG = (0, None)
SHARE = (0, 1)
TREND = (-1, 1)

_TXN = ("transactions.timestamp", "transactions.amount")
_EVENTS = ("events.event_type", "events.timestamp")


def _recency_features() -> list[Feature]:
    def days(age_expr):
        return (age_expr / DAY_S).floor().cast("float64")

    return [
        Feature("days_since_last_order", "float64", "recency", "Days since last purchase",
                "Whole days from the customer's last purchase to as_of; missing if they never bought.",
                "transactions", lambda t: days(t.age_s.min(where=t.is_order)), _TXN, bounds=NONNEG, unit="days"),
        Feature("days_since_first_order", "float64", "recency", "Days since first purchase",
                "Whole days from the customer's first purchase to as_of; missing if they never bought.",
                "transactions", lambda t: days(t.age_s.max(where=t.is_order)), _TXN, bounds=NONNEG, unit="days"),
        Feature("days_since_last_return", "float64", "returns", "Days since last return",
                "Whole days from the customer's last return to as_of; missing if they never returned anything.",
                "transactions", lambda t: days(t.age_s.min(where=~t.is_order)), _TXN, bounds=NONNEG, unit="days"),
    ]


def _orders_in_window(w: int | None) -> list[Feature]:
    """Purchase count and spend over [as_of - w days, as_of), or all time when w is None."""
    suffix, span = (f"{w}d", f"in the last {w} days") if w else ("total", "ever")

    def in_window(t):
        return t.is_order & within(t, w) if w else t.is_order

    return [
        Feature(f"orders_count_{suffix}", "int64", "frequency", f"Purchases {span}",
                f"Number of purchases (returns excluded) {span}.", "transactions",
                lambda t: t.count(where=in_window(t)), _TXN, w, 0, NONNEG, "orders"),
        Feature(f"spend_sum_{suffix}", "float64", "monetary", f"Spend {span}",
                f"Total amount of purchases (returns excluded) {span}.", "transactions",
                lambda t: exact_sum(t.amount, in_window(t)), _TXN, w, 0.0, NONNEG, "currency"),
    ]


def _frequency_and_spend_features() -> list[Feature]:
    out = [f for w in (*WINDOWS, None) for f in _orders_in_window(w)]
    return out + [
        Feature("aov_365d", "float64", "monetary", "Average order value (365 days)",
                "Average purchase amount in the last 365 days; missing without purchases.", "derived",
                lambda f: ratio(f.spend_sum_365d, f.orders_count_365d), _TXN, 365, bounds=NONNEG, unit="currency"),
        Feature("aov_total", "float64", "monetary", "Average order value (all time)",
                "Average purchase amount over all purchases; missing without purchases.", "derived",
                lambda f: ratio(f.spend_sum_total, f.orders_count_total), _TXN, bounds=NONNEG, unit="currency"),
        Feature("max_order_value_365d", "float64", "monetary", "Largest purchase (365 days)",
                "Amount of the largest purchase in the last 365 days; missing without purchases.", "transactions",
                lambda t: t.amount.max(where=t.is_order & within(t, 365)), _TXN, 365, bounds=NONNEG,
                unit="currency"),
        Feature("spend_per_month_total", "float64", "monetary", "Spend per month as a customer",
                "All-time spend divided by months since the first purchase (at least one month).", "derived",
                # fill_null: engines disagree on greatest(NULL, 1.0) (DuckDB and Spark skip the NULL, SQLite gives NULL)
                lambda f: f.spend_sum_total / ibis.greatest(f.days_since_first_order.fill_null(0) / 30.4375, 1.0),
                _TXN,
                bounds=NONNEG, unit="currency/month"),
    ]


def _trend_features() -> list[Feature]:
    def previous_90d(t):
        return t.is_order & (t.age_s > 90 * DAY_S) & within(t, 180)

    return [
        Feature("orders_count_prev_90d", "int64", "trend", "Purchases 91-180 days ago",
                "Number of purchases in the 90 days before the last 90 days.", "transactions",
                lambda t: t.count(where=previous_90d(t)), _TXN, 180, 0, NONNEG, "orders"),
        Feature("spend_sum_prev_90d", "float64", "trend", "Spend 91-180 days ago",
                "Total purchase amount in the 90 days before the last 90 days.", "transactions",
                lambda t: exact_sum(t.amount, previous_90d(t)), _TXN, 180, 0.0, NONNEG, "currency"),
        Feature("orders_trend_90d", "float64", "trend", "Purchase trend (last 90 vs previous 90 days)",
                "(recent - previous) / (recent + previous) purchases: +1 only recent, -1 only previous.", "derived",
                lambda f: trend(f.orders_count_90d, f.orders_count_prev_90d), _TXN, 180, bounds=TREND),
        Feature("spend_trend_90d", "float64", "trend", "Spend trend (last 90 vs previous 90 days)",
                "(recent - previous) / (recent + previous) spend: +1 only recent, -1 only previous.", "derived",
                lambda f: trend(f.spend_sum_90d, f.spend_sum_prev_90d), _TXN, 180, bounds=TREND),
        Feature("spend_share_90d_of_365d", "float64", "trend", "Share of the year's spend in the last 90 days",
                "Spend in the last 90 days divided by spend in the last 365 days.", "derived",
                lambda f: ratio(f.spend_sum_90d, f.spend_sum_365d), _TXN, 365, bounds=SHARE),
    ]


def _rhythm_features() -> list[Feature]:
    def mean_gap(t):
        span_days = (t.age_s.max(where=t.is_order) - t.age_s.min(where=t.is_order)) / DAY_S
        return ratio(span_days, t.count(where=t.is_order) - 1)

    return [
        Feature("order_gap_mean_days", "float64", "rhythm", "Typical days between purchases",
                "Average days between consecutive purchases (all time); missing with fewer than 2 purchases.",
                "transactions", mean_gap, _TXN, bounds=NONNEG, unit="days"),
        Feature("order_gap_std_days", "float64", "rhythm", "Irregularity of purchase gaps",
                "Standard deviation of days between consecutive purchases; missing with fewer than 3 purchases.",
                "gaps", None, _TXN, bounds=NONNEG, unit="days"),
        Feature("order_gap_last_days", "float64", "rhythm", "Days between the last two purchases",
                "Days between the customer's last two purchases; missing with fewer than 2 purchases.",
                "gaps", None, _TXN, bounds=NONNEG, unit="days"),
        Feature("overdue_ratio", "float64", "rhythm", "How overdue the next purchase is",
                "Days since last purchase divided by the typical gap: above 1 means later than usual.", "derived",
                lambda f: ratio(f.days_since_last_order, f.order_gap_mean_days), _TXN, bounds=NONNEG),
    ]


def _assortment_features() -> list[Feature]:
    cat, product, qty = "transactions.category", "transactions.product_id", "transactions.quantity"
    return [
        Feature("distinct_categories_365d", "int64", "assortment", "Categories bought (365 days)",
                "Number of different product categories bought in the last 365 days.", "top:category", None,
                (*_TXN, cat), 365, 0, NONNEG),
        Feature("top_category_365d", "string", "assortment", "Favourite category (365 days)",
                "Category with most purchases in the last 365 days (ties: alphabetical).", "top:category", None,
                (*_TXN, cat), 365),
        Feature("top_category_share_365d", "float64", "assortment", "Share of purchases in the favourite category",
                "Purchases in the favourite category divided by purchases with a known category (365 days).",
                "top:category", None, (*_TXN, cat), 365, bounds=SHARE),
        Feature("distinct_products_365d", "int64", "assortment", "Products bought (365 days)",
                "Number of different products bought in the last 365 days.", "top:product_id", None,
                (*_TXN, product), 365, 0, NONNEG),
        Feature("items_sum_365d", "float64", "assortment", "Items bought (365 days)",
                "Total quantity of items purchased in the last 365 days.", "transactions",
                lambda t: exact_sum(t.quantity, t.is_order & within(t, 365)), (*_TXN, qty), 365, 0.0, NONNEG, "items"),
        Feature("items_per_order_365d", "float64", "assortment", "Items per purchase (365 days)",
                "Average quantity per purchase in the last 365 days; missing without purchases.", "derived",
                lambda f: ratio(f.items_sum_365d, f.orders_count_365d), (*_TXN, qty), 365, bounds=NONNEG,
                unit="items"),
    ]


def _channel_features() -> list[Feature]:
    ch = (*_TXN, "transactions.channel")

    def share_of_orders(condition):
        return lambda t: ratio(
            t.count(where=t.is_order & within(t, 365) & condition(t)).cast("float64"),
            t.count(where=t.is_order & within(t, 365)),
        )

    return [
        Feature("online_share_365d", "float64", "channel", "Share of purchases online or in the app",
                "Share of the last 365 days' purchases made in a digital channel (online, app, web, mobile).",
                "transactions", share_of_orders(lambda t: t.channel.lower().isin(DIGITAL_CHANNELS)), ch, 365,
                bounds=SHARE),
        Feature("app_share_365d", "float64", "channel", "Share of purchases in the app",
                "Share of the last 365 days' purchases made in the app.", "transactions",
                share_of_orders(lambda t: t.channel.lower() == "app"), ch, 365, bounds=SHARE),
        Feature("store_share_365d", "float64", "channel", "Share of purchases in store",
                "Share of the last 365 days' purchases made in a physical store.", "transactions",
                share_of_orders(lambda t: t.channel.lower() == "store"), ch, 365, bounds=SHARE),
        Feature("distinct_channels_365d", "int64", "channel", "Channels used (365 days)",
                "Number of different channels the customer bought through in the last 365 days.", "top:channel",
                None, ch, 365, 0, NONNEG),
        Feature("preferred_channel_365d", "string", "channel", "Preferred channel (365 days)",
                "Channel with most purchases in the last 365 days (ties: alphabetical).", "top:channel", None, ch,
                365),
        Feature("weekend_share_365d", "float64", "channel", "Share of purchases at weekends",
                "Share of the last 365 days' purchases made on Saturday or Sunday (UTC).", "transactions",
                share_of_orders(lambda t: t.timestamp.day_of_week.index() >= 5), _TXN, 365, bounds=SHARE),  # Monday = 0
        Feature("evening_share_365d", "float64", "channel", "Share of purchases in the evening",
                "Share of the last 365 days' purchases made from 18:00 (UTC).", "transactions",
                share_of_orders(lambda t: t.timestamp.hour() >= 18), _TXN, 365, bounds=SHARE),
        Feature("morning_share_365d", "float64", "channel", "Share of purchases in the morning",
                "Share of the last 365 days' purchases made before 12:00 (UTC).", "transactions",
                share_of_orders(lambda t: t.timestamp.hour() < 12), _TXN, 365, bounds=SHARE),
    ]


def _returns_and_discount_features() -> list[Feature]:
    disc = (*_TXN, "transactions.discount_amount")

    def returns_in(t, w=None):
        return ~t.is_order & (within(t, w) if w else True)

    return [
        Feature("returns_count_365d", "int64", "returns", "Returns (365 days)",
                "Number of returns in the last 365 days.", "transactions",
                lambda t: t.count(where=returns_in(t, 365)), _TXN, 365, 0, NONNEG, "returns"),
        Feature("returns_count_total", "int64", "returns", "Returns (all time)",
                "Number of returns ever.", "transactions", lambda t: t.count(where=returns_in(t)), _TXN, None, 0,
                NONNEG, "returns"),
        Feature("return_amount_365d", "float64", "returns", "Amount returned (365 days)",
                "Total value of returns in the last 365 days.", "transactions",
                lambda t: exact_sum(t.amount.abs(), returns_in(t, 365)), _TXN, 365, 0.0, NONNEG, "currency"),
        Feature("return_rate_365d", "float64", "returns", "Return rate (365 days)",
                "Returns divided by purchases in the last 365 days; missing without purchases.", "derived",
                lambda f: ratio(f.returns_count_365d.cast("float64"), f.orders_count_365d), _TXN, 365,
                bounds=NONNEG),
        Feature("return_value_share_365d", "float64", "returns", "Share of spend returned (365 days)",
                "Amount returned divided by amount purchased in the last 365 days.", "derived",
                lambda f: ratio(f.return_amount_365d, f.spend_sum_365d), _TXN, 365, bounds=NONNEG),
        Feature("discount_sum_365d", "float64", "returns", "Discounts received (365 days)",
                "Total discount amount on purchases in the last 365 days.", "transactions",
                lambda t: exact_sum(t.discount_amount, t.is_order & within(t, 365)), disc, 365, 0.0, NONNEG,
                "currency"),
        Feature("discounted_orders_share_365d", "float64", "returns", "Share of purchases with a discount",
                "Share of the last 365 days' purchases that carried a discount.", "transactions",
                lambda t: ratio(
                    t.count(where=t.is_order & within(t, 365) & (t.discount_amount > 0)).cast("float64"),
                    t.count(where=t.is_order & within(t, 365))),
                disc, 365, bounds=SHARE),
        Feature("discount_rate_365d", "float64", "returns", "Discount as share of list price",
                "Discounts divided by (spend + discounts) in the last 365 days.", "derived",
                lambda f: ratio(f.discount_sum_365d, f.spend_sum_365d + f.discount_sum_365d), disc, 365,
                bounds=SHARE),
    ]


_EVENT_COUNTS = {
    "email_sent": ("Emails received", (90,)),
    "email_open": ("Emails opened", (30, 90)),
    "email_click": ("Email clicks", (30, 90)),
    "push_open": ("Push notifications opened", (90,)),
    "sms_click": ("SMS clicks", (90,)),
    "app_open": ("App sessions", (30, 90)),
    "web_visit": ("Website visits", (30, 90)),
    "reward_redeemed": ("Rewards redeemed", (365,)),
    "review": ("Reviews written", (365,)),
    "referral": ("Friends referred", (365,)),
}


def _engagement_features() -> list[Feature]:
    def count_of(event_type, w):
        return lambda e: e.count(where=(e.event_type == event_type) & within(e, w))

    def engagement_in(w_from, w_to):
        return lambda e: e.count(where=e.is_engagement & (e.age_s > w_from * DAY_S) & within(e, w_to))

    out = [
        Feature(f"{etype}_count_{w}d", "int64", "engagement", f"{label} ({w} days)",
                f"Number of {etype} events in the last {w} days.", "events", count_of(etype, w), _EVENTS, w, 0,
                NONNEG, "events")
        for etype, (label, windows) in _EVENT_COUNTS.items() for w in windows
    ]
    return out + [
        Feature("email_open_rate_90d", "float64", "engagement", "Email open rate (90 days)",
                "Email opens divided by emails received in the last 90 days; missing if none received.", "derived",
                lambda f: ratio(f.email_open_count_90d.cast("float64"), f.email_sent_count_90d), _EVENTS, 90,
                bounds=NONNEG),
        Feature("email_click_rate_90d", "float64", "engagement", "Email click rate (90 days)",
                "Email clicks divided by emails received in the last 90 days; missing if none received.", "derived",
                lambda f: ratio(f.email_click_count_90d.cast("float64"), f.email_sent_count_90d), _EVENTS, 90,
                bounds=NONNEG),
        Feature("engagement_events_30d", "int64", "engagement", "Interactions (30 days)",
                "Customer-initiated interactions (opens, clicks, visits, app sessions, ...) in the last 30 days.",
                "events", engagement_in(0, 30), _EVENTS, 30, 0, NONNEG, "events"),
        Feature("engagement_events_90d", "int64", "engagement", "Interactions (90 days)",
                "Customer-initiated interactions in the last 90 days.", "events", engagement_in(0, 90), _EVENTS, 90,
                0, NONNEG, "events"),
        Feature("engagement_events_prev_30d", "int64", "engagement", "Interactions 31-60 days ago",
                "Customer-initiated interactions in the 30 days before the last 30 days.", "events",
                engagement_in(30, 60), _EVENTS, 60, 0, NONNEG, "events"),
        Feature("engagement_trend_30d", "float64", "engagement", "Engagement trend (last 30 vs previous 30 days)",
                "(recent - previous) / (recent + previous) interactions.", "derived",
                lambda f: trend(f.engagement_events_30d, f.engagement_events_prev_30d), _EVENTS, 60, bounds=TREND),
        Feature("days_since_last_engagement", "float64", "engagement", "Days since last interaction",
                "Whole days since the customer's last own interaction; missing if none.", "events",
                lambda e: (e.age_s.min(where=e.is_engagement) / DAY_S).floor().cast("float64"), _EVENTS,
                bounds=NONNEG, unit="days"),
    ]


def _loyalty_features() -> list[Feature]:
    def member(c, as_of):
        if "loyalty_join_date" in c.columns:  # point in time: member only once joined
            return c.loyalty_join_date.notnull() & (c.loyalty_join_date < as_of)
        return c.loyalty_member.fill_null(False)

    def points(column, w):
        return lambda t: exact_sum(t[column], within(t, w))

    return [
        Feature("loyalty_member", "boolean", "loyalty", "Loyalty member",
                "Whether the customer had joined the loyalty programme before as_of.", "customers", member,
                ("customers.loyalty_member",)),
        Feature("loyalty_tenure_days", "float64", "loyalty", "Days in the loyalty programme",
                "Whole days since joining the loyalty programme; missing for non-members.", "customers",
                lambda c, as_of: ibis.ifelse(c.loyalty_join_date < as_of,
                                             ((as_of.epoch_seconds() - c.loyalty_join_date.epoch_seconds())
                                              / DAY_S).floor(), ibis.null()).cast("float64"),
                ("customers.loyalty_join_date",), bounds=NONNEG, unit="days"),
        Feature("loyalty_tier", "string", "loyalty", "Loyalty tier",
                "Current tier from the customer table (a snapshot), for members as of as_of.", "customers",
                lambda c, as_of: ibis.ifelse(member(c, as_of), c.loyalty_tier.lower(), ibis.null()),
                ("customers.loyalty_tier", "customers.loyalty_member")),
        Feature("points_balance", "float64", "loyalty", "Points balance",
                "Points balance from the customer table (a snapshot, not reconstructed as of as_of).", "customers",
                lambda c, as_of: c.points_balance.cast("float64"), ("customers.points_balance",), unit="points"),
        Feature("points_earned_365d", "float64", "loyalty", "Points earned (365 days)",
                "Loyalty points earned in the last 365 days.", "transactions", points("points_earned", 365),
                (*_TXN, "transactions.points_earned"), 365, 0.0, unit="points"),
        Feature("points_redeemed_365d", "float64", "loyalty", "Points redeemed (365 days)",
                "Loyalty points redeemed in the last 365 days.", "transactions", points("points_redeemed", 365),
                (*_TXN, "transactions.points_redeemed"), 365, 0.0, unit="points"),
        Feature("points_redemption_rate_365d", "float64", "loyalty", "Share of points redeemed (365 days)",
                "Points redeemed divided by points earned in the last 365 days.", "derived",
                lambda f: ratio(f.points_redeemed_365d, f.points_earned_365d),
                (*_TXN, "transactions.points_earned", "transactions.points_redeemed"), 365, bounds=NONNEG),
        Feature("email_opt_in", "boolean", "loyalty", "Accepts marketing email",
                "Whether the customer accepts marketing email (customer table).", "customers",
                lambda c, as_of: c.email_opt_in, ("customers.email_opt_in",)),
    ]


def _profile_features() -> list[Feature]:
    return [
        Feature("customer_tenure_days", "float64", "profile", "Days since sign-up",
                "Whole days since the customer signed up; missing if the sign-up date is unknown.", "customers",
                lambda c, as_of: ((as_of.epoch_seconds() - c.signup_date.epoch_seconds()) / DAY_S).floor()
                .cast("float64"), ("customers.signup_date",), bounds=NONNEG, unit="days"),
        Feature("age_years", "float64", "profile", "Age", "Age in years at as_of, from the birth year.",
                "customers", lambda c, as_of: (as_of.year() - c.birth_year).cast("float64"),
                ("customers.birth_year",), bounds=(0, 130), unit="years"),
        Feature("region", "string", "profile", "Region", "Region from the customer table.", "customers",
                lambda c, as_of: c.region, ("customers.region",)),
        Feature("gender", "string", "profile", "Gender", "Gender from the customer table.", "customers",
                lambda c, as_of: c.gender, ("customers.gender",)),
    ]


FEATURES: tuple[Feature, ...] = (
    *_recency_features(),
    *_frequency_and_spend_features(),
    *_trend_features(),
    *_rhythm_features(),
    *_assortment_features(),
    *_channel_features(),
    *_returns_and_discount_features(),
    *_engagement_features(),
    *_loyalty_features(),
    *_profile_features(),
)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def available_features(columns: dict[str, list[str]]) -> list[Feature]:
    """Features whose raw columns are all present; `columns` maps table name to its columns.

    Features of a missing table or column are absent from the feature table, never zero-filled.
    """

    def present(requirement: str) -> bool:
        table, column = requirement.split(".")
        return column in columns.get(table, ())

    return [f for f in FEATURES if all(present(r) for r in f.requires)]


def catalog_frame():
    """The catalog as a DataFrame (name, dtype, group, label, description, window_days, unit, requires)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"name": f.name, "dtype": f.dtype, "group": f.group, "label": f.label, "description": f.description,
             "window_days": f.window_days, "unit": f.unit, "requires": ", ".join(f.requires)}
            for f in FEATURES
        ]
    )


def catalog_markdown() -> str:
    """The catalog as a Markdown document, grouped by business attribute (for docs/FEATURES.md)."""
    lines = [f"# Feature catalog (feature set {FEATURE_SET_VERSION})", "",
             "Generated by `segments catalog --markdown docs/FEATURES.md`. Windows are [as_of - N days, as_of).", ""]
    for group, title in GROUPS.items():
        lines += [f"## {title}", "", "| name | type | label | description | needs |", "|---|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.dtype} | {f.label} | {f.description} | {', '.join(f.requires)} |"
                  for f in FEATURES if f.group == group]
        lines.append("")
    return "\n".join(lines)
