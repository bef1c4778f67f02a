"""Synthetic loyalty-programme data with planted, documented behaviour.

`generate_tables` draws customers from seven personas and simulates their purchases, returns and engagement events
over the `months` months before `end`; `write_tables` saves the tables; `oracle_churn_probability` is the Bayes
probability of churn under the generator's own model, which model tests use as a ceiling. The tables follow
`features.contract` (DESIGN.md section 3); `ground_truth` holds the latent parameters.

Generative model (exact; tests rely on it)
------------------------------------------
Time runs in days. The generated period is ``[period_start, end)`` with ``period_start = end - months``; ``end`` is
normalised to midnight. For every customer i:

* persona p (fixed shares, see `PersonaProfile.share`); signup date = midnight, ``end - U(tenure range of p)``;
  process start ``start_i = max(signup_i, period_start)``. Customers who signed up before the period are alive at its
  start: the lifetime below is memoryless, so their remaining lifetime has the same law as a new customer's.
* engagement propensity ``z_i ~ N(0, 1)``, independent of persona (``ground_truth.engagement_propensity``);
  loyalty membership ``m_i ~ Bernoulli(loyalty_share of p)``, a static trait.
* purchase rate ``lambda_i = lambda_p * G_i`` with ``G_i ~ Gamma(shape 6, mean 1)`` (``purchase_rate_per_day``).
* churn hazard ``log h_i = log h_p - 0.8 * z_i - 0.4 * m_i`` (``churn_hazard_per_day``).
* lifetime ``T_i ~ Exponential(rate h_i)``; ``churn_time_i = start_i + T_i`` (NaT in ground_truth when >= end).
* while alive (``start_i <= t < churn_time_i``) purchases are a Poisson process with intensity
  ``lambda_i * s(t) * w_c(weekday(t))``: ``s(t) = 1 + 0.2 cos(2 pi (t - 339) / 365.25)`` (t in days since
  1970-01-01; peak early December, dip early June, mean 1 over a year) and ``w_c`` the weekday profile of the
  order's channel c (mean 1 over a week). The time of day follows the channel's hour profile; it moves a purchase
  within its day but never past churn_time. After churn_time the customer never buys again. So the time-averaged
  purchase rate of an alive customer is exactly ``lambda_i``.
* a customer who signs up inside the period orders on the signup day with probability ``first_order_prob_p``
  (the "birth" purchase of Pareto/NBD: it sits at start, so the oracle treats it like no purchase).
* returns are separate transactions (``is_return=True``, negative amount) of earlier purchases, 1-30 days later; they
  are not purchases of the process.
* engagement events are Poisson processes (app_open, web_visit, push_open, sms_click, referral, survey_response)
  whose rates grow with ``exp(k * z_i)`` and, for app/web, with ``lambda_i``; weekly email campaigns reach opted-in
  customers, opened with probability ``sigmoid(open_logit_p + 0.8 z_i)`` and clicked with
  ``sigmoid(click_logit_p + 0.6 z_i)`` after an open. After churn_time engagement rates are multiplied by 0.1 and
  email open probabilities by 0.15.

* offer campaigns (``OFR001``.., every 6 weeks back from 4 weeks before end, `offer_campaigns` of them): each
  reaches a random ``_OFFER_REACH`` of the opted-in customers started before the send; ``_OFFER_HOLDOUT`` of those
  are held out (a ``campaign_holdout`` event), the rest get an ``email_sent`` of that campaign. A treated customer
  alive at the send makes one extra purchase, uniform over the ``OFFER_WINDOW_DAYS`` after it (dropped if that
  falls after churn or end), with the persona's probability ``offer_response`` (`PLANTED_OFFER_RESPONSE`):
  the planted treatment effect. Held-out customers only do what they would have done anyway. Offer purchases are
  never returned and carry no review or redemption event.

Hence the planted churn drivers: recency and frequency (``days_since_last_order``, ``orders_count_90d``) through
the Pareto/NBD mechanism above, app opens and email clicks as observable proxies of z, and loyalty membership.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import KNOWN_EVENT_TYPES

PERSONAS: tuple[str, ...] = (
    "vip", "bargain_hunter", "occasional", "new", "lapsing", "serial_returner", "engaged_non_buyer",
)
# Feature-catalog names whose values truly move the churn hazard or the posterior of being alive (module docstring).
PLANTED_CHURN_DRIVERS: tuple[str, ...] = (
    "days_since_last_order", "orders_count_90d", "app_open_count_90d", "email_click_count_90d", "loyalty_member",
)

OFFER_WINDOW_DAYS = 14

CATEGORIES = ("grocery", "apparel", "electronics", "beauty", "home", "sports", "toys", "books")
CHANNELS = ("store", "online", "app")
TIERS = ("bronze", "silver", "gold", "platinum")
REGIONS = ("northeast", "southeast", "midwest", "southwest", "west")
CITIES = (
    ("Boston", "New York", "Philadelphia"), ("Atlanta", "Miami", "Charlotte"), ("Chicago", "Detroit", "Minneapolis"),
    ("Dallas", "Houston", "Phoenix"), ("Los Angeles", "Seattle", "Denver"),
)
TAGS = ("newsletter", "family", "pet_owner", "eco", "student")

# Coefficients of the churn hazard and the seasonality (module docstring); tests read them from here.
ENGAGEMENT_CHURN_COEF = 0.8
LOYALTY_CHURN_COEF = 0.4
SEASONAL_AMPLITUDE = 0.2
_SEASON_PEAK_DAY = 339.0  # days after 1 January: about 6 December
_POST_CHURN_ENGAGEMENT = 0.1
_POST_CHURN_EMAIL_OPEN = 0.15

_CHUNK_CUSTOMERS = 20_000  # bounds memory and sets the progress granularity
_PRODUCTS_PER_CATEGORY = 150
_STORES_PER_REGION = 6
_EMAIL_REACH = 0.6  # share of opted-in customers a campaign targets
_OFFER_REACH = 0.6  # share of opted-in customers an offer campaign's audience takes
_OFFER_HOLDOUT = 0.3  # share of an offer's audience held out
_OFFER_SPACING_DAYS = 42
_LAST_OFFER_DAYS_BEFORE_END = 28  # the last offer's window is observed whole
_REVIEW_PROB = 0.04

# Relative unit price and return propensity of each category (aligned with CATEGORIES).
_CATEGORY_PRICE = np.array([0.6, 1.1, 2.5, 0.7, 1.3, 1.1, 0.8, 0.5])
_CATEGORY_RETURN = np.array([0.2, 1.3, 0.9, 0.6, 0.9, 1.0, 0.8, 0.5])
_TIER_POINTS_PER_DOLLAR = np.array([1.0, 1.0, 1.25, 1.5, 0.0])  # last entry: no tier
# Weekday (Mon..Sun) and hour-of-day profiles per channel (store, online, app); normalised where used.
_WEEKDAY_PROFILE = np.array([
    [0.85, 0.80, 0.85, 0.90, 1.00, 1.45, 1.15],
    [1.10, 1.10, 1.05, 1.05, 0.95, 0.85, 0.90],
    [0.95, 0.95, 0.95, 1.00, 1.00, 1.10, 1.05],
])
_HOUR_PROFILE = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, .3, .8, 1.2, 1.6, 2.0, 1.8, 1.3, 1.2, 1.4, 1.8, 2.0, 1.6, 1.0, .5, 0, 0],
    [.3, .2, .1, .1, .1, .2, .4, .7, .9, 1, 1, 1.1, 1.3, 1.2, 1, 1, 1, 1.1, 1.3, 1.6, 2.0, 2.1, 1.6, .9],
    [.5, .3, .2, .1, .1, .3, .8, 1.5, 1.6, 1, .9, 1, 1.5, 1.3, .9, .9, 1, 1.3, 1.4, 1.5, 1.8, 1.9, 1.5, 1],
])

# Event channels and JSON properties are small vocabularies; rows hold codes into them.
_EVENT_CHANNELS = CHANNELS + ("email", "web", "push", "sms", "system")
_CAMPAIGN_TYPES = ("newsletter", "promo", "seasonal", "loyalty")
_WEB_PAGES = ("home", "category", "product", "cart", "account")
_REDEEM_POINTS = (100, 200, 300, 400, 500)
_PROPERTIES = (
    tuple(f'{{"campaign_type": "{k}"}}' for k in _CAMPAIGN_TYPES)
    + tuple(f'{{"page": "{p}"}}' for p in _WEB_PAGES)
    + tuple(f'{{"rating": {r}}}' for r in range(1, 6))
    + tuple(f'{{"points": {p}}}' for p in _REDEEM_POINTS)
    + tuple(f'{{"from": "{a}", "to": "{b}"}}' for a, b in pairwise(TIERS))
)
# Offsets of each group in _PROPERTIES.
_PROP_CAMPAIGN = 0
_PROP_PAGE = _PROP_CAMPAIGN + len(_CAMPAIGN_TYPES)
_PROP_RATING = _PROP_PAGE + len(_WEB_PAGES)
_PROP_POINTS = _PROP_RATING + 5
_PROP_TIER = _PROP_POINTS + len(_REDEEM_POINTS)
_EVENT_CODE = {name: code for code, name in enumerate(KNOWN_EVENT_TYPES)}
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class PersonaProfile:
    """Behaviour parameters of one persona; customers add their own noise around them."""

    share: float
    tenure_days: tuple[int, int]  # signup this many days before `end` (uniform)
    purchase_rate_per_day: float
    churn_hazard_per_day: float  # h_p, before the engagement and loyalty terms
    first_order_prob: float  # chance of an order on the signup day (signups inside the period)
    aov: float  # typical order value before the category price factor
    basket_items: float
    discount_prob: float  # share of orders with a discount
    return_prob: float  # per order, before the category return factor
    channel_mix: tuple[float, float, float]  # store, online, app
    category_mix: tuple[float, ...]  # aligned with CATEGORIES
    loyalty_share: float
    tier_mix: tuple[float, float, float, float]  # among members
    redeem_prob: float  # per order of a member
    email_opt_in: float
    email_open_logit: float
    email_click_logit: float
    app_user_share: float
    app_open_base_per_day: float
    web_visit_base_per_day: float
    age_mean: float
    # Chance that a treated customer alive at an offer's send makes one extra purchase in its window (module
    # docstring): offers move occasional, new and lapsing-but-alive customers, not VIPs or serial returners (who buy
    # anyway or not at all), and barely the engaged non-buyers who open everything.
    offer_response: float


# Aligned with PERSONAS. Rates are per day; mixes are probabilities that customers vary around (Dirichlet/Beta).
_PROFILES: tuple[PersonaProfile, ...] = (
    PersonaProfile(  # vip: frequent, high value, high tiers, redeems, engaged, loyal
        share=0.08, tenure_days=(730, 2900), purchase_rate_per_day=0.10, churn_hazard_per_day=1 / 8000,
        first_order_prob=0.9, aov=140.0, basket_items=2.5, discount_prob=0.12, return_prob=0.05,
        channel_mix=(0.4, 0.3, 0.3), category_mix=(0.15, 0.2, 0.15, 0.15, 0.15, 0.08, 0.06, 0.06),
        loyalty_share=0.97, tier_mix=(0.0, 0.1, 0.5, 0.4), redeem_prob=0.15, email_opt_in=0.8,
        email_open_logit=0.0, email_click_logit=-1.0, app_user_share=0.7, app_open_base_per_day=0.035,
        web_visit_base_per_day=0.02, age_mean=48.0, offer_response=0.0,
    ),
    PersonaProfile(  # bargain_hunter: very frequent small discounted baskets, app first
        share=0.14, tenure_days=(200, 1800), purchase_rate_per_day=0.18, churn_hazard_per_day=1 / 4000,
        first_order_prob=0.9, aov=22.0, basket_items=1.3, discount_prob=0.85, return_prob=0.03,
        channel_mix=(0.1, 0.2, 0.7), category_mix=(0.45, 0.1, 0.03, 0.12, 0.1, 0.05, 0.1, 0.05),
        loyalty_share=0.75, tier_mix=(0.45, 0.4, 0.15, 0.0), redeem_prob=0.08, email_opt_in=0.8,
        email_open_logit=-0.4, email_click_logit=-0.7, app_user_share=0.9, app_open_base_per_day=0.055,
        web_visit_base_per_day=0.02, age_mean=35.0, offer_response=0.1,
    ),
    PersonaProfile(  # occasional: a few store orders a year, little engagement
        share=0.28, tenure_days=(200, 2500), purchase_rate_per_day=0.016, churn_hazard_per_day=1 / 6000,
        first_order_prob=0.9, aov=55.0, basket_items=2.0, discount_prob=0.15, return_prob=0.03,
        channel_mix=(0.75, 0.2, 0.05), category_mix=(0.15, 0.15, 0.15, 0.1, 0.2, 0.1, 0.1, 0.05),
        loyalty_share=0.3, tier_mix=(0.8, 0.2, 0.0, 0.0), redeem_prob=0.03, email_opt_in=0.35,
        email_open_logit=-1.8, email_click_logit=-2.0, app_user_share=0.15, app_open_base_per_day=0.004,
        web_visit_base_per_day=0.004, age_mean=45.0, offer_response=0.3,
    ),
    PersonaProfile(  # new: signed up in the last 90 days, few orders so far
        share=0.10, tenure_days=(1, 90), purchase_rate_per_day=0.035, churn_hazard_per_day=1 / 1500,
        first_order_prob=0.95, aov=45.0, basket_items=1.8, discount_prob=0.3, return_prob=0.04,
        channel_mix=(0.4, 0.35, 0.25), category_mix=(0.2, 0.2, 0.1, 0.1, 0.15, 0.1, 0.08, 0.07),
        loyalty_share=0.35, tier_mix=(1.0, 0.0, 0.0, 0.0), redeem_prob=0.01, email_opt_in=0.6,
        email_open_logit=-0.6, email_click_logit=-1.2, app_user_share=0.5, app_open_base_per_day=0.03,
        web_visit_base_per_day=0.02, age_mean=33.0, offer_response=0.25,
    ),
    PersonaProfile(  # lapsing: was a regular, high churn hazard, so most stop within the period
        share=0.16, tenure_days=(500, 1800), purchase_rate_per_day=0.10, churn_hazard_per_day=1 / 100,
        first_order_prob=0.9, aov=100.0, basket_items=1.8, discount_prob=0.4, return_prob=0.04,
        channel_mix=(0.5, 0.3, 0.2), category_mix=(0.25, 0.15, 0.1, 0.1, 0.15, 0.1, 0.1, 0.05),
        loyalty_share=0.5, tier_mix=(0.4, 0.4, 0.2, 0.0), redeem_prob=0.05, email_opt_in=0.5,
        email_open_logit=-1.0, email_click_logit=-1.5, app_user_share=0.4, app_open_base_per_day=0.015,
        web_visit_base_per_day=0.008, age_mean=42.0, offer_response=0.3,
    ),
    PersonaProfile(  # serial_returner: frequent online apparel buyer returning 30-50% of orders
        share=0.08, tenure_days=(150, 1200), purchase_rate_per_day=0.07, churn_hazard_per_day=1 / 4000,
        first_order_prob=0.9, aov=75.0, basket_items=2.0, discount_prob=0.25, return_prob=0.36,
        channel_mix=(0.15, 0.6, 0.25), category_mix=(0.03, 0.7, 0.05, 0.1, 0.05, 0.05, 0.01, 0.01),
        loyalty_share=0.55, tier_mix=(0.3, 0.5, 0.2, 0.0), redeem_prob=0.05, email_opt_in=0.6,
        email_open_logit=-0.6, email_click_logit=-1.2, app_user_share=0.6, app_open_base_per_day=0.03,
        web_visit_base_per_day=0.04, age_mean=31.0, offer_response=0.0,
    ),
    PersonaProfile(  # engaged_non_buyer: opens emails and the app a lot, (almost) never buys
        share=0.16, tenure_days=(120, 1500), purchase_rate_per_day=0.0005, churn_hazard_per_day=1 / 5000,
        first_order_prob=0.05, aov=40.0, basket_items=1.2, discount_prob=0.3, return_prob=0.03,
        channel_mix=(0.3, 0.4, 0.3), category_mix=(0.2, 0.2, 0.1, 0.15, 0.1, 0.1, 0.05, 0.1),
        loyalty_share=0.5, tier_mix=(0.85, 0.15, 0.0, 0.0), redeem_prob=0.1, email_opt_in=0.9,
        email_open_logit=0.8, email_click_logit=-0.2, app_user_share=0.85, app_open_base_per_day=0.14,
        web_visit_base_per_day=0.08, age_mean=34.0, offer_response=0.03,
    ),
)


# The planted treatment effect per persona (tests read it from here).
PLANTED_OFFER_RESPONSE: dict[str, float] = {
    name: profile.offer_response for name, profile in zip(PERSONAS, _PROFILES, strict=True)}


@dataclass(frozen=True, eq=False)  # frames do not compare with ==; compare tables() instead
class GeneratedData:
    """The three contract tables plus the latent truth, over the period [start, end)."""

    customers: pd.DataFrame
    transactions: pd.DataFrame
    events: pd.DataFrame
    ground_truth: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by file stem, in the order `write_tables` writes them."""
        return {
            "customers": self.customers, "transactions": self.transactions,
            "events": self.events, "ground_truth": self.ground_truth,
        }


