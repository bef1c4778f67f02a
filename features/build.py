"""Point-in-time feature table: the catalog's definitions assembled into one Ibis expression.

The expression is built over *unbound* tables named `customers`, `transactions`, `events` and `run_as_of` (one row,
one column `as_of`), so the same compiled SQL serves every path: a batch snapshot on DuckDB, the same definitions on
Spark, and one customer's row at request time (the same expression compiled for SQLite, `SQLiteFeatureRunner`, on
that customer's rows under the same names). Only records strictly before as_of are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache, cached_property
from importlib.metadata import version
from pathlib import Path

import duckdb
import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa

from features.catalog import (
    DAY_S,
    ENGAGEMENT_TYPES,
    EXACT_SUM_TYPE,
    FEATURE_SET_VERSION,
    Feature,
    available_features,
    ratio,
)
from features.contract import CONTRACTS, TIMESTAMP
from features.io import quote_ident, quote_literal, replace_atomically, session_cursor

AS_OF_TABLE = "run_as_of"
TOP_VALUE_WINDOW_DAYS = 365
FEATURE_DTYPES = {"int64": "int64", "float64": "float64", "string": "string", "boolean": "boolean"}


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
GAP_SUM_TYPE = "decimal(38, 0)"  # whole seconds, squared and summed exactly


def exact_sum_sql(column: str) -> str:
    """DuckDB SQL summing `column` as the catalog's `exact_sum` does, for the SQL outside the catalog (labels,
    baselines): a DECIMAL, the same whatever the rows' order."""
    return f"sum(CAST({column} AS {EXACT_SUM_TYPE}))"


def _prepared_transactions(t: ir.Table, as_of: ir.Value) -> ir.Table:
    t = t.filter(t.timestamp < as_of)
    return t.mutate(age_s=_age_s(t.timestamp, as_of), is_order=~t.is_return)


def _prepared_events(e: ir.Table, as_of: ir.Value) -> ir.Table:
    e = e.filter(e.timestamp < as_of)
    return e.mutate(age_s=_age_s(e.timestamp, as_of), is_engagement=e.event_type.isin(ENGAGEMENT_TYPES))


def _age_s(timestamp: ir.Value, as_of: ir.Value) -> ir.Value:
    """Whole seconds from the record to as_of (each floored to the second): every engine computes the same age
    (SQLite's and Spark's epochs are whole seconds, DuckDB's fractional), so a record on a window's edge falls on the
    same side everywhere."""
    return as_of.epoch_seconds().floor() - timestamp.epoch_seconds().floor()


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
    """Gaps between consecutive purchases (days): their sample standard deviation and the latest gap.

    The deviation comes from exact sums of the gaps in whole seconds, n * sum(g^2) - sum(g)^2 in integers, so it does
    not depend on the rows' order (DuckDB's var_samp combines its threads' partial states in varying order).
    """
    # Ties in time need no tie-break: whichever tied row comes first, the sorted times and their gaps are the same.
    w = ibis.window(group_by="customer_id", order_by="timestamp")
    gaps = orders.mutate(
        gap_s=orders.age_s.lag().over(w) - orders.age_s,
        is_last=orders.timestamp.lead().over(w).isnull(),
    )
    g = gaps.gap_s.cast(GAP_SUM_TYPE)  # 38 digits: a sum of squared gaps passes int64 at ~100 gaps of 10 years
    n = g.count()
    spread = (n * (g * g).sum() - g.sum() * g.sum()).cast("float64")
    return gaps.group_by("customer_id").aggregate(
        order_gap_std_days=ratio(spread, (n * (n - 1)).cast("float64")).sqrt() / DAY_S,
        order_gap_last_days=gaps.gap_s.max(where=gaps.is_last) / DAY_S,
    )


