"""Point-in-time feature table: the catalog's definitions assembled into one Ibis expression.

The expression is built over *unbound* tables named `customers`, `transactions`, `events` and `run_as_of` (one row,
one column `as_of`), so the same compiled SQL serves every path: a batch snapshot on DuckDB, the same definitions on
Spark, and one customer's row at request time (bind that customer's rows under the same names; there as_of comes from
a DuckDB variable instead of the one-row table, `FeatureQuery.prepared_sql`). Only records strictly before as_of are
read.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property

import duckdb
import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from features.catalog import DAY_S, ENGAGEMENT_TYPES, FEATURE_SET_VERSION, Feature, available_features
from features.contract import CONTRACTS

AS_OF_TABLE = "run_as_of"
AS_OF_VARIABLE = "feature_as_of"  # where the prepared statement reads as_of (`SET VARIABLE`, one per connection)
TOP_VALUE_WINDOW_DAYS = 365
_PANDAS_DTYPES = {"int64": "int64", "float64": "float64", "string": "string", "boolean": "boolean"}


def unbound_tables(columns: dict[str, list[str]]) -> dict[str, ir.Table]:
    """Unbound Ibis tables for the contract columns present; `columns` maps table name to its columns."""
    tables = {}
    for name, cols in columns.items():
        contract = CONTRACTS[name]
        schema = {c: _ibis_type(contract.columns[c]) for c in cols if c in contract.columns}
        if name == "transactions":
            schema["is_return"] = "boolean"  # validation always derives it
        tables[name] = ibis.table(schema, name=name)
    tables[AS_OF_TABLE] = ibis.table({"as_of": "timestamp"}, name=AS_OF_TABLE)
    return tables


def _ibis_type(duckdb_type: str) -> str:
    return {"VARCHAR": "string", "TIMESTAMP": "timestamp", "DOUBLE": "float64", "BIGINT": "int64",
            "BOOLEAN": "boolean"}[duckdb_type]


# A purchase (an order) is a transaction that is not a return; validation sets is_return for negative amounts too.
# The feature query's `is_order` and the SQL of labels and baselines (PURCHASE_SQL) state this one rule.
PURCHASE_SQL = "NOT is_return"


def _prepared_transactions(t: ir.Table, as_of: ir.Value) -> ir.Table:
    t = t.filter(t.timestamp < as_of)
    return t.mutate(age_s=as_of.epoch_seconds() - t.timestamp.epoch_seconds(), is_order=~t.is_return)


def _prepared_events(e: ir.Table, as_of: ir.Value) -> ir.Table:
    e = e.filter(e.timestamp < as_of)
    return e.mutate(age_s=as_of.epoch_seconds() - e.timestamp.epoch_seconds(),
                    is_engagement=e.event_type.isin(ENGAGEMENT_TYPES))


def _known_customers(tables: dict[str, ir.Table], as_of: ir.Value, parts: list[ir.Table]) -> ir.Table:
    """Customers known at as_of: signed up before it (or sign-up unknown), or with any record before it.

    Customers with records are read off the per-customer aggregates (`parts`) instead of scanning the tables again.
    """
    ids = [part.select("customer_id") for part in parts]
    if "customers" in tables:
        c = tables["customers"]
        if "signup_date" in c.columns:
            c = c.filter(c.signup_date.isnull() | (c.signup_date < as_of))
        ids.append(c.select("customer_id"))
    return ibis.union(*ids, distinct=True) if len(ids) > 1 else ids[0].distinct()


def _joined(known: ir.Table, parts: list[ir.Table]) -> ir.Table:
    """The known customers left-joined to every per-customer part.

    One join chain compiles to one SELECT. A join then a projection per part nested two SELECT levels per part, which
    DuckDB binds on every run of the single-customer path: one chain took that run from 20.6 to 18.4 ms and a
    20,000-customer batch from 1.08 to 0.75 s (same rows)."""
    chain = known
    for part in parts:
        chain = chain.left_join(part, known.customer_id == part.customer_id)
    return chain.select(known.customer_id, *(part[c] for part in parts for c in part.columns if c != "customer_id"))


def _aggregate(prepared: ir.Table, specs: list[Feature]) -> ir.Table:
    """One row per customer with records, with the given aggregate features (none: just the customer ids)."""
    if not specs:
        return prepared.select("customer_id").distinct()
    return prepared.group_by("customer_id").aggregate(**{f.name: f.expr(prepared) for f in specs})


def _purchase_gaps(orders: ir.Table) -> ir.Table:
    """Gaps between consecutive purchases (days): their sample standard deviation and the latest gap."""
    # Ties in time need no tie-break: whichever tied row comes first, the sorted times and their gaps are the same.
    w = ibis.window(group_by="customer_id", order_by="timestamp")
    gaps = orders.mutate(
        gap_days=(orders.age_s.lag().over(w) - orders.age_s) / DAY_S,
        is_last=orders.timestamp.lead().over(w).isnull(),
    )
    return gaps.group_by("customer_id").aggregate(
        order_gap_std_days=gaps.gap_days.std(how="sample"),
        order_gap_last_days=gaps.gap_days.max(where=gaps.is_last),
    )


def _top_value(orders: ir.Table, column: str, names: dict[str, str]) -> ir.Table:
    """Most frequent value of `column` among the last year's purchases (ties alphabetical), its share, distinct count.

    `names` maps "top", "share", "distinct" to output feature names (only the wanted ones).
    """
    recent = orders.filter((orders.age_s <= TOP_VALUE_WINDOW_DAYS * DAY_S) & orders[column].notnull())
    counts = recent.group_by(["customer_id", column]).aggregate(n=recent.count())
    rank = ibis.row_number().over(group_by="customer_id", order_by=[ibis.desc("n"), column])
    ranked = counts.mutate(rank=rank, total=counts.n.sum().over(group_by="customer_id"))
    metrics = {"top": ranked[column].max(where=ranked["rank"] == 0),
               "share": (ranked.n.max(where=ranked["rank"] == 0) / ranked.total.max()).cast("float64"),
               "distinct": ranked.count()}
    return ranked.group_by("customer_id").aggregate(**{names[k]: v for k, v in metrics.items() if k in names})


def _top_names(specs: list[Feature]) -> dict[str, str]:
    """Map each declared top-value feature to its role: the distinct count, the favourite's share, or the value."""
    def role(name: str) -> str:
        return "distinct" if name.startswith("distinct_") else "share" if "_share_" in name else "top"

    return {role(f.name): f.name for f in specs}