@dataclass(frozen=True)
class _Window:
    """The generated period in days since 1970-01-01 (floats keep sub-second precision)."""

    start: pd.Timestamp
    end: pd.Timestamp

    @property
    def t0(self) -> float:
        return _days_since_epoch(self.start)

    @property
    def t1(self) -> float:
        return _days_since_epoch(self.end)


@dataclass(frozen=True, eq=False)
class _Customers:
    """Latent per-customer arrays (one row per customer; times in days since epoch)."""

    persona: np.ndarray
    signup: np.ndarray
    start: np.ndarray
    churn: np.ndarray
    purchase_rate: np.ndarray
    hazard: np.ndarray
    engagement: np.ndarray
    member: np.ndarray
    join: np.ndarray  # NaN for non-members
    tier: np.ndarray  # -1 for non-members
    opt_in: np.ndarray
    region: np.ndarray
    home_store: np.ndarray
    aov: np.ndarray
    basket_items: np.ndarray
    discount_prob: np.ndarray
    return_prob: np.ndarray
    redeem_prob: np.ndarray
    channel_cum: np.ndarray  # (n, 3) cumulative channel probabilities
    category_cum: np.ndarray  # (n, 8)
    open_prob: np.ndarray
    click_prob: np.ndarray
    app_rate: np.ndarray
    web_rate: np.ndarray
    push_rate: np.ndarray
    minor_rate: np.ndarray  # sms clicks, referrals, surveys

    def __len__(self) -> int:
        return len(self.persona)

    def rows(self, sl: slice) -> _Customers:
        return _Customers(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})


