"""The input data contract: the three raw tables, their columns and canonical types.

Every reader, the validator and the feature builders take column names and types from here, so the contract is
written once. Timestamps are naive UTC; ids are strings. See DESIGN.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from features.time import naive_utc

# Canonical column types, as DuckDB type names (Ibis maps them to every backend it runs on).
STRING, TIMESTAMP, DOUBLE, BIGINT, BOOLEAN = "VARCHAR", "TIMESTAMP", "DOUBLE", "BIGINT", "BOOLEAN"

# Row rules shared by the file validator (features/validate.py) and the service's records (serving/http/schemas.py):
# amounts and every other number are finite and at most this large either way (1e308 is a typo or an attack, never a
# purchase; feature sums are exact in 12 integer digits, see features/catalog.py), and
# a record's time is not before EARLIEST_TIMESTAMP nor after the clock of whoever receives it.
MAX_ABS_AMOUNT = 1e9
EARLIEST_TIMESTAMP = datetime(1900, 1, 1)


@dataclass(frozen=True)
class TableContract:
    """One raw table: its id column, required columns and optional columns with their canonical types."""

    name: str
    id_column: str
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    is_required: bool = False

    @property
    def columns(self) -> dict[str, str]:
        return {**self.required, **self.optional}


CUSTOMERS = TableContract(
    name="customers",
    id_column="customer_id",
    required={"customer_id": STRING},
    optional={
        "signup_date": TIMESTAMP,
        "birth_year": BIGINT,
        "gender": STRING,
        "region": STRING,
        "city": STRING,
        "loyalty_member": BOOLEAN,
        "loyalty_join_date": TIMESTAMP,
        "loyalty_tier": STRING,
        "points_balance": DOUBLE,
        "email_opt_in": BOOLEAN,
        "tags": STRING,
    },
)

TRANSACTIONS = TableContract(
    name="transactions",
    id_column="transaction_id",
    required={"transaction_id": STRING, "customer_id": STRING, "timestamp": TIMESTAMP, "amount": DOUBLE},
    optional={
        "quantity": DOUBLE,
        "product_id": STRING,
        "category": STRING,
        "channel": STRING,
        "store_id": STRING,
        "discount_amount": DOUBLE,
        "is_return": BOOLEAN,
        "points_earned": DOUBLE,
        "points_redeemed": DOUBLE,
        "currency": STRING,
    },
    is_required=True,
)

EVENTS = TableContract(
    name="events",
    id_column="event_id",
    required={"event_id": STRING, "customer_id": STRING, "timestamp": TIMESTAMP, "event_type": STRING},
    optional={"channel": STRING, "campaign_id": STRING, "properties": STRING},
)

CONTRACTS: dict[str, TableContract] = {c.name: c for c in (CUSTOMERS, TRANSACTIONS, EVENTS)}

KNOWN_EVENT_TYPES = (
    "email_sent", "email_open", "email_click", "push_open", "sms_click", "app_open", "web_visit",
    "reward_redeemed", "review", "referral", "survey_response", "loyalty_join", "tier_change",
    "campaign_holdout",  # in a campaign's audience, held out (not contacted): uplift models learn from these
)

# Channels that count as digital for the online-share features.
DIGITAL_CHANNELS = ("online", "app", "web", "mobile")


# Canonical types as pandas dtypes, for records typed in Python (one customer's history posted to the service).
PANDAS_DTYPES = {STRING: "string", TIMESTAMP: "datetime64[us]", DOUBLE: "float64", BIGINT: "Int64",
                 BOOLEAN: "boolean"}


def typed_rows(table: str, records: list[dict], columns: list[str]) -> list[tuple]:
    """Records typed like the validated table, as tuples of plain Python values in `columns` order (trimmed text,
    empty as missing, naive UTC datetimes, `is_return` = flagged or a negative amount): a few records (one customer
    at request time) are typed ~10x faster without a frame."""
    kinds = _kinds(table, columns)
    derive_return = table == "transactions"
    return [tuple((bool(r.get("is_return") or False) or r["amount"] < 0) if derive_return and name == "is_return"
                  else _clean(r.get(name), kinds[name]) for name in columns) for r in records]


def typed_records(table: str, records: list[dict], columns: list[str]) -> pd.DataFrame:
    """`typed_rows` as a frame of the contract's pandas dtypes."""
    rows = typed_rows(table, records, columns)
    values = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    kinds = _kinds(table, columns)
    return pd.DataFrame({name: pd.Series(list(column), dtype=PANDAS_DTYPES[kinds[name]])
                         for name, column in zip(columns, values, strict=True)}, columns=columns)


def _kinds(table: str, columns: list[str]) -> dict[str, str]:
    contract = CONTRACTS[table].columns
    return {name: BOOLEAN if name == "is_return" else contract.get(name, STRING) for name in columns}


def _clean(value, kind: str):
    if isinstance(value, str):
        value = value.strip() or None
        if value is not None and kind == TIMESTAMP:
            value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = naive_utc(value)
    if kind == DOUBLE and value is not None:
        value = float(value)  # an amount of 3 sums and divides as 3.0 on every engine
    return value