def _top_value(orders: ir.Table, column: str, names: dict[str, str]) -> ir.Table:
    """Most frequent value of `column` among the last year's purchases (ties alphabetical), its share, distinct count.

    A distinct count belongs here rather than in the transactions aggregate: there, DuckDB groups every purchase
    by (customer, value, filter) before filtering (2 s of CPU for products at 10M transactions); here the grouping
    runs on the last year's purchases only.

    `names` maps "top", "share", "distinct" to output feature names (only the wanted ones).
    """
    recent = orders.filter((orders.age_s <= TOP_VALUE_WINDOW_DAYS * DAY_S) & orders[column].notnull())
    counts = recent.group_by(["customer_id", column]).aggregate(n=recent.count())
    if set(names) == {"distinct"}:  # no ranking needed (e.g. products: a window over millions of pairs)
        return counts.group_by("customer_id").aggregate(**{names["distinct"]: counts.count()})
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


def arrow_to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table -> pandas, each Arrow column released as it converts and none gathered into 2-D blocks, so the
    table is never held twice (at 2M customers a feature table read back took 2.3 GB of RSS that way, 1.1 GB this
    way). `table` is unusable afterwards."""
    return table.to_pandas(self_destruct=True, split_blocks=True)


def to_feature_frame(raw: pd.DataFrame, features: list[Feature]) -> pd.DataFrame:
    """Cast an executed feature table to the catalog dtypes (a pure function; returns a new frame, which shares the
    columns already in their dtype until either frame writes them: pandas' copy on write)."""
    out = raw.astype({"customer_id": "string", **{f.name: FEATURE_DTYPES[f.dtype] for f in features}})
    out.attrs["feature_set_version"] = FEATURE_SET_VERSION
    return out.reset_index(drop=True)


def rows_to_feature_frame(names: list[str], rows: list[tuple], features: list[Feature]) -> pd.DataFrame:
    """`to_feature_frame` of rows fetched as Python tuples (columns `names`): the same values and dtypes, each column
    built in its catalog dtype at once, ~10x faster for the one row of a request than casting a frame column by
    column."""
    dtypes = {"customer_id": "string", **{f.name: FEATURE_DTYPES[f.dtype] for f in features}}
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    out = pd.DataFrame({name: _column(values, dtypes[name]) for name, values in zip(names, columns, strict=True)})
    out.attrs["feature_set_version"] = FEATURE_SET_VERSION
    return out


def _column(values: tuple, dtype: str):
    # NumPy builds plain number columns ~5x faster than pandas' array constructor (None -> NaN, as Arrow gives).
    return np.array(values, dtype=dtype) if dtype in ("float64", "int64") else pd.array(list(values), dtype=dtype)


SQL_CACHE_ENV = "SEGMENTS_SQL_CACHE"  # a folder for compiled feature SQL, or "off"
CACHED_DIALECTS = ("duckdb", "sqlite")


def cached_text(key: list, make: Callable[[], str]) -> str:
    """`make()`, kept in the SQL cache under `key` plus a hash of the features package's source and the compiler's
    versions, so a change to either compiles anew. The cache is best effort: a folder that cannot be read or
    written only means compiling; files are replaced whole, so concurrent commands never read half of one."""
    folder = _sql_cache_folder()
    if folder is None:
        return make()
    name = hashlib.sha256(json.dumps([_code_version(), key]).encode()).hexdigest()
    path = folder / f"{name}.sql"
    try:
        return path.read_text()
    except OSError:
        pass
    text = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda partial: partial.write_text(text))
    except OSError:
        pass
    return text