def feature_expr(tables: dict[str, ir.Table], as_of: ir.Value | None = None,
                 features: list[Feature] | None = None) -> ir.Table:
    """The feature table as one Ibis expression: customer_id plus one column per available feature.

    Args:
        tables: `customers` (optional), `transactions` (required), `events` (optional) with the contract's clean
            columns (transactions also with `is_return`), and `run_as_of` unless `as_of` is given.
        as_of: scalar timestamp expression; by default the single value of the `run_as_of` table.
        features: a subset of the catalog; by default every feature whose raw columns are present.
    """
    if as_of is None:
        as_of = tables[AS_OF_TABLE].as_of.max().as_scalar()
    columns = {name: list(t.columns) for name, t in tables.items() if name in CONTRACTS}
    wanted = features if features is not None else available_features(columns)
    by_source: dict[str, list[Feature]] = {}
    for f in wanted:
        by_source.setdefault(f.source, []).append(f)

    parts: list[ir.Table] = []
    activity: list[ir.Table] = []  # one per-customer aggregate per table with records, always present
    if "transactions" in tables:
        txn = _prepared_transactions(tables["transactions"], as_of)
        orders = txn.filter(txn.is_order)
        parts.append(_aggregate(txn, by_source.get("transactions", [])))
        activity.append(parts[-1])
        if by_source.get("gaps"):
            parts.append(_purchase_gaps(orders))
        for source, specs in by_source.items():
            if source.startswith("top:"):
                parts.append(_top_value(orders, source.split(":")[1], _top_names(specs)))
    if "events" in tables:
        parts.append(_aggregate(_prepared_events(tables["events"], as_of), by_source.get("events", [])))
        activity.append(parts[-1])
    if "customers" in tables and by_source.get("customers"):
        c = tables["customers"]
        parts.append(c.select("customer_id", **{f.name: f.expr(c, as_of) for f in by_source["customers"]}))

    row = _joined(_known_customers(tables, as_of, activity), parts)
    row = row.mutate(**{f.name: row[f.name].fill_null(f.fill) for f in wanted
                        if f.fill is not None and f.source != "derived"})
    for f in by_source.get("derived", []):  # declared after their inputs, so one pass in order suffices
        row = row.mutate(**{f.name: f.expr(row)})
    return row.select("customer_id", *(f.name for f in wanted)).order_by("customer_id")


def to_feature_frame(raw: pd.DataFrame, features: list[Feature]) -> pd.DataFrame:
    """Cast an executed feature table to the catalog dtypes (a pure function; returns a new frame)."""
    out = raw.copy()
    out["customer_id"] = out["customer_id"].astype("string")
    for f in features:
        out[f.name] = out[f.name].astype(_PANDAS_DTYPES[f.dtype])
    out.attrs["feature_set_version"] = FEATURE_SET_VERSION
    return out.reset_index(drop=True)


