"""Validation of the raw tables against the data contract, entirely in DuckDB SQL.

For every raw row the validator finds the first rule it breaks, in this priority order:

1. ``missing_key``: an id, ``customer_id`` or ``event_type`` is null or empty.
2. ``unparseable_timestamp``: ``timestamp`` is empty or not an ISO date/datetime.
3. ``non_numeric_amount``: ``amount`` is empty, not a number, NaN, infinite or beyond +-``MAX_ABS_AMOUNT``.
4. ``wrong_type``: a value of an optional typed column does not cast (``birth_year='abc'``,
   ``loyalty_member='maybe'``), or is a number that is not finite or beyond +-``MAX_ABS_AMOUNT``
   (``quantity=1e300``); the first such column in contract order is named.
5. ``negative_quantity``: ``quantity < 0`` on a row that is not a return.
6. ``future_timestamp``: ``timestamp`` after the run time (the run's wall clock, not a feature ``as_of``).
7. ``unknown_customer``: a transaction or event whose ``customer_id`` is in no row of the customers table
   (checked only when a customers table is given). A customer row quarantined for another reason (say a bad
   ``birth_year``) still makes its id known, so its good transactions and events are kept.
8. ``duplicate_id``: a repeated id; the first occurrence in file order among rows that pass rules 1-7 is kept.

Duplicates come last on purpose: a bad first occurrence is quarantined for its own reason and the next good
occurrence is kept, so a bad row never removes a good one.

Good rows go to clean tables named ``customers``, ``transactions`` and ``events`` in the same connection, with the
contract's canonical types; bad rows go to one quarantine table with the reason, the column and the raw value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from features.contract import (
    BIGINT,
    BOOLEAN,
    CONTRACTS,
    DOUBLE,
    KNOWN_EVENT_TYPES,
    MAX_ABS_AMOUNT,
    STRING,
    TIMESTAMP,
)
from features.errors import DataContractError
from features.io import (
    ROW_NUMBER_COLUMN,
    RawTable,
    RawTables,
    quote_ident,
    quote_literal,
    read_or_raise,
    unreadable,
)
from features.time import naive_utc

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["REASONS", "BadShareError", "DataContractError", "ValidationResult", "validate"]

# In priority order: a row is quarantined for the first rule it breaks.
REASONS = ("missing_key", "unparseable_timestamp", "non_numeric_amount", "wrong_type", "negative_quantity",
           "future_timestamp", "unknown_customer", "duplicate_id")  # fmt: skip
QUARANTINE_COLUMNS = ["table", "source", "row_number", "reason", "column", "value", "record"]
QUARANTINE_TABLE = "quarantine"
KNOWN_CUSTOMERS = "__known_customer_ids"
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_INTEGER_TYPES += tuple("U" + name for name in _INTEGER_TYPES)  # unsigned variants: UTINYINT ... UHUGEINT
_NUMERIC_TYPES = _INTEGER_TYPES + ("FLOAT", "DOUBLE", "DECIMAL")


class BadShareError(DataContractError):
    """Too many rows of a table broke the contract. ``result`` holds the full validation, so the caller can
    still write the quarantine for the user to inspect."""

    def __init__(self, message: str, result: ValidationResult):
        super().__init__(message)
        self.result = result


@dataclass
class ValidationResult:
    """What validation produced.

    Attributes:
        con: the DuckDB connection holding the clean tables (``customers``, ``transactions``, ``events``, only
            those present), the raw copies (``raw_<table>``) and the ``quarantine`` table.
        tables: names of the clean tables, in contract order.
        columns: table -> clean column names (contract columns present in the input, with canonical types, extra
            columns as they were; transactions always has BOOLEAN ``is_return``).
        quarantine: one row per bad row: table, source, row_number (1-based data row in the file; scan order for
            DuckDB tables), reason, column, value (raw value as text, '' when empty), record (raw row as JSON).
        counts: bad rows per table and reason: columns table, reason, rows.
        rows_in: table -> raw rows.
        rows_clean: table -> clean rows.
        sources: table -> file path or database table.
        run_time: the run's wall clock (naive UTC) used for ``future_timestamp``.
        max_bad_share: the limit the run was checked against.
        unknown_event_types: event types outside KNOWN_EVENT_TYPES in the clean events -> rows (kept, counted).
    """

    con: duckdb.DuckDBPyConnection
    tables: list[str]
    columns: dict[str, list[str]]
    quarantine: pd.DataFrame
    counts: pd.DataFrame
    rows_in: dict[str, int]
    rows_clean: dict[str, int]
    sources: dict[str, str]
    run_time: datetime
    max_bad_share: float
    unknown_event_types: dict[str, int] = field(default_factory=dict)

    def bad_share(self, table: str) -> float:
        """Share of the raw rows of ``table`` that were quarantined (0 for an empty table)."""
        rows = self.rows_in[table]
        return (rows - self.rows_clean[table]) / rows if rows else 0.0

    def write_quarantine(self, out_dir: Path) -> Path:
        """Write ``quarantine.parquet`` and ``quarantine.csv`` (same rows) into ``out_dir``; return the Parquet path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        parquet_path = out_dir / "quarantine.parquet"
        self.quarantine.to_parquet(parquet_path, index=False)
        self.quarantine.to_csv(out_dir / "quarantine.csv", index=False)
        return parquet_path

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per table: table, source, rows_in, rows_clean, quarantined, bad_share, reasons (text, all)."""
        rows = []
        for table in self.tables:
            counts = self.counts[self.counts["table"] == table]
            reasons = ", ".join(f"{r.reason} {r.rows:,}" for r in counts.itertuples())
            rows.append(
                {
                    "table": table,
                    "source": self.sources[table],
                    "rows_in": self.rows_in[table],
                    "rows_clean": self.rows_clean[table],
                    "quarantined": self.rows_in[table] - self.rows_clean[table],
                    "bad_share": self.bad_share(table),
                    "reasons": reasons,
                }
            )
        return rows

    def summary_table(self) -> Table:
        """A rich Table of ``summary_rows`` for the CLI to print."""
        from rich.table import Table  # only the CLI prints; keep rich out of library imports

        out = Table(title="Input validation", caption="Bad rows by reason; sources: " + ", ".join(
            f"{row['table']}={row['source']}" for row in self.summary_rows()))
        for name in ("table", "rows in", "clean", "bad", "bad share"):
            out.add_column(name, justify="left" if name == "table" else "right", no_wrap=True)
        out.add_column("reasons", justify="left")
        for row in self.summary_rows():
            out.add_row(
                row["table"],
                f"{row['rows_in']:,}",
                f"{row['rows_clean']:,}",
                f"{row['quarantined']:,}",
                f"{row['bad_share']:.2%}",
                (row["reasons"] or "-").replace(", ", "\n"),
            )
        return out


@dataclass(frozen=True)
class _Rule:
    """One contract rule: rows where ``condition`` holds break it; ``column`` is named in the quarantine."""

    reason: str
    column: str
    condition: str


@dataclass(frozen=True)
class _Column:
    """A contract column present in the input: its input spelling, input type and canonical type.

    In the validation query the raw value keeps its input name (``ref``); the parsed value is ``__p_<name>``
    and whether a value was given at all is ``__g_<name>``.
    """

    name: str
    source: str
    in_type: str
    target: str

    @property
    def ref(self) -> str:
        return quote_ident(self.source)

    @property
    def parsed_ref(self) -> str:
        return quote_ident(f"__p_{self.name}")

    @property
    def given_ref(self) -> str:
        return quote_ident(f"__g_{self.name}")


def validate(
    raw: RawTables, run_time: datetime | None = None, max_bad_share: float = 0.05
) -> ValidationResult:
    """Check every raw row against the contract; build clean tables and the quarantine in ``raw.con``.

    Args:
        raw: tables from ``features.io.load_raw``.
        run_time: the run's wall clock; rows stamped after it are ``future_timestamp``. Default: now (UTC).
            Naive values are UTC; aware values are converted to UTC.
        max_bad_share: largest share of bad rows a table may have before the run stops.

    Returns:
        ValidationResult (see its docstring for the clean tables and quarantine columns).

    Raises:
        BadShareError (a DataContractError): a table's share of bad rows exceeds ``max_bad_share``.
        DataContractError: a file cannot be read in full (e.g. a CSV row with more fields than the header).
    """
    run_time = naive_utc(run_time or datetime.now(UTC))
    con = raw.con
    con.execute(
        f'CREATE OR REPLACE TABLE {QUARANTINE_TABLE} ("table" VARCHAR, source VARCHAR, '
        'row_number BIGINT, reason VARCHAR, "column" VARCHAR, value VARCHAR, record VARCHAR)'
    )
    has_customers = "customers" in raw.tables
    rows_in = {}
    # Contract order: customers are clean before transactions and events look them up.
    for name in raw.present:
        rows_in[name] = _validate_table(con, raw.tables[name], run_time, has_customers)
    result = _collect(raw, rows_in, run_time, max_bad_share)
    _check_bad_share(result)
    return result


def _validate_table(
    con: duckdb.DuckDBPyConnection, table: RawTable, run_time: datetime, has_customers: bool
) -> int:
    """Check one raw table: append its bad rows to the quarantine, keep the good ones as the clean table
    ``<table.name>``. Returns the number of raw rows.

    The file is read once into a checked table that becomes the clean table in place (delete bad rows, drop
    helper columns, rename): at 10M rows a second copy of the string columns would cost more than the checks.
    """
    columns = _contract_columns(table)
    rules = _rules(table.name, columns, run_time, has_customers)
    checked = f"__checked_{table.name}"
    try:
        con.execute(f"CREATE OR REPLACE TABLE {checked} AS {_checked_sql(table, columns, rules)}")
    except duckdb.Error as exc:
        raise unreadable(table.source, table.name, exc) from exc
    rules.append(_Rule("duplicate_id", CONTRACTS[table.name].id_column, "false"))
    _mark_duplicates(con, checked, table, columns, rule_index=len(rules))
    rows_in = con.execute(f"SELECT count(*) FROM {checked}").fetchall()[0][0]
    if table.name == "customers":  # before bad rows go: see rule 7 in the module docstring
        con.execute(f"CREATE OR REPLACE TEMP TABLE {KNOWN_CUSTOMERS} AS "
                    f"SELECT DISTINCT customer_id FROM {checked} WHERE customer_id IS NOT NULL")
    con.execute(f"INSERT INTO {QUARANTINE_TABLE} {_quarantine_sql(table, rules, checked)}")
    con.execute(f"DELETE FROM {checked} WHERE __rule IS NOT NULL")
    for helper in ("__row", "__rule", "__value", "__record"):
        con.execute(f"ALTER TABLE {checked} DROP COLUMN {helper}")
    con.execute(f"DROP TABLE IF EXISTS {table.name}")
    con.execute(f"ALTER TABLE {checked} RENAME TO {table.name}")
    return rows_in


def _contract_columns(table: RawTable) -> dict[str, _Column]:
    """Contract columns found in the input (name -> _Column), in contract order."""
    found = {}
    for name, target in CONTRACTS[table.name].columns.items():
        source = table.find(name)
        if source is not None:
            found[name] = _Column(name, source, table.columns[source].upper(), target)
    return found


def _text(column: _Column) -> str:
    """The raw value as trimmed text, NULL when empty: empty cells in CSV mean missing, not bad."""
    if column.in_type == "VARCHAR":
        return f"NULLIF(TRIM({column.ref}), '')"
    return f"NULLIF(TRIM(CAST({column.ref} AS VARCHAR)), '')"


def _given(column: _Column) -> str:
    """True when the input holds a value (not null, not empty text)."""
    if column.in_type == "VARCHAR":
        return f"({_text(column)} IS NOT NULL)"
    return f"({column.ref} IS NOT NULL)"


def _parsed(column: _Column) -> str:
    """SQL giving the canonical typed value, NULL when missing or not castable (never an error)."""
    in_type, ref = column.in_type, column.ref
    if column.target == STRING:
        return _text(column)
    if column.target == TIMESTAMP:
        if "TIME ZONE" in in_type or in_type.startswith("TIMESTAMPTZ"):
            # UTC wall time, as the session zone is UTC; TIMESTAMPTZ_NS has no direct cast to TIMESTAMP.
            return f"CAST(CAST({ref} AS TIMESTAMPTZ) AS TIMESTAMP)"
        if in_type.startswith("TIMESTAMP") or in_type == "DATE":
            return f"CAST({ref} AS TIMESTAMP)"
        return _parse_timestamp(_text(column))
    if column.target == DOUBLE:
        if in_type.startswith(_NUMERIC_TYPES):
            return f"CAST({ref} AS DOUBLE)"
        return f"TRY_CAST({_text(column)} AS DOUBLE)"
    if column.target == BIGINT:
        if in_type.startswith(_INTEGER_TYPES):
            return f"TRY_CAST({ref} AS BIGINT)"
        # Accept '1980.0' (pandas writes integer columns with gaps as floats) but not '1980.5'.
        number = (
            f"TRY_CAST({_text(column)} AS DOUBLE)" if in_type == "VARCHAR" else f"TRY_CAST({ref} AS DOUBLE)"
        )
        return f"(CASE WHEN isfinite({number}) AND {number} = trunc({number}) THEN TRY_CAST({number} AS BIGINT) END)"
    if column.target == BOOLEAN:
        if in_type == "BOOLEAN":
            return ref
        if in_type.startswith(_NUMERIC_TYPES):
            return f"(CASE WHEN {ref} = 1 THEN true WHEN {ref} = 0 THEN false END)"
        word = f"lower({_text(column)})"
        return (
            f"(CASE WHEN {word} IN {_sql_tuple(TRUE_WORDS)} THEN true "
            f"WHEN {word} IN {_sql_tuple(FALSE_WORDS)} THEN false END)"
        )
    raise ValueError(f"no parser for canonical type {column.target} (column {column.name})")


def _parse_timestamp(text: str) -> str:
    """ISO date or datetime text -> naive UTC TIMESTAMP.

    A cast to TIMESTAMPTZ reads 'T', 'Z', offsets and zone names and, with the session zone UTC, converts to
    UTC; a cast to TIMESTAMP would silently drop an offset. The TIMESTAMPTZ cast is ~4x slower, so the two
    common zone-free shapes ('YYYY-MM-DD' and 'YYYY-MM-DD HH:MM:SS') take the fast cast.
    """
    zone_free = (
        f"(length({text}) = 10 AND {text}[5] = '-' AND {text}[8] = '-') "
        f"OR (length({text}) = 19 AND {text}[14] = ':' AND {text}[17] = ':')"
    )
    return (
        f"(CASE WHEN {zone_free} THEN TRY_CAST({text} AS TIMESTAMP) "
        f"ELSE CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP) END)"
    )


def _sql_tuple(words: tuple[str, ...]) -> str:
    return "(" + ", ".join(quote_literal(w) for w in words) + ")"


def _bad_value(column: _Column) -> str:
    """True when a value was given but is not valid for the column's canonical type."""
    value = column.parsed_ref
    if column.target == DOUBLE:
        return f"({column.given_ref} AND ({value} IS NULL OR NOT isfinite({value}) OR abs({value}) > {MAX_ABS_AMOUNT}))"
    return f"({column.given_ref} AND {value} IS NULL)"