def _sql_cache_folder() -> Path | None:
    setting = os.environ.get(SQL_CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loyalty-segments" / "feature-sql"
    except RuntimeError:  # no home folder: compile every time
        return None


@cache
def _code_version() -> str:
    """Hash of every source file of the features package, with the Ibis and sqlglot versions."""
    digest = hashlib.sha256(f"{ibis.__version__} {version('sqlglot')}".encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _compiled(expr: ir.Table, dialect: str) -> str:
    """The expression's SQL on one line: only engines read it, and sqlglot's pretty printing was ~40% of compiling
    (0.15 of 0.37 s, paid by every command and twice at the service's start)."""
    return ibis.to_sql(expr, dialect=dialect, pretty=False)


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
        return self._sql_for(self.dialect)

    @cached_property
    def sqlite_sql(self) -> str:
        return self._sql_for("sqlite")

    def _sql_for(self, dialect: str) -> str:
        """The compiled SQL, from the SQL cache when this exact code compiled it before (Ibis takes 1.3-1.7 s, paid
        by every command and twice at the service's start). Spark's is always compiled: its compiler reads the
        session's Spark version."""
        if dialect not in CACHED_DIALECTS:
            return _compiled(self.expr, dialect)
        key = [dialect, self.columns, [f.name for f in self.features]]
        return cached_text(key, lambda: _compiled(self.expr, dialect))

    def run_frames(self, frames: dict[str, pd.DataFrame], as_of: datetime) -> pd.DataFrame:
        """Run on in-memory frames of clean, typed rows (e.g. one customer's history at request time)."""
        con = duckdb.connect()
        try:
            for name, frame in frames.items():
                con.register(name, frame)
            return self.run_duckdb(con, as_of)
        finally:
            con.close()

    def run_arrow(self, con, as_of: datetime):
        """Run on a DuckDB connection holding tables (or views) named like the contract tables -> Arrow table."""
        return self._relation(con, as_of).to_arrow_table()

    def _relation(self, con, as_of: datetime):
        """The feature query on `con` at `as_of`, not yet run."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {AS_OF_TABLE} AS SELECT ?::TIMESTAMP AS as_of", [as_of])
        return con.sql(self.sql)

    def run_batches(self, con, as_of: datetime, rows: int, part_customers: int | None = None
                    ) -> Iterator[pd.DataFrame]:
        """`run_duckdb`, `rows` customers at a time in customer order (at least one frame, empty for no customers):
        DuckDB keeps the sorted result within its memory limit, so only one batch is ever held in pandas.

        More customers than fit the connection's memory limit (`part_customers`, by default `customers_per_part`)
        are run in ranges of customer ids, one after the other: each customer's features read only their own rows,
        so the ranges give the same rows as one run, without the aggregates spilling to disk."""
        empty, schema = True, None
        for part in customer_parts(con, list(self.columns), part_customers or customers_per_part(con)):
            with part as restricted:
                reader = self._relation(restricted, as_of).to_arrow_reader(batch_size=rows)
                schema = reader.schema
                for batch in reader:
                    empty = False
                    yield to_feature_frame(arrow_to_frame(pa.Table.from_batches([batch])), self.features)
        if empty:
            yield to_feature_frame(arrow_to_frame(schema.empty_table()), self.features)

    def run_duckdb(self, con, as_of: datetime) -> pd.DataFrame:
        """Run on a DuckDB connection holding tables (or views) named like the contract tables -> pandas (the Arrow
        result released column by column as it converts: at 1M customers each copy is ~0.5 GB)."""
        return to_feature_frame(arrow_to_frame(self.run_arrow(con, as_of)), self.features)


# DuckDB memory one customer's aggregates take in the feature query: 1M customers (10M transactions) peaked at the
# 2 GB limit (1.8 GiB) without spilling, 2M spilled 2.6 GB and took 34 s against 27 s in two ranges (bench/README.md).
QUERY_BYTES_PER_CUSTOMER = 1_800


def customers_per_part(con) -> int:
    """How many customers one run of the feature query takes within the connection's memory limit."""
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # e.g. '1.8 GiB'
    number, unit = limit.split()
    if unit not in _MEMORY_UNITS:  # not a size DuckDB prints today: one run, as without ranges
        return 2**62
    return max(1, int(float(number) * _MEMORY_UNITS[unit] // QUERY_BYTES_PER_CUSTOMER))


_MEMORY_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
                 "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def customer_parts(con, tables: list[str], per_part: int) -> list:
    """Context managers, each giving a connection on which the contract `tables` hold one range of customer ids
    (ascending, together every customer): `con` itself when all fit in one part, else a cursor per range where
    temporary views of those names restrict the tables (in the database and schema `con` is using)."""
    source = "customers" if "customers" in tables else "transactions"
    count = "count(*)" if source == "customers" else "approx_count_distinct(customer_id)"  # customers are unique
    customers = con.execute(f"SELECT {count} FROM {source}").fetchone()[0]
    parts = -(-customers // per_part)
    if parts <= 1:
        return [contextlib.nullcontext(con)]
    quantiles = [i / parts for i in range(1, parts)]
    bounds = sorted(set(con.execute(f"SELECT quantile_disc(customer_id, {quantiles}) FROM {source}").fetchone()[0]))
    edges = [None, *bounds, None]
    return [_restricted(con, tables, low, high) for low, high in itertools.pairwise(edges)]


@contextlib.contextmanager
def _restricted(con, tables: list[str], low: str | None, high: str | None):
    database, schema = con.execute("SELECT current_database(), current_schema()").fetchone()
    where = " AND ".join([*([f"customer_id >= {quote_literal(low)}"] if low is not None else []),
                          *([f"customer_id < {quote_literal(high)}"] if high is not None else [])])
    cursor = session_cursor(con)  # its own temporary views, dropped with it
    try:
        cursor.execute(f"USE {quote_ident(database)}.{quote_ident(schema)}")
        for table in tables:
            cursor.execute(f"CREATE TEMP VIEW {quote_ident(table)} AS SELECT * FROM {quote_ident(database)}."
                           f"{quote_ident(schema)}.{quote_ident(table)} WHERE {where}")
        yield cursor
    finally:
        cursor.close()


class SQLiteFeatureRunner:
    """The feature SQL on a private in-memory SQLite database, for a few hundred rows per run (one customer's row at
    request time). One runner per thread: a sqlite3 connection stays in the thread that made it.

    DuckDB binds and plans the ~24 KB statement again on every run, prepared or not (~25 ms for one customer on 2
    cores, most of it binding); SQLite keeps it compiled (the sqlite3 statement cache) and runs one customer in a few
    ms. It is the same Ibis expression compiled for SQLite, equal to the DuckDB run on every feature
    (tests/test_realtime.py); ages are whole seconds there (STRFTIME('%s')), which the features floor to days or
    compare with windows of whole days.
    """

    def __init__(self, query: FeatureQuery, history: Path | None = None):
        """`history`: a file `write_runner_history` wrote, which `run_customer` reads a customer's rows from."""
        self.query = query
        self.con = ibis.sqlite.connect().con  # holds the _ibis_* functions the compiled SQL calls
        self.columns = runner_tables(query.columns)
        self._timestamp_at = {table: _timestamp_positions(table, names) for table, names in self.columns.items()}
        self._insert = {}
        for table, names in {**self.columns, AS_OF_TABLE: ["as_of"]}.items():
            self.con.execute(f"CREATE TABLE {table} ({_quoted(names)})")  # no column types: values are kept as bound
            self._insert[table] = f"INSERT INTO {table} VALUES ({', '.join('?' * len(names))})"
        self._from_history = self._attach(history) if history is not None else None
        _ = query.sqlite_sql  # compiled now, not on the first run (~0.5 s)

    def _attach(self, history: Path) -> dict[str, tuple[str, int]]:
        """Attach the history file read-only; per table, the statement copying one customer's rows into this
        runner's table, without the ids given as a JSON list (the posted rows that replace them), and where the id
        is in a row of `self.columns`."""
        # Immutable: written once by `segments build` (and replaced whole, never changed in place), so SQLite
        # skips file locking on every read.
        self.con.execute("ATTACH ? AS history", [Path(history).resolve().as_uri() + "?mode=ro&immutable=1"])
        statements = {}
        for table, names in self.columns.items():
            id_column = CONTRACTS[table].id_column
            copy = (f"INSERT INTO main.{table} SELECT {_quoted(names)} FROM history.{table} WHERE customer_id = ? "
                    f'AND ("{id_column}" IS NULL OR "{id_column}" NOT IN (SELECT value FROM json_each(?)))')
            statements[table] = (copy, names.index(id_column))
        return statements

    def run(self, rows: dict[str, list[tuple]], as_of: datetime) -> pd.DataFrame:
        """rows: contract table -> its rows as tuples of plain Python values, in `self.columns` order (tables left
        out are empty) -> the feature rows, as `FeatureQuery.run_duckdb` gives them."""
        for table in self.columns:
            self.con.execute(f"DELETE FROM {table}")
            self._add(table, rows.get(table, ()))
        return self._query(as_of)

    def run_customer(self, customer_id: str, posted: dict[str, list[tuple]], as_of: datetime) -> pd.DataFrame:
        """`run` on one customer's rows in the history, without those a posted row replaces (same id), followed by
        `posted` (contract table -> tuples of `self.columns`). The history rows never leave SQLite: a point read
        of an indexed file, where DuckDB's fixed cost per query was ~1 ms per table."""
        if self._from_history is None:
            raise RuntimeError("no history attached: give SQLiteFeatureRunner a history file")
        for table, (copy, at) in self._from_history.items():
            rows = posted.get(table, ())
            self.con.execute(f"DELETE FROM {table}")
            self.con.execute(copy, [customer_id, json.dumps([row[at] for row in rows])])
            self._add(table, rows)
        return self._query(as_of)

    def _add(self, table: str, rows) -> None:
        self.con.executemany(self._insert[table], [_with_text_times(row, self._timestamp_at[table]) for row in rows])

    def _query(self, as_of: datetime) -> pd.DataFrame:
        self.con.execute(f"DELETE FROM {AS_OF_TABLE}")
        self.con.execute(self._insert[AS_OF_TABLE], [_sqlite_time(as_of)])
        cursor = self.con.execute(self.query.sqlite_sql)
        out = rows_to_feature_frame([c[0] for c in cursor.description], cursor.fetchall(), self.query.features)
        self.con.commit()
        return out


def runner_tables(columns: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each contract table with the columns the feature expression reads, in the order `SQLiteFeatureRunner` binds
    them (transactions always with is_return); `columns`: the contract columns present."""
    return {name: list(table.columns) for name, table in unbound_tables(columns).items() if name != AS_OF_TABLE}


def write_runner_history(con: duckdb.DuckDBPyConnection, columns: dict[str, list[str]], path: Path,
                         batch_rows: int = 100_000, schema: str | None = None) -> None:
    """Copy the clean tables of `con` (DuckDB) into the SQLite file `SQLiteFeatureRunner(history=path)` reads one
    customer's rows from: the runner's columns, its text timestamps, its untyped values, sorted and indexed by
    customer. Written beside `path` and renamed, so a reader never sees a partial file.

    `schema`: read the tables of that attached database instead, already sorted by customer (`write_history`'s),
    in their stored order (the connection preserves insertion order): not sorted a second time."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    target = sqlite3.connect(partial)
    try:
        target.execute("PRAGMA journal_mode=OFF")  # a new file, renamed only when complete
        target.execute("PRAGMA synchronous=OFF")
        for table, names in runner_tables(columns).items():
            target.execute(f"CREATE TABLE {table} ({_quoted(names)})")  # untyped, as the runner's own tables
            insert = f"INSERT INTO {table} VALUES ({', '.join('?' * len(names))})"
            at = _timestamp_positions(table, names)
            cells = ", ".join(f"strftime(\"{n}\", '{SQLITE_TIME_FORMAT}')" if i in at else f'"{n}"'
                              for i, n in enumerate(names))
            source = f"{table} ORDER BY customer_id" if schema is None else f"{schema}.{table}"
            reader = con.sql(f"SELECT {cells} FROM {source}").to_arrow_reader(batch_rows)
            for batch in reader:
                target.executemany(insert, zip(*(column.to_pylist() for column in batch.columns), strict=True))
            target.execute(f"CREATE INDEX {table}_customer ON {table} (customer_id)")
        target.commit()
    finally:
        target.close()
    partial.replace(path)


# One text form for every timestamp, so SQLite's text comparisons order them as time does: Python's
# isoformat(" ", "microseconds") and DuckDB's strftime with this format give the same text (tests/test_realtime.py).
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", "microseconds")


def _timestamp_positions(table: str, names: list[str]) -> list[int]:
    return [i for i, name in enumerate(names) if CONTRACTS[table].columns.get(name) == TIMESTAMP]


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _with_text_times(row: tuple, at: list[int]) -> tuple:
    if not at:
        return row
    row = list(row)
    for i in at:
        row[i] = _sqlite_time(row[i])
    return tuple(row)