# ---------------------------------------------------------------------------------------------------------------
# Public API


def generate_tables(
    n_customers: int = 5000,
    months: int = 24,
    seed: int = 0,
    end: str | date = "2026-07-01",
    progress: Callable[[int], None] | None = None,
    offer_campaigns: int = 8,
) -> GeneratedData:
    """Generate customers, transactions, events and the latent ground truth; pure, no I/O.

    Args:
        n_customers: number of customers (all personas, in fixed shares).
        months: length of the generated period, ending at `end`.
        seed: the same seed gives identical frames.
        end: exclusive end of the period, normalised to midnight; nothing happens at or after it.
        progress: called with the number of customers simulated so far, once per chunk.
        offer_campaigns: offer campaigns with a holdout and a planted effect (module docstring); those that would
            start before the period are left out.

    Returns:
        GeneratedData whose customers/transactions/events follow `features.contract` (every optional column
        filled; ids "C000001", "T00000001", "E00000001"; naive UTC datetime64[us]; returns carry is_return=True,
        a positive quantity and a negative amount) and whose ground_truth has customer_id, persona, start,
        purchase_rate_per_day, churn_hazard_per_day, churn_time (NaT if not before end), engagement_propensity,
        offer_response (the planted chance of an extra purchase when treated by an offer, while alive).
    """
    if n_customers < 1 or months < 1:
        raise ValueError(f"n_customers and months must be >= 1, got n_customers={n_customers}, months={months}")
    end_ts = pd.Timestamp(end).normalize()
    window = _Window(start=end_ts - pd.DateOffset(months=months), end=end_ts)
    # Offers draw from their own streams, so adding them left every other table's draws as they were.
    customer_seed, campaign_seed, chunk_seed, profile_seed, offer_seed = np.random.SeedSequence(seed).spawn(5)
    customers = _draw_customers(np.random.default_rng(customer_seed), n_customers, window)
    campaigns = _draw_campaigns(np.random.default_rng(campaign_seed), window)
    offers = _draw_offers(np.random.default_rng(offer_seed), window, offer_campaigns)

    starts = range(0, n_customers, _CHUNK_CUSTOMERS)
    tx_parts, ev_parts = [], []
    chunk_seeds = zip(chunk_seed.spawn(len(starts)), offer_seed.spawn(len(starts)), strict=True)
    for lo, (chunk_ss, offer_ss) in zip(starts, chunk_seeds, strict=True):
        rng = np.random.default_rng(chunk_ss)
        chunk = customers.rows(slice(lo, lo + _CHUNK_CUSTOMERS))
        tx, ev = _simulate_chunk(rng, chunk, campaigns, window)
        offer_tx, offer_ev = _simulate_offers(np.random.default_rng(offer_ss), chunk, offers, len(campaigns[0]),
                                              window)
        tx, ev = _concat([tx, offer_tx]), _concat([ev, offer_ev])
        tx["owner"] += lo
        ev["owner"] += lo
        tx_parts.append(tx)
        ev_parts.append(ev)
        if progress is not None:
            progress(min(lo + _CHUNK_CUSTOMERS, n_customers))
    transactions, events = _concat(tx_parts), _concat(ev_parts)

    customer_ids = _ids("C", n_customers, 6)
    profile_rng = np.random.default_rng(profile_seed)
    return GeneratedData(
        customers=_customers_frame(profile_rng, customers, transactions, customer_ids, window),
        transactions=_transactions_frame(transactions, customer_ids),
        events=_events_frame(events, customer_ids, len(campaigns[0]), offers.size),
        ground_truth=_ground_truth_frame(customers, customer_ids, window),
        start=window.start,
        end=window.end,
    )


