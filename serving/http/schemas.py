"""Request and response models of the scoring service (pydantic v2): strict, documented, and the OpenAPI source.

Input rules: unknown fields are errors (extra="forbid"); numbers must be numbers (a quoted "12.5" is refused) and
finite (NaN and infinities are refused); money amounts are at most 1e9 either way and record times lie between
1900-01-01 and the server's clock plus SEGMENTS_CLOCK_TOLERANCE_SECONDS (default 300): the data contract's row rules
(features/contract.py), as for files. A customer is given by exactly one of: its id alone (looked up in the
served feature table), its recent raw history, or a ready feature row. The batch cap (413 above it) is checked by
the service before items are scored, since the cap is configuration (SEGMENTS_MAX_BATCH), not schema.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from features.catalog import FEATURES_BY_NAME
from features.contract import (
    BIGINT,
    BOOLEAN,
    CONTRACTS,
    DOUBLE,
    EARLIEST_TIMESTAMP,
    MAX_ABS_AMOUNT,
    STRING,
    TIMESTAMP,
)
from features.outputs import OUTPUTS
from features.time import naive_utc, utc_now

DEFAULT_MAX_BATCH = 10_000
MAX_TOP_K = 20

Id = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Text = Annotated[StrictStr, Field(max_length=500)]
# Accepts JSON integers too; finite by the models' allow_inf_nan=False, and bounded as the files' numbers are.
Number = Annotated[StrictFloat, Field(ge=-MAX_ABS_AMOUNT, le=MAX_ABS_AMOUNT)]
DEFAULT_CLOCK_TOLERANCE_S = 300


def clock_tolerance_seconds() -> float:
    """How far ahead of the server's clock a record may be stamped (SEGMENTS_CLOCK_TOLERANCE_SECONDS)."""
    return float(os.environ.get("SEGMENTS_CLOCK_TOLERANCE_SECONDS") or DEFAULT_CLOCK_TOLERANCE_S)