def _is_return(columns: dict[str, _Column]) -> str:
    """A return is flagged (is_return) or given as a negative amount."""
    flagged = f"coalesce({columns['is_return'].parsed_ref}, false)" if "is_return" in columns else "false"
    return f"({flagged} OR coalesce({columns['amount'].parsed_ref} < 0, false))"


def _rules(table: str, columns: dict[str, _Column], run_time: datetime, has_customers: bool) -> list[_Rule]:
    """The row rules for one table in priority order (duplicate_id comes after, see _mark_duplicates)."""
    contract = CONTRACTS[table]
    required = [columns[name] for name in contract.required]
    rules = [_Rule("missing_key", c.name, f"NOT {c.given_ref}") for c in required if c.target == STRING]
    rules += [
        _Rule("unparseable_timestamp", c.name, f"{c.parsed_ref} IS NULL")
        for c in required
        if c.target == TIMESTAMP
    ]
    rules += [
        _Rule("non_numeric_amount", c.name,
              f"({c.parsed_ref} IS NULL OR NOT isfinite({c.parsed_ref}) OR abs({c.parsed_ref}) > {MAX_ABS_AMOUNT})")
        for c in required
        if c.target == DOUBLE
    ]
    optional_typed = [c for name, c in columns.items() if name in contract.optional and c.target != STRING]
    rules += [_Rule("wrong_type", c.name, _bad_value(c)) for c in optional_typed]
    if table == "transactions" and "quantity" in columns:
        condition = f"({columns['quantity'].parsed_ref} < 0 AND NOT {_is_return(columns)})"
        rules.append(_Rule("negative_quantity", "quantity", condition))
    if "timestamp" in contract.required:
        condition = f"{columns['timestamp'].parsed_ref} > TIMESTAMP '{run_time.isoformat(sep=' ')}'"
        rules.append(_Rule("future_timestamp", "timestamp", condition))
    if has_customers and table != "customers":
        condition = f"{columns['customer_id'].parsed_ref} NOT IN (SELECT customer_id FROM {KNOWN_CUSTOMERS})"
        rules.append(_Rule("unknown_customer", "customer_id", condition))
    return rules