def write_tables(data: GeneratedData, out_dir: Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write customers, transactions, events and ground_truth as `<name>.parquet` (or `.csv`) into `out_dir`.

    Returns the written paths by table name. CSV timestamps are ISO strings; nulls are empty fields.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in data.tables().items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        paths[name] = path
    return paths


def oracle_churn_probability(
    ground_truth: pd.DataFrame, transactions: pd.DataFrame, as_of: str | date | pd.Timestamp, horizon_days: int = 90
) -> pd.Series:
    """Bayes probability of no purchase in (as_of, as_of + horizon] given the true parameters and the history.

    Uses each customer's true ``lambda`` (purchase_rate_per_day) and ``h`` (churn_hazard_per_day) and the time of
    the last purchase strictly before `as_of` (not the latent churn time). With ``g`` = days from the last
    non-return purchase (or from ``start`` if none) to `as_of`, the Pareto/NBD result for known parameters is

        P(alive) = 1 / (1 + h / (lambda + h) * (exp((lambda + h) * g) - 1))
        P(no purchase in H | alive) = exp(-(lambda + h) H) + h / (lambda + h) * (1 - exp(-(lambda + h) H))
        result = 1 - P(alive) + P(alive) * P(no purchase in H | alive)

    Approximation: the generator's intensity carries a mild seasonal and weekday factor (mean 1); the formula uses
    the time-averaged ``lambda``, so it is Bayes-optimal up to that factor.

    Args:
        ground_truth: columns customer_id, start, purchase_rate_per_day, churn_hazard_per_day.
        transactions: columns customer_id, timestamp, and is_return (if absent, amount < 0 marks a return).
        as_of: the cut-off; only customers with start < as_of are scored.
        horizon_days: H in days.

    Returns:
        Series named "churn_probability", indexed by customer_id, values in [0, 1].
    """
    as_of = pd.Timestamp(as_of)
    truth = ground_truth.loc[ground_truth["start"] < as_of]
    is_return = transactions["is_return"] if "is_return" in transactions else transactions["amount"] < 0
    history = transactions.loc[~is_return.astype(bool) & (transactions["timestamp"] < as_of)]
    last = history.groupby("customer_id")["timestamp"].max()
    last = last.reindex(truth["customer_id"]).to_numpy()
    last = np.where(pd.isna(last), truth["start"].to_numpy(), last)
    gap = (as_of - pd.DatetimeIndex(last)).total_seconds().to_numpy() / _SECONDS_PER_DAY

    lam = truth["purchase_rate_per_day"].to_numpy(dtype=float)
    h = truth["churn_hazard_per_day"].to_numpy(dtype=float)
    total = lam + h
    with np.errstate(over="ignore"):  # exp overflow -> inf -> P(alive) = 0, which is the right limit
        p_alive = 1.0 / (1.0 + h / total * np.expm1(total * gap))
    survive = np.exp(-total * horizon_days)
    p_quiet_if_alive = survive + h / total * (1.0 - survive)
    prob = 1.0 - p_alive + p_alive * p_quiet_if_alive
    return pd.Series(np.clip(prob, 0.0, 1.0), index=pd.Index(truth["customer_id"], name="customer_id"),
                     name="churn_probability")


# ---------------------------------------------------------------------------------------------------------------
# Customers


def _by_persona(attribute: str) -> np.ndarray:
    """One profile attribute as an array indexed by persona code."""
    return np.array([getattr(p, attribute) for p in _PROFILES], dtype=float)


def _allocate_personas(rng: np.random.Generator, n: int) -> np.ndarray:
    """Persona codes in exact shares (largest remainder), shuffled, so every persona appears at useful sizes."""
    shares = _by_persona("share")
    exact = shares / shares.sum() * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(PERSONAS)), counts)).astype(np.int8)


def _draw_customers(rng: np.random.Generator, n: int, window: _Window) -> _Customers:
    """Draw every latent per-customer quantity; customers are ordered by signup so ids grow with it.

    The churn model (module docstring) is spelled out here; habits and engagement rates come from helpers.
    """
    persona = _allocate_personas(rng, n)
    tenure_range = _by_persona("tenure_days")[persona]  # (n, 2): low, high
    signup = np.floor(window.t1 - rng.uniform(tenure_range[:, 0], tenure_range[:, 1]))  # midnight
    order = np.argsort(signup, kind="stable")
    persona, signup = persona[order], signup[order]

    start = np.maximum(signup, window.t0)
    engagement = rng.standard_normal(n)
    member = rng.random(n) < _by_persona("loyalty_share")[persona]
    purchase_rate = _by_persona("purchase_rate_per_day")[persona] * rng.gamma(6.0, 1.0 / 6.0, n)
    hazard = _by_persona("churn_hazard_per_day")[persona] * np.exp(
        -ENGAGEMENT_CHURN_COEF * engagement - LOYALTY_CHURN_COEF * member)
    churn = start + rng.exponential(1.0 / hazard)

    # Members join within 90 days of signup (before end); their tier is the one they hold at end.
    join = np.where(member, signup + rng.random(n) * np.minimum(90.0, window.t1 - signup), np.nan)
    tier_cum = np.cumsum(np.array([p.tier_mix for p in _PROFILES]), axis=1)[persona]
    tier = np.where(member, _sample_rows(rng, tier_cum, np.arange(n)), -1).astype(np.int8)
    habits = _draw_habits(rng, persona)
    return _Customers(
        persona=persona, signup=signup, start=start, churn=churn, purchase_rate=purchase_rate, hazard=hazard,
        engagement=engagement, member=member, join=join, tier=tier, **habits,
        **_draw_engagement(rng, persona, engagement, purchase_rate, habits["channel_cum"]),
    )