def _within_the_clock(value: datetime) -> datetime:
    """A record time between EARLIEST_TIMESTAMP and now plus the tolerance: a purchase dated 2300 would move the
    customer's clock (and their logged changes) centuries ahead."""
    try:
        moment = naive_utc(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{value.isoformat()} cannot be read as UTC") from None
    tolerance = clock_tolerance_seconds()
    if moment < EARLIEST_TIMESTAMP:
        raise ValueError(f"{value.isoformat()} is before {EARLIEST_TIMESTAMP:%Y-%m-%d}")
    if moment > utc_now() + timedelta(seconds=tolerance):
        raise ValueError(f"{value.isoformat()} is more than {tolerance:g} s ahead of the server's clock "
                         f"(SEGMENTS_CLOCK_TOLERANCE_SECONDS)")
    return value


RecordTime = Annotated[datetime, AfterValidator(_within_the_clock)]
# Times in responses are UTC and say so ("...Z"): RFC 3339 date-times, as the OpenAPI document declares them.
UtcTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# The raw records are the data contract's rows (features/contract.py) without customer_id: their fields and types
# come from it, so the API cannot drift from the files. What the contract's types cannot say is added here.
_TYPES = {STRING: Text, TIMESTAMP: RecordTime, DOUBLE: Number, BIGINT: StrictInt, BOOLEAN: StrictBool}
_FIELDS = {
    ("transactions", "timestamp"): {"description": "UTC; naive values are read as UTC."},
    ("transactions", "amount"): {"description": "Paid amount; a negative amount is a return."},
    ("transactions", "channel"): {"description": "store, online, app, ..."},
    ("events", "timestamp"): {"description": "UTC; naive values are read as UTC."},
    ("events", "event_type"): {"description": "email_open, email_click, app_open, web_visit, ..."},
    ("events", "properties"): {"description": "JSON text.", "max_length": 10_000},
    ("customers", "birth_year"): {"ge": 1900, "le": 2100},
    ("customers", "tags"): {"description": "';'-separated tags (look-alike seeds tag:<tag> read them)."},
}


def record_model(table: str, name: str, doc: str) -> type[Strict]:
    """A strict pydantic model of one contract table's row, without customer_id."""
    contract = CONTRACTS[table]
    fields: dict[str, Any] = {}
    for column, kind in contract.columns.items():
        if column == "customer_id":
            continue
        annotation = Id if column == contract.id_column else _TYPES[kind]
        if kind == STRING and column in contract.required:  # empty is missing, as the file validator's missing_key
            annotation = Annotated[StrictStr, Field(min_length=1, max_length=500)]
        extra = dict(_FIELDS.get((table, column), {}))
        if "max_length" in extra:  # longer than the general text limit
            annotation = Annotated[StrictStr, Field(max_length=extra.pop("max_length"))]
        annotation = extra.pop("type", annotation)
        required = column in contract.required
        fields[column] = (annotation if required else annotation | None, Field(... if required else None, **extra))
    return create_model(name, __base__=Strict, __doc__=doc, **fields)


Transaction = record_model("transactions", "Transaction",
                           "One purchase or return (the data contract's transactions table, without customer_id).")
Event = record_model("events", "Event", "One engagement event (the data contract's events table, without "
                                        "customer_id).")
Profile = record_model("customers", "Profile", "The customer row of the data contract (without customer_id).")


class History(Strict):
    """A customer's recent raw records; features are computed from the records strictly before as_of."""

    profile: Profile | None = None
    transactions: list[Transaction] = Field(default_factory=list, max_length=100_000)
    events: list[Event] = Field(default_factory=list, max_length=100_000)


FeatureValue = StrictFloat | StrictInt | StrictBool | StrictStr | None


class CustomerInput(Strict):
    """One customer: by id alone, by raw history, or by a feature row (at most one of the last two)."""

    customer_id: Id
    history: History | None = None
    features: dict[str, FeatureValue] | None = Field(
        None, description="Feature name -> value (null when missing); names and types from the feature catalog.")

    @model_validator(mode="after")
    def _one_source(self) -> CustomerInput:
        if self.history is not None and self.features is not None:
            raise ValueError("give either history or features, not both")
        if self.features is not None:
            problems = [problem for name, value in self.features.items()
                        if (problem := feature_value_problem(name, value))]
            if problems:
                raise ValueError("; ".join(problems))
        return self


def feature_value_problem(name: str, value: Any) -> str | None:
    """Why a feature row's value is not acceptable for the catalog feature `name` (None when it is)."""
    spec = FEATURES_BY_NAME.get(name)
    if spec is None:
        return f"features.{name}: unknown feature (see `segments catalog`)"
    if value is None:
        return None
    expected = {"int64": (int,), "float64": (int, float), "string": (str,), "boolean": (bool,)}[spec.dtype]
    if isinstance(value, bool) and spec.dtype != "boolean" or not isinstance(value, expected):
        return f"features.{name}: expected {spec.dtype}, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"features.{name}: must be finite"
    low, high = spec.bounds
    if not isinstance(value, str | bool) and (low is not None and value < low or high is not None and value > high):
        return f"features.{name}: {value} is outside [{low}, {high}]"
    return None


class ScoreRequest(Strict):
    customers: list[CustomerInput] = Field(description="The batch (at most SEGMENTS_MAX_BATCH customers, "
                                                       f"default {DEFAULT_MAX_BATCH:,}; 413 above).")
    as_of: datetime | None = Field(
        None, description="Point in time for history inputs (default: the served feature table's as_of). Ids are "
                          "looked up in the feature table, which is as of its build date: another as_of is an error.")
    explain: bool = Field(False, description="Add the top reasons per score.")
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="Reasons per model when explaining.")


class ExplainRequest(Strict):
    customers: list[CustomerInput]
    as_of: datetime | None = None
    top_k: int = Field(3, ge=1, le=MAX_TOP_K)


class Reason(BaseModel):
    attribute: str = Field(description="Business attribute: the feature name without its window.")
    attribute_label: str
    group: str | None = Field(description="The catalog group's title (Recency, Spend, ...).")
    feature: str = Field(description="The attribute's feature with the largest contribution (its value is shown).")
    label: str
    value: float | int | str | bool | None
    typical: float | int | str | bool | None = Field(description="The population's median (or most frequent "
                                                                 "value) at build time.")
    direction: str = Field(description="raises or lowers")
    contribution: float = Field(description="Sum of the attribute's exact TreeSHAP values on the model's margin "
                                            "(log-odds; log of expected spend for value).")
    effect: float = Field(description="Approximate change on the output scale (probability; currency for value).")
    sentence: str


class ItemError(BaseModel):
    code: str = Field(description="unknown_customer, not_known_at_as_of, ...")
    message: str


# A scored customer's model outputs, grouped as the response nests them; fields from features/outputs.py.
_OUTPUT_TYPES = {"float64": float, "int64": int, "category": str, "string": str}


def output_group(group: str, name: str) -> type[BaseModel]:
    """The response model of one output group (churn, value, lookalike per seed, cluster, uplift)."""
    fields = {o.response[1]: (_OUTPUT_TYPES[o.dtype], Field(description=o.description))
              for o in OUTPUTS if o.response[0] == group}
    return create_model(name, **fields)


Churn = output_group("churn", "Churn")
Value = output_group("value", "Value")
Lookalike = output_group("lookalike", "Lookalike")
Cluster = output_group("cluster", "Cluster")
Uplift = output_group("uplift", "Uplift")


