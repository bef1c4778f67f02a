"""From validated request items to feature rows, through the same feature code as batch scoring.

Three ways to give a customer (`serving.http.schemas.CustomerInput`):
- id alone: the row of the served feature table (built by `segments build` as of its as_of);
- raw history: the records are typed like the validated tables (strings trimmed, empty as missing, UTC times,
  `is_return` = flagged or negative amount) and run through the served `FeatureQuery`, compiled once at start: the
  same SQL that built the feature table; one query for every history item of the request;
- feature row: the values as given (checked against the catalog by the schema), cast to the catalog dtypes.

An unknown id or a history with nothing before as_of is an error of its own item; the others are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.build import to_feature_frame
from features.catalog import FEATURE_SET_VERSION
from features.contract import typed_records
from features.time import naive_utc
from serving.http.schemas import CustomerInput


class RequestError(ValueError):
    """A valid body that cannot be served as asked (422), with field-level detail."""

    def __init__(self, message: str, detail: list[dict] | None = None):
        super().__init__(message)
        self.detail = detail or []


@dataclass
class Resolved:
    """Feature rows of the scorable customers (request order) and, per request item, None or its error item."""

    features: pd.DataFrame
    errors: list[dict | None]
    as_of: datetime


def resolve_features(state, customers: list[CustomerInput], as_of: datetime | None) -> Resolved:
    as_of = naive_utc(as_of) if as_of is not None else state.as_of
    if as_of != state.as_of and any(c.history is None and c.features is None for c in customers):
        raise RequestError(
            f"customers given by id are scored from the feature table as of {state.as_of.isoformat()}; for as_of "
            f"{as_of.isoformat()} send their history (or feature rows), or rebuild (segments build --as-of)",
            [{"loc": ["as_of"], "msg": "differs from the feature table's as_of", "type": "as_of_mismatch"}])
    features = state.features
    pieces: list[tuple[pd.DataFrame, list[int]]] = []  # typed feature rows, with the request items they answer
    errors: list[dict | None] = [None] * len(customers)
    by_id = [i for i, c in enumerate(customers) if c.history is None and c.features is None]
    known = state.table.index
    for i in by_id:
        if customers[i].customer_id not in known:
            errors[i] = _item_error(customers[i].customer_id, "unknown_customer",
                                    f"customer {customers[i].customer_id!r} is not in the feature table as of "
                                    f"{state.as_of:%Y-%m-%d}: send their history or feature row")
    found = [i for i in by_id if errors[i] is None]
    if found:  # one take for the whole batch (per-row frames made 1,000 ids take 12 s); typed when loaded
        rows = [known.get_loc(customers[i].customer_id) for i in found]
        # One customer (most requests): a slice, a view of the table; taking rows copies each of its ~60 column
        # blocks (~0.6 ms), and consolidating the blocks at start cost ~2 s and a copy of the table at 1M.
        pieces.append((state.table.iloc[rows[0]:rows[0] + 1] if len(rows) == 1 else state.table.take(rows), found))
    with_history = [i for i, c in enumerate(customers) if c.history is not None]
    if with_history:
        built = _from_history(state, [customers[i] for i in with_history], as_of).set_index("customer_id",
                                                                                           drop=False)
        present = []
        for i in with_history:
            cid = customers[i].customer_id
            if cid in built.index:
                present.append(i)
            else:
                errors[i] = _item_error(cid, "no_records_before_as_of",
                                        f"customer {cid!r} has no record before {as_of.isoformat()}")
        if present:
            pieces.append((to_feature_frame(built.loc[[customers[i].customer_id for i in present]], features),
                           present))
    with_row = [i for i, c in enumerate(customers) if c.features is not None]
    if with_row:
        _check_feature_rows(customers, with_row, state.feature_names)
        pieces.append((to_feature_frame(pd.DataFrame([{"customer_id": customers[i].customer_id,
                                                       **{name: customers[i].features.get(name)
                                                          for name in state.feature_names}}
                                                      for i in with_row]), features), with_row))
    return Resolved(_in_request_order(pieces), errors, as_of)


def _in_request_order(pieces: list[tuple[pd.DataFrame, list[int]]]) -> pd.DataFrame:
    """One frame of the typed pieces' rows in request order (each piece is typed once: casting ~80 columns again
    cost more than scoring one customer)."""
    if not pieces:
        return pd.DataFrame(columns=["customer_id"])
    frame = pieces[0][0]
    if len(pieces) > 1:
        order = np.argsort(np.concatenate([items for _, items in pieces]), kind="stable")
        frame = pd.concat([piece for piece, _ in pieces], ignore_index=True).take(order)
    frame = frame.reset_index(drop=True)
    frame.attrs["feature_set_version"] = FEATURE_SET_VERSION
    return frame


def _item_error(customer_id: str, code: str, message: str) -> dict:
    return {"customer_id": customer_id, "churn": None, "value": None, "lookalike": {}, "cluster": None,
            "uplift": None, "segments": [], "reasons": None, "error": {"code": code, "message": message}}


def _check_feature_rows(customers: list[CustomerInput], items: list[int], names: list[str]) -> None:
    detail = []
    for i in items:
        missing = [n for n in names if n not in customers[i].features]
        detail += [{"loc": ["customers", i, "features", n], "msg": "Field required (null when missing)",
                    "type": "missing"} for n in missing]
    if detail:
        raise RequestError(f"{len(detail)} feature values missing from feature rows: every feature the service "
                           f"was built with is required (send null for a missing value)", detail)


def _from_history(state, customers: list[CustomerInput], as_of: datetime) -> pd.DataFrame:
    columns = state.manifest["columns"]
    records: dict[str, list[dict]] = {"customers": [], "transactions": [], "events": []}
    for c in customers:
        records["customers"].append({"customer_id": c.customer_id, **(c.history.profile.model_dump()
                                                                     if c.history.profile else {})})
        records["transactions"] += [{"customer_id": c.customer_id, **t.model_dump()} for t in c.history.transactions]
        records["events"] += [{"customer_id": c.customer_id, **e.model_dump()} for e in c.history.events]
    _check_unique(records, customers)
    frames = {name: typed_records(name, records[name], cols) for name, cols in columns.items()}
    return state.query.run_frames(frames, as_of)


def _check_unique(records: dict[str, list[dict]], customers: list[CustomerInput]) -> None:
    detail = []
    for table, key in (("transactions", "transaction_id"), ("events", "event_id")):
        seen: set[str] = set()
        for record in records[table]:
            if record[key] in seen:
                detail.append({"loc": ["customers", "history", table, key], "msg": f"duplicate {key} "
                               f"{record[key]!r}", "type": "duplicate_id"})
            seen.add(record[key])
    ids = [c.customer_id for c in customers]
    if len(set(ids)) != len(ids):
        detail.append({"loc": ["customers", "customer_id"], "msg": "a customer's history is given twice",
                       "type": "duplicate_id"})
    if detail:
        raise RequestError("duplicate ids in the request's history records", detail)