def _checked_sql(table: RawTable, columns: dict[str, _Column], rules: list[_Rule]) -> str:
    """SELECT reading the raw view once, giving: __row, the clean columns (see _output_columns), __rule (1-based
    index of the first broken rule, NULL for a good row) and, for bad rows only, __value (the offending raw value
    as text) and __record (the raw row as JSON)."""
    parsed = [f"{_parsed(c)} AS {c.parsed_ref}, {_given(c)} AS {c.given_ref}" for c in columns.values()]
    first_broken = " ".join(f"WHEN {rule.condition} THEN {i}" for i, rule in enumerate(rules, start=1))
    raw_value = " ".join(
        f"WHEN {i} THEN CAST({columns[r.column].ref} AS VARCHAR)" for i, r in enumerate(rules, 1)
    )
    return f"""
        WITH parsed AS (SELECT *, {", ".join(parsed)} FROM {table.relation}),
        ruled AS (SELECT *, CASE {first_broken} END AS __rule FROM parsed)
        SELECT {ROW_NUMBER_COLUMN} AS __row, {", ".join(_output_columns(table, columns))}, __rule,
               CASE WHEN __rule IS NOT NULL THEN CASE __rule {raw_value} END END AS __value,
               CASE WHEN __rule IS NOT NULL THEN {_record_json(table)} END AS __record
        FROM ruled
    """


