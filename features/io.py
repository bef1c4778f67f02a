"""Reading the raw input tables (customers, transactions, events) into one in-memory DuckDB connection.

The input is a folder with ``<table>.csv`` (or ``.csv.gz``) or ``<table>.parquet`` files, or a DuckDB database file
(``*.duckdb`` / ``*.db``) holding tables of those names (DESIGN.md section 3). Each table is copied as it is into the
connection as ``raw_<table>``: CSV with every column as VARCHAR, so that a bad value reaches the validator as the
text the user wrote instead of being coerced or rejected by type sniffing; Parquet and DuckDB tables with their own
types. Nothing is checked here beyond what makes a table unusable as a whole (missing, unreadable, ambiguous, a
required column absent); row-level rules live in ``features.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from features.contract import CONTRACTS
from features.errors import DataContractError

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet",)
DATABASE_SUFFIXES = (".duckdb", ".db")
RAW_PREFIX = "raw_"
# Holds the file row number only when the input has its own column called "rowid" (which hides DuckDB's).
ROW_NUMBER_COLUMN = "__row_number"


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB SQL (column names come from user files and may hold anything)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote a string literal for DuckDB SQL."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class RawTable:
    """One raw input table as loaded into the connection.

    Attributes:
        name: contract table name (customers, transactions or events).
        source: where it came from, for messages: the file path, or ``<database file>:<table>``.
        kind: ``csv``, ``parquet`` or ``duckdb``.
        relation: name of the raw copy inside the connection (``raw_<name>``).
        columns: input column name -> DuckDB type, in input order (all VARCHAR for CSV).
        rows: number of data rows.
        row_column: the column holding the 1-based row number when the input hides DuckDB's ``rowid`` with its
            own column of that name; None otherwise (the row number is then ``rowid + 1``).
    """

    name: str
    source: str
    kind: str
    relation: str
    columns: dict[str, str]
    rows: int
    row_column: str | None = None

    def row_number_sql(self, alias: str = "") -> str:
        """SQL giving the 1-based data row number (file order; scan order for a DuckDB table)."""
        prefix = f"{alias}." if alias else ""
        return f"{prefix}{self.row_column}" if self.row_column else f"({prefix}rowid + 1)"

    def find(self, column: str) -> str | None:
        """The input's spelling of a contract column (DuckDB matches names case-insensitively), or None."""
        wanted = column.lower()
        return next((c for c in self.columns if c.lower() == wanted), None)


@dataclass
class RawTables:
    """The raw tables of one input, held in one in-memory DuckDB connection.

    Attributes:
        con: the connection; raw copies are named ``raw_<table>``; ``features.validate`` adds the clean tables.
        tables: contract table name -> RawTable, only for tables present in the input.
    """

    con: duckdb.DuckDBPyConnection
    tables: dict[str, RawTable]

    @property
    def present(self) -> list[str]:
        """Names of the tables present, in contract order (customers, transactions, events)."""
        return [name for name in CONTRACTS if name in self.tables]

    @property
    def row_counts(self) -> dict[str, int]:
        """Table name -> number of raw rows."""
        return {name: table.rows for name, table in self.tables.items()}

    def source(self, name: str) -> str:
        """Where table ``name`` came from (file path or database table), for messages."""
        return self.tables[name].source


def load_raw(source: Path) -> RawTables:
    """Load the raw tables from a folder of CSV/Parquet files or from a DuckDB database file.

    Args:
        source: a folder holding ``transactions.csv|parquet`` (required) and optionally ``customers.*`` and
            ``events.*``; or a ``*.duckdb`` / ``*.db`` file with tables of those names.

    Returns:
        RawTables with one in-memory DuckDB connection (session time zone UTC) holding ``raw_<table>`` copies.

    Raises:
        DataContractError: the source or the transactions table is missing, a file is unreadable, a table is
            given both as CSV and Parquet, or a required column is missing.
    """
    source = Path(source)
    if not source.exists():
        raise DataContractError(
            f"Input {source} does not exist. Give a folder holding transactions.csv or transactions.parquet "
            "(customers and events are optional), or a DuckDB database file (*.duckdb, *.db)."
        )
    con = _connect()
    try:
        if source.is_dir():
            tables = _load_folder(con, source)
        elif source.name.lower().endswith(DATABASE_SUFFIXES):
            tables = _load_database(con, source)
        else:
            raise DataContractError(
                f"Input {source} is a file but not a DuckDB database (*.duckdb, *.db). Give the folder that holds "
                "the table files instead."
            )
    except BaseException:
        con.close()
        raise
    return RawTables(con=con, tables=tables)