def rows_to_feature_frame(names: list[str], rows: list[tuple], features: list[Feature]) -> pd.DataFrame:
    """`to_feature_frame` of rows fetched as Python tuples (columns `names`): the same values and dtypes, each column
    built in its catalog dtype at once, ~10x faster for the one row of a request than casting a frame column by
    column."""
    dtypes = {"customer_id": "string", **{f.name: _PANDAS_DTYPES[f.dtype] for f in features}}
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    out = pd.DataFrame({name: _column(values, dtypes[name]) for name, values in zip(names, columns, strict=True)})
    out.attrs["feature_set_version"] = FEATURE_SET_VERSION
    return out


def _column(values: tuple, dtype: str):
    # NumPy builds plain number columns ~5x faster than pandas' array constructor (None -> NaN, as Arrow gives).
    return np.array(values, dtype=dtype) if dtype in ("float64", "int64") else pd.array(list(values), dtype=dtype)


@ibis.udf.scalar.builtin(name="getvariable")
def _variable(name: str) -> dt.timestamp:
    """DuckDB's getvariable(name): the connection's value of a `SET VARIABLE`."""


class FeatureQuery:
    """The feature SQL for one set of present columns, compiled once and run many times.

    Batch snapshots, the Spark path and the single-customer path all run this same SQL; only the tables bound to
    the names `customers`, `transactions`, `events` and `run_as_of` change.
    """

    def __init__(self, columns: dict[str, list[str]], features: list[Feature] | None = None,
                 dialect: str = "duckdb"):
        self.columns = {k: list(v) for k, v in columns.items() if k in CONTRACTS}
        self.features = features if features is not None else available_features(self.columns)
        self.dialect = dialect

    @cached_property
    def expr(self) -> ir.Table:
        return feature_expr(unbound_tables(self.columns), features=self.features)

    @cached_property
    def sql(self) -> str:
        return ibis.to_sql(self.expr, dialect=self.dialect)

    @cached_property
    def prepared_sql(self) -> str:
        """The same expression with as_of read from the DuckDB variable AS_OF_VARIABLE, not from the run_as_of
        table: a scalar instead of a subquery at each of its ~10 uses, which DuckDB binds ~7% faster per run."""
        as_of = _variable(AS_OF_VARIABLE).name("as_of")
        return ibis.to_sql(feature_expr(unbound_tables(self.columns), as_of, self.features), dialect="duckdb")

    def run_frames(self, frames: dict[str, pd.DataFrame], as_of: datetime) -> pd.DataFrame:
        """Run on in-memory frames of clean, typed rows (e.g. one customer's history at request time)."""
        con = duckdb.connect()
        try:
            for name, frame in frames.items():
                con.register(name, frame)
            return self.run_duckdb(con, as_of)
        finally:
            con.close()

    def prepare(self, con, name: str = "feature_row") -> None:
        """Prepare the feature SQL once on `con` as the statement `name`, for `run_prepared`.

        `con` must hold tables named like the contract tables when `run_prepared` runs (e.g. temp tables refilled per
        call). Suited to one long-lived connection per thread that runs the same SQL on many small inputs (one
        customer at request time): the large SQL (`prepared_sql`) is not parsed again per run (DuckDB 2.0 still
        re-binds and re-plans it on each EXECUTE).
        """
        con.execute(f"SET VARIABLE {AS_OF_VARIABLE} = NULL::TIMESTAMP")
        con.execute(f"PREPARE {name} AS {self.prepared_sql}")

    def run_prepared(self, con, as_of: datetime, name: str = "feature_row") -> pd.DataFrame:
        """Run the statement made by `prepare` on what the connection's tables hold now -> pandas (as run_duckdb)."""
        con.execute(f"SET VARIABLE {AS_OF_VARIABLE} = ?::TIMESTAMP", [as_of])
        result = con.execute(f"EXECUTE {name}")
        # Python tuples, not Arrow: for a few rows, Arrow -> pandas and a cast per column cost more than the query.
        return rows_to_feature_frame([c[0] for c in result.description], result.fetchall(), self.features)

    def run_arrow(self, con, as_of: datetime):
        """Run on a DuckDB connection holding tables (or views) named like the contract tables -> Arrow table."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {AS_OF_TABLE} AS SELECT ?::TIMESTAMP AS as_of", [as_of])
        return con.sql(self.sql).to_arrow_table()

    def run_duckdb(self, con, as_of: datetime) -> pd.DataFrame:
        """Run on a DuckDB connection holding tables (or views) named like the contract tables -> pandas."""
        return to_feature_frame(self.run_arrow(con, as_of).to_pandas(), self.features)