def _record_json(table: RawTable) -> str:
    """SQL giving the raw row as a JSON object text, keys as in the input."""
    pairs = ", ".join(f"{quote_literal(name)}, {quote_ident(name)}" for name in table.columns)
    return f"CAST(json_object({pairs}) AS VARCHAR)"


def _output_columns(table: RawTable, columns: dict[str, _Column]) -> list[str]:
    """Clean columns in input order: contract columns under their contract names and canonical types, extras as
    they were; transactions always end up with ``is_return`` (flagged or negative amount)."""
    by_source = {c.source: c for c in columns.values()}
    out = []
    for name in table.columns:
        column = by_source.get(name)
        if column is None:
            out.append(quote_ident(name))
        elif table.name == "transactions" and column.name == "is_return":
            out.append(f'{_is_return(columns)} AS "is_return"')
        else:
            out.append(f"{column.parsed_ref} AS {quote_ident(column.name)}")
    if table.name == "transactions" and "is_return" not in columns:
        out.append(f'{_is_return(columns)} AS "is_return"')
    return out


def _mark_duplicates(
    con: duckdb.DuckDBPyConnection,
    checked: str,
    table: RawTable,
    columns: dict[str, _Column],
    rule_index: int,
) -> None:
    """Among rows that pass every other rule, keep the first row of each id (file order); mark the rest.

    Candidates are ids whose 64-bit hash equals the previous one in hash order: sorting 10M integers is cheaper
    than grouping 10M strings, and a hash collision only adds candidates (the ranking is on the id itself).
    Marked rows get their raw value and record from the raw view, read again only when there are duplicates.
    """
    key = quote_ident(CONTRACTS[table.name].id_column)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE __duplicates AS
        WITH hashes AS (SELECT hash({key}) AS h FROM {checked} WHERE __rule IS NULL),
        repeated AS (SELECT h FROM (SELECT h, lag(h) OVER (ORDER BY h) AS previous FROM hashes) WHERE h = previous)
        SELECT __row FROM (
            SELECT __row, row_number() OVER (PARTITION BY {key} ORDER BY __row) AS occurrence
            FROM {checked} WHERE __rule IS NULL AND hash({key}) IN (SELECT h FROM repeated)
        ) WHERE occurrence > 1
    """)
    if con.execute("SELECT count(*) FROM __duplicates").fetchall()[0][0]:
        raw_key = columns[CONTRACTS[table.name].id_column].ref
        sql = f"""
            UPDATE {checked} SET __rule = {rule_index}, __value = raw.value, __record = raw.record
            FROM (SELECT {ROW_NUMBER_COLUMN} AS __row, CAST({raw_key} AS VARCHAR) AS value,
                         {_record_json(table)} AS record
                  FROM {table.relation} WHERE {ROW_NUMBER_COLUMN} IN (SELECT __row FROM __duplicates)) AS raw
            WHERE {checked}.__row = raw.__row
        """
        read_or_raise(con, sql, table)
    con.execute("DROP TABLE __duplicates")


def _quarantine_sql(table: RawTable, rules: list[_Rule], checked: str) -> str:
    """SELECT of the quarantine rows of one table (columns as QUARANTINE_COLUMNS), in file order."""
    reason = " ".join(f"WHEN {i} THEN {quote_literal(r.reason)}" for i, r in enumerate(rules, start=1))
    column = " ".join(f"WHEN {i} THEN {quote_literal(r.column)}" for i, r in enumerate(rules, start=1))
    return f"""
        SELECT {quote_literal(table.name)}, {quote_literal(table.source)}, __row,
               CASE __rule {reason} END, CASE __rule {column} END, coalesce(__value, ''), __record
        FROM {checked} WHERE __rule IS NOT NULL ORDER BY __row
    """


def _collect(
    raw: RawTables, rows_in: dict[str, int], run_time: datetime, max_bad_share: float
) -> ValidationResult:
    """Gather counts, columns and the quarantine frame from the connection."""
    con = raw.con
    tables = raw.present
    quarantine = con.execute(
        f'SELECT * FROM {QUARANTINE_TABLE} ORDER BY list_position({_sql_list(tables)}, "table"), row_number'
    ).df()[QUARANTINE_COLUMNS]
    counts = (
        con.execute(
            f'SELECT "table", reason, count(*) AS rows, list_position({_sql_list(tables)}, any_value("table")) '
            f'AS table_order FROM {QUARANTINE_TABLE} GROUP BY "table", reason '
            "ORDER BY table_order, rows DESC, reason"
        )
        .df()
        .drop(columns="table_order")
    )
    columns = {
        t: [row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {t})").fetchall()]
        for t in tables
    }
    rows_clean = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    return ValidationResult(
        con=con,
        tables=tables,
        columns=columns,
        quarantine=quarantine,
        counts=counts,
        rows_in=rows_in,
        rows_clean=rows_clean,
        sources={t: raw.source(t) for t in tables},
        run_time=run_time,
        max_bad_share=max_bad_share,
        unknown_event_types=_unknown_event_types(con, tables),
    )


def _sql_list(names: list[str]) -> str:
    return "[" + ", ".join(quote_literal(n) for n in names) + "]"


def _unknown_event_types(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, int]:
    """Event types outside the known list, with row counts (kept, not rejected: DESIGN.md section 3)."""
    if "events" not in tables:
        return {}
    rows = con.execute(
        f"SELECT event_type, count(*) FROM events WHERE event_type NOT IN {_sql_tuple(KNOWN_EVENT_TYPES)} "
        "GROUP BY ALL ORDER BY 2 DESC, 1"
    ).fetchall()
    return dict(rows)


def _check_bad_share(result: ValidationResult) -> None:
    """Stop the run when any table has more bad rows than allowed; the message says where and how to fix."""
    problems = [
        _bad_share_message(result, t) for t in result.tables if result.bad_share(t) > result.max_bad_share
    ]
    if problems:
        needed = max(result.bad_share(t) for t in result.tables)
        raise BadShareError(
            " ".join(problems)
            + f" Fix the input, or raise the limit with --max-bad-share {_round_up(needed)} "
            "(the quarantine lists every bad row).",
            result,
        )


def _bad_share_message(result: ValidationResult, table: str) -> str:
    """One sentence per failing table: file, share, limit, top reasons and the column with most failures."""
    bad = result.quarantine[result.quarantine["table"] == table]
    reasons = bad.groupby("reason").size().sort_values(ascending=False, kind="stable").head(3)
    top = ", ".join(f"{reason} {rows:,}" for reason, rows in reasons.items())
    column = bad.groupby("column").size().sort_values(ascending=False, kind="stable")
    return (
        f"{result.sources[table]}: {result.bad_share(table):.1%} of {table} rows "
        f"({len(bad):,} of {result.rows_in[table]:,}) break the data contract, over the limit of "
        f"{result.max_bad_share:.1%}. Top reasons: {top}. Column with most failures: '{column.index[0]}' "
        f"({column.iloc[0]:,} {'row' if column.iloc[0] == 1 else 'rows'})."
    )


def _round_up(share: float) -> float:
    """A limit just above ``share``, readable on a command line (e.g. 0.123 -> 0.13)."""
    return min(1.0, (int(share * 100) + 1) / 100)