class ScoredCustomer(BaseModel):
    customer_id: str
    churn: Churn | None = None
    value: Value | None = None
    lookalike: dict[str, Lookalike] = Field(default_factory=dict, description="Per seed segment.")
    cluster: Cluster | None = None
    uplift: Uplift | None = None
    segments: list[str] = Field(
        default_factory=list,
        description="Names of the served segment definitions (GET /v1/info; the same language and names as the "
                    "membership store and POST /events) this customer satisfies on the scored features and scores, "
                    "sorted. By definition: no holdout is applied. Segments listed in "
                    "`segment_evaluation.not_evaluated` are never in it (unknown, not false).")
    reasons: dict[str, list[Reason]] | None = Field(None, description="Per model (churn, value, cluster, uplift, "
                                                                      "lookalike_<seed>) when explain is true.")
    error: ItemError | None = Field(None, description="Set when this customer could not be scored.")


class ExplainedCustomer(BaseModel):
    customer_id: str
    reasons: dict[str, list[Reason]] | None = None
    error: ItemError | None = None


class Versions(BaseModel):
    models: dict[str, str] = Field(description="Registered model name -> registry version.")
    feature_set_version: str
    as_of: str = Field(description="The as_of the customers were scored at.")


class SegmentEvaluation(BaseModel):
    """How the customers' `segments` were evaluated."""

    definitions_hash: str = Field(description="Hash of the served segments file (as recorded by a refresh).")
    thresholds_as_of: str | None = Field(
        description="`in top N%` / `in bottom N%` conditions compare with the population thresholds of the "
                    "membership store's last batch refresh, as of this time; null when there is none.")
    not_evaluated: dict[str, str] = Field(
        description="Segment -> why it is left out of every customer's `segments`: a model output or feature "
                    "this service does not have, or (before the first refresh) an `in top N%` condition without "
                    "its population threshold, and the segments referring to those.")


class ScoreResponse(BaseModel):
    versions: Versions
    segment_evaluation: SegmentEvaluation
    customers: list[ScoredCustomer]


class ExplainResponse(BaseModel):
    versions: Versions
    customers: list[ExplainedCustomer]


class PostedTransaction(Transaction):
    """A transaction pushed to the service as it happens."""

    customer_id: Id


class PostedEvent(Event):
    """An engagement event pushed to the service as it happens."""

    customer_id: Id


class EventsRequest(Strict):
    """New records: each is stored once by its id (a repeat is acknowledged as a duplicate and changes nothing)."""

    transactions: list[PostedTransaction] = Field(default_factory=list)
    events: list[PostedEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> EventsRequest:
        if not self.transactions and not self.events:
            raise ValueError("send at least one transaction or event")
        return self

    def rows(self) -> list[dict]:
        """The records in the store's shape (kind, id, customer_id, timestamp as naive UTC, payload)."""
        out = []
        for kind, items, key in (("transaction", self.transactions, "transaction_id"),
                                 ("event", self.events, "event_id")):
            for item in items:
                moment = item.timestamp
                moment = naive_utc(item.timestamp)
                payload = item.model_dump(mode="json", exclude={"customer_id"})
                payload["timestamp"] = moment.isoformat()
                out.append({"kind": kind, "id": getattr(item, key), "customer_id": item.customer_id,
                            "timestamp": moment, "payload": payload})
        return out


class Change(BaseModel):
    segment: str
    change: str = Field(description="entered or exited")
    at: UtcTime
    cause: list[dict] = Field(description="The conditions that flipped: condition, field, old, new, text.")


class CustomerUpdate(BaseModel):
    customer_id: str
    stored: list[str] = Field(description="Ids stored by this request.")
    duplicates: list[str] = Field(description="Ids already stored before (ignored).")
    as_of: UtcTime | None = Field(description="When the customer was re-evaluated (just after the latest record).")
    changes: list[Change]
    segments: list[str] = Field(description="The customer's segments after this request.")


class EventsResponse(BaseModel):
    models: dict[str, str]
    feature_set_version: str
    customers: list[CustomerUpdate]


class SubscriptionBody(Strict):
    """A webhook subscription (PUT /v1/subscriptions/{name}); see serving/segments/delivery.py."""

    url: str = Field(max_length=2000, description="Where changes are posted: http:// or https:// (a host among "
                                                  "SEGMENTS_WEBHOOK_HOSTS when the operator set it).")
    segments: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=200)
    changes: list[Literal["entered", "exited"]] = Field(default=["entered", "exited"], min_length=1, max_length=2)
    secret_env: str = Field(default="SEGMENTS_WEBHOOK_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$",
                            description="The environment variable of the deliverer holding the signing secret.")