def _connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory connection; UTC so that naive timestamps and offset conversion mean UTC."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Row numbers in the quarantine are the order rows were inserted, which must be file order.
    con.execute("SET preserve_insertion_order = true")
    return con


def _load_folder(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, RawTable]:
    """Load every contract table found in ``folder``; transactions must be there."""
    tables: dict[str, RawTable] = {}
    for name, contract in CONTRACTS.items():
        path = _find_table_file(folder, name)
        if path is None:
            if contract.is_required:
                raise DataContractError(
                    f"No {name} table in {folder}: expected {name}.csv or {name}.parquet "
                    f"with columns {', '.join(contract.required)}."
                )
            continue
        kind = "parquet" if path.name.lower().endswith(PARQUET_SUFFIXES) else "csv"
        tables[name] = _copy_in(con, name, _reader_sql(path, kind), str(path), kind)
    return tables


def _find_table_file(folder: Path, name: str) -> Path | None:
    """The one file holding table ``name`` in ``folder``, None if absent; two candidates are an error."""
    found = [folder / f"{name}{suffix}" for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise DataContractError(
            f"Table {name} is given twice in {folder}: {', '.join(p.name for p in found)}. "
            "Keep one file per table (remove or rename the other)."
        )
    return found[0] if found else None


def _reader_sql(path: Path, kind: str) -> str:
    """DuckDB table function reading one file; CSV as text so no value is lost to type sniffing."""
    if kind == "csv":
        return f"read_csv({quote_literal(str(path))}, all_varchar = true, header = true)"
    return f"read_parquet({quote_literal(str(path))})"


def _load_database(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, RawTable]:
    """Copy the contract tables of a DuckDB database file into memory, then let the file go."""
    try:
        # TYPE duckdb: never let DuckDB try to load another engine's extension for an unknown file.
        con.execute(f"ATTACH {quote_literal(str(path))} AS __source (TYPE duckdb, READ_ONLY)")
    except duckdb.Error as exc:
        raise DataContractError(f"Cannot open DuckDB database {path}: {exc}") from exc
    try:
        found = _database_tables(con)
        if "transactions" not in found:
            raise DataContractError(
                f"No transactions table in DuckDB database {path}; tables found: "
                f"{', '.join(sorted(found.values())) or 'none'}."
            )
        tables = {}
        for name in CONTRACTS:
            if name in found:
                qualified = found[name]
                reader = "__source." + ".".join(quote_ident(part) for part in qualified.split("."))
                tables[name] = _copy_in(con, name, reader, f"{path}:{qualified}", "duckdb")
        return tables
    finally:
        con.execute("DETACH __source")


def _database_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Contract table name -> ``schema.table`` in the attached database, preferring schema main."""
    rows = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = '__source' "
        "ORDER BY table_schema <> 'main', table_schema, table_name"
    ).fetchall()
    found: dict[str, str] = {}
    for schema, table in rows:
        if table.lower() in CONTRACTS:
            found.setdefault(table.lower(), f"{schema}.{table}")
    return found


def _copy_in(con: duckdb.DuckDBPyConnection, name: str, reader: str, source: str, kind: str) -> RawTable:
    """Copy one table into ``raw_<name>`` in input order, describe it and check its required columns."""
    relation = RAW_PREFIX + name
    try:
        con.execute(f"CREATE OR REPLACE TABLE {relation} AS SELECT * FROM {reader}")
        columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {relation})").fetchall())
        row_column = None
        if any(column.lower() == "rowid" for column in columns):
            # The input's own "rowid" hides DuckDB's; number the rows explicitly instead (slower, so only here).
            con.execute(
                f"CREATE OR REPLACE TABLE {relation} AS "
                f"SELECT row_number() OVER () AS {ROW_NUMBER_COLUMN}, * FROM {reader}"
            )
            row_column = ROW_NUMBER_COLUMN
        rows = con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]
    except duckdb.Error as exc:
        raise DataContractError(f"Cannot read {source} (table {name}): {exc}") from exc
    table = RawTable(name, source, kind, relation, columns, rows, row_column)
    _check_required_columns(table)
    return table


def _check_required_columns(table: RawTable) -> None:
    """Raise naming the file, the missing column and the columns found."""
    contract = CONTRACTS[table.name]
    for column in contract.required:
        if table.find(column) is None:
            raise DataContractError(
                f"{table.source}: required column '{column}' is missing from the {table.name} table. "
                f"Columns found: {', '.join(table.columns) or 'none'}. "
                f"The {table.name} table needs: {', '.join(contract.required)}."
            )
