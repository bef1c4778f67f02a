"""A stratified customer sample for training large programmes: every kind of one run learns from the same customers.

Above `max_customers`, training reads a sample: customers are grouped by their purchases before the cut-off (recency
x number of orders) and every group keeps the same share, the customers with the smallest hash of their id (the same
data and budget give the same sample). Whole customers are kept with every record of theirs, so features, labels,
customer folds and the out-of-time evaluation are what they would be on those customers without a sample; the
fitted models then score everyone. Each group keeps at least one customer, so the sample can exceed the budget by
the number of groups (at most 20).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.build import PURCHASE_SQL
from features.io import duckdb_memory, quote_literal, session_cursor
from features.validate import ValidationResult

DEFAULT_MAX_CUSTOMERS = 100_000

STRATA_SQL = f"""
WITH ids AS ({{ids}}),
activity AS (
    SELECT customer_id, count(*) AS orders, max(timestamp) AS last_order FROM transactions
    WHERE {PURCHASE_SQL} AND timestamp < $as_of GROUP BY customer_id),
strata AS (
    SELECT ids.customer_id,
           CASE WHEN last_order IS NULL THEN 'no order'
                WHEN last_order >= $as_of - INTERVAL 90 DAY THEN 'last order within 90 days'
                WHEN last_order >= $as_of - INTERVAL 365 DAY THEN 'last order 91-365 days ago'
                ELSE 'last order over a year ago' END AS recency,
           CASE WHEN orders IS NULL THEN '0' WHEN orders = 1 THEN '1' WHEN orders <= 4 THEN '2-4'
                WHEN orders <= 9 THEN '5-9' ELSE '10+' END AS orders
    FROM ids LEFT JOIN activity USING (customer_id)),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY recency, orders ORDER BY hash(customer_id), customer_id) AS position,
           count(*) OVER (PARTITION BY recency, orders) AS group_size
    FROM strata)
SELECT customer_id, recency, orders, position <= ceil(group_size * $share) AS kept FROM ranked
"""


@dataclass(frozen=True)
class CustomerSample:
    """A drawn sample: the validation result reading only the sampled customers, and how it was drawn."""

    validation: ValidationResult
    customers: int  # in the data
    kept: int
    max_customers: int
    strata: pd.DataFrame  # recency, orders, customers, kept

    def summary(self) -> dict:
        return {"customers": self.customers, "kept": self.kept, "max_customers": self.max_customers,
                "strata": "recency x orders before as_of"}

    @property
    def note(self) -> str:
        return (f"trained and evaluated on a stratified sample of {self.kept:,} of {self.customers:,} customers "
                f"(--max-customers {self.max_customers:,}; groups by recency x orders before as_of keep equal "
                "shares); the models score every customer")


_DRAWS = itertools.count(1)


def customer_count(validation: ValidationResult) -> int:
    return validation.con.execute(f"SELECT count(*) FROM ({_ids_sql(validation)})").fetchone()[0]


def draw_sample(validation: ValidationResult, as_of: datetime, max_customers: int) -> CustomerSample | None:
    """The sample when the data holds more than `max_customers` customers (0: no limit), else None.

    The sampled tables live in a database attached to the validation's connection (DuckDB copies them without a
    round trip through Python), one per draw, on disk beside the working database (so within its memory limit); the
    returned validation's connection is a cursor that reads them.
    """
    customers = customer_count(validation)
    if not max_customers or customers <= max_customers:
        return None
    con, database = validation.con, f"training_sample_{next(_DRAWS)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE sample_strata AS {STRATA_SQL.format(ids=_ids_sql(validation))}",
                {"as_of": as_of, "share": max_customers / customers})
    con.execute(f"ATTACH {quote_literal(_beside_working_database(con, database))} AS {database}")
    for table in validation.tables:
        con.execute(f"CREATE TABLE {database}.{table} AS SELECT * FROM main.{table} "
                    "WHERE customer_id IN (SELECT customer_id FROM sample_strata WHERE kept)")
    strata = con.execute("""SELECT recency, orders, count(*) AS customers, count(*) FILTER (WHERE kept) AS kept
                            FROM sample_strata GROUP BY ALL ORDER BY ALL""").df()
    con.execute("DROP TABLE sample_strata")
    _release_cached_pages(con)
    cursor = session_cursor(con)
    cursor.execute(f"USE {database}")
    rows_clean = {t: cursor.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in validation.tables}
    sampled = dataclasses.replace(validation, con=cursor, rows_clean=rows_clean)
    return CustomerSample(sampled, customers, int(strata["kept"].sum()), max_customers, strata)


def _release_cached_pages(con) -> None:
    """Drop the pages of the whole tables that DuckDB keeps cached after copying the sample out of them (1.4 GB of
    a 2M-customer programme's; training reads the sample): lowering the memory limit for a moment evicts them. Only
    for a working database on disk, whose pages are read back from the file if ever needed."""
    if not _working_database_path(con):
        return
    con.execute("SET memory_limit = '256MB'")
    con.execute(f"SET memory_limit = {quote_literal(duckdb_memory())}")


def _beside_working_database(con, name: str) -> str:
    """A database file next to the connection's own (features.io keeps it in a temporary folder), or in memory
    for an in-memory connection."""
    path = _working_database_path(con)
    return str(Path(path).with_name(f"{name}.duckdb")) if path else ":memory:"


def _working_database_path(con) -> str | None:
    """The file of the connection's database; None (or empty) in memory."""
    return con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()[0]


def _ids_sql(validation: ValidationResult) -> str:
    """Every customer the tables mention (the customers table may lack some that have records)."""
    return " UNION ".join(f"SELECT customer_id FROM main.{t}" for t in validation.tables)