def _draw_habits(rng: np.random.Generator, persona: np.ndarray) -> dict[str, np.ndarray]:
    """Shopping habits around the persona's: region and home store, order value, discount/return/redeem
    propensities, channel and category preferences (per-customer Beta/Dirichlet/log-normal noise)."""
    n = persona.size
    region = rng.choice(len(REGIONS), size=n, p=[0.22, 0.2, 0.22, 0.18, 0.18])
    return {
        "region": region,
        "home_store": region * _STORES_PER_REGION + rng.integers(0, _STORES_PER_REGION, n),
        "aov": _by_persona("aov")[persona] * rng.lognormal(0.0, 0.25, n),
        "basket_items": _by_persona("basket_items")[persona],
        "discount_prob": _beta_around(rng, _by_persona("discount_prob")[persona], 20.0),
        "return_prob": _beta_around(rng, _by_persona("return_prob")[persona], 15.0),
        "redeem_prob": _by_persona("redeem_prob")[persona],
        "channel_cum": _dirichlet_cum(rng, np.array([p.channel_mix for p in _PROFILES])[persona], 20.0),
        "category_cum": _dirichlet_cum(rng, np.array([p.category_mix for p in _PROFILES])[persona], 15.0),
    }


def _draw_engagement(rng, persona, engagement, purchase_rate, channel_cum) -> dict[str, np.ndarray]:
    """Email opt-in, open/click probabilities and event rates per day, all rising with engagement propensity.

    App opens also rise with the purchase rate and web visits with the digital (non-store) purchase rate, so
    engagement tracks activity.
    """
    n = persona.size
    app_user = rng.random(n) < _by_persona("app_user_share")[persona]
    digital_rate = purchase_rate * (1.0 - channel_cum[:, 0])
    return {
        "opt_in": rng.random(n) < _by_persona("email_opt_in")[persona],
        "open_prob": _sigmoid(_by_persona("email_open_logit")[persona] + 0.8 * engagement + rng.normal(0, 0.3, n)),
        "click_prob": _sigmoid(_by_persona("email_click_logit")[persona] + 0.6 * engagement),
        "app_rate": app_user * np.exp(0.6 * engagement)
        * (_by_persona("app_open_base_per_day")[persona] + 0.5 * purchase_rate),
        "web_rate": np.exp(0.4 * engagement) * (_by_persona("web_visit_base_per_day")[persona] + 0.35 * digital_rate),
        "push_rate": app_user * 0.02 * np.exp(0.5 * engagement),
        "minor_rate": 0.001 * np.exp(0.5 * engagement),
    }


def _draw_campaigns(rng: np.random.Generator, window: _Window) -> tuple[np.ndarray, np.ndarray]:
    """Weekly-ish email campaigns: send times (days since epoch, around 10:00) and campaign-type codes."""
    first = np.floor(window.t0) + rng.integers(0, 7)
    days = np.arange(first, window.t1, 7.0)
    send = days + rng.integers(-1, 2, days.size) + (10.0 + 2.0 * rng.random(days.size)) / 24.0
    send = np.sort(send[(send >= window.t0) & (send < window.t1)])
    return send, rng.integers(0, len(_CAMPAIGN_TYPES), send.size)


def _draw_offers(rng: np.random.Generator, window: _Window, count: int) -> np.ndarray:
    """Send times of the offer campaigns (days since epoch, around 10:00), oldest first: every 6 weeks back from
    4 weeks before end (so the last one's window is observed), those inside the period."""
    last = np.floor(window.t1) - _LAST_OFFER_DAYS_BEFORE_END
    days = last - _OFFER_SPACING_DAYS * np.arange(count)[::-1]
    send = days + (10.0 + 2.0 * rng.random(count)) / 24.0
    return send[send >= window.t0]


def _simulate_offers(rng: np.random.Generator, c: _Customers, offers: np.ndarray, first_code: int,
                     window: _Window) -> tuple[dict, dict]:
    """The offer campaigns' audiences, holdouts and planted extra purchases (module docstring): (transactions,
    events) arrays; an offer's campaign code is `first_code` + its index."""
    reached = (c.opt_in[:, None] & (offers[None, :] >= c.start[:, None])
               & (rng.random((len(c), offers.size)) < _OFFER_REACH))
    owner, offer = np.nonzero(reached)
    sent = offers[offer] + rng.random(owner.size) * 600.0 / _SECONDS_PER_DAY
    treated = rng.random(owner.size) >= _OFFER_HOLDOUT
    response = _by_persona("offer_response")[c.persona[owner]]
    responds = treated & (sent < c.churn[owner]) & (rng.random(owner.size) < response)
    buy_t = sent + rng.random(owner.size) * OFFER_WINDOW_DAYS
    buyer_hi = np.minimum(c.churn[owner], window.t1)
    responds &= buy_t < buyer_hi
    buyer = owner[responds]
    channel = _sample_rows(rng, c.channel_cum, buyer)
    purchases = _purchase_rows(rng, c, buyer, buy_t[responds], channel, sent[responds], buyer_hi[responds])
    code = first_code + offer
    promo = _PROP_CAMPAIGN + _CAMPAIGN_TYPES.index("promo")
    events = _concat([
        _event_arrays(owner[treated], _to_sec(sent[treated]), "email_sent", "email", code[treated],
                      np.full(treated.sum(), promo)),
        _event_arrays(owner[~treated], _to_sec(sent[~treated]), "campaign_holdout", "email", code[~treated]),
    ])
    return purchases, events


# ---------------------------------------------------------------------------------------------------------------
# Behaviour of one chunk of customers (arrays keyed by column; "owner" is the row in the chunk)


def _simulate_chunk(rng, c: _Customers, campaigns, window: _Window) -> tuple[dict, dict]:
    """Purchases, returns and events of the customers in `c`."""
    purchases = _simulate_purchases(rng, c, window)
    returns = _simulate_returns(rng, c, purchases, window)
    events = _concat([
        _stream_events(rng, c, window),
        _email_events(rng, c, campaigns, window),
        _purchase_events(rng, purchases, window),
        _loyalty_events(rng, c, window),
    ])
    return _concat([purchases, returns]), events


def _simulate_purchases(rng: np.random.Generator, c: _Customers, window: _Window) -> dict[str, np.ndarray]:
    """Purchases of alive customers by thinning a bounded Poisson process (seasonal x weekday intensity).

    Out: owner, sec (seconds since epoch), amount, quantity, product, category, channel, store, discount,
    is_return, points_earned, points_redeemed (codes for product/category/channel/store; -1 = no store).
    """
    weekday_weight = _WEEKDAY_PROFILE / _WEEKDAY_PROFILE.mean(axis=1, keepdims=True)
    bound = (1.0 + SEASONAL_AMPLITUDE) * weekday_weight.max()
    lo, hi = c.start, np.minimum(c.churn, window.t1)
    owner, t = _poisson_times(rng, c.purchase_rate * bound, lo, hi)
    channel = _sample_rows(rng, c.channel_cum, owner)
    keep = rng.random(t.size) * bound < _seasonal(t) * weekday_weight[channel, _weekday(t)]
    first_owner, first_t = _first_orders(rng, c, lo, hi, window)
    owner = np.concatenate([owner[keep], first_owner])
    t = np.concatenate([t[keep], first_t])
    channel = np.concatenate([channel[keep], _sample_rows(rng, c.channel_cum, first_owner)])
    return _purchase_rows(rng, c, owner, t, channel, lo[owner], hi[owner])


def _purchase_rows(rng: np.random.Generator, c: _Customers, owner: np.ndarray, t: np.ndarray, channel: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
    """Purchase rows of `owner` at days `t` through `channel`: basket, price, discount, store, points; the time of
    day never leaves [lo, hi) (per row)."""
    n = owner.size

    category = _sample_rows(rng, c.category_cum, owner)
    quantity = 1.0 + rng.poisson(c.basket_items[owner] - 1.0)
    unit_price = c.aov[owner] / c.basket_items[owner] * _CATEGORY_PRICE[category] * rng.lognormal(-0.1, 0.45, n)
    gross = np.maximum(np.round(unit_price * quantity, 2), 0.5)
    discounted = rng.random(n) < c.discount_prob[owner]
    discount = np.where(discounted, np.round(gross * rng.uniform(0.1, 0.4, n), 2), 0.0)
    amount = gross - discount
    store = np.where(rng.random(n) < 0.85, c.home_store[owner], rng.integers(0, len(REGIONS) * _STORES_PER_REGION, n))

    earning = c.member[owner] & (t >= c.join[owner])  # NaN join (non-member) compares False
    redeemed = earning & (rng.random(n) < c.redeem_prob[owner])
    return {
        "owner": owner,
        "sec": _with_time_of_day(rng, t, channel, lo, hi),
        "amount": np.round(amount, 2),
        "quantity": quantity,
        "product": category * _PRODUCTS_PER_CATEGORY + np.floor(_PRODUCTS_PER_CATEGORY * rng.random(n) ** 2),
        "category": category,
        "channel": channel,
        "store": np.where(channel == 0, store, -1),
        "discount": discount,
        "is_return": np.zeros(n, dtype=bool),
        "points_earned": np.where(earning, np.floor(amount * _TIER_POINTS_PER_DOLLAR[c.tier[owner]]), 0.0),
        "points_redeemed": np.where(redeemed, 100.0 * rng.integers(1, 6, n), 0.0),
    }


def _first_orders(rng: np.random.Generator, c: _Customers, lo: np.ndarray, hi: np.ndarray, window: _Window):
    """An order on the signup day (within the alive interval) for signups inside the period: (owner, time).

    It sits at the process start, so it carries no information on being alive (the oracle treats a purchase at
    start like none): the Pareto/NBD convention of a "birth" purchase.
    """
    first = (c.signup >= window.t0) & (hi > lo) & (rng.random(len(c)) < _by_persona("first_order_prob")[c.persona])
    owner = np.flatnonzero(first)
    return owner, lo[owner] + rng.random(owner.size) * np.minimum(1.0, hi[owner] - lo[owner])


def _simulate_returns(rng: np.random.Generator, c: _Customers, purchases: dict, window: _Window) -> dict:
    """Returns of earlier purchases, 1-30 days later (dropped if at or after end); same keys as purchases.

    A return is full (75%) or partial; amount is minus the refunded value, quantity the (positive) returned units.
    """
    prob = np.minimum(c.return_prob[purchases["owner"]] * _CATEGORY_RETURN[purchases["category"]], 0.9)
    returned = rng.random(prob.size) < prob
    ret = {key: values[returned] for key, values in purchases.items()}
    n = ret["owner"].size
    ret["sec"] = ret["sec"] + rng.integers(_SECONDS_PER_DAY, 30 * _SECONDS_PER_DAY, n)
    full = rng.random(n) < 0.75
    share = np.where(full, 1.0, rng.uniform(0.3, 0.9, n))
    ret["amount"] = -np.round(ret["amount"] * share, 2)
    ret["quantity"] = np.maximum(np.where(full, ret["quantity"], np.ceil(ret["quantity"] * share)), 1.0)
    ret["discount"] = np.zeros(n)
    ret["is_return"] = np.ones(n, dtype=bool)
    ret["points_earned"] = np.zeros(n)
    ret["points_redeemed"] = np.zeros(n)
    in_window = ret["sec"] < window.t1 * _SECONDS_PER_DAY
    return {key: values[in_window] for key, values in ret.items()}


def _stream_events(rng: np.random.Generator, c: _Customers, window: _Window) -> dict[str, np.ndarray]:
    """Poisson engagement streams: app_open, web_visit, push_open, sms_click, referral, survey_response.

    Rates apply while alive and are multiplied by 0.1 after churn. Out: owner, sec, type, channel, campaign,
    properties (codes; -1 = null).
    """
    streams = (  # (event type, rate per day, event channel, hour profile: 0 store, 1 online, 2 app)
        ("app_open", c.app_rate, "app", 2),
        ("web_visit", c.web_rate, "web", 1),
        ("push_open", c.push_rate, "push", 2),
        ("sms_click", 2.0 * c.minor_rate, "sms", 1),
        ("referral", c.minor_rate * np.where(c.persona == 0, 3.0, 1.0), "app", 2),
        ("survey_response", c.minor_rate, "email", 1),
    )
    alive_end = np.minimum(c.churn, window.t1)
    parts = []
    for event_type, rate, channel, hour_profile in streams:
        for lo, hi, factor in ((c.start, alive_end, 1.0), (alive_end, window.t1, _POST_CHURN_ENGAGEMENT)):
            owner, t = _poisson_times(rng, rate * factor, lo, np.broadcast_to(hi, lo.shape))
            hi_row = np.broadcast_to(hi, lo.shape)[owner]
            sec = _with_time_of_day(rng, t, np.full(owner.size, hour_profile), lo[owner], hi_row)
            props = np.full(owner.size, -1)
            if event_type == "web_visit":
                props = _PROP_PAGE + rng.integers(0, len(_WEB_PAGES), owner.size)
            parts.append(_event_arrays(owner, sec, event_type, channel, props=props))
    return _concat(parts)


def _email_events(rng: np.random.Generator, c: _Customers, campaigns, window: _Window) -> dict[str, np.ndarray]:
    """email_sent to opted-in customers reached by a campaign, then email_open and email_click.

    Open probability is the customer's (x0.15 after churn); a click follows an open. Opens come an
    Exponential(0.3 day) after sending, clicks 5-900 s after the open; anything at or after end is dropped.
    """
    send, campaign_type = campaigns
    reached = (c.opt_in[:, None] & (send[None, :] >= c.start[:, None])
               & (rng.random((len(c), send.size)) < _EMAIL_REACH))
    owner, campaign = np.nonzero(reached)
    sent = send[campaign] + rng.random(owner.size) * 600.0 / _SECONDS_PER_DAY
    alive = sent < c.churn[owner]
    opened = rng.random(owner.size) < c.open_prob[owner] * np.where(alive, 1.0, _POST_CHURN_EMAIL_OPEN)
    open_t = sent + rng.exponential(0.3, owner.size)
    clicked = opened & (rng.random(owner.size) < c.click_prob[owner])
    click_t = open_t + rng.uniform(5.0, 900.0, owner.size) / _SECONDS_PER_DAY
    opened &= open_t < window.t1
    clicked &= click_t < window.t1
    return _concat([
        _event_arrays(owner, _to_sec(sent), "email_sent", "email", campaign, _PROP_CAMPAIGN + campaign_type[campaign]),
        _event_arrays(owner[opened], _to_sec(open_t[opened]), "email_open", "email", campaign[opened]),
        _event_arrays(owner[clicked], _to_sec(click_t[clicked]), "email_click", "email", campaign[clicked]),
    ])


def _purchase_events(rng: np.random.Generator, purchases: dict, window: _Window) -> dict[str, np.ndarray]:
    """reward_redeemed at each order that redeems points, and a review 1-14 days after 4% of orders."""
    redeem = purchases["points_redeemed"] > 0
    points_code = _PROP_POINTS + (purchases["points_redeemed"][redeem] // 100).astype(int) - 1
    reviewed = rng.random(redeem.size) < _REVIEW_PROB
    review_sec = purchases["sec"][reviewed] + rng.integers(_SECONDS_PER_DAY, 14 * _SECONDS_PER_DAY, reviewed.sum())
    rating = rng.choice(5, size=reviewed.sum(), p=[0.05, 0.07, 0.15, 0.33, 0.40])
    in_window = review_sec < window.t1 * _SECONDS_PER_DAY
    return _concat([
        _event_arrays(purchases["owner"][redeem], purchases["sec"][redeem], "reward_redeemed",
                      purchases["channel"][redeem], props=points_code),
        _event_arrays(purchases["owner"][reviewed][in_window], review_sec[in_window], "review", "online",
                      props=_PROP_RATING + rating[in_window]),
    ])


def _loyalty_events(rng: np.random.Generator, c: _Customers, window: _Window) -> dict[str, np.ndarray]:
    """loyalty_join at the join time (if inside the period) and one tier_change into silver or higher tiers."""
    n = len(c)
    joins = c.member & (c.join >= window.t0)
    join_channel = _sample_rows(rng, c.channel_cum, np.arange(n))
    owner = np.flatnonzero(joins)
    upgraded = np.flatnonzero(c.tier >= 1)
    lo = np.maximum(c.join[upgraded], c.start[upgraded])
    change_t = lo + rng.random(upgraded.size) * (window.t1 - lo)
    return _concat([
        _event_arrays(owner, _to_sec(c.join[owner]), "loyalty_join", join_channel[owner]),
        _event_arrays(upgraded, _to_sec(change_t), "tier_change", "system", props=_PROP_TIER + c.tier[upgraded] - 1),
    ])


def _event_arrays(owner, sec, event_type: str, channel, campaign=None, props=None) -> dict[str, np.ndarray]:
    """Event rows as code arrays; `channel` is a name or per-row purchase-channel codes."""
    n = owner.size
    channel_code = (np.full(n, _EVENT_CHANNELS.index(channel)) if isinstance(channel, str)
                    else np.asarray(channel))  # purchase channel codes coincide with the first event channels
    return {
        "owner": owner.astype(np.int64),
        "sec": np.asarray(sec, dtype=np.int64),
        "type": np.full(n, _EVENT_CODE[event_type], dtype=np.int8),
        "channel": channel_code.astype(np.int8),
        "campaign": (np.full(n, -1) if campaign is None else campaign).astype(np.int32),
        "props": (np.full(n, -1) if props is None else props).astype(np.int16),
    }


# ---------------------------------------------------------------------------------------------------------------
# Frames


def _customers_frame(rng, c: _Customers, transactions: dict, customer_ids: pa.Array, window: _Window) -> pd.DataFrame:
    """Customers table (contract columns) from the latent arrays; points_balance from the generated transactions."""
    n = len(c)
    earned = np.bincount(transactions["owner"], weights=transactions["points_earned"], minlength=n)
    spent = np.bincount(transactions["owner"], weights=transactions["points_redeemed"], minlength=n)
    opening = np.where(c.member & (c.join < window.t0), np.round(rng.exponential(300.0, n)), 0.0)
    age = np.clip(rng.normal(_by_persona("age_mean")[c.persona], 12.0), 18, 90)
    tag_bits = np.column_stack([c.opt_in & (rng.random(n) < 0.8)] + [
        rng.random(n) < p for p in (0.25, 0.2, 0.1, np.where(age < 25, 0.4, 0.01))])
    return pd.DataFrame({
        "customer_id": pd.array(customer_ids, dtype="str"),
        "signup_date": _to_datetime(_to_sec(c.signup)),
        "birth_year": (window.end.year - np.round(age)).astype(np.int64),
        "gender": _strings(("F", "M", "X"), rng.choice(3, size=n, p=[0.52, 0.45, 0.03])),
        "region": _strings(REGIONS, c.region),
        "city": _strings([city for cities in CITIES for city in cities], c.region * 3 + rng.integers(0, 3, n)),
        "loyalty_member": c.member,
        "loyalty_join_date": _to_datetime(np.where(c.member, _to_sec(np.nan_to_num(c.join)), np.iinfo(np.int64).min)),
        "loyalty_tier": _strings(TIERS, c.tier),
        "points_balance": np.where(c.member, np.maximum(opening + earned - spent, 0.0), 0.0),
        "email_opt_in": c.opt_in,
        "tags": _tag_strings(tag_bits),
    })


def _transactions_frame(tx: dict, customer_ids: pa.Array) -> pd.DataFrame:
    """Transactions table ordered by time, ids assigned in that order."""
    order = _time_order(tx["sec"])
    tx = {key: values[order] for key, values in tx.items()}
    n = order.size
    store_names = [f"S{i + 1:03d}" for i in range(len(REGIONS) * _STORES_PER_REGION)]
    product_names = [f"P{k + 1:02d}{i + 1:04d}" for k in range(len(CATEGORIES)) for i in range(_PRODUCTS_PER_CATEGORY)]
    return pd.DataFrame({
        "transaction_id": pd.array(_ids("T", n, 8), dtype="str"),
        "customer_id": pd.array(customer_ids.take(pa.array(tx["owner"])), dtype="str"),
        "timestamp": _to_datetime(tx["sec"]),
        "amount": tx["amount"].astype(float),
        "quantity": tx["quantity"].astype(float),
        "product_id": _strings(product_names, tx["product"].astype(np.int64)),
        "category": _strings(CATEGORIES, tx["category"]),
        "channel": _strings(CHANNELS, tx["channel"]),
        "store_id": _strings(store_names, tx["store"]),
        "discount_amount": tx["discount"].astype(float),
        "is_return": tx["is_return"].astype(bool),
        "points_earned": tx["points_earned"].astype(float),
        "points_redeemed": tx["points_redeemed"].astype(float),
        "currency": _strings(("USD",), np.zeros(n, dtype=np.int8)),
    })


def _events_frame(ev: dict, customer_ids: pa.Array, n_campaigns: int, n_offers: int) -> pd.DataFrame:
    """Events table ordered by time, ids assigned in that order."""
    order = _time_order(ev["sec"])
    ev = {key: values[order] for key, values in ev.items()}
    campaign_names = _ids("CMP", n_campaigns, 5).to_pylist() + _ids("OFR", n_offers, 3).to_pylist()
    return pd.DataFrame({
        "event_id": pd.array(_ids("E", order.size, 8), dtype="str"),
        "customer_id": pd.array(customer_ids.take(pa.array(ev["owner"])), dtype="str"),
        "timestamp": _to_datetime(ev["sec"]),
        "event_type": _strings(KNOWN_EVENT_TYPES, ev["type"]),
        "channel": _strings(_EVENT_CHANNELS, ev["channel"]),
        "campaign_id": _strings(campaign_names, ev["campaign"]),
        "properties": _strings(_PROPERTIES, ev["props"]),
    })


def _ground_truth_frame(c: _Customers, customer_ids: pa.Array, window: _Window) -> pd.DataFrame:
    """Latent truth: customer_id, persona, start, purchase_rate_per_day, churn_hazard_per_day, churn_time,
    engagement_propensity, offer_response."""
    churn_us = np.round(c.churn * _SECONDS_PER_DAY * 1e6)
    churned = c.churn < window.t1
    churn_time = np.where(churned, churn_us, 0).astype(np.int64).astype("datetime64[us]")
    churn_time[~churned] = np.datetime64("NaT")
    return pd.DataFrame({
        "customer_id": pd.array(customer_ids, dtype="str"),
        "persona": _strings(PERSONAS, c.persona),
        "start": _to_datetime(_to_sec(c.start)),
        "purchase_rate_per_day": c.purchase_rate,
        "churn_hazard_per_day": c.hazard,
        "churn_time": churn_time,
        "engagement_propensity": c.engagement,
        "offer_response": _by_persona("offer_response")[c.persona],
    })


# ---------------------------------------------------------------------------------------------------------------
# Small vectorised helpers


def _poisson_times(rng: np.random.Generator, rate: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Homogeneous Poisson points on [lo_i, hi_i) for every row i: (owner row, time) arrays."""
    duration = np.clip(hi - lo, 0.0, None)
    owner = np.repeat(np.arange(lo.size), rng.poisson(rate * duration))
    return owner, lo[owner] + rng.random(owner.size) * duration[owner]


def _sample_rows(rng: np.random.Generator, cum: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Draw a category per row from its owner's cumulative probabilities `cum` (n_owners, k), in one search.

    Offsetting each owner's cumulative row by the owner index makes one sorted array for all owners.
    """
    k = cum.shape[1]
    cum = cum / cum[:, -1:]
    cum[:, -1] = 1.0
    flat = (cum + np.arange(cum.shape[0])[:, None]).ravel()
    position = np.searchsorted(flat, owner + rng.random(owner.size), side="right")
    return np.minimum(position - owner * k, k - 1)


def _dirichlet_cum(rng: np.random.Generator, mix: np.ndarray, concentration: float) -> np.ndarray:
    """Per-row Dirichlet(mix * concentration) draws, returned as cumulative probabilities."""
    draws = rng.gamma(mix * concentration + 1e-3)
    return np.cumsum(draws / draws.sum(axis=1, keepdims=True), axis=1)


def _beta_around(rng: np.random.Generator, mean: np.ndarray, concentration: float) -> np.ndarray:
    """Beta draws with the given means."""
    return rng.beta(mean * concentration, (1.0 - mean) * concentration)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _seasonal(t: np.ndarray) -> np.ndarray:
    """Common multiplicative seasonality s(t), mean 1 over a year (t in days since epoch)."""
    return 1.0 + SEASONAL_AMPLITUDE * np.cos(2.0 * np.pi * (t - _SEASON_PEAK_DAY) / 365.25)


def _weekday(t: np.ndarray) -> np.ndarray:
    """Monday = 0 (1970-01-01 was a Thursday)."""
    return (np.floor(t).astype(np.int64) + 3) % 7


def _with_time_of_day(rng, t: np.ndarray, profile: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Seconds since epoch: t's day plus an hour from the channel's hour profile.

    A drawn time outside [lo, hi) (the alive interval, e.g. after churn on the churn day) falls back to t itself,
    so re-timing never moves an event across churn, signup or end.
    """
    hour_cum = np.cumsum(_HOUR_PROFILE, axis=1)
    hour = _sample_rows(rng, hour_cum, profile.astype(np.int64))
    day_sec = np.floor(t).astype(np.int64) * _SECONDS_PER_DAY
    sec = day_sec + hour * 3600 + rng.integers(0, 3600, t.size)
    raw = _to_sec(t)
    inside = (sec >= lo * _SECONDS_PER_DAY) & (sec < hi * _SECONDS_PER_DAY)
    return np.where(inside, sec, raw)


def _time_order(sec: np.ndarray) -> np.ndarray:
    """Row order by time, ties kept in row order (a stable argsort, so deterministic for a seed).

    Packs (time, row) into one int64 and sorts values, which is several times faster than argsort on millions of rows.
    """
    if sec.size == 0:
        return np.arange(0)
    relative = sec - sec.min()
    row_bits = max(int(sec.size - 1).bit_length(), 1)
    if int(relative.max()).bit_length() + row_bits > 62:
        return np.argsort(sec, kind="stable")
    key = (relative << row_bits) | np.arange(sec.size)
    key.sort()
    return key & ((1 << row_bits) - 1)


def _to_sec(days: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(days) * _SECONDS_PER_DAY).astype(np.int64)


def _to_datetime(sec: np.ndarray) -> np.ndarray:
    """Naive UTC datetime64[us] from seconds since epoch (int64 min -> NaT)."""
    out = sec.astype("datetime64[s]").astype("datetime64[us]")
    out[sec == np.iinfo(np.int64).min] = np.datetime64("NaT")
    return out


def _days_since_epoch(ts: pd.Timestamp) -> float:
    return (ts - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    """Zero-padded string ids "<prefix>000001" numbered 1..n (wider if n needs it)."""
    digits = pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.large_string())
    digits = pc.utf8_lpad(digits, max(width, len(str(n))), "0")
    return pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), digits, pa.scalar("", pa.large_string()))


def _strings(vocab: Sequence[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Map integer codes to a string column (code -1 -> null) without a Python loop over rows."""
    codes = np.asarray(codes, dtype=np.int64)
    values = pa.array(list(vocab), type=pa.large_string()).take(pa.array(codes, mask=codes < 0))
    return pd.array(values, dtype="str")


def _tag_strings(bits: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """';'-joined tags from a boolean (n, len(TAGS)) matrix; customers without tags get null."""
    combos = [";".join(tag for j, tag in enumerate(TAGS) if code >> j & 1) for code in range(2 ** len(TAGS))]
    codes = (bits.astype(np.int64) << np.arange(len(TAGS))).sum(axis=1)
    return _strings(combos, np.where(codes == 0, -1, codes))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column dicts with the same keys."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

